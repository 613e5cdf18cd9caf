"""One admitted chat completion: its turn's events -> OpenAI's streamed chunks (server-sent events)
or the whole `chat.completion` object.

Streamed, text only: a role chunk, `delta.content` pieces, a chunk with the finish reason, the usage
chunk (`stream_options.include_usage`), `data: [DONE]`. With audio, as OpenAI's audio models stream:
the text comes as `delta.audio.transcript` pieces and the speech as `delta.audio.data` (base64
PCM16, 24 kHz mono) as soon as each packet is decoded, the first audio delta carrying the audio `id`;
then `delta.audio` with `id` and `expires_at` (the server keeps no audio, so that is the answer's
creation time), the finish chunk, usage, [DONE]. Non-streamed audio: `message.content` null,
`message.audio` {id, data (WAV or PCM16, base64), expires_at, transcript}. usage: prompt tokens,
completion tokens = text tokens + speech codes (`completion_tokens_details.audio_tokens`). An error
after the stream started is sent as a `data: {"error": ...}` event.

`close()` ends the turn (its requests aborted, KV blocks freed -- `OmniStream.aclose`) and gives the
stream back to admission, exactly once, whoever calls it first: the end of the chunks, the response
(also when the client disconnected before the first chunk), the handler.
"""
from __future__ import annotations

import json
import logging
import time
import uuid

import anyio

from ..engine.sequence import TokenEvent
from ..omni import AudioEvent, TurnResult
from .audio_out import pcm16_base64, wav_base64
from .errors import APIError

__all__ = ["Completion", "StopMatcher", "sse"]

log = logging.getLogger("omni_runtime.serve")


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


class StopMatcher:
    """`stop` strings over streamed text: text that could still become a stop string is held back;
    at a match the answer ends before it (the stop string is not returned, as OpenAI)."""

    def __init__(self, stops):
        self.stops, self.pending = tuple(stops), ""

    def feed(self, text: str) -> tuple:
        """-> (text safe to send, whether a stop string was matched)."""
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(buf) + 1)) if buf.endswith(s[:k])),
                   default=0)
        self.pending = buf[len(buf) - keep:]
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


class Completion:
    def __init__(self, req, stream, model: str, metrics, release, arrival: float):
        self.req, self.stream, self.model, self.metrics = req, stream, model, metrics
        self._release, self.arrival = release, arrival
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.audio_id = f"audio_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.first = None  # the turn's first event, pulled before the answer starts (bad requests raise there)
        self.prompt_tokens = self.text_tokens = self.packets = 0
        self.result = None
        self.finish_reason = None
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):  # also when the client's disconnect cancelled the caller
            await self.stream.aclose()
        self._release()

    def usage(self) -> dict:
        codes = len(self.result.codes) if self.result is not None else 0
        done = self.text_tokens + codes
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                 "total_tokens": self.prompt_tokens + done}
        if self.req.speak:
            usage["completion_tokens_details"] = {"audio_tokens": codes}
        return usage

    async def _events(self):
        """("text", str) and ("audio", samples) pieces of the answer, `stop` applied; sets result /
        finish_reason at the end."""
        stop = StopMatcher(self.req.stop) if self.req.stop else None
        ev = self.first
        while True:
            if isinstance(ev, TokenEvent):
                if not self.text_tokens:
                    self.prompt_tokens = ev.seq.num_prompt_tokens
                    self.metrics.first_token.observe(time.perf_counter() - self.arrival)
                self.text_tokens += 1
                self.metrics.count_token()
                text, hit = stop.feed(ev.text) if stop else (ev.text, False)
                if text:
                    yield "text", text
                if hit:
                    self.finish_reason = "stop"
                    await self.close()
                    return
            elif isinstance(ev, AudioEvent):
                if not self.packets:
                    self.metrics.first_audio.observe(time.perf_counter() - self.arrival)
                self.packets += 1
                self.metrics.audio_seconds.inc(ev.samples.numel() / ev.sample_rate)
                yield "audio", ev.samples
            elif isinstance(ev, TurnResult):
                self.result, self.finish_reason = ev, ev.finish_reason
                rest = stop.flush() if stop else ""
                if rest:
                    yield "text", rest
                return
            ev = await self.stream.__anext__()

    def _chunk(self, delta: dict, finish_reason=None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.req.include_usage:
            chunk["usage"] = None
        return sse(chunk)

    async def chunks(self):
        """The streamed answer, as bytes of server-sent events."""
        speak = self.req.speak
        try:
            yield self._chunk({"role": "assistant", "content": None if speak else ""})
            audio_started = False
            async for kind, value in self._events():
                if kind == "audio":
                    delta = {"audio": {"data": pcm16_base64(value)}}
                else:
                    delta = {"audio": {"transcript": value}} if speak else {"content": value}
                if speak and not audio_started:
                    delta["audio"]["id"] = self.audio_id
                    audio_started = True
                yield self._chunk(delta)
            if speak:
                yield self._chunk({"audio": {"id": self.audio_id, "expires_at": self.created}})
            yield self._chunk({}, self.finish_reason)
            if self.req.include_usage:
                yield sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "system_fingerprint": None, "choices": [], "usage": self.usage()})
            yield b"data: [DONE]\n\n"
        except Exception as e:  # noqa: BLE001 -- the status is sent already: the error goes in the stream
            yield sse(_stream_error(e).body())
        finally:
            await self.close()

    async def whole(self) -> dict:
        """The non-streamed answer (a `chat.completion` object)."""
        text = []
        async for kind, value in self._events():
            if kind == "text":
                text.append(value)
        message = {"role": "assistant", "content": "".join(text), "refusal": None}
        if self.req.speak:
            wave = self.result.waveform
            data = wav_base64(wave) if self.req.audio_format == "wav" else pcm16_base64(wave)
            message.update(content=None, audio={"id": self.audio_id, "data": data, "expires_at": self.created,
                                                "transcript": "".join(text)})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "system_fingerprint": None, "usage": self.usage(),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}]}


def _stream_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    log.exception("a streamed turn failed")
    return APIError(500, f"the turn failed: {type(e).__name__}: {e}", None, "turn_failed", type="server_error")
