"""The load: request arrivals, a level of concurrent turns on one shared `Omni`, what each request
saw and when, and the level's peak memory.

A level runs `requests` turns with `concurrency` worker threads: each worker takes the next request
in arrival order, waits for its arrival time, then prepares its prompt and iterates
`omni.generate(...)` (both engines are shared, so the workers' turns batch). Every latency counts
from the request's arrival, so time spent waiting for a free worker (more requests than streams,
or a Poisson burst) counts too. Arrivals: all at t = 0 ("burst"), or a Poisson process (the first
at t = 0, then exponential gaps at the given rate, drawn from the seed).

The Talker's codes are timed where the engine emits them (`TurnResult.timings["code_t"]`: the turn
consumes them and yields only audio packets).
"""
from __future__ import annotations

import random
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..engine.sequence import TokenEvent
from ..omni import AudioEvent, TurnResult

__all__ = ["Workload", "RequestRecord", "LevelRun", "arrival_offsets", "MemoryMeter", "run_level",
           "run_request"]


@dataclass(frozen=True)
class Workload:
    text_tokens: int
    codes: int
    speaker: Optional[str] = None


@dataclass
class RequestRecord:
    """One request. Times are absolute `time.perf_counter()` values; `timeline()` makes them
    seconds from the arrival."""

    index: int
    arrival: float
    offset: float = 0.0         # arrival, in seconds after the level's start
    start: float = 0.0          # a worker took it
    prepared: float = 0.0       # its prompt is ready (media features, encoders)
    end: Optional[float] = None
    prompt_tokens: int = 0
    text_t: list = field(default_factory=list)
    code_t: list = field(default_factory=list)
    packets: list = field(default_factory=list)  # dicts: t, start_sample, samples, codes, dit_ms, vocoder_ms, batch
    codes: int = 0
    dropped_codes: int = 0
    audio_seconds: float = 0.0
    error: Optional[str] = None

    def timeline(self) -> dict:
        rel = lambda t: None if t is None else round(t - self.arrival, 6)  # noqa: E731
        return {
            "index": self.index, "arrival_s": round(self.offset, 6), "start_s": rel(self.start),
            "prepared_s": rel(self.prepared), "end_s": rel(self.end),
            "prompt_tokens": self.prompt_tokens, "text_tokens": len(self.text_t), "codes": self.codes,
            "dropped_codes": self.dropped_codes, "audio_seconds": round(self.audio_seconds, 6),
            "text_t": [rel(t) for t in self.text_t], "code_t": [rel(t) for t in self.code_t],
            "packets": [{**p, "t": rel(p["t"])} for p in self.packets], "error": self.error,
        }


@dataclass
class LevelRun:
    scenario: str
    concurrency: int
    records: list
    wall_s: float
    peak_memory_bytes: Optional[int]
    memory_kind: str


def arrival_offsets(n: int, arrival, seed: int) -> list[float]:
    """Seconds after the level's start at which each of n requests arrives."""
    if arrival.kind == "burst":
        return [0.0] * n
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        if i:
            t += rng.expovariate(arrival.rate)
        out.append(t)
    return out


class MemoryMeter:
    """Peak memory between `reset()` and `peak()`: CUDA max allocated on a GPU; on CPU the peak RSS
    (VmHWM, reset through /proc/PID/clear_refs; where that is refused, the lifetime peak) of this
    process plus `pids` (the Token2Wav child process, where the decoder runs in one)."""

    def __init__(self, device: torch.device, pids=()):
        self.device, self.pids = device, tuple(pids)
        self.kind = "cuda max allocated" if device.type == "cuda" else (
            "peak RSS" + (" (this process + the Token2Wav process)" if self.pids else ""))

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        for pid in ("self", *self.pids):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.kind = "peak RSS (process lifetime)"

    def peak(self) -> Optional[int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        peaks = [_vm_hwm(pid) for pid in ("self", *self.pids)]
        if peaks[0] is None:
            peaks[0] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return sum(p for p in peaks if p is not None)


def _vm_hwm(pid) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _params(omni, work: Workload, seed: int):
    # Fixed lengths: the Thinker ignores its stop ids; every turn speaks exactly `codes` codes.
    return (omni.thinker.sampling_params(max_new_tokens=work.text_tokens, ignore_eos=True),
            omni.fixed_length_talker_params(work.codes, seed=seed))


def run_request(omni, scenario, work: Workload, rec: RequestRecord, seed: int) -> None:
    """One turn into `rec` (its arrival already set)."""
    rec.start = time.perf_counter()
    prepared = scenario.prepare(omni.thinker)
    rec.prepared = time.perf_counter()
    rec.prompt_tokens = prepared.num_tokens
    params, talker_params = _params(omni, work, seed)
    for ev in omni.generate(prepared=prepared, params=params, speaker=work.speaker, talker_params=talker_params,
                                seed=seed):
        if isinstance(ev, TokenEvent):
            rec.text_t.append(ev.t)
        elif isinstance(ev, AudioEvent):
            pk = ev.packet
            rec.packets.append({"t": ev.t, "start_sample": pk.start_sample, "samples": int(pk.samples.numel()),
                                "codes": list(pk.codes), "dit_ms": round(pk.dit_ms, 3),
                                "vocoder_ms": round(pk.vocoder_ms, 3), "batch": pk.batch})
        elif isinstance(ev, TurnResult):
            rec.codes, rec.dropped_codes, rec.audio_seconds = len(ev.codes), ev.dropped_codes, ev.audio_seconds
            rec.code_t = [ev.timings["start"] + t for t in ev.timings["code_t"]]
    rec.end = time.perf_counter()


def run_level(omni, scenario, work: Workload, concurrency: int, requests: int, arrival, seed: int,
              meter: MemoryMeter,
              on_done: Callable[[RequestRecord], None] = lambda rec: None) -> LevelRun:
    offsets = arrival_offsets(requests, arrival, seed)
    records: list[RequestRecord] = []
    lock = threading.Lock()
    ready = threading.Barrier(min(concurrency, requests) + 1)
    origin = [0.0]
    errors: list[BaseException] = []

    def worker():
        ready.wait()
        while True:
            with lock:
                i = len(records)
                if i >= requests or errors:
                    return
                rec = RequestRecord(i, origin[0] + offsets[i], offsets[i])
                records.append(rec)
            delay = rec.arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                run_request(omni, scenario, work, rec, seed + i)
            except BaseException as e:  # noqa: BLE001 -- reported by the main thread, with the request
                rec.error = f"{type(e).__name__}: {e}"
                with lock:
                    errors.append(e)
                return
            on_done(rec)

    threads = [threading.Thread(target=worker, name=f"omni-bench-{scenario.name}-{k}", daemon=True)
               for k in range(min(concurrency, requests))]
    for t in threads:
        t.start()
    meter.reset()
    origin[0] = time.perf_counter()
    ready.wait()
    for t in threads:
        t.join()
    wall = max((r.end or origin[0]) for r in records) - origin[0] if records else 0.0
    peak = meter.peak()
    if errors:
        bad = next(r for r in records if r.error)
        kind = ValueError if isinstance(errors[0], ValueError) else RuntimeError  # bad input stays a usage error
        raise kind(f"{scenario.name} at concurrency {concurrency}: request {bad.index} failed: {bad.error}") \
            from errors[0]
    return LevelRun(scenario.name, concurrency, records, wall, peak, meter.kind)
