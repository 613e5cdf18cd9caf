import torch

from ..rotary import apply_interleaved_rope, rope_inv_freq


def dit_window_attention_reference(q, k, v, block_size, back, ahead, rope_theta, scale):
    """softmax(rot(q) rot(k)^T * scale + window mask) v, in fp32, for q, k, v (B, H, L, D).

    rot = 1-D RoPE on interleaved pairs at positions 0..L-1, on head 0 only (the other heads are
    not rotated). Window: frame i (block i // block_size) sees frame j iff
    -back <= j // block_size - i // block_size <= ahead. Returns out like q."""
    inv_freq = rope_inv_freq(q.shape[-1], rope_theta, q.device)
    qf, kf, vf = q.float().clone(), k.float().clone(), v.float()
    qf[:, :1] = apply_interleaved_rope(qf[:, :1], inv_freq)
    kf[:, :1] = apply_interleaved_rope(kf[:, :1], inv_freq)
    length = q.shape[-2]
    block = torch.arange(length, device=q.device) // block_size
    diff = block[None, :] - block[:, None]  # (query i, key j) -> block(j) - block(i)
    visible = (diff >= -back) & (diff <= ahead)
    scores = qf @ kf.transpose(-1, -2) * scale
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (probs @ vf).to(q.dtype)
