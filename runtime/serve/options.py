"""What one `omni-serve` app is configured with (the command line's options, or `create_app`'s
caller): the model's public name, the admission limits, the API key, where local media may be read
from and how large media and bodies may be."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["ServeOptions", "MIB"]

MIB = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """model_name: the id clients send as `model` (and /v1/models lists). max_streams: turns that run
    at once; queue_size: requests that may wait for one (beyond that: 429 at once); queue_timeout_s: a
    queued request that gets no stream in this time is answered 503. api_key: required as
    `Authorization: Bearer KEY` on /v1/* when set. allowed_media_dir: local media paths (file:// URLs
    or absolute paths) are read only from under this directory (None: never). max_media_mb: the
    largest media item (decoded bytes; checked on the base64 length before decoding);
    max_request_mb: the largest request body. talker_greedy: argmax speech codes unless a request
    says otherwise (the official sampling by default)."""

    model_name: str = "qwen2.5-omni"
    max_streams: int = 8
    queue_size: int = 16
    queue_timeout_s: float = 60.0
    api_key: Optional[str] = None
    allowed_media_dir: Optional[Path] = None
    max_media_mb: float = 20.0
    max_request_mb: float = 100.0
    talker_greedy: bool = False

    def __post_init__(self):
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError(f"model_name must be a non-empty string, got {self.model_name!r}")
        for name, low in (("max_streams", 1), ("queue_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("queue_timeout_s", "max_media_mb", "max_request_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if self.allowed_media_dir is not None:
            path = Path(os.path.realpath(self.allowed_media_dir))
            if not path.is_dir():
                raise ValueError(f"allowed_media_dir {os.fspath(self.allowed_media_dir)!r} is not a directory")
            object.__setattr__(self, "allowed_media_dir", path)

    @property
    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * MIB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MIB)
