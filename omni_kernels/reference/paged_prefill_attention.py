import torch

from ..rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq
from .paged_decode_attention import gather_pages


def paged_prefill_attention_reference(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens,
                                      mrope_section, rope_theta, scale):
    """New token i of sequence b (cache index ctx + i, ctx = seq_len - q_len) attends to cached keys
    j <= ctx + i: softmax(rot(q) k^T * scale + mask) v in fp32. Returns (N, Hq, D) in q's dtype."""
    inv_freq = rope_inv_freq(q.shape[-1], rope_theta)
    cos, sin = mrope_cos_sin(positions, inv_freq, mrope_section)
    q_rot = apply_rotate_half(q.float(), cos, sin)
    group = q.shape[1] // key_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32)
    bounds = cu_seqlens_q.tolist()
    for b, (start, end, length) in enumerate(zip(bounds[:-1], bounds[1:], seq_lens.tolist())):
        context = length - (end - start)
        k = gather_pages(key_cache, block_tables[b], length).float().repeat_interleave(group, 1)  # (L, Hq, D)
        v = gather_pages(value_cache, block_tables[b], length).float().repeat_interleave(group, 1)
        scores = torch.einsum("ihd,lhd->hil", q_rot[start:end], k) * scale
        visible = torch.arange(length)[None, :] <= (context + torch.arange(end - start))[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out[start:end] = torch.einsum("hil,lhd->ihd", probs, v)
    return out.to(q.dtype)
