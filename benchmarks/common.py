"""Shared benchmark machinery: timing (CUDA events through triton.testing.do_bench on a GPU, a
host clock on CPU; warm-up, median of repeats), the device description, the best-of SDPA
backends, JSON output and table printing.

Every implementation a benchmark times is an `Impl`: a zero-argument callable returning the
attention output (or a tuple whose first element is it). `measure` calls each once (compiling /
warming it), checks its output against ours (rel. error, so a wrong mask or a wrong function never
counts as a fast peer), then times it. Failures (an SDPA backend that refuses the inputs, an
out-of-memory) are recorded per implementation, never fatal.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"

# Outputs of two implementations of the same function must agree this well (||a-b||/||b||) for a
# timing to count as a peer of ours; a wrong mask or function gives errors of order 0.1 - 1.
MATCH_TOL = 5e-2

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# -- device --------------------------------------------------------------------------------------

def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_info(device: torch.device) -> dict:
    """What ran the numbers: device name and slug, torch / triton / CUDA versions, SM count."""
    import triton

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name, slug=slugify(props.name), cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
    else:
        name = platform.processor() or platform.machine() or "cpu"
        info.update(name=f"CPU ({name}, {torch.get_num_threads()} threads)", slug=slugify(f"cpu-{platform.machine()}"))
    return info


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def no_cuda_message(script: str) -> str:
    return (f"[{script}] CUDA is not available: timing the CPU torch path of the op (not the Triton "
            f"kernel) and the same peers on small shapes. GPU numbers come from "
            f"`bash benchmarks/run_gpu.sh` on a CUDA machine.")


def configure_compile() -> None:
    """torch.compile'd peers are compiled once per shape; raise dynamo's recompile limits so a
    sweep over shapes never silently falls back to eager (which would time the wrong peer)."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    warnings.filterwarnings("ignore", message=".*TF32.*")


# -- timing --------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _events_median(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> float:
    """CUDA-event timing (the fallback when triton.testing.do_bench is unavailable)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / estimate))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_gpu(fn: Callable[[], Any], warmup_ms: float = 10, rep_ms: float = 50) -> float:
    """Median milliseconds of fn on the GPU: triton.testing.do_bench (CUDA events, L2 flushed
    before every call, warm-up first), falling back to plain CUDA events."""
    try:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    except Exception:  # noqa: BLE001 -- older/odd triton: time with events ourselves
        return _events_median(fn, warmup_ms, rep_ms)


def time_cpu(fn: Callable[[], Any], min_reps: int = 3, max_reps: int = 20, max_s: float = 0.5) -> float:
    """Median milliseconds of fn on the host clock: one warm-up call, then repeats until max_reps
    or max_s seconds (at least min_reps)."""
    fn()
    times = []
    t_end = time.perf_counter() + max_s
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timer_for(device: torch.device, quick: bool = False) -> Callable[[Callable[[], Any]], float]:
    if device.type == "cuda":
        return (lambda fn: time_gpu(fn, 5, 20)) if quick else time_gpu
    return (lambda fn: time_cpu(fn, 2, 5, 0.2)) if quick else time_cpu


# -- implementations and measuring ---------------------------------------------------------------

@dataclasses.dataclass
class Impl:
    name: str
    fn: Callable[[], Any]
    role: str = "peer"  # "ours" | "peer" (same function as ours) | "baseline" (not the same function)
    group: str = ""  # peers of one group compete; the group's best is what we compare against
    check: bool = True  # compare the output with ours (off for baselines computing another function)


def first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:240]


def measure(impls: Iterable[Impl], timer, device: torch.device, reference: torch.Tensor | None = None,
            results: dict[str, dict] | None = None) -> dict[str, dict]:
    """{name: {"ms", "role", "group", "rel_err_vs_ours"} or {"error"}}. The output of the "ours"
    impl (or `reference`, ours' output from an earlier call) is what the others are checked
    against; ours must come first. Adds to `results` when given."""
    results = {} if results is None else results
    for impl in impls:
        entry: dict[str, Any] = {"role": impl.role, "group": impl.group}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = first_tensor(impl.fn())
                synchronize(device)
                if impl.role == "ours":
                    reference = out
                elif impl.check and reference is not None:
                    err = rel_err(out, reference)
                    entry["rel_err_vs_ours"] = err
                    if not math.isfinite(err) or err > MATCH_TOL:
                        entry["mismatch"] = True
                del out
                entry["ms"] = timer(impl.fn)
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot run is recorded, not fatal
            entry["error"] = short_error(exc)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results[impl.name] = entry
    return results


def ok(entry: dict | None) -> bool:
    return entry is not None and "ms" in entry and not entry.get("mismatch")


def best(results: dict[str, dict], group: str) -> tuple[str | None, float | None]:
    """The fastest valid implementation of a group: (name, ms) or (None, None)."""
    cands = [(e["ms"], n) for n, e in results.items() if e.get("group") == group and ok(e)]
    if not cands:
        return None, None
    ms, name = min(cands)
    return name, ms


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


# -- SDPA: the best backend torch has for these inputs -------------------------------------------

def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def repeat_kv(t: torch.Tensor, group: int) -> torch.Tensor:
    """(B, Hk, L, D) -> (B, Hk * group, L, D), as transformers' repeat_kv materializes it."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def sdpa_variants(device: torch.device, gqa: bool, masked: bool) -> list[tuple[str, str | None, bool]]:
    """(label, pinned backend or None = torch's own choice, use enable_gqa). On CUDA every backend
    is tried (the ones that refuse the inputs drop out); on CPU only torch's choice."""
    gqa_modes = [True, False] if gqa else [False]
    if device.type != "cuda":
        backends: list[str | None] = [None]
    elif masked:
        backends = [None, "efficient", "cudnn"]
    else:
        backends = [None, "flash", "cudnn", "efficient"]
    out = []
    for backend in backends:
        for use_gqa in gqa_modes:
            label = f"{backend or 'auto'}{',gqa' if use_gqa else (',repeat_kv' if gqa else '')}"
            out.append((label, backend, use_gqa))
    return out


def sdpa_call(q, k, v, *, backend: str | None, use_gqa: bool, attn_mask=None, is_causal=False, scale=None):
    """SDPA on (B, H, L, D) tensors, GQA by enable_gqa or by repeating k/v; optionally pinned to one
    backend (raises when that backend cannot run the inputs)."""
    group = q.shape[1] // k.shape[1]
    if not use_gqa:
        k, v = repeat_kv(k, group), repeat_kv(v, group)
    kwargs = {"attn_mask": attn_mask, "is_causal": is_causal, "scale": scale}
    if use_gqa and group > 1:
        kwargs["enable_gqa"] = True
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_sdpa_backends()[backend]]):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


