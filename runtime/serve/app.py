"""The omni-serve ASGI app (FastAPI): `create_app(omni, ServeOptions(...))`.

Routes: POST /v1/chat/completions (OpenAI's chat completions, streamed or not, text and speech out:
`protocol.py`, `completions.py`), GET /v1/models and /v1/models/{id}, GET /health, GET /metrics
(Prometheus, `metrics.py`). With an API key, /v1/* needs `Authorization: Bearer KEY` (401 without).

A chat completion: the body is read up to the size limit (413), parsed and checked (4xx naming the
field, nothing decoded yet), admitted (`admission.py`: 429 at once when the queue is full), its media
decoded off the loop, its turn started with `Omni.stream`; its first event is awaited before the
answer starts, so a request the model refuses still gets a 400. From then on the answer streams.
While a request waits (queue, media, first event, a non-streamed turn) a watcher notices its client
leaving and stops it; once streaming, the response's disconnect listener does. Either way
`Completion.close()` aborts the turn and frees its KV blocks and its stream.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import Admission
from .completions import Completion
from .errors import APIError
from .media import decode_media
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .options import ServeOptions
from .protocol import parse_chat_request

__all__ = ["create_app", "CLIENT_CLOSED"]

CLIENT_CLOSED = 499  # what the status metric records for a client that left before its answer (nginx's code)


class _ClientGone(Exception):
    pass


class _TurnStreamResponse(StreamingResponse):
    """Server-sent events of one completion; the completion is closed however the response ends."""

    def __init__(self, completion: Completion):
        super().__init__(completion.chunks(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.completion = completion

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.completion.close()


async def _until_disconnected(request: Request, awaitable):
    """await `awaitable`, unless the client disconnects first (then it is cancelled: _ClientGone)."""
    task = asyncio.ensure_future(awaitable)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise _ClientGone()
    return task.result()


async def _read_json(request: Request, limit: int):
    too_large = APIError(413, f"the request body is larger than this server's limit of {limit / 2**20:g} MB",
                         None, "request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError and bad UTF-8
        raise APIError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None


def create_app(omni, options: ServeOptions = ServeOptions()) -> FastAPI:
    app = FastAPI(title="omni-serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = app.state.metrics = ServeMetrics(omni)
    admission = app.state.admission = Admission(options.max_streams, options.queue_size, options.queue_timeout_s,
                                                metrics)
    started = int(time.time())
    card = {"id": options.model_name, "object": "model", "created": started, "owned_by": "omni-runtime"}

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", None,
                                     code).body(), e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # a bug or a failed turn: still OpenAI-shaped
        return JSONResponse(APIError(500, f"{type(e).__name__}: {e}", None, "server_error",
                                     type="server_error").body(), 500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": options.model_name, "running_streams": admission.running,
                "queued": admission.queued}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        check_key(request)
        if model_id != options.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist", "model", "model_not_found")
        return card

    async def start(request: Request, req, arrival: float) -> Completion:
        """Admit the request, decode its media, start its turn and pull its first event."""
        await _until_disconnected(request, admission.acquire())
        completion = None
        try:
            await _until_disconnected(request, run_in_threadpool(
                decode_media, req.media, omni.thinker.media_options, req.use_audio_in_video))
            completion = Completion(req, omni.stream(req.conversation(), **req.stream_kwargs()), options.model_name,
                                    metrics, admission.release, arrival)
            completion.first = await _until_disconnected(request, completion.stream.__anext__())
            return completion
        except BaseException as e:
            if completion is not None:
                await completion.close()
            else:
                admission.release()
            if isinstance(e, (ValueError, FileNotFoundError)):  # the model refused the request
                raise APIError(400, str(e), "messages", "invalid_request") from None
            raise

    async def answer(request: Request):
        arrival = time.perf_counter()
        check_key(request)
        req = parse_chat_request(await _read_json(request, options.max_request_bytes), omni, options)
        try:
            completion = await start(request, req, arrival)
            if req.stream:
                return _TurnStreamResponse(completion)
            try:
                body = await _until_disconnected(request, completion.whole())
            finally:
                await completion.close()
        except _ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            response = await answer(request)
        except APIError as e:
            metrics.requests.labels(str(e.status)).inc()
            raise
        metrics.requests.labels(str(response.status_code)).inc()
        return response

    return app
