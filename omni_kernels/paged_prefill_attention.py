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
host read). Value checks: see `omni_kernels.paged_attention`. `validate=False` skips every check
(shapes, dtypes, devices, mrope_section, the cu_seqlens / block-table / seq_lens values) for
engine-internal calls whose metadata the engine built itself; bad inputs then give wrong results
or an arbitrary error. On CPU eager the op calls its torch path directly, not through `torch.ops`
(`backend.direct_cpu_call`).
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


# CPU flash attention that also returns the log-sum-exp (natural log, fp32, (B, H, Lq)), which
# lets the torch path merge a prefix and a causal chunk without a dense mask.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _paged_prefill_attention_impl(q: torch.Tensor, positions: torch.Tensor, key_cache: torch.Tensor,
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


_paged_prefill_attention_op = torch.library.custom_op("omni_kernels::paged_prefill_attention",
                                                      _paged_prefill_attention_impl, mutates_args=())


@_paged_prefill_attention_op.register_fake
def _(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, max_seqlen_q, mrope_section,
      rope_theta, scale):
    return q.new_empty(q.shape)


def _torch_path(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, inv_freq,
                mrope_section, scale):
    """Rotate q as transformers does (fp32, cast back); per sequence gather its K/V through the block
    table and attend (`_attend`)."""
    cos, sin = mrope_cos_sin(positions, inv_freq, mrope_section)
    q_rot = apply_rotate_half(q, cos, sin)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = cu_seqlens_q.tolist()
    for b, (start, end, length) in enumerate(zip(bounds[:-1], bounds[1:], seq_lens.tolist())):
        if end == start:
            continue
        k = gather_kv(key_cache, block_tables[b], length, "k").transpose(0, 1)[None]  # (1, Hk, L, D)
        v = gather_kv(value_cache, block_tables[b], length, "v").transpose(0, 1)[None]
        # 4-D inputs: SDPA's fast CPU kernels take (B, H, L, D); 3-D falls back to the math path.
        out[start:end] = _attend(q_rot[None, start:end].transpose(1, 2), k, v, length - (end - start),
                                 scale)[0].transpose(0, 1)
    return out


def _attend(q, k, v, context, scale):
    """q (1, Hq, n, D): the chunk at cache positions context .. context+n-1 of k/v (1, Hk, L, D).
    On CPU two flash calls -- the chunk against the prefix (all visible) and against itself (causal)
    -- merged by their log-sum-exp in fp32: no (n, L) mask, and the chunk's upper triangle is never
    computed (an 8k-token prefill in 512-token chunks ~20% faster than one SDPA with a dense mask)."""
    if _FLASH_CPU is None or not q.is_cpu:
        rows = torch.arange(context, k.shape[2], device=q.device)
        visible = torch.arange(k.shape[2], device=q.device)[None, :] <= rows[:, None]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale,
                                                                enable_gqa=True)
    chunk, lse_chunk = _FLASH_CPU(q, k[:, :, context:], v[:, :, context:], 0.0, True, scale=scale)
    if context == 0:
        return chunk
    prefix, lse_prefix = _FLASH_CPU(q, k[:, :, :context], v[:, :, :context], 0.0, False, scale=scale)
    # (e^lse_p * prefix + e^lse_c * chunk) / (e^lse_p + e^lse_c) = lerp(chunk, prefix, sigmoid(lse_p - lse_c))
    weight = torch.sigmoid(lse_prefix - lse_chunk).unsqueeze(-1)
    return torch.lerp(chunk.float(), prefix.float(), weight).to(q.dtype)


def _validate(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, mrope_section,
              rope_theta, scale, max_seqlen_q):
    """Every check; -> (block_tables, seq_lens, cu_seqlens_q, section, scale, max_seqlen_q) normalised."""
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
        # Host lists: one read per tensor instead of one per test.
        bounds, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
        if bounds[0] != 0 or bounds[-1] != n_tokens:
            raise ValueError(f"cu_seqlens_q must start at 0 and end at N={n_tokens}, got {bounds}")
        q_lens = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
        if min(q_lens) < 0:
            raise ValueError(f"cu_seqlens_q must be non-decreasing, got {bounds}")
        if any(n > length for n, length in zip(q_lens, lens)):
            raise ValueError(f"a sequence has more new tokens (cu_seqlens_q diffs {q_lens}) than "
                             f"cached tokens (seq_lens {lens}); seq_lens must include the new tokens")
        check_table_values(block_tables, seq_lens, num_blocks, page_size, min_len=0)
        longest = max(q_lens)
        if max_seqlen_q is not None and max_seqlen_q < longest:
            raise ValueError(f"max_seqlen_q {max_seqlen_q} is below the longest chunk {longest}")
        max_seqlen_q = max_seqlen_q or longest
    return block_tables, seq_lens, cu_seqlens_q, section, scale, max_seqlen_q


def paged_prefill_attention(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, *,
                            mrope_section, rope_theta: float = 1e6, scale: float | None = None,
                            max_seqlen_q: int | None = None, validate: bool = True):
    """See the module docstring (`validate=False`: trusted metadata, no checks at all)."""
    if validate:
        block_tables, seq_lens, cu_seqlens_q, section, scale, max_seqlen_q = _validate(
            q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, mrope_section, rope_theta,
            scale, max_seqlen_q)
    else:
        section = [int(s) for s in mrope_section]
        scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend.direct_cpu_call(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens):
        inv_freq = _inv_freq(q.shape[-1], float(rope_theta), q.device)
        return _torch_path(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, inv_freq,
                           section, float(scale))
    if max_seqlen_q is None:
        max_seqlen_q = int(cu_seqlens_q.diff().max())
    index = [t.to(torch.int32).contiguous() for t in (block_tables, cu_seqlens_q, seq_lens)]
    return _paged_prefill_attention_op(q, positions.to(torch.int64).contiguous(), key_cache, value_cache, *index,
                                       int(max_seqlen_q), section, float(rope_theta), float(scale))
