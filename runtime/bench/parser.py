"""omni-bench's arguments: the parser and every check that needs no model. Imports argparse, math,
os and importlib.util only, so `--help` and argument errors never load torch."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROG", "SCENARIOS", "SHAPES", "DTYPES", "UsageError", "Arrival", "build_parser", "check_args"]

PROG = "omni-bench"
SCENARIOS = ("text", "audio", "video")  # text / audio / video + audio in; text + speech out, each
SHAPES = ("tiny", "7b", "3b")
DTYPES = ("fp32", "fp16", "bf16")
# (text tokens, codes, media seconds, concurrency levels) of the default and of --quick
DEFAULT_WORK = (32, 100, 2.0, "1,4,8")
QUICK_WORK = (6, 36, 1.0, "1,2")


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


@dataclass(frozen=True)
class Arrival:
    """When requests arrive: all at once ("burst"), or a Poisson process at `rate` requests/s
    (exponential gaps drawn from the run's seed; the first request at t = 0)."""

    kind: str
    rate: float = 0.0

    def __str__(self) -> str:
        return "burst" if self.kind == "burst" else f"poisson:{self.rate:g}"


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < x < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value!r}")
    return x


def _levels(value: str) -> list[int]:
    parts = [p for p in value.replace(" ", "").split(",") if p]
    try:
        levels = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas (e.g. 1,4,8), "
                                         f"got {value!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas (e.g. 1,4,8), got {value!r}")
    return sorted(set(levels))


def _scenarios(value: str) -> list[str]:
    names = [p for p in value.replace(" ", "").split(",") if p]
    bad = [n for n in names if n not in SCENARIOS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"must be one or more of {', '.join(SCENARIOS)} separated by commas, "
                                         f"got {value!r}")
    return [s for s in SCENARIOS if s in names]  # the fixed order, each once


def _arrival(value: str) -> Arrival:
    v = value.strip().lower()
    if v in ("burst", "all", "all-at-once"):
        return Arrival("burst")
    kind, _, rate = v.partition(":")
    if kind == "poisson" and rate:
        try:
            return Arrival("poisson", _positive_float(rate))
        except argparse.ArgumentTypeError:
            pass
    raise argparse.ArgumentTypeError(f"must be 'burst' (all at once) or 'poisson:RATE' (RATE requests/s, e.g. "
                                     f"poisson:2), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Latency benchmark of spoken turns (text + streamed speech out) on a shared Omni: "
                    "text, audio and video + audio prompts with fixed generation lengths, at several "
                    "concurrency levels, against transformers' whole generate on the same checkpoint.",
        epilog="Targets are printed as measured numbers with MET / NOT MET, never asserted. Without --checkpoint "
               "the embedded tiny checkpoint runs (random weights); --shapes 7b/3b write a random checkpoint "
               "with the real dimensions into $OMNI_RUNTIME_CACHE on first use (tens of GB: for GPU runs). "
               "Exit status: 0 done, 2 bad input, 130 interrupted.")
    w = p.add_argument_group("workload")
    w.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS), metavar="LIST",
                   help=f"comma separated, of {', '.join(SCENARIOS)} (default: all)")
    w.add_argument("--concurrency", type=_levels, default=None, metavar="LIST",
                   help=f"concurrent streams per level, e.g. 1,4,8 (default {DEFAULT_WORK[3]}; --quick "
                        f"{QUICK_WORK[3]})")
    w.add_argument("--requests", type=_positive_int, default=None, metavar="N",
                   help="requests per level (default: the level's concurrency, one per stream)")
    w.add_argument("--arrival", type=_arrival, default=Arrival("burst"), metavar="PATTERN",
                   help="'burst' (all at once, default) or 'poisson:RATE' (RATE requests/s, seeded by --seed)")
    w.add_argument("--text-tokens", type=_positive_int, default=None, metavar="T",
                   help=f"Thinker tokens per turn, stop tokens ignored (default {DEFAULT_WORK[0]}; --quick "
                        f"{QUICK_WORK[0]})")
    w.add_argument("--codes", type=_positive_int, default=None, metavar="N",
                   help=f"Talker codes per turn, stop codes ignored; 50 per second of speech (default "
                        f"{DEFAULT_WORK[1]}; --quick {QUICK_WORK[1]})")
    w.add_argument("--media-seconds", type=_positive_float, default=None, metavar="S",
                   help=f"length of the synthetic audio / video (default {DEFAULT_WORK[2]:g}; --quick "
                        f"{QUICK_WORK[2]:g})")
    w.add_argument("--speaker", default="Chelsie", metavar="NAME", help="voice (default Chelsie)")
    w.add_argument("--seed", type=int, default=0, metavar="S", help="arrivals, Talker sampling, DiT noise, media")
    w.add_argument("--quick", action="store_true", help="a tiny workload (CI smoke runs)")

    m = p.add_argument_group("model")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--shapes", choices=SHAPES, default="tiny",
                     help="tiny: the embedded tiny checkpoint (default); 7b / 3b: random weights with the real "
                          "Qwen2.5-Omni dimensions (written once, tens of GB)")
    src.add_argument("--checkpoint", metavar="DIR", help="a checkpoint directory in the official layout")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    m.add_argument("--dtype", choices=DTYPES, default=None,
                   help="Thinker / Talker dtype (default bf16 on cuda, fp32 on cpu; Token2Wav is always fp32)")
    m.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: omni_runtime.threads' policy)")
    peer = m.add_mutually_exclusive_group()
    peer.add_argument("--peer", choices=("transformers",), default=None,
                      help="also run transformers' Qwen2_5OmniForConditionalGeneration.generate (default: on "
                           "when transformers is importable)")
    peer.add_argument("--no-peer", action="store_true", help="run our runtime only")

    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="write every figure, the config, the device and per-request "
                   "event timelines as JSON")
    o.add_argument("--png", metavar="PATH", help="draw one request's timeline (text tokens, codes, DiT chunks, "
                   "packets) with matplotlib")
    o.add_argument("--quiet", action="store_true", help="no progress bar or notices on stderr")
    return p


def _check_out(flag: str, value, suffix: str) -> None:
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{flag} {value} is a directory, not a file")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {value}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{flag} {value}: directory {path.parent} is not writable")
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {value} must end in {suffix}")


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def check_args(args) -> None:
    """Every check that needs neither torch nor the checkpoint; fills in the --quick / default
    workload and resolves the peer. Raises UsageError."""
    work = QUICK_WORK if args.quick else DEFAULT_WORK
    if args.text_tokens is None:
        args.text_tokens = work[0]
    if args.codes is None:
        args.codes = work[1]
    if args.media_seconds is None:
        args.media_seconds = work[2]
    if args.concurrency is None:
        args.concurrency = _levels(work[3])
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.media_seconds < 0.5:
        # the video takes 2 frames per temporal patch at 2 fps: at least 1 s of frames
        raise UsageError(f"--media-seconds must be >= 0.5, got {args.media_seconds:g}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise UsageError(f"checkpoint directory not found: {args.checkpoint}")
    _check_out("--json", args.json, ".json")
    _check_out("--png", args.png, ".png")
    if args.png is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--png needs matplotlib (pip install matplotlib)")
    if args.no_peer:
        args.peer = None
    elif args.peer is None:
        args.peer = "transformers" if transformers_available() else None
    elif not transformers_available():
        raise UsageError("--peer transformers: transformers is not installed (pip install transformers), or "
                         "pass --no-peer")