# -- budget, output ------------------------------------------------------------------------------

class Budget:
    """Wall-clock budget for a sweep: cases are skipped (and reported so) once it is spent."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.monotonic()

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=None,
                   help="JSON path (file.json) or directory. Default on a GPU: "
                        "benchmarks/results/<device-slug>/; on CPU nothing is written unless --out is given.")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (results so far are kept)")
    p.add_argument("--compile", action="store_true",
                   help="on CPU, also time the torch.compile'd peers (slow to compile on CPU; always on with CUDA)")
    p.add_argument("--cpu", action="store_true", help="run the CPU sweep even when CUDA is available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="override the dtype(s) of the sweep (default: the benchmark's own)")
    return p.parse_args(argv)


def json_path(args: argparse.Namespace, name: str, info: dict, device: torch.device) -> Path | None:
    if args.no_json:
        return None
    if args.out:
        out = Path(args.out)
        return out if out.suffix == ".json" else out / f"{name}.json"
    if device.type == "cuda":
        return RESULTS_DIR / info["slug"] / f"{name}.json"
    return None  # CPU results are not written unless asked for (--out)


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def new_payload(name: str, device: torch.device, info: dict, config: dict) -> dict:
    return {
        "benchmark": name,
        "device": info,
        "backend": "triton" if device.type == "cuda" else "torch path (CPU)",
        "timing": ("triton.testing.do_bench (CUDA events, L2 flushed, median)" if device.type == "cuda"
                   else "time.perf_counter, median of repeats after a warm-up"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config,
        "cases": [],
        "targets": [],
    }


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:.3f}" if ms < 100 else f"{ms:.1f}")


def fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "-+-".join("-" * w for w in widths)
    print(f"\n{title}")
    print(" | ".join(h.ljust(w) for h, w in zip(cells[0], widths)))
    print(line)
    for r in cells[1:]:
        print(" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    sys.stdout.flush()


def target_entry(name: str, case: str, value: float | None, op: str, threshold: float, what: str) -> dict:
    """A target check from measured numbers: op '>=' (speedup) or '<=' (time fraction)."""
    if value is None:
        met = None
    else:
        met = value >= threshold if op == ">=" else value <= threshold
    return {"target": name, "case": case, "measured": value, "op": op, "threshold": threshold,
            "what": what, "met": met}


def print_targets(targets: list[dict], device: torch.device) -> None:
    print("\nTargets (set for the Triton kernels on an H100; checked against the numbers measured above):")
    for t in targets:
        status = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        print(f"  {t['target']}: {t['what']} = {value} (target {t['op']} {t['threshold']}) -> {status}"
              f"  [{t['case']}]")
    if device.type != "cuda":
        print("  (CPU run: these compare the torch path with the same peers on CPU; the targets are for the "
              "Triton kernel on an H100.)")
    sys.stdout.flush()


def case_record(case: str, shape: dict, results: dict[str, dict], extra: dict | None = None) -> dict:
    rec = {"case": case, "shape": shape, "results": results}
    if extra:
        rec.update(extra)
    return rec
