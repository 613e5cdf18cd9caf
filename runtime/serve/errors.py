"""The one error answer of omni-serve, shaped as OpenAI's: HTTP status + `{"error": {"message", "type",
"param", "code"}}`, where `param` is the request field at fault (e.g. `audio.voice`,
`messages[0].content[1].input_audio.data`) or null."""
from __future__ import annotations

from typing import Optional

__all__ = ["APIError", "invalid"]


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None, *,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: Optional[str], message: str, code: Optional[str] = None) -> APIError:
    """A 400: the request is malformed at `param`."""
    return APIError(400, message, param, code)
