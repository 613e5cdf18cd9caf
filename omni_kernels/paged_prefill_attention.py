"""Public op: chunked-prefill / streaming-input attention over the paged KV cache, TMRoPE on Q
inside the kernel.

    out = paged_prefill_attention(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q,
                                  seq_lens, mrope_section=[16, 24, 24])

q (N, Hq, D): the new tokens of a variable-length batch, NOT rotated (any token/head strides,
contiguous last dim); positions (3, N): their t/h/w TMRoPE positions. cu_seqlens_q (B+1,) int32:
boundaries of each sequence's new tokens in q. seq_lens (B,) int32: cached tokens per sequence
INCLUDING the new ones, whose rotated K and V are already stored in key_cache / value_cache
(num_blocks, page_size, Hk, D) at the pages block_tables (B, max_blocks) int32 lists. New token i
of sequence b sits at cache index context_len_b + i (context_len = seq_len - q_len) and attends
to every key j <= context_len_b + i: the whole cached prefix, causal inside the new chunk. A
sequence may have 0 new tokens. Returns (N, Hq, D) in q's dtype.

`max_seqlen_q` (a host int >= every q_len) sizes the grid; None reads it from cu_seqlens_q (one
host read). Value checks: see `omni_kernels.paged_attention`.
"""
import functools

import torch

from . import backend
from .checks import FLOAT_DTYPES, check_finite_positive, check_tensor
from .paged_attention import (INDEX_DTYPES, check_cache, check_table_values, check_tables, gather_kv,
                              values_checkable)
from .rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq


@functools.lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return rope_inv_freq(head_dim, theta, device)


@torch.library.custom_op("omni_kernels::paged_prefill_attention", mutates_args=())
def _paged_prefill_attention_op(q: torch.Tensor, positions: torch.Tensor, key_cache: torch.Tensor,
                                value_cache: torch.Tensor, block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                seq_lens: torch.Tensor, max_seqlen_q: int, mrope_section: list[int],
                                rope_theta: float, scale: float) -> torch.Tensor:
    inv_freq = _inv_freq(q.shape[-1], float(rope_theta), q.device)
    if backend.use_triton(q.device):
        from .kernels import paged_prefill_attention as kernel

        compute = backend.kernel_dtype(q.dtype)
        out = kernel.launch(q.to(compute), positions, key_cache.to(compute), value_cache.to(compute), block_tables,
                            cu_seqlens_q, seq_lens, inv_freq, max_seqlen_q, mrope_section, scale)
        return out.to(q.dtype)
    return _torch_path(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, inv_freq,
                       mrope_section, scale)


@_paged_prefill_attention_op.register_fake
def _(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, max_seqlen_q, mrope_section,
      rope_theta, scale):
    return q.new_empty(q.shape)


def _torch_path(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, inv_freq,
                mrope_section, scale):
    """Rotate q as transformers does (fp32, cast back); per sequence gather its K/V through the block
    table and run SDPA with the prefix-plus-causal mask."""
    cos, sin = mrope_cos_sin(positions, inv_freq, mrope_section)
    q_rot = apply_rotate_half(q, cos, sin)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = cu_seqlens_q.tolist()
    for b, (start, end, length) in enumerate(zip(bounds[:-1], bounds[1:], seq_lens.tolist())):
        if end == start:
            continue
        k = gather_kv(key_cache, block_tables[b], length).transpose(0, 1)  # (Hk, L, D)
        v = gather_kv(value_cache, block_tables[b], length).transpose(0, 1)
        context = length - (end - start)
        rows = torch.arange(context, length, device=q.device)
        visible = torch.arange(length, device=q.device)[None, :] <= rows[:, None]
        # 4-D inputs: SDPA's fast CPU kernels take (B, H, L, D); 3-D falls back to the math path.
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            q_rot[None, start:end].transpose(1, 2), k[None], v[None], attn_mask=visible, scale=scale,
            enable_gqa=True,
        )[0].transpose(0, 1)
    return out


def paged_prefill_attention(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, *,
                            mrope_section, rope_theta: float = 1e6, scale: float | None = None,
                            max_seqlen_q: int | None = None):
    """See the module docstring."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    device = q.device
    n_tokens, _, head_dim = q.shape
    if n_tokens == 0:
        raise ValueError("q is empty: paged_prefill_attention needs at least one new token")
    num_blocks, page_size, _ = check_cache(q, key_cache, value_cache)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary, got {head_dim}")
    check_tensor("positions", positions, ndim=2, dtypes=INDEX_DTYPES, device=device)
    if positions.shape != (3, n_tokens):
        raise ValueError(f"positions must be (3, N={n_tokens}), got {tuple(positions.shape)}")
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=INDEX_DTYPES, device=device)
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 1:
        raise ValueError(f"cu_seqlens_q needs at least 2 entries (0 and N): empty batch, got {cu_seqlens_q.shape[0]}")
    block_tables, seq_lens = check_tables(block_tables, seq_lens, batch, device)
    section = [int(s) for s in mrope_section]
    if len(section) != 3 or min(section) < 0 or sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {list(mrope_section)} must be 3 non-negative ints summing to "
                         f"head_dim/2 = {head_dim // 2}")
    check_finite_positive("rope_theta", rope_theta)
    scale = head_dim ** -0.5 if scale is None else scale
    check_finite_positive("scale", scale)
    if max_seqlen_q is not None and (not isinstance(max_seqlen_q, int) or max_seqlen_q < 1):
        raise ValueError(f"max_seqlen_q must be a positive int, got {max_seqlen_q!r}")
    cu_seqlens_q = cu_seqlens_q.to(torch.int32).contiguous()
    if values_checkable(device):
        if int(cu_seqlens_q[0]) != 0 or int(cu_seqlens_q[-1]) != n_tokens:
            raise ValueError(f"cu_seqlens_q must start at 0 and end at N={n_tokens}, got {cu_seqlens_q.tolist()}")
        q_lens = cu_seqlens_q.diff()
        if bool((q_lens < 0).any()):
            raise ValueError(f"cu_seqlens_q must be non-decreasing, got {cu_seqlens_q.tolist()}")
        if bool((q_lens > seq_lens).any()):
            raise ValueError(f"a sequence has more new tokens (cu_seqlens_q diffs {q_lens.tolist()}) than "
                             f"cached tokens (seq_lens {seq_lens.tolist()}); seq_lens must include the new tokens")
        check_table_values(block_tables, seq_lens, num_blocks, page_size, min_len=0)
        longest = int(q_lens.max())
        if max_seqlen_q is not None and max_seqlen_q < longest:
            raise ValueError(f"max_seqlen_q {max_seqlen_q} is below the longest chunk {longest}")
        max_seqlen_q = max_seqlen_q or longest
    elif max_seqlen_q is None:
        max_seqlen_q = int(cu_seqlens_q.diff().max())
    return _paged_prefill_attention_op(q, positions.to(torch.int64).contiguous(), key_cache, value_cache, block_tables,
                                       cu_seqlens_q, seq_lens, int(max_seqlen_q), section, float(rope_theta),
                                       float(scale))
