"""Rotary embeddings in plain torch, written to match transformers' Qwen2.5-Omni exactly.

Thinker/Talker (TMRoPE): the head_dim/2 frequencies are split by `mrope_section` into t, h and w
parts, each rotated by its own position axis, duplicated to head_dim (rotate-half convention).
DiT: 1-D RoPE with interleaved pairs (x0, x1), (x2, x3), ...
"""
import torch


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """inv_freq exactly as transformers computes it (int64 arange, then float32)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponent)


def mrope_axis_of_frequency(mrope_section, device=None) -> torch.Tensor:
    """(head_dim/2,) int64: which position axis (0=t, 1=h, 2=w) rotates each frequency."""
    return torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(list(mrope_section), device=device))


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (3, N) -> fp32 cos, sin of shape (N, head_dim)."""
    axis = mrope_axis_of_frequency(mrope_section, positions.device)
    pos = positions.float()[axis]  # (half, N): the position each frequency uses
    freqs = pos.t() * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., N, H, D) with cos/sin (N, D), computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * cos[:, None, :] + rotate_half(xf) * sin[:, None, :]).to(x.dtype)


def interleaved_cos_sin(length: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (L, D/2) fp32 of positions 0..L-1 for `apply_interleaved_rope`."""
    freqs = torch.arange(length, device=inv_freq.device, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
    return freqs.cos(), freqs.sin()


def apply_interleaved_rope(x: torch.Tensor, inv_freq: torch.Tensor, cos_sin=None) -> torch.Tensor:
    """x (..., L, D): 1-D RoPE on interleaved pairs with positions 0..L-1, in fp32, returned in x's
    dtype. cos_sin: `interleaved_cos_sin(L, inv_freq)`, when the caller keeps it."""
    cos, sin = interleaved_cos_sin(x.shape[-2], inv_freq) if cos_sin is None else cos_sin
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out = torch.empty_like(xf)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out.to(x.dtype)
