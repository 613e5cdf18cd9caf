"""Paged prefill attention (chunked prefill / streaming input): new query tokens against the KV
cache through the block table, TMRoPE applied to Q inside the kernel.

New token i of sequence b sits at cache index ctx_b + i (ctx_b = seq_len_b - q_len_b: the cached
prefix) and sees keys j <= ctx_b + i: the whole prefix, causal inside the new chunk. The chunk's
rotated K/V are already in the cache, so K is read as stored (no rotation).

Grid (q tiles, Hk * head_blocks, B). The BLOCK_M tile rows are (token, head) pairs: `tile_tokens`
consecutive new tokens times `heads_per_prog` query heads of one KV head's GQA group (row r ->
token r // heads_per_prog, head r % heads_per_prog), so each K/V tile is loaded once for the whole
group and a short chunk (down to one token) still fills the tile. For Qwen2.5-Omni-7B (group 7)
a 128-row tile is 18 tokens x 7 heads. Q is rotated once per program (core's `rope_tile`,
rotate-half, t/h/w sections; positions per row from its token).

KV tiles of BLOCK_N rows, each row's page looked up in the block table: tiles below
ctx + first token + 1 are visible to every row and take no mask; the rest up to the tile's last
token are masked causally.
"""
import torch
import triton
import triton.language as tl

from .core import (DTYPES, LOG2E, MAX_GRID_YZ, attend_tile, dot_precision, finish_rows, load_tile,
                   partner_columns, rope_tile)
from .paged_attention import cache_slots


@triton.jit
def paged_prefill_attention_kernel(
    Q, POS, K_CACHE, V_CACHE, BLOCK_TABLES, CU_SEQLENS_Q, SEQ_LENS, INV_FREQ, OUT,
    stride_qn, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_on, stride_oh, stride_pos,
    qk_scale, num_kv_heads, group, heads_per_prog, head_blocks, tile_tokens, page_size,
    head_dim, section_t, section_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    seq = tl.program_id(2).to(tl.int64)
    hb = pid_h % head_blocks
    kv_head = pid_h // head_blocks
    q_start = tl.load(CU_SEQLENS_Q + seq)
    q_len = tl.load(CU_SEQLENS_Q + seq + 1) - q_start
    t0 = pid_m * tile_tokens
    if t0 >= q_len:
        return
    ctx = tl.load(SEQ_LENS + seq) - q_len

    offs_r = tl.arange(0, BLOCK_M)
    tok = t0 + offs_r // heads_per_prog
    g = hb * heads_per_prog + offs_r % heads_per_prog  # head index inside the GQA group
    row_ok = (offs_r < tile_tokens * heads_per_prog) & (tok < q_len) & (g < group)
    heads = kv_head * group + g
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    partner = partner_columns(offs_d, head_dim, False)

    q_rows = (q_start + tok).to(tl.int64) * stride_qn + heads * stride_qh
    q = load_tile(Q, q_rows, 1, offs_d, row_ok, d_mask).to(tl.float32)
    q_p = load_tile(Q, q_rows, 1, partner, row_ok, d_mask).to(tl.float32)
    pos_base = POS + q_start + tok
    pt = tl.load(pos_base, mask=row_ok, other=0).to(tl.float32)
    ph = tl.load(pos_base + stride_pos, mask=row_ok, other=0).to(tl.float32)
    pw = tl.load(pos_base + 2 * stride_pos, mask=row_ok, other=0).to(tl.float32)
    q = rope_tile(q, q_p, pt, ph, pw, INV_FREQ, offs_d, head_dim, section_t, section_h, False)
    q = q.to(Q.dtype.element_ty)

    q_abs = ctx + tok  # each row's own cache index: it sees keys <= q_abs
    t_last = tl.minimum(t0 + tile_tokens, q_len) - 1
    kv_end = ctx + t_last + 1
    full_end = ((ctx + t0 + 1) // BLOCK_N) * BLOCK_N  # keys below ctx + t0 + 1: visible to every row

    table = BLOCK_TABLES + seq * stride_bt
    k_base = K_CACHE + kv_head * stride_kh
    v_base = V_CACHE + kv_head * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    all_cols = tl.full([BLOCK_N], 1, tl.int1)  # constant true: the masks fold away
    for n0 in range(0, full_end, BLOCK_N):
        cols = n0 + offs_n
        page, slot = cache_slots(table, cols, page_size, all_cols)
        k = load_tile(k_base, page * stride_kb + slot * stride_kt, 1, offs_d, all_cols, d_mask)
        v = load_tile(v_base, page * stride_vb + slot * stride_vt, 1, offs_d, all_cols, d_mask)
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, all_cols[None, :], False, DOT_PRECISION)

    for n0 in range(full_end, kv_end, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < kv_end
        page, slot = cache_slots(table, cols, page_size, col_ok)
        k = load_tile(k_base, page * stride_kb + slot * stride_kt, 1, offs_d, col_ok, d_mask)
        v = load_tile(v_base, page * stride_vb + slot * stride_vt, 1, offs_d, col_ok, d_mask)
        visible = (cols[None, :] <= q_abs[:, None]) & col_ok[None, :]
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, visible, True, DOT_PRECISION)

    out = finish_rows(acc, l_i)
    o_rows = (q_start + tok).to(tl.int64) * stride_on + heads * stride_oh
    tl.store(OUT + o_rows[:, None] + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & d_mask[None, :])


def pick_config(head_dim: int, dtype_name: str) -> dict:
    """Tile sizes and launch shape (BLOCK_M rows = tokens x packed heads; wgmma needs M >= 64)."""
    if dtype_name == "fp32":
        return {"BLOCK_M": 64, "BLOCK_N": 64 if head_dim <= 64 else 32, "num_warps": 4, "num_stages": 2}
    if head_dim <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}


