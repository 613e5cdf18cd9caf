"""omni-bench's run: load our runtime, per scenario a warm-up turn then every concurrency level,
then (our model freed) the peer one request at a time on the same prepared prompts; figures,
ratios, targets, the report text and the JSON payload. torch is imported here, never by the parser.
"""
from __future__ import annotations

import datetime
import gc
import importlib.metadata
import platform
import sys
import threading
import time

from .parser import PROG, UsageError

__all__ = ["run_bench", "Progress"]

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_PEER_REPEATS = (1, 3)  # --quick, default


class Progress:
    """Requests done, on stderr: on a terminal a tqdm bar (when installed) or one rewritten line;
    otherwise (a log file, CI) one line per stage."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.label = total, 0, enabled, ""
        self._lock = threading.Lock()
        self._tty = enabled and sys.stderr.isatty()
        self._bar = None
        if self._tty:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=PROG, unit="req", file=sys.stderr, leave=False, dynamic_ncols=True)

    def describe(self, label: str) -> None:
        self.label = label
        if self._bar is not None:
            self._bar.set_postfix_str(label)
        elif self.enabled:
            self._write("\n" if not self._tty else "")

    def step(self, _=None) -> None:
        with self._lock:
            self.done += 1
            if self._bar is not None:
                self._bar.update(1)
            elif self._tty:
                self._write("")

    def _write(self, end: str) -> None:
        start = "\r" if self._tty else ""
        sys.stderr.write(f"{start}{PROG}: {self.done}/{self.total} requests  {self.label}{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tty:
            sys.stderr.write("\n")


def _note(args, msg: str) -> None:
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {msg}\n")
        sys.stderr.flush()


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_info(torch, device) -> dict:
    info = {"type": device.type, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["name"] = f"CPU ({info['cpu']}, {info['torch_threads']} torch threads)"
    return info


def _checkpoint(args, device, dtype):
    """(path, what it is)."""
    if args.checkpoint is not None:
        return args.checkpoint, args.checkpoint
    if args.shapes == "tiny":
        from ..io.tiny_cache import default_checkpoint_dir

        return default_checkpoint_dir(), "embedded tiny checkpoint (random weights)"
    from . import shapes

    cfg = shapes.real_config(args.shapes)
    n = shapes.num_parameters(cfg)
    target = shapes.random_checkpoint_dir(args.shapes, args.seed, dtype)
    if device.type != "cuda":
        _note(args, f"warning: --shapes {args.shapes} is {n / 1e9:.1f} B parameters (~{n * 2 / 1e9:.0f} GB in "
                    f"bf16): on CPU writing and running it takes very long and needs that much memory; these "
                    f"shapes are for GPU latency runs")
    if not shapes.is_complete(target):
        _note(args, f"writing a random {args.shapes} checkpoint ({n / 1e9:.1f} B parameters) to {target} (first use)")
    path = shapes.random_checkpoint(args.shapes, args.seed, dtype, device)
    return path, f"random weights, real Qwen2.5-Omni {args.shapes.upper()} dimensions ({n / 1e9:.2f} B parameters)"


def run_bench(args, argv=None):
    """Returns (report text for stdout, JSON payload)."""
    import torch

    from ..io.progress import ProgressLine
    from ..omni import Omni
    from ..cli.guard import resolve_device
    from ..threads import apply_thread_policy
    from . import report
    from ..token2wav.process import CodecProcess
    from .load import MemoryMeter, RequestRecord, Workload, run_level, run_request
    from .scenarios import build_scenarios

    threads = apply_thread_policy(args.threads)
    device = resolve_device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = getattr(torch, _TORCH_DTYPES[dtype_name])
    path, origin = _checkpoint(args, device, dtype)
    gpu = device.type == "cuda"

    work = Workload(args.text_tokens, args.codes, args.speaker)
    levels_wanted = args.concurrency
    per_level = {c: args.requests or c for c in levels_wanted}
    # room for any synthetic prompt at the default media lengths, plus the fixed generations
    engine = dict(max_num_seqs=max(levels_wanted), max_model_len=min(32768, 4096 + args.text_tokens + args.codes))
    t0 = time.perf_counter()
    omni = Omni.from_checkpoint(path, device=device, dtype=dtype, speech=True, engine_kwargs=engine,
                                talker_engine_kwargs=dict(engine),
                                progress=None if args.quiet else ProgressLine("loading"))
    load_s = time.perf_counter() - t0
    if args.speaker not in omni.speakers:
        raise UsageError(f"unknown --speaker {args.speaker!r}; {path} has: {', '.join(omni.speakers)}")
    codec = omni.codec()
    meter = MemoryMeter(device, pids=(codec.pid,) if isinstance(codec, CodecProcess) else ())
    scenarios = build_scenarios(args.scenarios, args.media_seconds, args.seed)
    repeats = _PEER_REPEATS[0 if args.quick else 1]
    total = sum(1 + sum(per_level.values()) for _ in scenarios) + (len(scenarios) * (1 + repeats) if args.peer else 0)
    progress = Progress(total, not args.quiet)
    levels, prepared = [], {}
    try:
        for s in scenarios:
            progress.describe(f"{s.name}: warm-up")
            warm = Workload(min(work.text_tokens, 4), min(work.codes, 24), work.speaker)
            run_request(omni, s, warm, RequestRecord(-1, time.perf_counter()), args.seed)
            progress.step()
            prepared[s.name] = s.prepare(omni.thinker)
            for c in levels_wanted:
                progress.describe(f"{s.name} at {c} stream{'s' if c > 1 else ''}")
                lr = run_level(omni, s, work, c, per_level[c], args.arrival, args.seed, meter, progress.step)
                figures, timelines = report.figures_of(lr.records, lr.wall_s, lr.peak_memory_bytes)
                levels.append({"scenario": s.name, "concurrency": c, "memory": lr.memory_kind, "figures": figures,
                               "timelines": timelines})
        peer_block, peer_rows = None, []
        if args.peer:
            omni.close()
            del omni, codec
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
            from .peer import TransformersPeer

            progress.describe("loading transformers")
            peer = TransformersPeer(path, device, dtype)
            results = []
            for s in scenarios:
                progress.describe(f"{s.name}: transformers")
                records, peak = peer.run_all(prepared[s.name], work, args.seed, repeats, meter)
                for _ in range(1 + repeats):
                    progress.step()
                wall = sum(r.end - r.arrival for r in records)
                figures, timelines = report.figures_of(records, wall, peak)
                results.append({"scenario": s.name, "memory": meter.kind, "figures": figures, "timelines": timelines})
                ours = next((lv["figures"] for lv in levels if (lv["scenario"], lv["concurrency"]) == (s.name, 1)),
                            None)
                if ours is not None:
                    peer_rows.append({"scenario": s.name, "ours": ours, "peer": figures,
                                      "ratios": report.ratios(ours, figures)})
            peer_block = {"name": peer.name, "version": peer.version, "load_s": round(peer.load_s, 3),
                          "repeats": repeats, "results": results}
    finally:
        progress.close()

    targets = report.targets(gpu, levels, peer_rows, [s.name for s in scenarios])
    head = (f"{PROG}: {origin} on {_device_info(torch, device)['name']}, {dtype_name} (Token2Wav fp32); "
            f"{work.text_tokens} text tokens + {work.codes} codes per turn ({work.codes / 50:g} s of speech), "
            f"arrival {args.arrival}, requests per level: "
            + ", ".join(f"{per_level[c]} at {c}" for c in levels_wanted))
    text = [head, "", report.levels_table(levels), ""]
    if peer_block is not None:
        if peer_rows:
            text += [f"ours at concurrency 1 vs {peer_block['name']} {peer_block['version']} (whole generate, one "
                     f"request at a time, median of {repeats}; its first audio = when generate returns):", "",
                     report.peer_table(peer_rows, peer_block["name"]), ""]
        else:
            text += [f"{peer_block['name']} ran, but no ratios: they compare with ours at concurrency 1, which "
                     f"--concurrency did not include", ""]
    text += [report.target_lines(targets, gpu), ""]

    payload = {
        "tool": PROG, "format": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [PROG, *(argv if argv is not None else sys.argv[1:])],
        "device": _device_info(torch, device),
        "versions": {"omni_runtime": _version("omni-kernels"), "torch": torch.__version__,
                     "transformers": _version("transformers"), "triton": _version("triton"),
                     "python": platform.python_version()},
        "config": {"checkpoint": str(path), "origin": origin, "shapes": None if args.checkpoint else args.shapes,
                   "dtype": dtype_name, "token2wav_dtype": "fp32", "threads": threads,
                   "scenarios": [{"name": s.name, "what": s.what, "prompt_tokens": prepared[s.name].num_tokens}
                                 for s in scenarios],
                   "concurrency": levels_wanted, "requests_per_level": {str(c): n for c, n in per_level.items()},
                   "arrival": str(args.arrival), "text_tokens": work.text_tokens, "codes": work.codes,
                   "media_seconds": args.media_seconds, "seed": args.seed, "speaker": args.speaker,
                   "peer": args.peer, "quick": args.quick, "engine": engine, "load_s": round(load_s, 3)},
        "levels": levels, "peer": peer_block,
        "comparison": [{"scenario": r["scenario"], "ours_concurrency": 1, "ratios": r["ratios"]} for r in peer_rows],
        "targets": targets,
    }
    if args.png:
        first = max((lv for lv in levels if lv["scenario"] == scenarios[0].name), key=lambda lv: lv["concurrency"])
        report.draw_timeline(args.png, first["timelines"][0],
                             f"{PROG}: {first['scenario']} at {first['concurrency']} stream(s), request 0 -- {origin}, "
                             f"{device.type} {dtype_name}")
        payload["png"] = {"path": str(args.png), "scenario": first["scenario"], "concurrency": first["concurrency"],
                          "request": 0}
    if args.json:
        report.write_json(args.json, payload)
    return "\n".join(text), payload

