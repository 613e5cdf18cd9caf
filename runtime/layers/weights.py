"""Weight adoption: build a module without allocating its parameters, then take the checkpoint's
tensors as they are (no second copy), with one error listing every mismatch."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

__all__ = ["adopt", "build_and_adopt", "format_mismatch", "Embedding"]


class Embedding(nn.Embedding):
    """nn.Embedding that skips its random init on the meta device: there is nothing to
    initialise there, and `normal_` on meta runs through torch._refs, importing torch._dynamo
    (~1 s, ~140 MiB) on a CPU path that never compiles anything."""

    def reset_parameters(self) -> None:
        if self.weight.device.type != "meta":
            super().reset_parameters()


def format_mismatch(what: str, expected: Mapping[str, tuple], tensors: Mapping[str, torch.Tensor]) -> str | None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k}: {tuple(tensors[k].shape)} != expected {expected[k]}" for k in set(tensors) & set(expected)
                   if tuple(tensors[k].shape) != tuple(expected[k]))
    if not (missing or extra or wrong):
        return None
    parts = [f"{name} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
             for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
    return f"{what} weights do not match the config:\n  " + "\n  ".join(parts)


def adopt(model: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """load_state_dict(strict, assign) after checking names and shapes; ValueError lists all
    missing / unexpected / mis-shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problem = format_mismatch(what, expected, tensors)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(dict(tensors), strict=True, assign=True)
    return model


def build_and_adopt(build: Callable[[], nn.Module], tensors: Mapping[str, torch.Tensor], what: str,
                    device=None, dtype=None) -> nn.Module:
    """`build()` on the meta device (no memory), then adopt `tensors` (moved / cast only when
    device / dtype are given; integer tensors keep their dtype). Returns the module in eval mode
    without gradients."""
    with torch.device("meta"):
        model = build()
    if device is not None or dtype is not None:
        tensors = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in tensors.items()}
    return adopt(model, tensors, what).eval().requires_grad_(False)
