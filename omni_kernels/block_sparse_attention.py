"""Public op: attention over a block-sparse mask (FlexAttention layout, see `block_mask`).

    out = block_sparse_attention(q, k, v, block_mask, scale=None)

q (B, Hq, Lq, D), k and v (B, Hk, Lk, D) -- FlexAttention's layout: any strides with stride 1 in
the last dim, Hq a multiple of Hk (GQA), D in {64, 80, 128}. `block_mask` is a
`BlockSparseMask` for (Lq, Lk) whose B and H are 1 (broadcast) or equal to q's B and Hq. Only the
listed kv blocks are read: full blocks unmasked, partial blocks with the mask's element mask
(causal, bottom-right aligned, and/or equal segment ids). Rows that see no key return 0, as in
FlexAttention. Returns (B, Hq, Lq, D), contiguous, in q's dtype.
"""
from typing import Optional

import torch

from . import backend
from .block_mask import _FULL, BlockSparseMask, block_table, element_mask
from .checks import FLOAT_DTYPES, check_finite_positive, check_last_dim_contiguous, check_tensor

HEAD_DIMS = (64, 80, 128)


def _block_sparse_attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: torch.Tensor,
                                 kv_indices: torch.Tensor, full_kv_num_blocks: Optional[torch.Tensor],
                                 full_kv_indices: Optional[torch.Tensor], q_segment_ids: Optional[torch.Tensor],
                                 kv_segment_ids: Optional[torch.Tensor], q_block: int, kv_block: int,
                                 causal: bool, scale: float) -> torch.Tensor:
    if backend.use_triton(q.device):
        from .kernels import block_sparse_attention as kernel

        compute = backend.kernel_dtype(q.dtype)
        out = kernel.launch(q.to(compute), k.to(compute), v.to(compute), kv_num_blocks, kv_indices,
                            full_kv_num_blocks, full_kv_indices, q_segment_ids, kv_segment_ids,
                            (q_block, kv_block), causal, scale)
        return out.to(q.dtype)
    return _torch_path(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
                       q_segment_ids, kv_segment_ids, (q_block, kv_block), causal, scale)


_block_sparse_attention_op = torch.library.custom_op("omni_kernels::block_sparse_attention",
                                                     _block_sparse_attention_impl, mutates_args=())


@_block_sparse_attention_op.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, q_segment_ids, kv_segment_ids,
      q_block, kv_block, causal, scale):
    return q.new_empty(q.shape)


