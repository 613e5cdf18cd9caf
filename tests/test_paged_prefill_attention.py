"""Paged prefill (chunked / streaming) attention: Triton kernel (interpreter) vs the math reference
over shuffled paged caches, cached prefixes 0/1/17/131 x chunks 1/17/64; equal to
`tmrope_attention` over the whole sequence for the chunk rows (one shot and streamed chunk by
chunk); the CPU torch path; the custom-op contract; bad inputs.

Error bounds (relative, ||a-e||/||e||): fp32 1e-5; fp16 3e-3 (fp16 rounding of the rotated q and
of p before p@v); bf16 2e-2 (through the fp32 cast path under the interpreter). Against
tmrope_attention (both kernels, same rounding points) the same bounds.
"""
import pytest
import torch

from helpers import rel_err
from omni_kernels import tmrope_attention, use_backend
from omni_kernels.paged_prefill_attention import paged_prefill_attention
from omni_kernels.reference.paged_prefill_attention import paged_prefill_attention_reference

BOUND = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SECTIONS = {64: [16, 8, 8], 80: [8, 16, 16], 128: [16, 24, 24]}
# name: ((cached prefix, new chunk) per sequence, q heads, kv heads, head_dim, page size).
# Together the three batches hold every prefix in {0, 1, 17, 131} with every chunk in {1, 17, 64}.
CASES = {
    "gqa7_d128_page16": ([(0, 17), (1, 64), (17, 1), (131, 17)], 7, 1, 128, 16),
    "mha_d64_page32": ([(0, 64), (1, 1), (17, 17), (131, 64)], 2, 2, 64, 32),
    "gqa2_d80_page256": ([(0, 1), (1, 17), (17, 64), (131, 1)], 4, 2, 80, 256),
}


