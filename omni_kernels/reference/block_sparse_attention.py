import torch


def block_sparse_attention_reference(q, k, v, mask, scale):
    """softmax(q k^T * scale, over the keys `mask.to_dense()` allows) v, in fp32; a row with no
    allowed key is 0. q (B, Hq, Lq, D), k/v (B, Hk, Lk, D), mask a BlockSparseMask. Returns like q."""
    group = q.shape[1] // k.shape[1]
    keys = k.float().repeat_interleave(group, 1)
    values = v.float().repeat_interleave(group, 1)
    scores = q.float() @ keys.transpose(-1, -2) * scale  # (B, Hq, Lq, Lk)
    allowed = mask.to_dense().expand_as(scores)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    probs = torch.where(allowed.any(-1, keepdim=True), probs, 0.0)  # all -inf rows: NaN -> 0
    return (probs @ values).to(q.dtype)
