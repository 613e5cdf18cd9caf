"""Block-sparse attention over a FlexAttention-style block mask (`omni_kernels.block_mask`).

Grid (q tiles, query heads, batch). A program owns BLOCK_M query rows, all inside one q block of
the mask (BLOCK_M divides Q_BLOCK), and visits only the kv blocks listed for that q block:

1. the full blocks, with no element mask -- only the kv-length bound, and only when Lk is not a
   multiple of KV_BLOCK (the EVEN_KV specialization drops it);
2. the partial blocks, with the element mask: causal (bottom-right aligned) and/or equal segment
   ids, and the kv-length bound. `causal` and `has_segments` are runtime flags folded into the
   mask (partial blocks are a minority of the work), which keeps the compiled variants to
   dtype x BLOCK_D x EVEN_KV for the AOT gate.

Each kv block is read as KV_BLOCK / BLOCK_N tiles, so the cost is proportional to the number of
visited blocks. The softmax is core.py's `attend_tile`; rows that see no key output 0, like
FlexAttention. The mask's B and H may be 1: they broadcast through zero strides.

Tile sizes: BLOCK_M = min(Q_BLOCK, 64), BLOCK_N = min(KV_BLOCK, 64). On a GPU the mask blocks must
be 64 or 128 (the public op checks it), so every launch uses one of the 64 x 64 configurations in
AOT_CONFIGS; the interpreter also takes 16- and 32-blocks (tiles equal to the blocks). Whether
the mask has full blocks is not a specialization: without them the launcher passes a zero count,
and the full-block loop runs zero times.
"""
import torch
import triton
import triton.language as tl

from .core import DTYPES, LOG2E, MAX_GRID_YZ, attend_tile, dot_precision, finish_rows, load_tile

BLOCK_SIZES = (16, 32, 64, 128)  # mask block sizes the kernel can run (tiles divide them)
GPU_BLOCK_SIZES = (64, 128)  # ... and on a GPU, where only the AOT_CONFIGS tiles are launched
_TILE_CAP = 64


@triton.jit
def block_sparse_attention_kernel(
    Q, K, V, OUT, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, Q_SEG, KV_SEG,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
    stride_nb, stride_nh, stride_nm, stride_fnb, stride_fnh, stride_fnm,
    stride_ib, stride_ih, stride_im, stride_fib, stride_fih, stride_fim,
    stride_sqb, stride_skb,
    q_len, kv_len, q_block, kv_block, group, qk_scale, head_dim, causal, has_segments,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_KV: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    q0 = pid_m * BLOCK_M
    row = q0 // q_block  # the mask's q block
    kv_head = head // group
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    q_rows = offs_m < q_len

    q = load_tile(Q + batch * stride_qb + head * stride_qh, offs_m, stride_ql, offs_d, q_rows, d_mask)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    tiles_per_block = kv_block // BLOCK_N

    # 1. Full blocks: every pair is allowed; only the kv-length bound when Lk % KV_BLOCK != 0.
    n_full = tl.load(FULL_NUM + batch * stride_fnb + head * stride_fnh + row * stride_fnm)
    full_list = FULL_IDX + batch * stride_fib + head * stride_fih + row * stride_fim
    for t in range(0, n_full * tiles_per_block):
        blk = tl.load(full_list + t // tiles_per_block)
        cols = blk * kv_block + (t % tiles_per_block) * BLOCK_N + offs_n
        if EVEN_KV:
            k_ok = tl.full([BLOCK_N], 1, tl.int1)  # constant true: the mask folds away
        else:
            k_ok = cols < kv_len
        k = load_tile(k_base, cols, stride_kl, offs_d, k_ok, d_mask)
        v = load_tile(v_base, cols, stride_vl, offs_d, k_ok, d_mask)
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, k_ok[None, :],
                                    not EVEN_KV, DOT_PRECISION)

    # 2. Partial blocks: element mask (causal, bottom-right aligned; equal segment ids) + bound.
    n_part = tl.load(KV_NUM + batch * stride_nb + head * stride_nh + row * stride_nm)
    part_list = KV_IDX + batch * stride_ib + head * stride_ih + row * stride_im
    # Without segments Q_SEG/KV_SEG are dummies: the loads are fully masked and the test folds to true.
    q_seg = tl.load(Q_SEG + batch * stride_sqb + offs_m, mask=q_rows & (offs_m * 0 + has_segments > 0), other=-1)
    for t in range(0, n_part * tiles_per_block):
        blk = tl.load(part_list + t // tiles_per_block)
        cols = blk * kv_block + (t % tiles_per_block) * BLOCK_N + offs_n
        if EVEN_KV:
            k_ok = tl.full([BLOCK_N], 1, tl.int1)
        else:
            k_ok = cols < kv_len
        k = load_tile(k_base, cols, stride_kl, offs_d, k_ok, d_mask)
        v = load_tile(v_base, cols, stride_vl, offs_d, k_ok, d_mask)
        kv_seg = tl.load(KV_SEG + batch * stride_skb + cols, mask=k_ok & (cols * 0 + has_segments > 0), other=-1)
        allowed = (k_ok[None, :]
                   & ((cols[None, :] <= offs_m[:, None] + (kv_len - q_len)) | (causal == 0))
                   & (q_seg[:, None] == kv_seg[None, :]))
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, allowed, True, DOT_PRECISION)

    out = finish_rows(acc, l_i)
    o_ptrs = OUT + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=q_rows[:, None] & d_mask[None, :])


