"""Fused TMRoPE attention (prefill): causal, varlen (cu_seqlens), GQA, rotary inside the kernel.

Q and K are read un-rotated; each Q tile is rotated once per program and each K tile as it is
loaded, so no rotated copy of q ever exists in memory. The rotated K is also returned for the KV
cache: the diagonal KV tile of query tile m is tile m itself (BLOCK_M == BLOCK_N), so the first
query head of each GQA group writes it out -- each K row exactly once, no extra pass.
"""
import torch
import triton
import triton.language as tl

from .core import (DTYPES, LOG2E, attend_tile, dot_precision, finish_rows, load_tile, partner_columns,
                   rope_tile)


@triton.jit
def tmrope_attention_kernel(
    Q, K, V, POS, INV_FREQ, CU_SEQLENS, OUT, K_ROT,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_on, stride_oh, stride_rn, stride_rh, stride_pos,
    qk_scale, group, head_dim, section_t, section_h,
    BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    block_m = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    q0 = block_m * BLOCK
    if q0 >= seqlen:
        return
    kv_head = head // group
    offs_m = q0 + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    partner = partner_columns(offs_d, head_dim, False)
    q_rows = offs_m < seqlen

    q_base = Q + start * stride_qn + head * stride_qh
    q = load_tile(q_base, offs_m, stride_qn, offs_d, q_rows, d_mask).to(tl.float32)
    q_p = load_tile(q_base, offs_m, stride_qn, partner, q_rows, d_mask).to(tl.float32)
    pos_base = POS + start
    pt = tl.load(pos_base + offs_m, mask=q_rows, other=0).to(tl.float32)
    ph = tl.load(pos_base + stride_pos + offs_m, mask=q_rows, other=0).to(tl.float32)
    pw = tl.load(pos_base + 2 * stride_pos + offs_m, mask=q_rows, other=0).to(tl.float32)
    q = rope_tile(q, q_p, pt, ph, pw, INV_FREQ, offs_d, head_dim, section_t, section_h, False)
    q = q.to(Q.dtype.element_ty)

    k_base = K + start * stride_kn + kv_head * stride_kh
    v_base = V + start * stride_vn + kv_head * stride_vh
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)

    # Tiles strictly below the diagonal: every key is visible and in range, no masking.
    for n0 in range(0, q0, BLOCK):
        rows = n0 + offs_n
        all_rows = rows < q0
        k = load_tile(k_base, rows, stride_kn, offs_d, all_rows, d_mask).to(tl.float32)
        k_p = load_tile(k_base, rows, stride_kn, partner, all_rows, d_mask).to(tl.float32)
        kt = tl.load(pos_base + rows).to(tl.float32)
        kh = tl.load(pos_base + stride_pos + rows).to(tl.float32)
        kw = tl.load(pos_base + 2 * stride_pos + rows).to(tl.float32)
        k = rope_tile(k, k_p, kt, kh, kw, INV_FREQ, offs_d, head_dim, section_t, section_h, False)
        v = load_tile(v_base, rows, stride_vn, offs_d, all_rows, d_mask)
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k.to(Q.dtype.element_ty), v, qk_scale, all_rows[None, :],
                                    False, DOT_PRECISION)

    # The diagonal tile: causal mask, sequence end, and the rotated-K write-back.
    rows = q0 + offs_n
    k_rows = rows < seqlen
    k = load_tile(k_base, rows, stride_kn, offs_d, k_rows, d_mask).to(tl.float32)
    k_p = load_tile(k_base, rows, stride_kn, partner, k_rows, d_mask).to(tl.float32)
    kt = tl.load(pos_base + rows, mask=k_rows, other=0).to(tl.float32)
    kh = tl.load(pos_base + stride_pos + rows, mask=k_rows, other=0).to(tl.float32)
    kw = tl.load(pos_base + 2 * stride_pos + rows, mask=k_rows, other=0).to(tl.float32)
    k = rope_tile(k, k_p, kt, kh, kw, INV_FREQ, offs_d, head_dim, section_t, section_h, False)
    k = k.to(Q.dtype.element_ty)
    if head % group == 0:
        r_ptrs = K_ROT + (start + rows)[:, None] * stride_rn + kv_head * stride_rh + offs_d[None, :]
        tl.store(r_ptrs, k, mask=k_rows[:, None] & d_mask[None, :])
    v = load_tile(v_base, rows, stride_vn, offs_d, k_rows, d_mask)
    causal = (rows[None, :] <= offs_m[:, None]) & k_rows[None, :]
    acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, causal, True, DOT_PRECISION)

    out = finish_rows(acc, l_i)
    o_ptrs = OUT + (start + offs_m)[:, None] * stride_on + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=q_rows[:, None] & d_mask[None, :])


