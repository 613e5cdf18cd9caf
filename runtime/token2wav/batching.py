"""Many streams, one decoder: chunks of different streams decoded together.

`decode_chunks(chunks)` takes one ready chunk from each of several streams (`Token2WavStream.
next_chunk`) and runs the DiT solves of the windows that share a shape as one batch (N streams ->
DiT batch 2N with CFG), then their vocoder runs that share a mel length as one batch; every stream's
packet comes out as if decoded alone, up to fp32 rounding (the matmuls see another batch). With
runners (CUDA graphs or the static path) a batch replays the graph of its bucket.

`StreamBatcher` is the one thread that decodes all streams of a Token2Wav: callers `open` a stream,
`push` codes and `finish` from their own threads without waiting; each round the thread takes the
next ready chunk of every stream (first chunks first: they set the first-packet latency), decodes
them with `decode_chunks` and hands each stream its packet. On CUDA it works on a stream of its own,
so the DiT and vocoder of packet n run while the Thinker and Talker step for packet n + 1. A failure
in one stream (bad codes, an error in its chunk) is that stream's alone: a batch that raises is
re-run chunk by chunk, so only the chunk that fails reports it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Callable, Iterator, Optional

import torch

from .graphs import BATCH_SIZES
from .streaming import Chunk, Packet, decode_together

__all__ = ["decode_chunks", "StreamBatcher", "BatchedStream", "PacketQueue"]


def _solve_groups(chunks: list[Chunk]) -> Iterator[list[Chunk]]:
    """Chunks whose solves can batch (same runners, schedule and window length), at most a batch
    bucket each, the groups holding the earliest chunk index first."""
    by_key: dict = {}
    for c in chunks:
        by_key.setdefault((id(c.stream.runners), c.stream.schedule, c.noise.shape[1]), []).append(c)
    for group in sorted(by_key.values(), key=lambda g: min(c.index for c in g)):
        runners = group[0].stream.runners
        size = runners.max_batch if runners is not None else BATCH_SIZES[-1]
        for i in range(0, len(group), size):
            yield group[i:i + size]


def decode_chunks(chunks: list[Chunk]) -> Iterator[list[tuple[Chunk, object]]]:
    """For one chunk per stream: a list of (chunk, its Packet or the exception it raised) per group
    decoded together, as each group completes (groups of the lowest chunk index first); see the
    module docstring."""
    if len({id(c.stream) for c in chunks}) != len(chunks):
        raise ValueError("decode_chunks takes at most one chunk per stream (a stream's chunks depend on each other)")
    for group in _solve_groups(chunks):
        try:
            yield decode_together(group)
        except Exception:  # noqa: BLE001 -- isolate it: each chunk alone, so only a failing one reports
            for chunk in group:
                try:
                    yield decode_together([chunk])
                except Exception as exc:  # noqa: BLE001
                    yield [(chunk, exc)]


class PacketQueue:
    """What a reader sees of a stream decoded elsewhere: packets in order, then the end or an error.
    `cond` guards it (the decoder's condition, notified when something arrives)."""

    def __init__(self, cond: threading.Condition):
        self.cond = cond
        self._out: collections.deque = collections.deque()
        self.finishing = self.cancelled = self.done = False
        self.error: Optional[BaseException] = None

    @property
    def closed(self) -> bool:
        return self.cancelled or self.done or self.error is not None

    def _refuse_push(self) -> None:  # with self.cond held
        if self.finishing or self.cancelled:
            raise ValueError("push after finish() or cancel(): this stream is closed")

    def ready(self) -> list[Packet]:
        """The packets decoded since the last call; raises the stream's error once they are out."""
        with self.cond:
            out = list(self._out)
            self._out.clear()
            if not out and self.error is not None:
                raise self.error
            return out

    @property
    def has_packets(self) -> bool:
        with self.cond:
            return bool(self._out) or self.error is not None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until a packet, the end or an error is there; True if one is."""
        with self.cond:
            return self.cond.wait_for(lambda: self._out or self.done or self.error is not None, timeout)


class BatchedStream(PacketQueue):
    """A stream decoded by a `StreamBatcher`: `push` / `finish` return at once; `ready()` gives the
    packets decoded so far, in order; `done` once `finish` was called and every packet is out."""

    def __init__(self, batcher: "StreamBatcher", make_stream: Callable):
        super().__init__(batcher.cond)
        self._batcher, self._make_stream = batcher, make_stream
        self.stream = None  # made on the batcher's thread at the first codes (speaker encoder, graph capture)
        self._codes: list = []

    def push(self, codes) -> None:
        with self.cond:
            self._refuse_push()
            self._codes.extend(int(c) for c in codes)
            self._batcher.wake()

    def finish(self) -> None:
        with self.cond:
            self.finishing = True
            self._batcher.wake()

    def cancel(self) -> None:
        """Stop decoding this stream; what it holds is dropped at the batcher's next round."""
        with self.cond:
            self.cancelled = True
            self._batcher.wake()

    @property
    def busy(self) -> bool:
        """Codes wait to be taken or a chunk is being decoded: a packet may come without more codes."""
        with self.cond:
            return bool(self._codes) or (self.stream is not None and self.stream.pending)


class StreamBatcher:
    """The decode thread of one Token2Wav (see the module docstring)."""

    def __init__(self, t2w):
        self.t2w = t2w
        self.cond = threading.Condition()
        self._streams: list[BatchedStream] = []
        self._calls: collections.deque = collections.deque()
        self._dirty = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def open(self, speaker, *, seed: int = 0, **stream_kwargs) -> BatchedStream:
        """A stream as `Token2Wav.stream(speaker, seed=..., **stream_kwargs)` makes it (made on the
        batcher's thread when its first codes arrive), decoded in batches with the others."""
        handle = BatchedStream(self, lambda: self.t2w.stream(speaker, seed=seed, **stream_kwargs))
        with self.cond:
            self._check_open()
            self._streams.append(handle)
            self._start()
        return handle

    def call(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        """Run fn on the batcher's thread between rounds (a whole non-streamed decode, say)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self._check_open()
            self._calls.append((future, fn, args, kwargs))
            self._start()
            self.wake()
        return future

    def decode(self, codes, speaker, *, noise=None, seed: int = 0) -> concurrent.futures.Future:
        """The whole code sequence at once (`Token2Wav.__call__`), on the batcher's thread."""
        return self.call(self.t2w, codes, speaker, noise=noise, seed=seed)

    @property
    def num_streams(self) -> int:
        """Streams open: not finished, cancelled or failed."""
        with self.cond:
            return sum(not h.closed for h in self._streams)

    def close(self, wait: bool = True) -> None:
        """End the thread (it holds the Token2Wav); open streams and pending calls fail. With
        `wait`, until the thread has ended (it ends after the round it is in)."""
        with self.cond:
            self._closed = True
            gone = RuntimeError("the Token2Wav decoder was closed")
            for h in self._streams:
                if not h.closed:
                    h.error = gone
            for future, *_ in self._calls:
                future.set_exception(gone)
            self._streams, self._calls = [], collections.deque()
            self.cond.notify_all()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def wake(self) -> None:  # with self.cond held
        self._dirty = True
        self.cond.notify_all()

    def _check_open(self) -> None:  # with self.cond held
        if self._closed:
            raise RuntimeError("the Token2Wav decoder was closed")

    def _start(self) -> None:  # with self.cond held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="omni-token2wav", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.t2w.device.type == "cuda":  # its own CUDA stream, ordered after the weights' upload
            side = torch.cuda.Stream(self.t2w.device)
            side.wait_stream(torch.cuda.current_stream(self.t2w.device))
            torch.cuda.set_stream(side)
        more = False
        while True:
            with self.cond:
                self.cond.wait_for(lambda: more or self._dirty or self._calls or self._closed)
                if self._closed:
                    return
                self._dirty = False
                calls, self._calls = list(self._calls), collections.deque()
                for h in self._streams:
                    if h.closed:
                        h.stream = None  # its codes, mel and speaker rows go now
                self._streams = [h for h in self._streams if not h.closed]
                work = [(h, h._codes, h.finishing) for h in self._streams]
                for h, _, _ in work:
                    h._codes = []
            for future, fn, args, kwargs in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:  # noqa: BLE001 -- the caller's
                        future.set_exception(exc)
            ready = [(h, self._next_chunk(h, codes, finishing)) for h, codes, finishing in work]
            ready = [(h, c) for h, c in ready if c is not None]
            more = bool(ready)
            owner = {id(c): h for h, c in ready}
            for results in decode_chunks([c for _, c in ready]):
                with self.cond:
                    for chunk, result in results:
                        self._deliver(owner[id(chunk)], result)
                    self.cond.notify_all()
            with self.cond:
                for h, _, finishing in work:
                    if finishing and not h.done and (h.stream is None or (h.stream.finished and not h.stream.pending)):
                        h.done = True
                self.cond.notify_all()

    def _next_chunk(self, h: BatchedStream, codes: list, finishing: bool) -> Optional[Chunk]:
        try:
            if codes and h.stream is None:
                h.stream = h._make_stream()
            if h.stream is None:
                return None
            if codes:
                h.stream.add_codes(codes)
            return h.stream.next_chunk(finishing)
        except Exception as exc:  # noqa: BLE001 -- this stream's error, handed to its reader
            with self.cond:
                h.error = exc
                self.cond.notify_all()
            return None

    @staticmethod
    def _deliver(h: BatchedStream, result) -> None:  # with self.cond held
        if isinstance(result, BaseException):
            h.error = result
        elif not h.cancelled:
            h._out.append(result)

