"""The command-line tools' one rule for errors (omni-run, omni-bench, omni-serve): a user's mistake
-- a bad argument, a missing or unreadable file, media that cannot be decoded, a request the model
cannot take (the runtime raises ValueError naming it) -- prints `PROG: error: message` and exits
with status 2, never a traceback; Ctrl-C prints `PROG: error: interrupted` and exits 130. Only
`sys` is imported at the top: the tools' --help and argument errors stay torch-free."""
from __future__ import annotations

import sys
from typing import Callable

__all__ = ["EXIT_USAGE", "EXIT_INTERRUPTED", "USER_ERRORS", "print_error", "run_guarded", "resolve_device"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# (the tools' UsageErrors are ValueErrors)
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


def print_error(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def run_guarded(prog: str, fn: Callable):
    """(0, fn()), or (the exit status, None) after printing the error as above."""
    try:
        return 0, fn()
    except KeyboardInterrupt:
        print_error(prog, "interrupted")
        return EXIT_INTERRUPTED, None
    except USER_ERRORS as e:
        print_error(prog, str(e).strip() or type(e).__name__)
        return EXIT_USAGE, None


def resolve_device(name):
    """--device as the tools take it: None -> cuda when available, else cpu; a bad name or CUDA
    asked for on a machine without it -> ValueError naming --device."""
    import torch

    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"invalid --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device
