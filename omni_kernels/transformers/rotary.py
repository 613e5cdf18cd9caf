"""The rotary modules (text M-RoPE, Token2Wav DiT): their cos/sin, unchanged, plus what they came from.

In transformers 5.x a model computes (cos, sin) once and hands them to every layer, whose
attention rotates q and k with them. Our kernels rotate inside and need the position ids instead,
so the replaced rotary forward returns a `RotaryTables`: the very (cos, sin) tuple the original
returned, carrying the position ids, rope theta and mrope_section -- only when the module is a
plain default RoPE whose frequencies are exactly the ones our kernels compute. Anything else (a
scaled or dynamic RoPE, frequencies cast to bf16) returns the plain tuple, and the attention
layers fall back to transformers' own rotation.
"""
import torch

from ..rotary import rope_inv_freq
from .serving import memo


class RotaryTables(tuple):
    """(cos, sin) as the rotary module returned them, with `position_ids` ((3, B, L) for M-RoPE,
    (B, L) for the DiT), `rope_theta` and `mrope_section` (None for the DiT's 1-D RoPE)."""

    def __new__(cls, cos, sin, position_ids, rope_theta: float, mrope_section):
        tables = super().__new__(cls, (cos, sin))
        tables.position_ids, tables.rope_theta, tables.mrope_section = position_ids, rope_theta, mrope_section
        return tables


def _plain_theta(module) -> float | None:
    """rope theta when `module` is a default RoPE with our kernels' exact frequencies, else None."""
    params = getattr(module.config, "rope_parameters", None) or {}
    theta = params.get("rope_theta")
    if module.rope_type != "default" or module.attention_scaling != 1.0 or not isinstance(theta, (int, float)):
        return None
    inv_freq = module.inv_freq

    def exact() -> bool:
        ours = rope_inv_freq(2 * inv_freq.numel(), float(theta), inv_freq.device)
        return inv_freq.dtype == torch.float32 and torch.equal(inv_freq, ours)

    return float(theta) if memo.get(inv_freq, ("rope", float(theta)), exact) else None


def make_forward(original):
    def forward(self, x, position_ids):
        cos, sin = original(self, x, position_ids)
        theta = _plain_theta(self)
        if theta is None:
            return cos, sin
        section = getattr(self, "mrope_section", None)
        if section is not None:  # as the original broadcasts them: (3, B, L)
            position_ids = position_ids.expand(3, -1, -1)
            section = [int(s) for s in section]
        return RotaryTables(cos, sin, position_ids, theta, section)

    return forward
