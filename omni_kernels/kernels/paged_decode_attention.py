"""Paged decode attention: one (already rotated) query token per sequence against its KV cache,
GQA packed into the tile rows, split-KV (flash-decoding).

Grid (B * Hk * head_blocks, num_splits). A program owns one sequence, one KV head and up to
BLOCK_M query heads of that KV head's GQA group, packed as the M rows of the tile (padded rows
are masked), so each K/V tile is loaded once for the whole group. BLOCK_M is 64: on sm_90 Triton
only emits wgmma for M a multiple of 64 (M = 16 or 32 compile to sm_80-style mma.sync; measured
with the AOT compiler). Decode stays memory-bound at 64 rows (about 64 FLOP per byte of K/V read
against ~270 for an H100), so the padding costs nothing visible, and groups up to 64 heads need
one program per KV head; larger groups use several head blocks.

Split-KV: a sequence's ceil(L / BLOCK_N) KV tiles are cut into `num_splits` runs of equal length;
split s folds its run into (m, l, acc) with core's `attend_tile` and writes the normalized partial
output and its log2-sum-exp to a fp32 workspace; `paged_decode_reduce_kernel` then merges the
splits. With num_splits == 1 the attention kernel writes the output directly and the reduce is
skipped. Only the last tile of a sequence is masked. Splits past a short sequence's end write
lse = -inf and weigh 0 in the merge.
"""
import torch
import triton
import triton.language as tl

from .core import DTYPES, LOG2E, attend_tile, dot_precision, finish_rows, load_tile
from .paged_attention import cache_slots


BLOCK_M = 64  # query-head rows per program (see module doc: the wgmma minimum)
MAX_SPLITS = 64
MIN_SPLIT_TOKENS = 256  # a split should read at least this many keys: it pays one Q load and one partial write
_REDUCE_BLOCK_S = 16  # splits merged per step of the reduce kernel