def _torch_path(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, q_segment_ids,
                kv_segment_ids, block_size, causal, scale):
    """Per q block, SDPA over only the kv blocks it visits, with the exact element mask: cost
    O(visited blocks), like the kernel, instead of an Lq x Lk dense mask (window attention over a
    large image has ~2% density). Rows that see no key get 0 (SDPA alone gives NaN)."""
    q_block, kv_block = block_size
    batch, n_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = n_heads // kv_heads
    table = block_table(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
                        -(-kv_len // kv_block)).cpu()  # one host copy: the loop below reads it
    offsets = torch.arange(kv_block)
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    for b in range(batch):
        tb = table[b if table.shape[0] > 1 else 0]
        seg_b = slice(b, b + 1) if q_segment_ids is not None and q_segment_ids.shape[0] > 1 else slice(0, 1)
        q_seg = q_segment_ids[seg_b] if q_segment_ids is not None else None
        kv_seg = kv_segment_ids[seg_b] if kv_segment_ids is not None else None
        for hm in range(tb.shape[0]):
            # A mask with H = 1 serves every head at once; per-head masks take one head at a time.
            heads = slice(None) if tb.shape[0] == 1 else slice(hm, hm + 1)
            kv_sel = slice(None) if tb.shape[0] == 1 else slice(hm // group, hm // group + 1)
            for m in range(tb.shape[1]):
                visited = tb[hm, m].nonzero().flatten()
                if visited.numel() == 0:
                    continue
                cols = (visited[:, None] * kv_block + offsets).flatten()
                cols = cols[cols < kv_len]
                rows = torch.arange(m * q_block, min((m + 1) * q_block, q_len))
                full = tb[hm, m][cols // kv_block] == _FULL
                cols_d, rows_d = cols.to(q.device), rows.to(q.device)
                elem = element_mask(rows_d, cols_d, (q_len, kv_len), causal, q_seg, kv_seg)[0, 0]
                allowed = full.to(q.device)[None, :] | elem
                seen = allowed.any(-1, keepdim=True)
                res = torch.nn.functional.scaled_dot_product_attention(
                    q[b:b + 1, heads, rows_d], k[b:b + 1, kv_sel, cols_d], v[b:b + 1, kv_sel, cols_d],
                    attn_mask=allowed | ~seen, scale=scale, enable_gqa=True)
                out[b, heads, rows_d] = res[0].masked_fill(~seen, 0.0)
    return out


def block_sparse_attention(q, k, v, block_mask: BlockSparseMask, *, scale: float | None = None) -> torch.Tensor:
    """See the module docstring."""
    check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES)
    device = q.device
    check_tensor("k", k, ndim=4, dtypes=(q.dtype,), device=device)
    check_tensor("v", v, ndim=4, dtypes=(q.dtype,), device=device)
    batch, n_heads, q_len, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k/v {tuple(k.shape)} must be (B={batch}, Hk, Lk, D={head_dim}) to match q {tuple(q.shape)}")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if batch == 0 or n_heads == 0 or q_len == 0:
        raise ValueError(f"q is empty: shape {tuple(q.shape)}")
    if kv_len == 0:
        raise ValueError(f"k is empty: shape {tuple(k.shape)}")
    if kv_heads == 0 or n_heads % kv_heads:
        raise ValueError(f"q heads ({n_heads}) must be a multiple of k/v heads ({kv_heads})")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim (q.shape[-1]) must be one of {HEAD_DIMS}, got {head_dim}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)

    mask = block_mask
    if not isinstance(mask, BlockSparseMask):
        raise ValueError(f"block_mask must be a BlockSparseMask (use BlockSparseMask.from_flex for a "
                         f"FlexAttention BlockMask), got {type(mask).__name__}")
    if mask.seq_lengths != (q_len, kv_len):
        raise ValueError(f"block_mask.seq_lengths {mask.seq_lengths} must equal (Lq, Lk) = ({q_len}, {kv_len})")
    if mask.device != device:
        raise ValueError(f"block_mask is on {mask.device} but q is on {device}")
    if mask.kv_num_blocks.shape[0] not in (1, batch):
        raise ValueError(f"block_mask batch ({mask.kv_num_blocks.shape[0]}) must be 1 or q's batch ({batch})")
    if mask.heads not in (1, n_heads):
        raise ValueError(f"block_mask heads ({mask.heads}) must be 1 or q's heads ({n_heads})")
    if mask.has_segments and mask.q_segment_ids.shape[0] not in (1, batch):
        raise ValueError(f"block_mask.q_segment_ids batch ({mask.q_segment_ids.shape[0]}) must be 1 or "
                         f"q's batch ({batch})")
    scale = head_dim ** -0.5 if scale is None else scale
    check_finite_positive("scale", scale)
    if backend.use_triton(device):
        from .kernels.block_sparse_attention import BLOCK_SIZES, GPU_BLOCK_SIZES

        allowed = GPU_BLOCK_SIZES if device.type == "cuda" else BLOCK_SIZES
        if not all(b in allowed for b in mask.block_size):
            raise ValueError(f"block_mask.block_size {mask.block_size} is not supported by the Triton kernel on "
                             f"{device.type}: each of (Q_BLOCK, KV_BLOCK) must be one of {allowed}")
    tensors = (q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
               mask.q_segment_ids, mask.kv_segment_ids)
    # CPU eager: the implementation itself, without the custom op's dispatch (backend.direct_cpu_call).
    op = _block_sparse_attention_impl if backend.direct_cpu_call(*tensors) else _block_sparse_attention_op
    return op(*tensors, mask.block_size[0], mask.block_size[1], mask.causal, float(scale))
