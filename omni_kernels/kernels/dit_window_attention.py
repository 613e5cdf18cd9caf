"""Block-sliding-window attention of the Token2Wav DiT, with interleaved RoPE on head 0 fused in.

Frames are grouped into blocks of `block_size`; a query in block i sees every key in blocks
i - back .. i + ahead (both directions, no causality). Each program owns BLOCK_M query rows of one
(batch, head) and visits only the KV rows its rows' block windows can reach,
[(first q block - back) * block_size, (last q block + ahead + 1) * block_size) clipped to [0, L),
so the cost is O(L * window) rather than O(L^2). Head 0 (and only head 0, as in the checkpoint)
rotates q once per program and each K tile as it is loaded; the other heads take the same code
path minus the rotation (a runtime branch on the head id, uniform across the program).
"""
import torch
import triton
import triton.language as tl

from .core import (DTYPES, LOG2E, MAX_GRID_YZ, attend_tile, dot_precision, finish_rows, load_tile,
                   partner_columns, rope_tile)


@triton.jit
def dit_window_attention_kernel(
    Q, K, V, INV_FREQ, OUT,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
    seqlen, block_size, back, ahead, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    block_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    q0 = block_m * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    partner = partner_columns(offs_d, HEAD_DIM, True)
    q_rows = offs_m < seqlen

    q_base = Q + batch * stride_qb + head * stride_qh
    q = load_tile(q_base, offs_m, stride_ql, offs_d, q_rows, d_mask)
    if head == 0:
        # Positions are the frame indices 0..L-1 on every axis: plain 1-D RoPE, interleaved pairs.
        q_p = load_tile(q_base, offs_m, stride_ql, partner, q_rows, d_mask).to(tl.float32)
        pos = offs_m.to(tl.float32)
        q = rope_tile(q.to(tl.float32), q_p, pos, pos, pos, INV_FREQ, offs_d,
                      HEAD_DIM, HEAD_DIM // 2, 0, True).to(Q.dtype.element_ty)

    # The KV rows the window of any valid row of this tile can reach.
    q_last = tl.minimum(q0 + BLOCK_M, seqlen) - 1
    q_block_first = q0 // block_size
    q_block_last = q_last // block_size
    kv_lo = tl.maximum((q_block_first - back) * block_size, 0)
    kv_hi = tl.minimum((q_block_last + ahead + 1) * block_size, seqlen)
    row_block = offs_m // block_size

    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(kv_lo, kv_hi, BLOCK_N):
        cols = n0 + offs_n
        k_cols = cols < kv_hi
        k = load_tile(k_base, cols, stride_kl, offs_d, k_cols, d_mask)
        if head == 0:
            k_p = load_tile(k_base, cols, stride_kl, partner, k_cols, d_mask).to(tl.float32)
            pos_k = cols.to(tl.float32)
            k = rope_tile(k.to(tl.float32), k_p, pos_k, pos_k, pos_k, INV_FREQ, offs_d,
                          HEAD_DIM, HEAD_DIM // 2, 0, True).to(Q.dtype.element_ty)
        v = load_tile(v_base, cols, stride_vl, offs_d, k_cols, d_mask)
        # Block difference j - i, computed from BLOCK_M + BLOCK_N divisions, not one per score.
        diff = (cols // block_size)[None, :] - row_block[:, None]
        visible = (diff >= -back) & (diff <= ahead) & k_cols[None, :]
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, visible, True, DOT_PRECISION)

    out = finish_rows(acc, l_i)
    o_ptrs = OUT + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=q_rows[:, None] & d_mask[None, :])


def pick_config(head_dim: int, dtype_name: str) -> dict:
    """Tile sizes and launch shape. The window is a few blocks of 24 frames, so KV ranges are short:
    BLOCK_N stays at or below 64 to waste little of the last, partial tile. Shared memory (AOT gate,
    sm_80/sm_90): fp16/bf16 32-64 KB, fp32 96 KB (D=64), 128 KB (D=80/128)."""
    if dtype_name == "fp32":
        # fp32 head_dim > 64 (BLOCK_D 128) at BLOCK_N 64 needs 192 KB of shared memory: over A100's 163 KB.
        block_n = 64 if head_dim <= 64 else 32
        return {"BLOCK_M": 64, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 2}
    if head_dim <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}


def kernel_meta(dtype_name: str, head_dim: int, config: dict | None = None) -> tuple[dict, dict]:
    """(constexprs, launch options): the one place both `launch` and the AOT gate get them from."""
    cfg = config or pick_config(head_dim, dtype_name)
    constexprs = {
        "HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
        "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "DOT_PRECISION": dot_precision(dtype_name),
    }
    return constexprs, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


KERNEL = dit_window_attention_kernel
# The model's calls (omni_runtime.models.dit): batch 2 (guidance), 16 heads x 64, blocks of 24
# frames, q/k/v (B, L, H*D) projections viewed as (B, H, L, D). Its layers are (back, ahead) =
# (1, 0), (0, 1) or (0, 0), and the JIT specialises ints equal to 1 as constants; the frame count
# is a runtime int too: one divisible by 16, one not. Token2Wav runs fp32; the kernel takes all three.
AOT_CONFIGS = [
    {"dtype": dtype, "frames": frames, "back": back, "ahead": ahead}
    for dtype in ("fp16", "bf16", "fp32")
    for frames in (600, 608)
    for back, ahead in ((1, 0), (0, 1), (0, 0))
]


def aot_spec(cfg: dict) -> dict:
    """For the AOT gate: `launch` as the call site runs it for cfg, on CPU tensors of the real shapes."""
    from ..aot import DIT_BATCH, DIT_BLOCK, MODELS, torch_dtype

    n_heads, _, head_dim = MODELS["dit"]
    constexprs, options = kernel_meta(cfg["dtype"], head_dim)

    def run():
        length, dtype = cfg["frames"], torch_dtype(cfg["dtype"])
        q, k, v = (torch.empty(DIT_BATCH, length, n_heads * head_dim, dtype=dtype)
                   .view(DIT_BATCH, length, n_heads, head_dim).transpose(1, 2) for _ in range(3))
        launch(q, k, v, torch.empty(head_dim // 2), DIT_BLOCK, cfg["back"], cfg["ahead"], head_dim ** -0.5)

    return {"launch": run, "constexprs": constexprs, "options": options}


def launch(q, k, v, inv_freq, block_size: int, back: int, ahead: int, scale: float, config: dict | None = None):
    """q, k, v (B, H, L, D), last-dim stride 1 -> out (B, H, L, D), contiguous.
    `config` overrides `pick_config` (tests use small tiles to cover many tile/block alignments)."""
    batch, n_heads, seqlen, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    constexprs, options = kernel_meta(DTYPES[q.dtype], head_dim, config)
    # Same masks, no int32 overflow in the kernel: a block longer than L holds all of L, and a
    # window wider than the number of blocks reaches every block either way.
    block_size = min(int(block_size), seqlen)
    n_blocks = triton.cdiv(seqlen, block_size)
    back, ahead = min(int(back), n_blocks), min(int(ahead), n_blocks)
    for b0 in range(0, batch, MAX_GRID_YZ):
        qs, ks, vs, os_ = (t[b0:b0 + MAX_GRID_YZ] for t in (q, k, v, out))
        grid = (triton.cdiv(seqlen, constexprs["BLOCK_M"]), n_heads, qs.shape[0])
        dit_window_attention_kernel[grid](
            qs, ks, vs, inv_freq, os_,
            qs.stride(0), qs.stride(1), qs.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
            vs.stride(0), vs.stride(1), vs.stride(2), os_.stride(0), os_.stride(1), os_.stride(2),
            seqlen, block_size, back, ahead, scale * LOG2E, **constexprs, **options,
        )
    return out
