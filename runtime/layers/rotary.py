"""TMRoPE tables, cached per (head_dim, theta, mrope_section, device).

Nothing here talks to the host inside a step: the inverse frequencies and the frequency -> axis
index are built once (the first call per device) and then only indexed, so a captured CUDA graph
replays `mrope_cos_sin` as pure device work. Not module buffers: `model.to(torch.bfloat16)` must
not round the frequencies.
"""
from __future__ import annotations

import functools

import torch

from omni_kernels.rotary import rope_inv_freq


@functools.lru_cache(maxsize=64)
def _tables(head_dim: int, theta: float, section: tuple[int, ...], device: torch.device):
    inv_freq = rope_inv_freq(head_dim, theta, device)
    axis = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(section)]).to(device)
    return inv_freq, axis


def mrope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, mrope_section) -> tuple[torch.Tensor, torch.Tensor]:
    """TMRoPE positions (3, N) -> fp32 (cos, sin), each (N, head_dim), exactly transformers'
    Qwen2_5OmniRotaryEmbedding + its mrope_section split (rotate-half layout)."""
    inv_freq, axis = _tables(int(head_dim), float(theta), tuple(int(s) for s in mrope_section), positions.device)
    freqs = positions.float()[axis].t() * inv_freq[None, :]  # each frequency rotates with its own axis
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