def make_tables(lengths, page, spare_blocks=3, fill=10**6):
    """Block tables over a random permutation of the physical blocks; entries past each sequence's
    pages hold `fill` (never read). -> (tables, num_blocks)."""
    pages = [-(-length // page) for length in lengths]
    num_blocks = sum(pages) + spare_blocks
    physical = torch.randperm(num_blocks).int()
    tables = torch.full((len(lengths), max(pages) + 2), fill, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages):
        tables[b, :n] = physical[used:used + n]
        used += n
    return tables, num_blocks


def make_inputs(pairs, hq, hk, d, page, dtype, max_pos=5000):
    lengths = [prefix + chunk for prefix, chunk in pairs]
    tables, num_blocks = make_tables(lengths, page)
    key_cache = torch.randn(num_blocks, page, hk, d).to(dtype)
    value_cache = torch.randn(num_blocks, page, hk, d).to(dtype)
    n = sum(chunk for _, chunk in pairs)
    q = torch.randn(n, hq, d).to(dtype)
    positions = torch.randint(0, max_pos, (3, n))
    cu = torch.tensor([0] + torch.tensor([c for _, c in pairs]).cumsum(0).tolist(), dtype=torch.int32)
    return q, positions, key_cache, value_cache, tables, cu, torch.tensor(lengths, dtype=torch.int32)


def write_cache(cache, tables, cu_seqlens, rows):
    """Store rows (N, Hk, D) of each sequence (bounds cu_seqlens) at its pages: token j of sequence b
    goes to cache[tables[b, j // page], j % page]."""
    page = cache.shape[1]
    bounds = cu_seqlens.tolist()
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        j = torch.arange(end - start)
        cache[tables[b, j // page].long(), j % page] = rows[start:end]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_reference(case, dtype):
    pairs, hq, hk, d, page = CASES[case]
    q, pos, kc, vc, bt, cu, sl = make_inputs(pairs, hq, hk, d, page, dtype)
    with use_backend("triton"):
        out = paged_prefill_attention(q, pos, kc, vc, bt, cu, sl, mrope_section=SECTIONS[d])
    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, SECTIONS[d], 1e6, d ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) < BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_chunk_rows_equal_tmrope_attention_over_whole_sequence(dtype):
    """Write the whole sequences' rotated keys (from tmrope_attention) and values into a paged
    cache; attending the chunk through the cache gives tmrope_attention's rows for the chunk."""
    pairs, hq, hk, d, page = [(131, 17), (0, 64), (17, 1)], 7, 1, 128, 16
    lengths = [p + c for p, c in pairs]
    full_cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, d).to(dtype) for h in (hq, hk, hk))
    pos = torch.randint(0, 5000, (3, n))
    with use_backend("triton"):
        full_out, k_rot = tmrope_attention(q, k, v, pos, full_cu, mrope_section=SECTIONS[d])
    tables, num_blocks = make_tables(lengths, page)
    kc = torch.zeros(num_blocks, page, hk, d, dtype=dtype)
    vc = torch.zeros(num_blocks, page, hk, d, dtype=dtype)
    write_cache(kc, tables, full_cu, k_rot)
    write_cache(vc, tables, full_cu, v)
    chunk_rows = torch.cat([torch.arange(s + p, s + p + c) for s, (p, c) in zip(full_cu.tolist(), pairs)])
    cu = torch.tensor([0] + torch.tensor([c for _, c in pairs]).cumsum(0).tolist(), dtype=torch.int32)
    with use_backend("triton"):
        out = paged_prefill_attention(q[chunk_rows], pos[:, chunk_rows], kc, vc, tables, cu,
                                      torch.tensor(lengths, dtype=torch.int32), mrope_section=SECTIONS[d])
    assert rel_err(out, full_out[chunk_rows]) < BOUND[dtype]


def test_streamed_chunks_equal_one_shot_prefill():
    """Streaming input: one sequence fed in chunks of 17, 1, 64, 3 tokens, each chunk's rotated K/V
    appended to the cache before its call, equals tmrope_attention over all 85 tokens."""
    hq, hk, d, page, chunks = 4, 2, 64, 16, [17, 1, 64, 3]
    n = sum(chunks)
    q, k, v = (torch.randn(n, h, d) for h in (hq, hk, hk))
    pos = torch.randint(0, 5000, (3, n))
    with use_backend("triton"):
        full_out, k_rot = tmrope_attention(q, k, v, pos, mrope_section=SECTIONS[d])
    tables, num_blocks = make_tables([n], page)
    kc = torch.full((num_blocks, page, hk, d), float("nan"))  # not yet written = poison
    vc = torch.full((num_blocks, page, hk, d), float("nan"))
    outs, start = [], 0
    for chunk in chunks:
        end = start + chunk
        j = torch.arange(start, end)
        kc[tables[0, j // page].long(), j % page] = k_rot[start:end]
        vc[tables[0, j // page].long(), j % page] = v[start:end]
        with use_backend("triton"):
            outs.append(paged_prefill_attention(
                q[start:end], pos[:, start:end], kc, vc, tables, torch.tensor([0, chunk], dtype=torch.int32),
                torch.tensor([end], dtype=torch.int32), mrope_section=SECTIONS[d]))
        start = end
    assert rel_err(torch.cat(outs), full_out) < 1e-5


def test_every_tile_alignment_with_small_tiles():
    """The kernel launched with 16 x 16 tiles over prefixes 0..47 and chunks 1..23: every position
    of the unmasked/masked boundary and of the chunk end relative to the KV tiles and pages."""
    from omni_kernels.kernels import paged_prefill_attention as kernel
    from omni_kernels.rotary import rope_inv_freq

    pairs = [(prefix, 1 + (prefix * 7) % 23) for prefix in range(48)]
    q, pos, kc, vc, bt, cu, sl = make_inputs(pairs, 4, 2, 32, 16, torch.float32)
    config = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}  # 8 tokens x 2 heads per tile
    out = kernel.launch(q, pos, kc, vc, bt, cu, sl, rope_inv_freq(32, 1e6), max(c for _, c in pairs),
                        [8, 4, 4], 32 ** -0.5, config=config)
    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, [8, 4, 4], 1e6, 32 ** -0.5)
    assert rel_err(out, ref) < 1e-5


def test_sequence_without_new_tokens_and_large_gqa_group():
    # 72 query heads per KV head (more than the 64-row fp32 tile) and a sequence with 0 new tokens.
    q, pos, kc, vc, bt, cu, sl = make_inputs([(5, 0), (20, 3), (0, 2)], 72, 1, 64, 16, torch.float32)
    with use_backend("triton"):
        out = paged_prefill_attention(q, pos, kc, vc, bt, cu, sl, mrope_section=SECTIONS[64])
    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, SECTIONS[64], 1e6, 0.125)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_strided_q_and_cache_views(backend):
    pairs, hq, hk, d, page = [(17, 9), (0, 5)], 4, 2, 64, 16
    _, pos, kc, vc, bt, cu, sl = make_inputs(pairs, hq, hk, d, page, torch.float32)
    q = torch.randn(14, (hq + 2 * hk) * d)[:, : hq * d].view(14, hq, d)  # a view into a fused qkv
    kc_t, vc_t = (c.transpose(1, 2).contiguous().transpose(1, 2) for c in (kc, vc))
    with use_backend(backend):
        out = paged_prefill_attention(q, pos.int(), kc_t, vc_t, bt, cu, sl, mrope_section=SECTIONS[d])
    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, SECTIONS[d], 1e6, 0.125)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_path_matches_reference(dtype):
    pairs, hq, hk, d, page = CASES["gqa2_d80_page256"]
    q, pos, kc, vc, bt, cu, sl = make_inputs(pairs, hq, hk, d, page, dtype)
    out = paged_prefill_attention(q, pos, kc, vc, bt, cu, sl, mrope_section=SECTIONS[d])
    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, SECTIONS[d], 1e6, d ** -0.5)
    assert rel_err(out, ref) < BOUND[dtype]