def kernel_meta(dtype_name: str, head_dim: int, config: dict | None = None) -> tuple[dict, dict]:
    """(constexprs, launch options): the one place both `launch` and the AOT gate get them from.
    GQA group, head packing, page size, head_dim and mrope_section are runtime ints: the compiled
    variants are exactly dtype x BLOCK_D."""
    cfg = config or pick_config(head_dim, dtype_name)
    constexprs = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                  "BLOCK_D": max(16, triton.next_power_of_2(head_dim)), "DOT_PRECISION": dot_precision(dtype_name)}
    return constexprs, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def head_packing(group: int, block_m: int) -> tuple[int, int, int]:
    """(heads per program, head blocks per KV head, new tokens per program) for a GQA group."""
    heads_per_prog = min(group, block_m)
    return heads_per_prog, triton.cdiv(group, heads_per_prog), block_m // heads_per_prog


KERNEL = paged_prefill_attention_kernel
# The model's calls (omni_runtime.layers.decoder, chunked-prefill mode; the engine's StepState): the
# Thinker and the Talker, pages of 16 and 256 tokens from one cache allocation for all layers (a
# layer's cache is a view at an offset), block tables as wide as MAX_MODEL_LEN, positions a (3, N)
# view of the engine's flat buffer. A step of two chunks after cached prefixes; N is stride_pos,
# which the JIT specialises: one count divisible by 16, one not.
AOT_CONFIGS = [{"model": model, "dtype": dtype, "page_size": page_size, "tokens": tokens}
               for model in ("thinker", "talker") for dtype in ("fp16", "bf16", "fp32")
               for page_size in (16, 256) for tokens in (1000, 1024)]


def aot_spec(cfg: dict) -> dict:
    """For the AOT gate: `launch` as the call site runs it for cfg, on CPU tensors of the real shapes."""
    from ..aot import MAX_MODEL_LEN, MODELS, MROPE_SECTION, torch_dtype

    n_heads, n_kv, head_dim = MODELS[cfg["model"]]
    constexprs, options = kernel_meta(cfg["dtype"], head_dim)

    def run():
        n, page_size, dtype = cfg["tokens"], cfg["page_size"], torch_dtype(cfg["dtype"])
        q = torch.empty(n, n_heads * head_dim, dtype=dtype).view(n, n_heads, head_dim)
        positions = torch.zeros(3 * n, dtype=torch.int64).view(3, n)
        caches = torch.empty(2, 2, 4, page_size, n_kv, head_dim, dtype=dtype)  # (layer, k/v, blocks, ...)
        chunks = [n // 2, n - n // 2]
        block_tables = torch.zeros(2, MAX_MODEL_LEN // page_size, dtype=torch.int32)
        cu_seqlens_q = torch.tensor([0, chunks[0], n], dtype=torch.int32)
        seq_lens = torch.tensor([4096 + c for c in chunks], dtype=torch.int32)  # after cached prefixes
        launch(q, positions, caches[1, 0], caches[1, 1], block_tables, cu_seqlens_q, seq_lens,
               torch.empty(head_dim // 2), max(chunks), MROPE_SECTION, head_dim ** -0.5)

    return {"launch": run, "constexprs": constexprs, "options": options}


def launch(q, positions, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, inv_freq,
           max_seqlen_q: int, mrope_section, scale: float, config: dict | None = None):
    """q (N, Hq, D) un-rotated, positions (3, N) int64 contiguous; caches (num_blocks, page_size,
    Hk, D); block_tables (B, max_blocks), cu_seqlens_q (B+1,), seq_lens (B,) int32 contiguous
    -> out (N, Hq, D) contiguous, q's dtype."""
    n_tokens, n_heads, head_dim = q.shape
    page_size, n_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = n_heads // n_kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0 or max_seqlen_q <= 0:
        return out
    constexprs, options = kernel_meta(DTYPES[q.dtype], head_dim, config)
    heads_per_prog, head_blocks, tile_tokens = head_packing(group, constexprs["BLOCK_M"])
    batch = seq_lens.shape[0]
    for b0 in range(0, batch, MAX_GRID_YZ):
        b1 = min(b0 + MAX_GRID_YZ, batch)
        tables, cu, lens = block_tables[b0:b1], cu_seqlens_q[b0:b1 + 1], seq_lens[b0:b1]
        grid = (triton.cdiv(max_seqlen_q, tile_tokens), n_kv_heads * head_blocks, b1 - b0)
        paged_prefill_attention_kernel[grid](
            q, positions, key_cache, value_cache, tables, cu, lens, inv_freq, out,
            q.stride(0), q.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
            tables.stride(0), out.stride(0), out.stride(1), positions.stride(0),
            scale * LOG2E, n_kv_heads, group, heads_per_prog, head_blocks, tile_tokens, page_size,
            head_dim, mrope_section[0], mrope_section[1],
            **constexprs, **options,
        )
    return out
