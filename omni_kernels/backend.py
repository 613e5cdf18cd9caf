"""The one place that decides which implementation an op runs.

CUDA tensors run the Triton kernels. CPU tensors run the torch path (SDPA), unless the Triton path
is forced -- with `OMNI_KERNELS_BACKEND=triton` or `with use_backend("triton")` -- which on CPU only
works under the Triton interpreter (`TRITON_INTERPRET=1`, set before triton is imported).
"""
import contextlib
import os
import threading

import torch

_BACKENDS = ("auto", "triton", "torch")
_local = threading.local()


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _requested() -> str:
    backend = getattr(_local, "backend", None) or os.environ.get("OMNI_KERNELS_BACKEND", "auto")
    if backend not in _BACKENDS:
        raise ValueError(f"OMNI_KERNELS_BACKEND must be one of {_BACKENDS}, got {backend!r}")
    return backend


@contextlib.contextmanager
def use_backend(backend: str):
    """Force every op inside the block onto one backend: 'triton', 'torch' or 'auto'."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    previous = getattr(_local, "backend", None)
    _local.backend = backend
    try:
        yield
    finally:
        _local.backend = previous


def use_triton(device: torch.device) -> bool:
    """True when an op on `device` should launch its Triton kernel."""
    backend = _requested()
    if backend == "torch":
        return False
    if device.type == "cuda":
        return True
    if backend == "triton":
        if not interpreter_active():
            raise ValueError(
                "the Triton backend was forced for CPU tensors, but TRITON_INTERPRET=1 is not set "
                "(set it before importing omni_kernels)"
            )
        return True
    return False


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Triton kernel computes in: bf16 goes through fp32 under the interpreter,
    whose bf16 `tl.dot` returns garbage (see NOTES); on a GPU bf16 runs natively."""
    if dtype == torch.bfloat16 and interpreter_active():
        return torch.float32
    return dtype
