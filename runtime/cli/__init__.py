"""`omni-run`: one turn from the command line (text, audio, images, video in; streamed text -- and
with --speak streamed speech -- out).

    omni-run --speak --out reply.wav           # the main job: a spoken turn on the embedded checkpoint
    omni-run --prompt "What do you hear?" --audio clip.wav --json
    omni-run --checkpoint Qwen2.5-Omni-7B --device cuda --image cat.jpg --prompt "Describe it."
    omni-run --video clip.mp4 --video-fps 1 --video-max-pixels 256*28*28 --prompt "What happens?"
    python -m omni_runtime.cli --prompt-ids 1,2,3 --max-new-tokens 8 --ignore-eos

Without --checkpoint it runs the embedded tiny checkpoint (written on first use into
$OMNI_RUNTIME_CACHE, default ~/.cache/omni_runtime): RANDOM weights -- the words are meaningless --
but the real compute path (chat template, audio/vision encoders, TMRoPE, paged KV cache, sampling).

Output: the answer streamed to stdout as it is generated, a summary line on stderr; with --json one
JSON object on stdout instead (generated ids, text, finish reason, prompt tokens, threads, timings).
--speak also writes the spoken answer (--out, 24 kHz PCM16 WAV; voice --speaker, default Chelsie)
and prints a latency table after the text: time to first text token and to first audio packet
(from the prepared prompt), real-time factor (turn time / audio duration), codes/s, DiT and vocoder
milliseconds per streamed chunk; with --json the object adds the codec codes, the dropped codes
(outside the codec's table), the packet count and those timings.
Timings: load_s (opening and loading the checkpoint), prepare_s (media decoding, features, encoders,
prompt build; with --stream-audio: everything before the end of the audio, its chunks prefilled as
they arrive), ttft_s (time to first token, counted from when all input is available: the start of
the turn, or with --stream-audio the end of the audio), decode_tokens_per_s (tokens after the first /
their time), tokens_per_s (all generated tokens / time from when all input is available).

Decoding: greedy unless --temperature / --top-k / --top-p is given; --temperature 0 is greedy (as in
vLLM and OpenAI's API). --ignore-eos generates exactly --max-new-tokens tokens. Media sizes
(--image-min/max-pixels, --video-min/max-pixels, --video-fps, --video-max-frames,
--audio-max-seconds / --keep-all-audio) override the checkpoint's preprocessor_config.json for this
run. --threads N sets torch's CPU threads (default: `omni_runtime.threads.apply_thread_policy`).

Exit status: 0 done; 2 bad input (missing files, an unsupported dtype, text that is not UTF-8, a
prompt longer than the context, NaN or empty audio, a zero-size image, an unusable cache directory,
...), printed as `omni-run: error: ...`; 130 interrupted (^C); 141 stdout (or stderr) closed while
writing to it (e.g. `omni-run ... | head -c 5`): 128 + SIGPIPE, what a shell reports for `yes | head`,
so a pipeline sees the same status as from any other program stopped by a closed pipe. The turn
stops at once (its sequence is aborted in the engine) and nothing is printed about it (the Python
docs' recipe: the closed stream is pointed at /dev/null so the interpreter's last flush cannot fail
again).

Start-up: this package imports only argparse, os and sys (`parser.py`); torch and the model modules
are imported by `run.py` when a turn runs, json only for --json or media options, the media
modules only when media is given. So `--help` and argument errors never load torch.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

from .guard import EXIT_INTERRUPTED, EXIT_USAGE, run_guarded
from .parser import DEFAULT_PROMPT, PROG, UsageError, build_parser, check_args

__all__ = ["main", "build_parser", "UsageError", "PROG", "DEFAULT_PROMPT", "EXIT_USAGE", "EXIT_INTERRUPTED",
           "EXIT_BROKEN_PIPE"]

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE (13), see the module docstring


def _silence_closed_streams() -> None:
    """After EPIPE: point the closed stream(s) at /dev/null (Python docs, "Note on SIGPIPE"), so the
    interpreter's flush at exit does not fail again and print 'Exception ignored ...'."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            continue
        except (OSError, ValueError):  # EPIPE, or already closed
            pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured in tests)
            pass


def _write_text(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _run(args) -> dict:
    check_args(args)
    from .run import run_turn

    def show(message, *_args, **_kwargs):
        # the runtime's warnings (e.g. audio truncated to chunk_length) as one-line notices
        if not args.quiet:
            sys.stderr.write(f"{PROG}: warning: {message}\n")

    with warnings.catch_warnings():
        warnings.showwarning = show
        return run_turn(args, (lambda piece: None) if args.json else _write_text)


def main(argv: Optional[list] = None) -> int:
    """Run omni-run with `argv` (default sys.argv[1:]); returns the exit status (argparse's own
    usage errors raise SystemExit(2), as argparse does)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _silence_closed_streams()
        return EXIT_BROKEN_PIPE


def _main(argv) -> int:
    if argv is not None:
        # bytes arguments (as subprocess accepts) -> str the way Python decodes sys.argv
        argv = [os.fsdecode(a) if isinstance(a, bytes) else a for a in argv]
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 with argparse's message, before any torch import
    status, result = run_guarded(PROG, lambda: _run(args))
    if status:
        return status
    if args.json:
        import json  # here, not at the top: --help and argument errors stay import-light

        sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
    else:
        if result["text"] and not result["text"].endswith("\n"):
            sys.stdout.write("\n")
        if args.speak:
            from .speak import latency_table

            sys.stdout.write(latency_table(result) + "\n")
        sys.stdout.flush()  # a closed stdout shows here, before the summary
        if not args.quiet and not args.speak:
            t = result["timings"]
            rate = t.get("decode_tokens_per_s")
            sys.stderr.write(f"{PROG}: {result['generated_tokens']} tokens ({result['finish_reason']}), prompt "
                             f"{result['prompt_tokens']} tokens; load {t['load_s']:.2f} s, ttft "
                             f"{t['ttft_s'] * 1e3:.1f} ms, " + (f"{rate:.1f} tokens/s" if rate else "decode n/a")
                             + f", threads {result['threads']}"
                             + (f"; ids {result['generated_ids']}" if not result["text"] else "") + "\n")
            sys.stderr.flush()
    sys.stdout.flush()
    return 0
