"""Admission: at most `max_streams` turns run at once; up to `queue_size` more requests wait for one,
first come first served; a request that finds the queue full is refused at once (429, with
Retry-After), one that waits longer than `timeout_s` gets a 503 -- the server never leaves a
request hanging. Lives on the event loop (its methods are called from the loop's thread only)."""
from __future__ import annotations

import asyncio
import collections

from .errors import APIError

__all__ = ["Admission"]


class Admission:
    def __init__(self, max_streams: int, queue_size: int, timeout_s: float, metrics):
        self.max_streams, self.queue_size, self.timeout_s = max_streams, queue_size, timeout_s
        self.metrics = metrics
        self.running = 0
        self._waiters: collections.deque = collections.deque()  # futures, resolved when handed a stream

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _update(self) -> None:
        self.metrics.running_streams.set(self.running)
        self.metrics.queue_length.set(len(self._waiters))

    async def acquire(self) -> None:
        """Take a stream (wait in the queue if all are busy); raises APIError 429 / 503."""
        if self.running < self.max_streams and not self._waiters:
            self.running += 1
            self._update()
            return
        if len(self._waiters) >= self.queue_size:
            raise APIError(429, f"the server is at capacity ({self.running} streams running, {len(self._waiters)} "
                                "requests queued): retry later", None, "rate_limit_exceeded", type="requests",
                           headers={"Retry-After": "1"})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._update()
        try:
            await asyncio.wait_for(waiter, self.timeout_s)
        except BaseException as e:
            if waiter.done() and not waiter.cancelled():  # handed a stream just as it gave up: pass it on
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            self._update()
            if isinstance(e, asyncio.TimeoutError):
                raise APIError(503, f"no stream became free within {self.timeout_s:g} s: retry later", None,
                               "queue_timeout", type="server_error", headers={"Retry-After": "1"}) from None
            raise

    def release(self) -> None:
        """Give a stream back: to the first live waiter, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # `running` is unchanged: the stream changes hands
                self._update()
                return
        self.running -= 1
        self._update()
