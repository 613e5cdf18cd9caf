"""Shared benchmark machinery: the model shapes, the command line, the run context (device,
timer, budget, JSON path), the sweep loop over cases, timing (CUDA events through
triton.testing.do_bench on a GPU, a host clock on CPU; warm-up, median of repeats), the device
description and copy bandwidth, the best-of SDPA backends, JSON output, table printing and the
CPU pytest-benchmark test every bench file carries.

Every implementation a benchmark times is an `Impl`: a zero-argument callable returning the
attention output (or a tuple whose first element is it). `measure` calls each once (compiling /
warming it), checks its output against ours (rel. error, so a wrong mask or a wrong function never
counts as a fast peer), then times it. Failures (an SDPA backend that refuses the inputs, an
out-of-memory) are recorded per implementation, never fatal.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import functools
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


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how shapes and configs name a dtype in the JSON."""
    return str(dtype).replace("torch.", "")


# -- model shapes (Qwen2.5-Omni 7B, see /work/shared/NOTES.md): what the GPU sweeps time ----------

Heads = collections.namedtuple("Heads", "hq hk d")  # query heads, kv heads, head_dim

THINKER = Heads(28, 4, 128)       # the Thinker LLM (GQA 7:1)
THINKER_LAYERS = 28               # copy_blocks copies a block in every layer
MROPE_SECTION = (16, 24, 24)      # TMRoPE: frequencies rotated by t, h, w positions
ROPE_THETA = 1e6
AUDIO = Heads(20, 20, 64)         # audio encoder
VISION = Heads(16, 16, 80)        # vision encoder
DIT = Heads(16, 16, 64)           # Token2Wav DiT
DIT_BATCH = 2                     # classifier-free guidance: every DiT call runs at batch 2
DIT_BLOCK = 24                    # mel frames per attention block
DIT_ROPE_THETA = 10000.0
PAGES = (16, 256)                 # paged KV cache page sizes (vLLM's default and a large one)


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


def failed(results: dict[str, dict]) -> int:
    """How many implementations of a case errored or computed another function."""
    return sum(1 for e in results.values() if "error" in e or e.get("mismatch"))


# -- the device's copy bandwidth (the bar of the memory-bound ops) ------------------------------

GPU_COPY_BYTES = 1 << 30
CPU_COPY_BYTES = 64 << 20


