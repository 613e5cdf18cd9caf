"""`omni-serve`: an OpenAI-compatible server (chat completions with text and streamed speech out) on
uvicorn. Without --checkpoint it serves the embedded tiny checkpoint (random weights).

    omni-serve                                          # http://127.0.0.1:8000, model "qwen2.5-omni-tiny"
    omni-serve --checkpoint Qwen2.5-Omni-7B --device cuda --dtype bf16 --host 0.0.0.0 --port 8000 \\
        --max-streams 8 --queue-size 32 --api-key "$KEY" --allowed-media-dir /srv/media

Shutdown: Ctrl-C or SIGTERM; running streams get GRACEFUL_SHUTDOWN_S (server.py) to finish, then
are cancelled (their turns freed). Exit status: 0 after Ctrl-C (SIGTERM ends the process by that
signal once shut down, as uvicorn does); 2 for bad options, an unusable address or checkpoint
(`omni-serve: error: ...`), checked in that order, so the options and the address fail before the
model loads. --help and option errors never import torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from ..cli.guard import resolve_device, run_guarded
from ..cli.parser import DTYPES

__all__ = ["main", "build_parser", "PROG", "API_KEY_ENV", "DEFAULT_MODEL_NAME"]

PROG = "omni-serve"
API_KEY_ENV = "OMNI_SERVE_API_KEY"
DEFAULT_MODEL_NAME = "qwen2.5-omni-tiny"  # the embedded checkpoint's name on /v1/models


def _at_least(low: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n
    return parse


def _positive(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("`", ""))
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint directory (official layout); default: the embedded tiny one (random weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Thinker / Talker dtype (default: bf16 on CUDA, "
                                                                 "fp32 on CPU; Token2Wav always fp32)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_at_least(0), default=8000, help="default 8000; 0: a free port (printed)")
    p.add_argument("--served-model-name", default=None,
                   help=f"the model id clients send (default: the checkpoint folder's name, {DEFAULT_MODEL_NAME!r} "
                        "for the embedded one)")
    p.add_argument("--max-streams", type=_at_least(1), default=8, help="turns that run at once (default 8)")
    p.add_argument("--queue-size", type=_at_least(0), default=16,
                   help="requests that may wait for a stream; beyond that: 429 at once (default 16)")
    p.add_argument("--queue-timeout", type=_positive, default=60.0,
                   help="seconds a queued request waits for a stream before a 503 (default 60)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (or set ${API_KEY_ENV})")
    p.add_argument("--allowed-media-dir", type=Path, default=None,
                   help="local media (file:// URLs, absolute paths) is read only from under this directory "
                        "(default: never)")
    p.add_argument("--max-media-mb", type=_positive, default=20.0, help="largest media item, MB (default 20)")
    p.add_argument("--max-request-mb", type=_positive, default=100.0, help="largest request body, MB (default 100)")
    p.add_argument("--talker-greedy", action="store_true",
                   help="argmax speech codes unless a request asks otherwise (default: the official sampling)")
    p.add_argument("--max-model-len", type=_at_least(1), default=None, help="the Thinker's context (prompt + answer)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run every step eagerly on CUDA")
    p.add_argument("--threads", type=_at_least(1), default=None,
                   help="torch CPU threads (default: omni_runtime.threads' policy)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning",
                   help="uvicorn's log level (default warning)")
    return p


def _options(args):
    from .options import ServeOptions

    name = args.served_model_name or (args.checkpoint.name if args.checkpoint is not None else DEFAULT_MODEL_NAME)
    return ServeOptions(model_name=name, max_streams=args.max_streams, queue_size=args.queue_size,
                        queue_timeout_s=args.queue_timeout, api_key=args.api_key or os.environ.get(API_KEY_ENV),
                        allowed_media_dir=args.allowed_media_dir, max_media_mb=args.max_media_mb,
                        max_request_mb=args.max_request_mb, talker_greedy=args.talker_greedy)


def _serve(args) -> None:
    options = _options(args)  # bad values raise before anything is loaded
    from ..threads import apply_thread_policy
    from .server import bind

    sock = bind(args.host, args.port)  # a busy address fails before the model loads
    apply_thread_policy(args.threads)
    dev = resolve_device(args.device)
    device = str(dev)
    from ..io.progress import ProgressLine
    from ..omni import Omni
    from .app import create_app
    from .server import uvicorn_server

    # the engines batch every running turn: room for max_streams sequences each
    engine_kwargs = {"max_num_seqs": options.max_streams}
    if args.no_cuda_graphs:
        engine_kwargs["cuda_graphs"] = False  # (Omni passes the switch on to the Talker and Token2Wav)
    if args.max_model_len:
        engine_kwargs["max_model_len"] = args.max_model_len
    dtype = args.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    omni = Omni.from_checkpoint(args.checkpoint, device=device, dtype=dtype, progress=ProgressLine("loading"),
                                engine_kwargs=engine_kwargs, talker_engine_kwargs={"max_num_seqs": options.max_streams})
    host, port = sock.getsockname()[:2]
    speech = f"voices {', '.join(omni.speakers)}" if omni.can_speak else "text only"
    sys.stderr.write(f"{PROG}: serving {options.model_name!r} ({speech}) on http://{host}:{port}/v1 -- "
                     f"{options.max_streams} streams, queue {options.queue_size}"
                     f"{', API key required' if options.api_key else ''}\n")
    sys.stderr.flush()
    try:
        uvicorn_server(create_app(omni, options), args.log_level).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for: here that is a normal end
        sys.stderr.write(f"{PROG}: stopped\n")
    finally:
        omni.close()  # the Token2Wav child process, if any


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)  # argparse's own errors exit 2, torch never imported
    return run_guarded(PROG, lambda: _serve(args))[0]
