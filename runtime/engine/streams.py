"""Consuming the engine: per-request streams (iterator and asyncio), `generate` over several
prompts, all driven cooperatively.

Whoever waits for an event and finds none runs the next step -- one driver at a time; the others
sleep on a condition the driver signals after each step. Every step routes each sampled token to
its own sequence's queue, so any number of consumers (threads, asyncio tasks, `generate` calls)
can share one engine and read their streams in any order without losing an event. When a step
finds nothing to run (every sequence waits for outside input) the waiter sleeps until an add /
extend / feed / abort wakes it. Leaving a stream early (break, close, cancel) aborts its request
and frees its blocks at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, Iterator, Optional, Sequence as Seq, Union

import torch

from .sampling import SamplingParams
from .sequence import Sequence, TokenEvent

__all__ = ["StreamsMixin"]

_END = object()


def _next_event(seq: Sequence):
    """The sequence's next event; None while none is ready; _END once it has ended (raising
    the error of a request whose callback failed)."""
    if seq.events:
        return seq.events.popleft()
    if not seq.finished:
        return None
    if seq.error is not None:
        raise seq.error
    return _END


class StreamsMixin:
    def _init_streams(self) -> None:
        self._cv = threading.Condition()
        self._driving = False

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def try_step(self) -> Optional[bool]:
        """One step unless someone else is driving: True if it ran something, False if nothing
        could run, None if another driver holds the engine (its events still reach every queue).
        For pipelines that drive several engines from one loop."""
        with self._cv:
            if self._driving:
                return None
            self._driving = True
        try:
            return bool(self.step())
        finally:
            with self._cv:
                self._driving = False
                self._cv.notify_all()

    def wait_for_step(self, timeout: float) -> None:
        """Sleep until a driver finishes a step or new input arrives, at most `timeout` seconds
        (a pipeline whose own try_step found the engine busy waits here instead of spinning)."""
        with self._cv:
            self._cv.wait(timeout)

    def wait_until(self, ready: Callable[[], bool], timeout: Optional[float] = None) -> None:
        """Drive (or wait for whoever drives) the engine until ready() holds. TimeoutError after
        `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no event within {timeout} s")
            with self._cv:
                if ready():
                    return
                if self._driving:
                    self._cv.wait(0.05)
                    continue
                self._driving = True
            progressed = False
            try:
                progressed = bool(self.step())
            finally:
                with self._cv:
                    self._driving = False
                    self._cv.notify_all()
            if not progressed and not ready():
                with self._cv:  # nothing can run: sleep until new input arrives
                    self._cv.wait(0.01)

    def stream(self, seq: Sequence, *, timeout: Optional[float] = None, abort_on_exit: bool = True
               ) -> Iterator[TokenEvent]:
        """The sequence's events as they are generated. Leaving the loop early aborts it."""
        try:
            while True:
                ev = _next_event(seq)
                if ev is _END:
                    return
                if ev is None:
                    self.wait_until(lambda: bool(seq.events) or seq.finished, timeout)
                else:
                    yield ev
        finally:
            if abort_on_exit and not seq.finished:
                self.abort(seq)

    async def astream(self, seq: Sequence, *, timeout: Optional[float] = None):
        """`stream` for asyncio: steps run in a worker thread, so the event loop stays free.
        Cancelling the task or `aclose()` aborts the request."""
        try:
            while True:
                ev = _next_event(seq)
                if ev is _END:
                    return
                if ev is None:
                    await asyncio.to_thread(self.wait_until, lambda: bool(seq.events) or seq.finished, timeout)
                else:
                    yield ev
        finally:
            if not seq.finished:
                self.abort(seq)

    # ------------------------------------------------------------------ several prompts
    def generate(self, prompts, params: Union[SamplingParams, Seq[SamplingParams], None] = None, *,
                 detokenizer=None, **request_kwargs) -> Iterator[TokenEvent]:
        """Stream the tokens of one or several prompts, in the order they are generated.

        prompts: token ids (a list of ints / 1-D tensor), a list of them, or dicts of
        `add_request` keyword arguments. params: one SamplingParams for all or one per prompt.
        request_kwargs go to every `add_request`. Breaking out of the loop aborts the unfinished."""
        single = isinstance(prompts, dict) or isinstance(prompts, torch.Tensor) and prompts.dim() == 1 or (
            isinstance(prompts, (list, tuple)) and (not prompts or isinstance(prompts[0], int)))
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        elif len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        seqs = []
        try:
            for prompt, p in zip(prompts, params):
                kwargs = dict(request_kwargs)
                kwargs.update(prompt if isinstance(prompt, dict) else {"prompt_ids": prompt})
                if not kwargs.get("prompt_complete", True):
                    raise ValueError("generate() takes complete prompts (nothing could extend them while it "
                                     "waits); stream a prompt with add_request(prompt_complete=False), "
                                     "extend_prompt() and stream()")
                seqs.append(self.add_request(params=p, detokenizer=detokenizer, **kwargs))
            ready = lambda: any(s.events for s in seqs) or all(s.finished for s in seqs)  # noqa: E731
            while True:
                pending = [s for s in seqs if s.events]
                if pending:
                    yield min(pending, key=lambda s: s.events[0].order).events.popleft()
                elif all(s.finished for s in seqs):
                    failed = [s for s in seqs if s.error is not None]
                    if failed:
                        raise failed[0].error
                    return
                else:
                    self.wait_until(ready)
        finally:
            for s in seqs:
                if not s.finished:
                    self.abort(s)

    def generate_ids(self, prompts, params=None, **kwargs) -> list:
        """Non-streaming: the generated ids of each prompt (a list of lists; one list for one prompt)."""
        single = isinstance(prompts, torch.Tensor) and prompts.dim() == 1 or (
            isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int))
        seqs = {}
        for ev in self.generate(prompts, params, **kwargs):
            seqs[ev.seq.seq_id] = ev.seq
        out = [seqs[k].output_ids for k in sorted(seqs)]
        return out[0] if single else out