def filled(nbytes: int, device: torch.device) -> torch.Tensor:
    """nbytes of random bf16 (never zeros: see METHOD.md)."""
    return torch.randn(max(1, nbytes // 2), dtype=torch.bfloat16, device=device)


def gbps(nbytes: float, ms: float | None) -> float | None:
    return None if ms is None or ms <= 0 else nbytes / ms / 1e6


def copy_bandwidth(device: torch.device, timer, nbytes: int | None = None) -> dict:
    """A large device-to-device `dst.copy_(src)`: {"bytes" (read + written), "ms", "gbps"}."""
    nbytes = nbytes or (GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES)
    src = filled(nbytes, device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"bytes": moved, "ms": ms, "gbps": gbps(moved, ms), "how": "dst.copy_(src), contiguous, "
            f"{nbytes >> 20} MiB each; bandwidth counts bytes read + written"}


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


def _dtype_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown dtype(s) {unknown or text!r}; choose from {sorted(DTYPES)}")
    return names


def int_list(text: str) -> list[int]:
    """"1,4,16" -> [1, 4, 16] (comma-separated command-line lists)."""
    return [int(x) for x in text.split(",")]


def parser(description: str, *, compile_flag: bool = True, dtype_list: bool = False,
           quick_help: str = "fewer shapes and shorter timing") -> argparse.ArgumentParser:
    """The flags every benchmark takes (run_gpu.sh passes --out, --budget-s and --quick to each);
    a benchmark adds its own to the parser returned. dtype_list: --dtype takes a comma-separated
    list (args.dtype is then a list of names, or None)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=None,
                   help="JSON path (file.json) or directory. Default on a GPU: "
                        "benchmarks/results/<device-slug>/; on CPU nothing is written unless --out is given.")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (results so far are kept)")
    if compile_flag:
        p.add_argument("--compile", action="store_true",
                       help="on CPU, also time the torch.compile'd peers (slow to compile on CPU; always on with CUDA)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    if dtype_list:
        p.add_argument("--dtype", type=_dtype_list, default=None,
                       help=f"comma-separated dtypes ({', '.join(DTYPES)}); default: the benchmark's own")
    else:
        p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                       help="override the dtype(s) of the sweep (default: the benchmark's own)")
    return p


def parse_args(description: str, argv=None) -> argparse.Namespace:
    return parser(description).parse_args(argv)


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


def fmt_us(ms: float | None) -> str:
    return "-" if ms is None else f"{ms * 1e3:.1f}"


def fmt_gbps(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt_named(ms: float | None, name: str | None, fmt: Callable[[float | None], str] = fmt_ms) -> str:
    """A time with the name of what produced it (the best peer of a case): "1.234 sdpa[flash]"."""
    return f"{fmt(ms)} {name or ''}".strip()


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


KERNEL_TARGETS = "set for the Triton kernels on an H100"


def print_targets(targets: list[dict], device: torch.device, origin: str = KERNEL_TARGETS) -> None:
    """origin: where the targets come from; for kernel targets, a CPU run says they are not for it."""
    print(f"\nTargets ({origin}; checked against the numbers measured above):")
    for t in targets:
        status = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        print(f"  {t['target']}: {t['what']} = {value} (target {t['op']} {t['threshold']}) -> {status}"
              f"  [{t['case']}]")
    if device.type != "cuda" and origin == KERNEL_TARGETS:
        print("  (CPU run: these compare the torch path with the same peers on CPU; the targets are for the "
              "Triton kernel on an H100.)")
    sys.stdout.flush()


def case_record(case: str, shape: dict, results: dict[str, dict], extra: dict | None = None) -> dict:
    rec = {"case": case, "shape": shape, "results": results}
    if extra:
        rec.update(extra)
    return rec


# -- one run: context, the sweep over cases, the closing table -------------------------------------

@dataclasses.dataclass
class Run:
    """What every benchmark's main() sets up first: its arguments, the device (CUDA unless --cpu
    or none is there), the device description, the timer, the case budget and the JSON path."""

    name: str
    args: argparse.Namespace
    device: torch.device
    info: dict
    timer: Callable[[Callable[[], Any]], float]
    budget: Budget
    path: Path | None

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def dtype(self, gpu: torch.dtype = torch.bfloat16, cpu: torch.dtype = torch.float32) -> torch.dtype:
        """--dtype, else the benchmark's default for this device."""
        return DTYPES[self.args.dtype] if self.args.dtype else (gpu if self.gpu else cpu)

    def banner(self, detail: str) -> None:
        versions = ", ".join(f"{k} {self.info[k]}" for k in ("torch", "transformers", "triton") if k in self.info)
        print(f"[{self.name}] device: {self.info['name']}; {versions}; {detail}")


def start(name: str, args: argparse.Namespace, no_cuda: str | None = None) -> Run:
    """The run context; its budget starts now. Without CUDA, says that CPU numbers time the torch
    path (`no_cuda` replaces the message)."""
    device = torch.device("cpu") if args.cpu else pick_device()
    if device.type != "cuda":
        print(no_cuda or no_cuda_message(name))
    info = device_info(device)
    return Run(name, args, device, info, timer_for(device, args.quick), Budget(args.budget_s),
               json_path(args, name, info, device))


@dataclasses.dataclass
class Case:
    """One case of a sweep. run() returns its record (or several: one op timed two ways); order
    sorts its rows in the table (default: the order the cases are given, which is the run order);
    skip() returns why not to run it (e.g. it does not fit in memory), or None; tags go into the
    record written when it is skipped or fails (e.g. its dtype)."""

    label: str
    run: Callable[[], dict | list[dict]]
    order: Any = None
    skip: Callable[[], str | None] | None = None
    tags: dict = dataclasses.field(default_factory=dict)


def sweep(run: Run, payload: dict, cases: Iterable[Case], row: Callable[[dict], list],
          summary: Callable[[dict], str]) -> list[list]:
    """Run the cases in order until the budget is spent (the rest are recorded as skipped), each
    failure recorded and the sweep kept going, the JSON rewritten after every case (a run killed
    by its timeout keeps what it measured). Returns the table rows (row(record)), sorted by order;
    prints summary(record) per record as it goes."""
    rows = []
    for index, case in enumerate(cases):
        why = "budget" if run.budget.spent() else (case.skip() if case.skip else None)
        if why:
            shown = f"budget of {run.args.budget_s:.0f} s spent" if why == "budget" else why
            print(f"  {case.label}: skipped ({shown})")
            payload["cases"].append({"case": case.label, **case.tags, "skipped": why})
            continue
        try:
            records = case.run()
        except Exception as exc:  # noqa: BLE001 -- keep the sweep going, record the failure
            records = {"case": case.label, **case.tags, "error": short_error(exc)}
            print(f"  {case.label}: FAILED {records['error']}")
        records = records if isinstance(records, list) else [records]
        for j, rec in enumerate(records):
            if "results" in rec:
                rows.append(((index if case.order is None else case.order, j), row(rec)))
                label = rec["case"] if len(records) > 1 else case.label
                print(f"  {label}: {summary(rec)} [{run.budget.elapsed():.0f} s]")
            payload["cases"].append(rec)
        if run.gpu:  # a case's tensors are gone once it returns: give the memory back for the next
            torch.cuda.empty_cache()
        write_json(run.path, payload)
    return [r for _, r in sorted(rows, key=lambda r: r[0])]


def finish(run: Run, payload: dict, title: str, headers: list[str], rows: list[list], notes: Iterable[str] = (),
           targets_origin: str = KERNEL_TARGETS) -> dict:
    """Write the JSON, print the table, the targets (if the benchmark has any) and notes."""
    write_json(run.path, payload)
    print_table(title, headers, rows)
    if payload["targets"]:
        print_targets(payload["targets"], run.device, targets_origin)
    for note in notes:
        print(note)
    if run.path:
        print(f"\nwrote {run.path}")
    return payload


# -- pytest-benchmark (CPU, small shapes): the test every bench file carries ----------------------

@dataclasses.dataclass
class CpuCase:
    """What one pytest-benchmark case times: fns {impl: zero-argument callable}, and check(impl),
    run before timing, True when that impl's result is right (default: its output is within tol
    of the reference impl's)."""

    fns: dict[str, Callable[[], Any]]
    check: Callable[[str], bool] | None = None


def cpu_benchmark(build: Callable[[Any], "CpuCase | dict"], impls: list[str], group: str,
                  cases: dict[str, Any] | None = None, *, reference: str | None = None, unchecked=(),
                  tol: float = 1e-4, rounds: int = 5):
    """A pytest-benchmark test over cases x impls, for a bench file to assign to a test_* name:

        test_X_cpu = common.cpu_benchmark(build, ["omni_kernels", "peer"], "X {case}", CASES)

    build(case value, None without cases) -> CpuCase or {impl: fn}; built once per case (the
    impls of a case run one after the other). Before timing, each impl's result is checked
    (CpuCase.check, else rel. error < tol against `reference`, default the first impl; impls in
    `unchecked` compute another function). group is formatted with {case} (the case id)."""
    import pytest  # here, not at the top: run_gpu.sh imports this module for slugify alone

    reference = reference or impls[0]

    @functools.lru_cache(maxsize=1)
    def built(case_id: str | None) -> CpuCase:
        case = build(None if case_id is None else cases[case_id])
        return case if isinstance(case, CpuCase) else CpuCase(case)

    def run(benchmark, case_id: str | None, impl: str) -> None:
        case = built(case_id)
        fn = case.fns[impl]
        if case.check is not None:
            assert case.check(impl)
        elif impl not in unchecked:
            assert rel_err(first_tensor(fn()), first_tensor(case.fns[reference]())) < tol
        benchmark.group = group.format(case=case_id)
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)

    if cases is None:
        @pytest.mark.parametrize("impl", impls)
        def test(benchmark, impl):
            run(benchmark, None, impl)
    else:
        @pytest.mark.parametrize("impl", impls)
        @pytest.mark.parametrize("case_id", list(cases))
        def test(benchmark, case_id, impl):
            run(benchmark, case_id, impl)
    return test
