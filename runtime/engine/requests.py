"""Checking what a caller hands the engine: prompt ids, TMRoPE positions, embeddings. Every bad
input is a ValueError naming it, raised before anything changes."""
from __future__ import annotations

import operator
from typing import Iterable, Optional

import torch

from omni_kernels import rope_index

__all__ = ["as_id_list", "make_positions", "check_embeds", "positive_int"]


def positive_int(name: str, v, allow_none: bool = False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {v!r}")
    return v


def as_id_list(name: str, ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() > 2 or (
                ids.dim() == 2 and ids.shape[0] != 1):
            raise ValueError(f"{name} must be a 1-D integer tensor (or a list of ints), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        ids = ids.reshape(-1).tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"{name} must be a sequence of int token ids, got {type(ids).__name__}")
    out = []
    for t in ids:
        if isinstance(t, bool):
            raise ValueError(f"{name} must contain int token ids, not bools")
        try:
            t = operator.index(t)
        except TypeError:
            raise ValueError(f"{name} must contain only int token ids, got a {type(t).__name__}") from None
        if t < 0:
            raise ValueError(f"{name} has a negative token id {t}")
        out.append(t)
    return out


def make_positions(ids: list[int], positions, max_position: int) -> torch.Tensor:
    """(3, n) int64 CPU positions: the given ones (checked), or text positions continuing from
    max_position + 1 on all axes (TMRoPE's rule for text and audio tokens)."""
    n = len(ids)
    if positions is None:
        if max_position < 0:  # rope_index's text branch: 0..n-1 on all axes
            return rope_index(torch.tensor([ids], dtype=torch.long))[0][:, 0, :]
        return (max_position + 1 + torch.arange(n, dtype=torch.long)).expand(3, n).clone()
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a tensor of shape (3, {n}), got {type(positions).__name__}")
    if positions.dim() == 3 and positions.shape[1] == 1:
        positions = positions[:, 0]
    if tuple(positions.shape) != (3, n):
        raise ValueError(f"positions must have shape (3, {n}) (t, h, w per token), got {tuple(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"positions must hold integers, got {positions.dtype}")
    positions = positions.detach().to("cpu", torch.long)
    if n and int(positions.min()) < 0:
        raise ValueError("positions must be non-negative")
    return positions


def check_embeds(embeds, n: int, width: int, device, dtype, name: str = "inputs_embeds",
                 check_finite: bool = True) -> Optional[torch.Tensor]:
    """Shape / dtype checks; check_finite reads the values on the host (prompts only: a per-step
    feed must not synchronise)."""
    if embeds is None:
        return None
    if not isinstance(embeds, torch.Tensor) or embeds.dim() not in (1, 2, 3):
        raise ValueError(f"{name} must be a ({n}, {width}) tensor")
    if embeds.dim() == 3:
        if embeds.shape[0] != 1:
            raise ValueError(f"{name} must be ({n}, {width}) for one sequence, got {tuple(embeds.shape)}")
        embeds = embeds[0]
    if embeds.dim() == 1:
        embeds = embeds[None]
    if tuple(embeds.shape) != (n, width):
        raise ValueError(f"{name} must have shape ({n}, {width}), got {tuple(embeds.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {embeds.dtype}")
    if check_finite and not bool(torch.isfinite(embeds).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return embeds.detach().to(device, dtype)
