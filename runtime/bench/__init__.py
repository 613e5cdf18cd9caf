"""`omni-bench`: latency of spoken turns on a shared `Omni`, against transformers.

    omni-bench --quick                                  # tiny workload on the embedded checkpoint
    omni-bench --concurrency 1,4,8 --json bench.json --png timeline.png
    omni-bench --arrival poisson:2 --requests 16 --concurrency 8
    omni-bench --shapes 7b --device cuda --no-peer      # random weights, the real 7B dimensions

Scenarios (`scenarios.py`): text, audio and video + audio prompts, each answered in text + speech
with fixed lengths (stop tokens ignored: exactly --text-tokens Thinker tokens and --codes Talker
codes), synthetic media made in-process. Per scenario a warm-up turn, then each concurrency level:
that many worker threads iterating `omni.generate(...)` on one `Omni` (its engines batch them),
requests arriving all at once or as a seeded Poisson process (`load.py`). Then, our model freed,
transformers' whole `generate` on the same checkpoint and prompts, one request at a time
(`peer.py`), and the ratios against ours at concurrency 1.

Output (`report.py`, figures in `metrics.py`): a Markdown table per scenario x concurrency (first
text token and first audio packet p50/p90/p99, the gaps between packets against the audio they
carry, how many streams played without a stall, real-time factor, Thinker tokens/s and Talker
codes/s per stream and in total, DiT and vocoder ms per chunk, peak memory: CUDA max allocated on
a GPU, peak RSS on CPU), the comparison with the peer, and target lines (MET / NOT MET, measured,
never asserted). --json writes every figure with the device, versions, config and each request's
event timeline; --png draws one request's timeline. A progress bar on stderr (tqdm when
installed). --shapes 7b / 3b: random weights with the real dimensions (`shapes.py`).

Exit status: 0 done; 2 bad input (`omni-bench: error: ...`); 130 interrupted. This package
imports only the parser (argparse): --help and argument errors never load torch.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from ..cli.guard import EXIT_INTERRUPTED, EXIT_USAGE, run_guarded
from .parser import PROG, UsageError, build_parser, check_args

__all__ = ["main", "build_parser", "UsageError", "PROG", "EXIT_USAGE", "EXIT_INTERRUPTED"]


def _run(args, argv):
    check_args(args)
    from .run import run_bench

    return run_bench(args, argv)[0]


def main(argv: Optional[list] = None) -> int:
    """Run omni-bench with `argv` (default sys.argv[1:]); returns the exit status (argparse's own
    usage errors raise SystemExit(2), as argparse does)."""
    if argv is not None:
        argv = [os.fsdecode(a) if isinstance(a, bytes) else a for a in argv]
    args = build_parser().parse_args(argv)
    status, text = run_guarded(PROG, lambda: _run(args, argv))
    if status:
        return status
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    for flag, path in (("--json", args.json), ("--png", args.png)):
        if path and not args.quiet:
            sys.stderr.write(f"{PROG}: wrote {path} ({flag[2:]})\n")
    return 0
