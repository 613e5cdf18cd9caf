"""How many CPU threads torch computes with: `apply_thread_policy(num_threads=None) -> int`.

    from omni_runtime.threads import apply_thread_policy
    n = apply_thread_policy()          # omni-run does this; --threads N passes N

Policy (the first that applies wins; the number is given to `torch.set_num_threads` and returned):

1. `num_threads`, when given (`omni-run --threads N`);
2. the environment variable `OMNI_RUNTIME_THREADS` (a positive integer);
3. `OMP_NUM_THREADS`, when set: torch already read it at import, so its count is kept;
4. the default: one thread per two usable CPUs, at least 1 (`default_num_threads()`). Usable CPUs
   are those this process may run on (`os.sched_getaffinity`), bounded by a cgroup CPU quota
   (`cpu.max` / `cpu.cfs_quota_us`, as set by containers), because torch's own default
   (every core the OS reports) ignores both.

Why one per two CPUs, measured on this project's 2-core CPU machine (Python 3.11, torch 2.13 CPU
build, fp32, 2026-12, engine of commit ef9d122): decode of the "7b-ratios" tiny checkpoint (`Thinker.from_checkpoint(...)
.generate(...)`, 40-token prompt, 48 new tokens, ignore_eos), ms per decode step, median of 9-12
runs (3 per process, after a warm-up run), each process with 1 or 2 torch threads. The machine is
shared, so "quiet" still had a load average of ~1.1-1.5 from other users' jobs:

                                              1 thread        2 threads
    quiet (load ~1.1-1.5)                     6.2 (4.4-10)    6.4 (5.3-20)
    quiet + one process spinning on a core    6.3 (4.4-27)    224 (17-385)
    busy (load ~3.6-6.8 from others)          13.1 (8.5-16)   90 (29-289)
    busy + one process spinning on a core     21.1 (17-37)    424 (147-434)

Two threads never helped these small matmuls, and as soon as another process holds a core they
are 10-40x slower: each op's work is split in two, and OpenMP's threads spin-wait at every op's
barrier for the half that sits on the busy core (a decode step is hundreds of small ops). One
thread per two CPUs keeps that margin on bigger machines (SMT siblings share a core anyway, and
the tokenizer, media decoding and other processes need CPU too); pass --threads /
OMNI_RUNTIME_THREADS to use more for large CPU prefill.
"""
from __future__ import annotations

import math
import os
from typing import Optional

__all__ = ["apply_thread_policy", "choose_num_threads", "default_num_threads", "usable_cpus", "ENV"]

ENV = "OMNI_RUNTIME_THREADS"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _cgroup_cpu_limit() -> Optional[float]:
    """CPUs allowed by a cgroup quota (v2 cpu.max, else v1 cfs quota), None when unlimited."""
    try:
        quota, period = _read("/sys/fs/cgroup/cpu.max").split()[:2]
        return float(quota) / float(period) if quota != "max" and float(period) > 0 else None
    except (OSError, ValueError):
        pass
    try:
        quota = float(_read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
        period = float(_read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    """CPUs this process can use: its affinity mask, bounded by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def default_num_threads() -> int:
    """One thread per two usable CPUs, at least one (see the module docstring for why)."""
    return max(1, usable_cpus() // 2)


def _positive(value, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    try:
        n = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if n < 1 or (not isinstance(value, str) and n != value):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return n


def choose_num_threads(num_threads=None) -> Optional[int]:
    """The policy without applying it: the number to set, or None to keep torch's current count
    (OMP_NUM_THREADS is set). Raises ValueError for a bad `num_threads` or OMNI_RUNTIME_THREADS."""
    if num_threads is not None:
        return _positive(num_threads, "num_threads")
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        return _positive(env, ENV)
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return default_num_threads()


def apply_thread_policy(num_threads=None) -> int:
    """Set torch's intra-op CPU thread count by the policy of the module docstring; returns it."""
    n = choose_num_threads(num_threads)
    import torch  # here, not at module import: `omni-run --help` must not load torch

    if n is None:
        return torch.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
