"""A terminal progress line for weight loading (`checkpoint.load_tensors`' progress callback)."""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressLine"]


class ProgressLine:
    """A tqdm-free progress callback for `load_tensors`: rewrites one line on a terminal
    ("loading thinker: 42% 3.1/7.4 GB 1.9 GB/s"), prints every 10% otherwise."""

    def __init__(self, label: str = "loading", stream=None, min_interval: float = 0.1):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last = -1.0
        self._last_decile = -1
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def format(self, done: int, total: int) -> str:
        frac = done / total if total else 1.0
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6)
        return (
            f"{self.label}: {frac * 100:3.0f}% {done / scale:.2f}/{total / scale:.2f} {unit} "
            f"{done / 1e9 / elapsed:.2f} GB/s"
        )

    def __call__(self, done: int, total: int) -> None:
        finished = done >= total
        now = time.perf_counter()
        if self._tty:
            if finished or now - self._last >= self.min_interval:
                self._last = now
                self.stream.write("\r" + self.format(done, total) + ("\n" if finished else ""))
                self.stream.flush()
            return
        decile = 10 if finished else int(10 * done / total) if total else 10
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.format(done, total) + "\n")
            self.stream.flush()