def pick_config(head_dim: int, dtype_name: str, block_size=(128, 128)) -> dict:
    """Tile sizes and launch shape. Tiles divide the mask's blocks (a program follows one q block's
    list); 64 x 64 keeps the tile waste of partial blocks low and fits fp32 at D=128 on sm_80."""
    q_block, kv_block = block_size
    cfg = {"BLOCK_M": min(q_block, _TILE_CAP), "BLOCK_N": min(kv_block, _TILE_CAP), "num_warps": 4}
    if dtype_name == "fp32":
        cfg["num_stages"] = 2 if head_dim <= 64 else 1
    else:
        cfg["num_stages"] = 3
    return cfg


def kernel_meta(dtype_name: str, head_dim: int, block_size, even_kv: bool,
                config: dict | None = None) -> tuple[dict, dict]:
    """(constexprs, launch options): the one place both `launch` and the AOT gate get them from."""
    cfg = config or pick_config(head_dim, dtype_name, block_size)
    constexprs = {
        "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
        "EVEN_KV": bool(even_kv), "DOT_PRECISION": dot_precision(dtype_name),
    }
    return constexprs, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


KERNEL = block_sparse_attention_kernel
# The model's calls (omni_runtime.models.audio_encoder / vision_encoder), q/k/v viewed (1, H, L, D)
# as the call sites view them, over the masks the encoders build (omni_kernels.block_mask, blocks of
# 128): the audio encoder (20 heads x 64) over the 2-s chunks of a 30-s and a 64-s clip (1500 and
# 3200 tokens: Lk % 128 != 0 and == 0, the two EVEN_KV variants), the vision encoder (16 heads x 80)
# over its window and its full-attention mask of a 34 x 46 and a 32 x 32 patch image (1564 and
# 1024 tokens). Head dim 128 (HEAD_DIMS) has no Qwen2.5-Omni call site; it shares BLOCK_D and every
# specialisation with 80, so the vision configs stand for it.
AOT_CONFIGS = (
    [{"model": "audio", "dtype": dtype, "frames": frames} for dtype in ("fp16", "bf16", "fp32")
     for frames in (3000, 6400)]
    + [{"model": "vision", "dtype": dtype, "grid": grid, "mask": mask} for dtype in ("fp16", "bf16", "fp32")
       for grid in ((1, 34, 46), (1, 32, 32)) for mask in ("window", "full")]
)


def _aot_mask(cfg: dict):
    from ..block_mask import audio_chunk_block_mask, vision_full_block_mask, vision_window_block_mask

    if cfg["model"] == "audio":
        return audio_chunk_block_mask(torch.tensor([cfg["frames"]]), 100)[0]
    grid = torch.tensor([cfg["grid"]])
    return vision_window_block_mask(grid)[0] if cfg["mask"] == "window" else vision_full_block_mask(grid)[0]