@triton.jit
def paged_decode_attention_kernel(
    Q, K_CACHE, V_CACHE, BLOCK_TABLES, SEQ_LENS, OUT, PART_O, PART_LSE,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_ob, stride_oh,
    qk_scale, num_kv_heads, group, head_blocks, page_size, num_splits, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    hb = pid % head_blocks
    kv_head = (pid // head_blocks) % num_kv_heads
    seq = (pid // (head_blocks * num_kv_heads)).to(tl.int64)

    seq_len = tl.load(SEQ_LENS + seq)
    n_tiles = (seq_len + BLOCK_N - 1) // BLOCK_N
    per_split = (n_tiles + num_splits - 1) // num_splits
    t_lo = split * per_split
    t_hi = tl.minimum(t_lo + per_split, n_tiles)
    t_full = tl.maximum(tl.minimum(t_hi, seq_len // BLOCK_N), t_lo)  # tiles [t_lo, t_full) need no mask

    offs_g = hb * BLOCK_M + tl.arange(0, BLOCK_M)  # head index inside the GQA group
    head_ok = offs_g < group
    heads = kv_head * group + offs_g
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    q = load_tile(Q + seq * stride_qb, heads, stride_qh, offs_d, head_ok, d_mask)

    table = BLOCK_TABLES + seq * stride_bt
    k_base = K_CACHE + kv_head * stride_kh
    v_base = V_CACHE + kv_head * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    all_cols = tl.full([BLOCK_N], 1, tl.int1)  # constant true: the masks fold away
    for t in range(t_lo, t_full):
        cols = t * BLOCK_N + offs_n
        page, slot = cache_slots(table, cols, page_size, all_cols)
        k = load_tile(k_base, page * stride_kb + slot * stride_kt, 1, offs_d, all_cols, d_mask)
        v = load_tile(v_base, page * stride_vb + slot * stride_vt, 1, offs_d, all_cols, d_mask)
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, all_cols[None, :], False, DOT_PRECISION)

    # The sequence's last, partial tile (runs at most once, in the split that owns it).
    for t in range(t_full, t_hi):
        cols = t * BLOCK_N + offs_n
        col_ok = cols < seq_len
        page, slot = cache_slots(table, cols, page_size, col_ok)
        k = load_tile(k_base, page * stride_kb + slot * stride_kt, 1, offs_d, col_ok, d_mask)
        v = load_tile(v_base, page * stride_vb + slot * stride_vt, 1, offs_d, col_ok, d_mask)
        acc, m_i, l_i = attend_tile(acc, m_i, l_i, q, k, v, qk_scale, col_ok[None, :], True, DOT_PRECISION)

    out = finish_rows(acc, l_i)
    if num_splits == 1:
        o_ptrs = OUT + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=head_ok[:, None] & d_mask[None, :])
    else:
        # Workspace rows (seq, q head, split), contiguous: o (.., head_dim) and lse in log2 units.
        rows = (seq * (num_kv_heads * group) + heads) * num_splits + split
        tl.store(PART_O + rows[:, None] * head_dim + offs_d[None, :], out,
                 mask=head_ok[:, None] & d_mask[None, :])
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        tl.store(PART_LSE + rows, lse, mask=head_ok)


@triton.jit
def paged_decode_reduce_kernel(
    PART_O, PART_LSE, OUT, stride_ob, stride_oh, num_q_heads, num_splits, head_dim,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the splits of one (sequence, q head): out = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max)."""
    pid = tl.program_id(0).to(tl.int64)
    seq = pid // num_q_heads
    head = pid % num_q_heads
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    base = pid * num_splits
    m_vec = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        lse = tl.load(PART_LSE + base + s0 + offs_s, mask=s0 + offs_s < num_splits, other=float("-inf"))
        m_vec = tl.maximum(m_vec, lse)
    m = tl.max(m_vec, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no split saw a key: all weights 0, output 0
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    w_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        s_ok = s0 + offs_s < num_splits
        lse = tl.load(PART_LSE + base + s0 + offs_s, mask=s_ok, other=float("-inf"))
        w = tl.exp2(lse - m)
        o = tl.load(PART_O + (base + s0 + offs_s)[:, None] * head_dim + offs_d[None, :],
                    mask=s_ok[:, None] & d_mask[None, :], other=0.0)
        acc += w[:, None] * o
        w_sum += w
    total = tl.sum(w_sum, 0)
    out = tl.sum(acc, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(OUT + seq * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty), mask=d_mask)


def pick_config(head_dim: int, dtype_name: str) -> dict:
    """Tile shape. BLOCK_N = 64 keys per tile: page 16/32 tiles span 4/2 pages, page 256 tiles are
    quarter pages. Shared memory is the K and V tiles times the stages (AOT gate: all under A100's
    limit)."""
    if dtype_name == "fp32":
        return {"BLOCK_N": 64 if head_dim <= 64 else 32, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def kernel_meta(dtype_name: str, head_dim: int, config: dict | None = None) -> tuple[dict, dict]:
    """(constexprs, launch options): the one place both `launch` and the AOT gate get them from.
    GQA group, head_dim, page size and split count are runtime ints: the compiled variants are
    exactly dtype x BLOCK_D."""
    cfg = config or pick_config(head_dim, dtype_name)
    constexprs = {"BLOCK_M": BLOCK_M, "BLOCK_N": cfg["BLOCK_N"], "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
                  "DOT_PRECISION": dot_precision(dtype_name)}
    return constexprs, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def pick_num_splits(batch: int, num_kv_heads: int, group: int, max_seq_len: int, sm_count: int = 132) -> int:
    """Split the KV range only when batch x KV heads (x head blocks) leaves the GPU short of programs
    (target: 2 per SM), and never below MIN_SPLIT_TOKENS keys per split."""
    programs = batch * num_kv_heads * triton.cdiv(group, BLOCK_M)
    target = 2 * sm_count
    if programs >= target:
        return 1
    by_length = triton.cdiv(max(int(max_seq_len), 1), MIN_SPLIT_TOKENS)
    return max(1, min(triton.cdiv(target, programs), by_length, MAX_SPLITS))


KERNEL = paged_decode_attention_kernel
REDUCE_KERNEL = paged_decode_reduce_kernel
# The model's calls (omni_runtime.layers.decoder, decode mode; the engine's StepState): the Thinker
# and the Talker, pages of 16 and 256 tokens from one cache allocation for all layers (a layer's
# cache is a view at an offset), block tables as wide as MAX_MODEL_LEN, q rotated into a fresh
# tensor. Decode batches 1, 8 and 128 with the split count the op picks for an H100 at the model's
# length (as with CUDA graphs): 64, 9 and 1 splits -- divisible by 16, not, and the constant 1,
# which also drops the merge kernel.
AOT_CONFIGS = [{"model": model, "dtype": dtype, "page_size": page_size, "batch": batch}
               for model in ("thinker", "talker") for dtype in ("fp16", "bf16", "fp32")
               for page_size in (16, 256) for batch in (1, 8, 128)]


def reduce_meta(head_dim: int) -> tuple[dict, dict]:
    constexprs = {"BLOCK_S": _REDUCE_BLOCK_S, "BLOCK_D": max(16, triton.next_power_of_2(head_dim))}
    return constexprs, {"num_warps": 4, "num_stages": 1}


def aot_spec(cfg: dict) -> dict:
    """For the AOT gate: `launch` as the call site runs it for cfg, on CPU tensors of the real shapes.
    The merge kernel has no matmul: nothing for wgmma to do."""
    from ..aot import MAX_MODEL_LEN, MODELS, SM_COUNT, torch_dtype

    n_heads, n_kv, head_dim = MODELS[cfg["model"]]
    constexprs, options = kernel_meta(cfg["dtype"], head_dim)

    def run():
        batch, page_size, dtype = cfg["batch"], cfg["page_size"], torch_dtype(cfg["dtype"])
        max_blocks = MAX_MODEL_LEN // page_size
        caches = torch.empty(2, 2, 4, page_size, n_kv, head_dim, dtype=dtype)  # (layer, k/v, blocks, ...)
        q = torch.empty(batch, n_heads, head_dim, dtype=dtype)
        num_splits = pick_num_splits(batch, n_kv, n_heads // n_kv, MAX_MODEL_LEN, SM_COUNT)
        launch(q, caches[1, 0], caches[1, 1], torch.zeros(batch, max_blocks, dtype=torch.int32),
               torch.ones(batch, dtype=torch.int32), head_dim ** -0.5, num_splits)

    return {"launch": run, "constexprs": constexprs, "options": options, "no_matmul": (REDUCE_KERNEL.__name__,)}


def launch(q, key_cache, value_cache, block_tables, seq_lens, scale: float, num_splits: int,
           config: dict | None = None):
    """q (B, Hq, D); caches (num_blocks, page_size, Hk, D); block_tables (B, max_blocks) int32,
    seq_lens (B,) int32, both contiguous -> out (B, Hq, D) contiguous, q's dtype."""
    batch, n_heads, head_dim = q.shape
    page_size, n_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = n_heads // n_kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    constexprs, options = kernel_meta(DTYPES[q.dtype], head_dim, config)
    head_blocks = triton.cdiv(group, constexprs["BLOCK_M"])
    num_splits = int(num_splits)
    if num_splits > 1:
        part_o = torch.empty((batch, n_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        # Never touched (the kernel writes `out` directly), but typed like the real workspace.
        part_o = part_lse = torch.empty(1, dtype=torch.float32, device=q.device)
    grid = (batch * n_kv_heads * head_blocks, num_splits)
    paged_decode_attention_kernel[grid](
        q, key_cache, value_cache, block_tables, seq_lens, out, part_o, part_lse,
        q.stride(0), q.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        scale * LOG2E, n_kv_heads, group, head_blocks, page_size, num_splits, head_dim,
        **constexprs, **options,
    )
    if num_splits > 1:
        r_constexprs, r_options = reduce_meta(head_dim)
        paged_decode_reduce_kernel[(batch * n_heads,)](
            part_o, part_lse, out, out.stride(0), out.stride(1), n_heads, num_splits, head_dim,
            **r_constexprs, **r_options,
        )
    return out
