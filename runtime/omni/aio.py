"""The asyncio face of a turn: `async for event in omni.stream(...)`.

    async def reply(omni, text):
        async with omni.stream(text, speaker="Ethan") as stream:
            async for ev in stream:
                if isinstance(ev, TokenEvent): await send_text(ev.text)
                elif isinstance(ev, AudioEvent): await send_pcm(ev.samples)
                else: result = ev                                    # TurnResult, last

The turn runs as `Omni.generate` does (the same events, stamped with the time each was ready), on a
thread of its own, so the event loop never waits for a model step; events cross to the loop as they
come. Leaving the loop early (break, an exception, `aclose()`, the task being cancelled) stops the
turn: its requests are aborted and their KV blocks freed before `aclose()` returns. A bad request
raises its ValueError from the first `__anext__` (so a server can answer 4xx before it starts a
response); the media decoding and prompt preparation also run off the loop.
"""
from __future__ import annotations

import asyncio
import threading

__all__ = ["OmniStream"]

_DONE = object()


class _Worker:
    """The thread that runs one turn and hands its events to the loop. It holds no reference to its
    `OmniStream`, so a stream dropped by its consumer (a `break` out of `async for`) is collected at
    once, and its `__del__` stops the turn."""

    def __init__(self, make_turn, loop: asyncio.AbstractEventLoop):
        self.make_turn, self.loop = make_turn, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.turn = None
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()  # the turn is closed: its requests are freed
        self._lock = threading.Lock()
        threading.Thread(target=self.run, name="omni-turn", daemon=True).start()

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.stop()

    def stop(self) -> None:
        with self._lock:
            self.stop_requested.set()
            if self.turn is not None:
                self.turn.cancel()

    def run(self) -> None:
        events = None
        try:
            turn = self.make_turn()  # prepares the prompt (media decoding): off the loop
            with self._lock:
                self.turn = turn
                if self.stop_requested.is_set():
                    turn.cancel()
            events = turn.events()
            for ev in events:
                self.put(ev)
            self.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self.put(exc)
        finally:
            if events is not None:
                events.close()  # aborts the turn's requests if it did not end
            self.stopped.set()


class OmniStream:
    """An async iterator over one turn's events (see the module docstring); made by `Omni.stream`.
    `make_turn()` builds the turn (a `Turn`); it runs on the stream's thread."""

    def __init__(self, make_turn):
        self._make_turn = make_turn
        self._worker: _Worker | None = None
        self._finished = False

    def __aiter__(self) -> "OmniStream":
        return self

    async def __anext__(self):
        if self._finished:
            raise StopAsyncIteration
        if self._worker is None:
            self._worker = _Worker(self._make_turn, asyncio.get_running_loop())
        try:
            item = await self._worker.queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if item is _DONE or isinstance(item, BaseException):
            self._finished = True
            if item is _DONE:
                raise StopAsyncIteration
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the turn (if it still runs) and wait until its requests are freed."""
        self._finished = True
        worker = self._worker
        if worker is not None and not worker.stopped.is_set():
            worker.stop()
            await asyncio.get_running_loop().run_in_executor(None, worker.stopped.wait)

    def __del__(self):
        if self._worker is not None:
            self._worker.stop()

    async def __aenter__(self) -> "OmniStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