def aot_spec(cfg: dict) -> dict:
    """For the AOT gate: `launch` as the call site runs it for cfg, on CPU tensors of the real shapes."""
    from ..aot import MODELS, torch_dtype

    n_heads, _, head_dim = MODELS[cfg["model"]]
    mask = _aot_mask(cfg)
    length = mask.seq_lengths[0]
    constexprs, options = kernel_meta(cfg["dtype"], head_dim, mask.block_size, length % mask.block_size[1] == 0)

    def run():
        q, k, v = (torch.empty(length, n_heads * head_dim, dtype=torch_dtype(cfg["dtype"]))
                   .view(length, n_heads, head_dim).transpose(0, 1)[None] for _ in range(3))
        launch(q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
               mask.q_segment_ids, mask.kv_segment_ids, mask.block_size, mask.causal, head_dim ** -0.5)

    return {"launch": run, "constexprs": constexprs, "options": options}


def _strides(t: torch.Tensor, dims: int) -> list[int]:
    """Strides of the leading `dims` dims, 0 where the size is 1 (broadcast)."""
    return [0 if t.shape[d] == 1 else t.stride(d) for d in range(dims)]


def _batch_slice(t, b0: int, n: int):
    return t if t is None or t.shape[0] == 1 else t[b0:b0 + n]


def launch(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
           q_segment_ids, kv_segment_ids, block_size, causal: bool, scale: float, config: dict | None = None):
    """q (B, Hq, Lq, D), k/v (B, Hk, Lk, D) with last-dim stride 1; mask tensors as in
    `BlockSparseMask` (int32, B and H 1 or full size, last dim of the index tensors contiguous)
    -> out (B, Hq, Lq, D), contiguous."""
    batch, n_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    q_block, kv_block = block_size
    has_segments = q_segment_ids is not None
    constexprs, options = kernel_meta(DTYPES[q.dtype], head_dim, block_size, kv_len % kv_block == 0, config)
    if q_block % constexprs["BLOCK_M"] or kv_block % constexprs["BLOCK_N"]:
        raise ValueError(f"tiles {constexprs['BLOCK_M']}x{constexprs['BLOCK_N']} must divide the mask blocks "
                         f"{block_size}")
    kv_indices = kv_indices.contiguous()
    if full_kv_num_blocks is None:  # no full blocks: a zero count, broadcast everywhere
        full_kv_num_blocks = torch.zeros(1, 1, 1, dtype=torch.int32, device=q.device)
        full_kv_indices = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=q.device)
    full_kv_indices = full_kv_indices.contiguous()
    if not has_segments:  # never read (has_segments=0 masks the loads)
        q_segment_ids = kv_segment_ids = torch.zeros(1, 1, dtype=torch.int32, device=q.device)
    else:
        q_segment_ids, kv_segment_ids = q_segment_ids.contiguous(), kv_segment_ids.contiguous()
    for b0 in range(0, batch, MAX_GRID_YZ):
        n = min(MAX_GRID_YZ, batch - b0)
        qs, ks, vs, os_ = (t[b0:b0 + n] for t in (q, k, v, out))
        num, idx, fnum, fidx, qseg, kseg = (_batch_slice(t, b0, n) for t in (
            kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, q_segment_ids, kv_segment_ids))
        grid = (triton.cdiv(q_len, constexprs["BLOCK_M"]), n_heads, n)
        block_sparse_attention_kernel[grid](
            qs, ks, vs, os_, num, idx, fnum, fidx, qseg, kseg,
            qs.stride(0), qs.stride(1), qs.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
            vs.stride(0), vs.stride(1), vs.stride(2), os_.stride(0), os_.stride(1), os_.stride(2),
            *_strides(num, 3), *_strides(fnum, 3), *_strides(idx, 3), *_strides(fidx, 3),
            *_strides(qseg, 1), *_strides(kseg, 1),
            q_len, kv_len, q_block, kv_block, n_heads // k.shape[1], scale * LOG2E,
            head_dim, int(causal), int(has_segments), **constexprs, **options,
        )
    return out
