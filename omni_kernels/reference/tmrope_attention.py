import torch

from ..rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq


def tmrope_attention_reference(q, k, v, positions, cu_seqlens, mrope_section, rope_theta, scale):
    """softmax(rot(q) rot(k)^T * scale + causal) v per sequence, in fp32.
    Returns (out like q, rotated k like k)."""
    inv_freq = rope_inv_freq(q.shape[-1], rope_theta, q.device)
    cos, sin = mrope_cos_sin(positions, inv_freq, mrope_section)
    q_rot = apply_rotate_half(q.float(), cos, sin)
    k_rot = apply_rotate_half(k.float(), cos, sin)
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs = q_rot[start:end].transpose(0, 1)  # (Hq, L, D)
        ks = k_rot[start:end].transpose(0, 1).repeat_interleave(group, 0)
        vs = v[start:end].float().transpose(0, 1).repeat_interleave(group, 0)
        scores = qs @ ks.transpose(1, 2) * scale
        length = end - start
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        out[start:end] = (probs @ vs).transpose(0, 1)
    return out.to(q.dtype), k_rot.to(k.dtype)
