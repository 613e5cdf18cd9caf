"""Flow matching for the Token2Wav DiT: the time grid, the RK4 solver, classifier-free guidance and
the initial noise -- transformers' `Qwen2_5OmniToken2WavDiTModel.sample` and
`RungeKutta4ODESolver.integrate`, with the state-independent work done once per solve.

- Time grid: `linspace(0, 1, num_steps)` warped by sway s: t + s (cos(pi t / 2) - 1 + t).
- Solver: per interval [t0, t1] with h = t1 - t0, the RK4 3/8-rule
      k1 = f(t0, x), k2 = f(t0 + h/3, x + h k1 / 3), k3 = f(t0 + 2h/3, x + h (k2 - k1 / 3)),
      k4 = f(t1, x + h (k1 - k2 + k3)),  x += (k1 + 3 (k2 + k3) + k4) h / 8
  -> 4 evaluations per interval, 36 for 10 points. transformers then interpolates the trajectory
  at the grid points, which is the identity there: the result is the state after the last interval.
- Guidance: v = g + (g - null) * guidance_scale with one DiT call at batch 2 (conditioned,
  unconditioned); guidance_scale < 1e-5 -> no CFG, batch 1.
- Noise: `initial_noise(seed, start_frame, num_frames, ...)` draws each DiT block of frames from its
  own generator seeded by (seed, block), so any window's noise is the same numbers as the same
  frames of the whole sequence (streaming == whole decode given the same seed).
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..models.dit import DiT, Modulation

__all__ = ["Schedule", "FlowSampler", "initial_noise", "time_grid", "evaluation_times", "rk4_integrate"]

# transformers' threshold below which guidance is off.
_MIN_GUIDANCE = 1e-5
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Schedule:
    """The sampler's settings (transformers' defaults)."""

    num_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: Optional[float] = -1.0

    def __post_init__(self):
        n = self.num_steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
            raise ValueError(f"num_steps must be an int >= 2 (the grid needs two time points), got {n!r}")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {g!r}")
        s = self.sway_coefficient
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s)):
            raise ValueError(f"sway_coefficient must be a finite number or None, got {s!r}")
        grid = time_grid(int(n), s)
        if not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError(f"sway_coefficient {s} with num_steps {n} gives a time grid that is not strictly "
                             f"increasing ({[round(float(t), 4) for t in grid]}); use a value in [-1, 1]")

    @property
    def cfg(self) -> bool:
        return self.guidance_scale >= _MIN_GUIDANCE

    @property
    def num_evaluations(self) -> int:
        return 4 * (self.num_steps - 1)


def time_grid(num_steps: int, sway: Optional[float], device=None) -> torch.Tensor:
    """(num_steps,) fp32, computed with transformers' operations (so the same floats)."""
    t = torch.linspace(0, 1, num_steps, device=device, dtype=torch.float32)
    if sway is not None:
        t += sway * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


def evaluation_times(grid: torch.Tensor) -> torch.Tensor:
    """The solver's evaluation times in call order: t0, t0 + h/3, t0 + 2h/3, t1 per interval."""
    t0, t1 = grid[:-1], grid[1:]
    h = t1 - t0
    return torch.stack([t0, t0 + h * (1 / 3), t0 + h * (2 / 3), t1], dim=1).reshape(-1)


