"""Input validation shared by the public ops: every bad input becomes a ValueError naming the
argument, before any kernel sees it."""
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes: Sequence[torch.dtype] | None = None,
                 device: torch.device | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; supported: {', '.join(str(d) for d in dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def check_same(name: str, value, expected, what: str) -> None:
    if value != expected:
        raise ValueError(f"{name}: {what} is {value}, expected {expected}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    # The kernels take any token/head strides but read each head vector as one contiguous row.
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dim (got strides {t.stride()}); call .contiguous()")


def check_finite_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