def test_custom_op_contract():
    q, pos, kc, vc, bt, cu, sl = make_inputs([(3, 5), (0, 9)], 4, 2, 64, 16, torch.float32)
    bt[bt >= kc.shape[0]] = 0
    torch.library.opcheck(torch.ops.omni_kernels.paged_prefill_attention.default,
                          (q, pos, kc, vc, bt, cu, sl, 9, SECTIONS[64], 1e6, 0.125))


def test_torch_compile_fullgraph():
    q, pos, kc, vc, bt, cu, sl = make_inputs([(3, 5), (0, 9)], 4, 2, 64, 16, torch.float32)

    @torch.compile(fullgraph=True, backend="eager")
    def attend(q, pos, kc, vc, bt, cu, sl):
        return paged_prefill_attention(q, pos, kc, vc, bt, cu, sl, mrope_section=SECTIONS[64], max_seqlen_q=9)

    ref = paged_prefill_attention_reference(q, pos, kc, vc, bt, cu, sl, SECTIONS[64], 1e6, 0.125)
    assert rel_err(attend(q, pos, kc, vc, bt, cu, sl), ref) < 1e-5


def _bad_cases():
    q, pos, kc, vc, bt, cu, sl = make_inputs([(4, 3), (16, 6)], 4, 2, 64, 16, torch.float32)
    i32 = dict(dtype=torch.int32)
    yield "q", dict(q=q[0])
    yield "q is empty", dict(q=q[:0], positions=pos[:, :0], cu_seqlens_q=torch.tensor([0, 0], **i32))
    yield "q has dtype", dict(q=q.int(), key_cache=kc.int(), value_cache=vc.int())
    yield "key_cache", dict(key_cache=kc.half())
    yield "value_cache", dict(value_cache=vc[:, :8])
    yield "head_dim", dict(q=q[..., :32])
    yield "multiple of", dict(q=torch.randn(9, 3, 64))
    yield "stride 1", dict(q=q.transpose(1, 2).contiguous().transpose(1, 2))
    yield "positions", dict(positions=pos[:2])
    yield "positions", dict(positions=pos.float())
    yield "mrope_section", dict(mrope_section=[16, 8, 9])
    yield "rope_theta", dict(rope_theta=0.0)
    yield "empty batch", dict(cu_seqlens_q=torch.tensor([0], **i32))
    yield "seq_lens has", dict(cu_seqlens_q=torch.tensor([0, 9], **i32))
    yield "cu_seqlens_q must start at 0", dict(cu_seqlens_q=torch.tensor([1, 3, 9], **i32))
    yield "cu_seqlens_q must start at 0", dict(cu_seqlens_q=torch.tensor([0, 3, 8], **i32))
    yield "non-decreasing", dict(cu_seqlens_q=torch.tensor([0, 10, 9], **i32), seq_lens=torch.tensor([20, 22], **i32))
    yield "more new tokens", dict(seq_lens=torch.tensor([2, 22], **i32))
    yield "capacity", dict(seq_lens=torch.tensor([7, bt.shape[1] * 16 + 1], **i32))
    out_of_range = bt.clone()
    out_of_range[1, 1] = kc.shape[0]
    yield "outside", dict(block_tables=out_of_range)
    negative = bt.clone()
    negative[0, 0] = -1
    yield "outside", dict(block_tables=negative)
    yield "block_tables has 1 rows", dict(block_tables=bt[:1])
    yield "max_seqlen_q", dict(max_seqlen_q=5)
    yield "scale", dict(scale=-1.0)


@pytest.mark.parametrize("message,override", list(_bad_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_value_error(message, override):
    q, pos, kc, vc, bt, cu, sl = make_inputs([(4, 3), (16, 6)], 4, 2, 64, 16, torch.float32)
    kwargs = dict(q=q, positions=pos, key_cache=kc, value_cache=vc, block_tables=bt, cu_seqlens_q=cu, seq_lens=sl,
                  mrope_section=SECTIONS[64])
    kwargs.update(override)
    args = [kwargs.pop(k) for k in ("q", "positions", "key_cache", "value_cache", "block_tables", "cu_seqlens_q",
                                    "seq_lens")]
    with pytest.raises(ValueError, match=message):
        paged_prefill_attention(*args, **kwargs)