def rk4_integrate(f: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The state at grid[-1] from x at grid[0]; f(evaluation index, state) is the velocity at
    `evaluation_times(grid)[index]`. Same operations in the same order as transformers."""
    third = 1 / 3
    for k in range(grid.shape[0] - 1):
        h = grid[k + 1] - grid[k]
        k1 = f(4 * k, x)
        k2 = f(4 * k + 1, x + h * k1 * third)
        k3 = f(4 * k + 2, x + h * (k2 - k1 * third))
        k4 = f(4 * k + 3, x + h * (k1 - k2 + k3))
        x = x + (k1 + 3 * (k2 + k3) + k4) * h / 8
    return x


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _block_seed(seed: int, block: int) -> int:
    return _splitmix64(_splitmix64(seed & _MASK64) ^ block)


def initial_noise(seed: int, start_frame: int, num_frames: int, mel_dim: int, block_size: int = 24) -> torch.Tensor:
    """(1, num_frames, mel_dim) fp32 CPU standard normal noise for frames [start_frame,
    start_frame + num_frames); block b = frame // block_size comes from
    `torch.Generator().manual_seed(mix(seed, b))`, so it does not depend on the window asked for."""
    for name, v, lo in (("seed", seed, None), ("start_frame", start_frame, 0), ("num_frames", num_frames, 1),
                        ("mel_dim", mel_dim, 1), ("block_size", block_size, 1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and v < lo):
            raise ValueError(f"{name} must be an int{'' if lo is None else f' >= {lo}'}, got {v!r}")
    first, last = start_frame // block_size, (start_frame + num_frames - 1) // block_size
    blocks = []
    for b in range(first, last + 1):
        g = torch.Generator().manual_seed(_block_seed(int(seed), b))
        blocks.append(torch.randn(block_size, mel_dim, generator=g))
    offset = start_frame - first * block_size
    return torch.cat(blocks)[offset:offset + num_frames].unsqueeze(0)


class FlowSampler:
    """Solves the flow ODE with one DiT. Keeps the AdaLN modulations of the last few time grids:
    they depend only on (num_steps, sway_coefficient)."""

    _CACHE_SIZE = 4

    def __init__(self, dit: DiT):
        self.dit = dit
        self._modulations: OrderedDict[tuple, tuple[torch.Tensor, Modulation]] = OrderedDict()

    def grid_and_modulation(self, schedule: Schedule) -> tuple[torch.Tensor, Modulation]:
        key = (schedule.num_steps, schedule.sway_coefficient)
        if key not in self._modulations:
            grid = time_grid(schedule.num_steps, schedule.sway_coefficient, device=self.dit.device)
            self._modulations[key] = (grid, self.dit.modulation(evaluation_times(grid)))
            while len(self._modulations) > self._CACHE_SIZE:
                self._modulations.popitem(last=False)
        self._modulations.move_to_end(key)
        return self._modulations[key]

    def speaker_condition(self, ref_mel: torch.Tensor, cond: torch.Tensor, schedule: Schedule):
        """(speaker vectors, cond) rows for the DiT: (conditioned, unconditioned) with CFG, else the
        conditioned row only. ECAPA runs here, once per solve or stream."""
        vectors = self.dit.speaker_vectors(ref_mel)
        if schedule.cfg:
            return vectors, torch.cat([cond, torch.zeros_like(cond)], dim=0)
        return vectors[:1], cond

    def sample(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """codes (n,) int64, noise (1, n * repeats, mel_dim) -> mel (1, n * repeats, mel_dim); or N
        streams' windows of one length at once: codes (N, n), speaker_condition the N streams' rows
        concatenated, noise (N, n * repeats, mel_dim) -> (N, n * repeats, mel_dim)."""
        return self.solve(codes, speaker_condition, noise, schedule, *self.grid_and_modulation(schedule))

    def solve(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor, schedule: Schedule,
              grid: torch.Tensor, modulation: Modulation) -> torch.Tensor:
        """`sample` given the schedule's grid and modulation: device work only, no host reads and
        no sizes that depend on values (what `graphs.SolveRunner` captures)."""
        condition = self.dit.condition(codes, *speaker_condition)
        scale = schedule.guidance_scale

        def velocity(step: int, x: torch.Tensor) -> torch.Tensor:
            v = self.dit(x, condition, modulation, step)
            if not schedule.cfg:
                return v
            pairs = v.view(x.shape[0], 2, *v.shape[1:])  # each stream's (conditioned, unconditioned)
            guided, null = pairs[:, 0], pairs[:, 1]
            return guided + (guided - null) * scale

        return rk4_integrate(velocity, noise, grid)