def pick_config(head_dim: int, dtype_name: str) -> dict:
    """Tile size and launch shape. BLOCK must serve as both BLOCK_M and BLOCK_N (see module doc)."""
    if dtype_name == "fp32":
        return {"BLOCK": 64, "num_warps": 4, "num_stages": 2}
    if head_dim <= 64:
        return {"BLOCK": 128, "num_warps": 8, "num_stages": 3}
    return {"BLOCK": 128, "num_warps": 8, "num_stages": 2}


def kernel_meta(dtype_name: str, head_dim: int) -> tuple[dict, dict]:
    """(constexprs, launch options): the one place both `launch` and the AOT gate get them from.
    GQA group, head_dim and mrope_section are runtime arguments, so the compiled variants are
    exactly dtype x BLOCK_D."""
    cfg = pick_config(head_dim, dtype_name)
    constexprs = {"BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK": cfg["BLOCK"],
                  "DOT_PRECISION": dot_precision(dtype_name)}
    return constexprs, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


KERNEL = tmrope_attention_kernel
# The model's calls (omni_runtime.layers.decoder, prefill mode): the Thinker and the Talker over a
# packed batch of two prompts, q/k/v from separate projections, positions a (3, N) view of the
# engine's flat buffer. N is stride_pos, which the JIT specialises: one count divisible by 16, one not.
AOT_CONFIGS = [{"model": model, "dtype": dtype, "tokens": tokens}
               for model in ("thinker", "talker") for dtype in ("fp16", "bf16", "fp32") for tokens in (1000, 1024)]


def aot_spec(cfg: dict) -> dict:
    """For the AOT gate: `launch` as the call site runs it for cfg, on CPU tensors of the real shapes."""
    from ..aot import MODELS, MROPE_SECTION, torch_dtype

    n_heads, n_kv, head_dim = MODELS[cfg["model"]]
    constexprs, options = kernel_meta(cfg["dtype"], head_dim)

    def run():
        n, dtype = cfg["tokens"], torch_dtype(cfg["dtype"])
        q = torch.empty(n, n_heads * head_dim, dtype=dtype).view(n, n_heads, head_dim)
        k, v = (torch.empty(n, n_kv * head_dim, dtype=dtype).view(n, n_kv, head_dim) for _ in range(2))
        positions = torch.zeros(3 * n, dtype=torch.int64).view(3, n)
        cu_seqlens = torch.tensor([0, n // 3, n], dtype=torch.int32)
        launch(q, k, v, positions, torch.empty(head_dim // 2), cu_seqlens, n - n // 3, MROPE_SECTION,
               head_dim ** -0.5)

    return {"launch": run, "constexprs": constexprs, "options": options}


def launch(q, k, v, positions, inv_freq, cu_seqlens, max_seqlen, mrope_section, scale):
    """q (N, Hq, D), k/v (N, Hk, D), positions (3, N) -> (out (N, Hq, D), rotated k (N, Hk, D))."""
    n_tokens, n_heads, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_rot = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if n_tokens == 0:
        return out, k_rot
    constexprs, options = kernel_meta(DTYPES[q.dtype], head_dim)
    grid = (triton.cdiv(max_seqlen, constexprs["BLOCK"]), n_heads, cu_seqlens.numel() - 1)
    tmrope_attention_kernel[grid](
        q, k, v, positions, inv_freq, cu_seqlens, out, k_rot,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), k_rot.stride(0), k_rot.stride(1), positions.stride(0),
        scale * LOG2E, n_heads // k.shape[1], head_dim, mrope_section[0], mrope_section[1],
        **constexprs, **options,
    )
    return out, k_rot
