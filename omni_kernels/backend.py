"""The one place that decides which implementation an op runs.

CUDA tensors run the Triton kernels. CPU tensors run the torch path (SDPA), unless the Triton path
is forced -- with `OMNI_KERNELS_BACKEND=triton` or `with use_backend("triton")` -- which on CPU only
works under the Triton interpreter (`TRITON_INTERPRET=1`, set before triton is imported).

Every public op dispatches through its `torch.library` custom op (`torch.ops.omni_kernels.*`) only
where that is needed -- CUDA, a forced Triton backend, or tracing -- see `direct_cpu_call`.
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


# Private torch probes (present in torch 2.1 .. 2.13); a missing one counts as "not tracing".
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_pre_dispatch_modes = getattr(torch._ops, "_len_torch_dispatch_stack_pre_dispatch", lambda: 0)
_functorch_level = getattr(torch._C._functorch, "maybe_current_level", lambda: None)


def _tracing() -> bool:
    """torch.compile / export set the compiling flag; make_fx, FakeTensorMode and functionalization
    push a dispatch mode (pre-dispatch tracing its own stack); vmap / grad enter a functorch level.
    None of these probes imports torch._dynamo."""
    return (torch.compiler.is_compiling() or _dispatch_modes() > 0 or _pre_dispatch_modes() > 0
            or _functorch_level() is not None)


def direct_cpu_call(*tensors) -> bool:
    """True when an op may call its CPU implementation directly instead of its custom op: every
    tensor (None skipped) a plain CPU `torch.Tensor` -- FakeTensor, functional and other subclasses
    go through the dispatcher --, the Triton backend not forced, nothing tracing. On CPU eager the
    custom-op dispatch costs ~0.1 ms a call and its first call imports torch._dynamo (~1 s)."""
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or not t.is_cpu):
            return False
    return not _tracing() and not use_triton(_CPU)


_CPU = torch.device("cpu")


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Triton kernel computes in: bf16 goes through fp32 under the interpreter,
    whose bf16 `tl.dot` returns garbage (see NOTES); on a GPU bf16 runs natively."""
    if dtype == torch.bfloat16 and interpreter_active():
        return torch.float32
    return dtype
