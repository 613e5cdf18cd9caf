"""Checks and conversions shared by audio loading, resampling and log-mel features: any sample
container (tensor, numpy array, list) -> a float32 mono 1-D tensor, with ValueErrors that say what
is wrong (empty, NaN/inf, too many dims, integer PCM where floats are expected, bad sample rates)."""
from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16000  # what the audio encoder's features are computed at

__all__ = ["SAMPLE_RATE"]


def _check_sample_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number of Hz, got {sample_rate!r}")
    value = float(sample_rate)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of Hz, got {sample_rate!r}")
    if value != int(value):
        raise ValueError(f"{name} must be a whole number of Hz, got {sample_rate!r}")
    return int(value)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a numeric array: {e}") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a numeric (real) array, got dtype {arr.dtype}")
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            arr = arr.copy(order="C")
        return torch.from_numpy(arr)
    raise ValueError(f"{name} must be a torch.Tensor, numpy array or list of samples, got {type(x).__name__}")


def _check_finite_nonempty(x: torch.Tensor, name: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf sample(s)")


def _as_mono_float(x, name: str, *, allow_int: bool, allow_empty: bool = False,
                   channels_first: bool = False) -> torch.Tensor:
    """-> float32 1-D tensor (same device). 2-D input is averaged over its channel axis: axis 0
    with channels_first, else the shorter axis (axis 0 on a tie)."""
    t = _to_tensor(x, name)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real samples, got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        if not allow_int:
            raise ValueError(f"{name} must be a float waveform in [-1, 1], got dtype {t.dtype} "
                             f"(use load_audio to convert integer PCM)")
        t = _int_pcm_to_float(t)
    if t.dim() == 0 or t.dim() > 2:
        raise ValueError(f"{name} must be 1-D (samples) or 2-D (channels x samples / samples x channels), "
                         f"got shape {tuple(t.shape)}")
    if allow_empty and t.numel() == 0:
        return t.reshape(0).to(torch.float32)
    _check_finite_nonempty(t, name)
    if t.dim() == 2:
        channel_axis = 0 if channels_first or t.shape[0] <= t.shape[1] else 1
        t = t.to(torch.float32).mean(dim=channel_axis)
    return t.to(torch.float32).contiguous()


def _int_pcm_to_float(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return (t.to(torch.float32) - 128.0) / 128.0
    bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}.get(t.dtype)
    if bits is None:
        raise ValueError(f"unsupported integer sample dtype {t.dtype}")
    return (t.to(torch.float64) / float(2 ** (bits - 1))).to(torch.float32)
