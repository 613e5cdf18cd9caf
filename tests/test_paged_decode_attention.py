"""Paged decode attention: Triton kernel (interpreter) vs the math reference over shuffled paged
caches, split-KV on/off, GQA packing, the CPU torch path, the custom-op contract, bad inputs.

Error bounds (relative, ||a-e||/||e||): fp32 1e-5; fp16 3e-3 (fp16 rounding of p before p@v);
bf16 2e-2 (through the fp32 cast path under the interpreter: only the output's bf16 rounding).
Split-KV changes only the summation order: results with and without it agree to 1e-6 (fp32).
"""

import pytest
import torch

from helpers import rel_err
from omni_kernels import use_backend
from omni_kernels.kernels.paged_decode_attention import pick_num_splits
from omni_kernels.paged_attention import values_checkable
from omni_kernels.paged_decode_attention import paged_decode_attention
from omni_kernels.reference.paged_decode_attention import paged_decode_attention_reference

BOUND = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# name: (sequence lengths, q heads, kv heads, head_dim, page size)
SHAPES = {
    "lens_1_17_131_1000_gqa7_d128_page16": ([1, 17, 131, 1000], 7, 1, 128, 16),
    "lens_1_17_131_1000_mha_d64_page256": ([1, 17, 131, 1000], 1, 1, 64, 256),
    "odd_lens_mha_d64_page32": ([5, 33, 77, 2], 2, 2, 64, 32),
    "gqa7_d80_page256": ([300, 1, 257], 14, 2, 80, 256),
}


def make_cache(lengths, hk, d, page, dtype, spare_blocks=3, fill=10**6):
    """Random caches whose pages are a random permutation of the physical blocks (plus unused spare
    blocks); block-table entries past each sequence's pages hold `fill` (never read)."""
    pages = [-(-length // page) for length in lengths]
    num_blocks = sum(pages) + spare_blocks
    key_cache = torch.randn(num_blocks, page, hk, d).to(dtype)
    value_cache = torch.randn(num_blocks, page, hk, d).to(dtype)
    physical = torch.randperm(num_blocks).int()
    tables = torch.full((len(lengths), max(pages) + 2), fill, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages):
        tables[b, :n] = physical[used:used + n]
        used += n
    return key_cache, value_cache, tables, torch.tensor(lengths, dtype=torch.int32)


def make_inputs(lengths, hq, hk, d, page, dtype, **kwargs):
    q = torch.randn(len(lengths), hq, d).to(dtype)
    return (q, *make_cache(lengths, hk, d, page, dtype, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_reference(shape, dtype):
    lengths, hq, hk, d, page = SHAPES[shape]
    q, kc, vc, bt, sl = make_inputs(lengths, hq, hk, d, page, dtype)
    with use_backend("triton"):
        out = paged_decode_attention(q, kc, vc, bt, sl)  # automatic split-KV: > 1 split at these sizes
    ref = paged_decode_attention_reference(q, kc, vc, bt, sl, d ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) < BOUND[dtype]


@pytest.mark.parametrize("page", [16, 32, 256])
def test_split_kv_on_and_off_agree(page):
    q, kc, vc, bt, sl = make_inputs([1, 17, 131, 1000], 7, 1, 64, page, torch.float32)
    ref = paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)
    with use_backend("triton"):
        outs = {n: paged_decode_attention(q, kc, vc, bt, sl, num_splits=n) for n in (1, 2, 7, 64)}
    for n, out in outs.items():
        assert rel_err(out, ref) < 1e-5, n
        assert rel_err(out, outs[1]) < 1e-6, n


def test_every_tile_alignment_with_small_tiles():
    """The kernel launched with 16-key tiles over lengths 1..70, unsplit and in 3 splits: every
    position of the last partial tile and of the split boundaries relative to tiles and pages."""
    from omni_kernels.kernels import paged_decode_attention as kernel

    q, kc, vc, bt, sl = make_inputs(list(range(1, 71)), 2, 1, 32, 16, torch.float32)
    ref = paged_decode_attention_reference(q, kc, vc, bt, sl, 0.25)
    config = {"BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    for num_splits in (1, 3):
        assert rel_err(kernel.launch(q, kc, vc, bt, sl, 0.25, num_splits, config=config), ref) < 1e-5, num_splits


def test_automatic_num_splits():
    assert pick_num_splits(256, 4, 7, 4096) == 1  # 1024 programs: enough without splitting
    assert pick_num_splits(4, 1, 7, 1000) == 4  # short: >= 256 keys per split
    assert pick_num_splits(1, 4, 7, 32768) == 64  # capped
    assert pick_num_splits(2, 4, 7, 8192) == 32  # 8 programs x 32 splits ~ 2 per SM on 132 SMs
    assert pick_num_splits(1, 1, 7, 1) == 1


def test_large_gqa_group_uses_several_head_blocks():
    # 72 query heads per KV head: more than the 64 rows of one tile.
    q, kc, vc, bt, sl = make_inputs([5, 70], 72, 1, 64, 16, torch.float32)
    with use_backend("triton"):
        out = paged_decode_attention(q, kc, vc, bt, sl, num_splits=2)
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_strided_q_and_cache_views(backend):
    lengths, hq, hk, d, page = [40, 3], 4, 2, 64, 16
    _, kc, vc, bt, sl = make_inputs(lengths, hq, hk, d, page, torch.float32)
    # q as a view into a fused projection; the caches stored (blocks, heads, page, D) and transposed.
    q = torch.randn(2, (hq + 2 * hk) * d)[:, : hq * d].view(2, hq, d)
    kc_t, vc_t = (c.transpose(1, 2).contiguous().transpose(1, 2) for c in (kc, vc))
    assert kc_t.stride() != kc.stride()
    with use_backend(backend):
        out = paged_decode_attention(q, kc_t, vc_t, bt, sl, num_splits=2)
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


def test_table_entries_past_the_length_are_never_read():
    q, kc, vc, bt, sl = make_inputs([3, 20], 2, 1, 64, 16, torch.float32, fill=-1)
    with use_backend("triton"):
        out = paged_decode_attention(q, kc, vc, bt, sl)
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_path_matches_reference(dtype):
    lengths, hq, hk, d, page = SHAPES["gqa7_d80_page256"]
    q, kc, vc, bt, sl = make_inputs(lengths, hq, hk, d, page, dtype)
    out = paged_decode_attention(q, kc, vc, bt, sl)
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, d ** -0.5)) < BOUND[dtype]


def test_custom_op_contract():
    q, kc, vc, bt, sl = make_inputs([5, 9], 4, 2, 64, 16, torch.float32, fill=0)
    torch.library.opcheck(torch.ops.omni_kernels.paged_decode_attention.default, (q, kc, vc, bt, sl, 0.125, 9, 0))


def test_torch_compile_fullgraph():
    q, kc, vc, bt, sl = make_inputs([5, 9], 4, 2, 64, 16, torch.float32, fill=0)

    @torch.compile(fullgraph=True, backend="eager")
    def attend(q, kc, vc, bt, sl):
        return paged_decode_attention(q, kc, vc, bt, sl, max_seq_len=9, num_splits=2)

    assert rel_err(attend(q, kc, vc, bt, sl), paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


def test_value_checks_run_on_cpu_or_in_debug_mode(monkeypatch):
    monkeypatch.delenv("OMNI_KERNELS_DEBUG", raising=False)
    assert values_checkable(torch.device("cpu"))
    assert not values_checkable(torch.device("cuda"))
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "1")
    assert values_checkable(torch.device("cuda"))


def _bad_cases():
    q, kc, vc, bt, sl = make_inputs([4, 20], 4, 2, 64, 16, torch.float32, fill=0)
    num_blocks = kc.shape[0]
    yield "q", dict(q=q[0])
    yield "q has dtype", dict(q=q.int(), key_cache=kc.int(), value_cache=vc.int())
    yield "key_cache", dict(key_cache=kc.half())
    yield "value_cache", dict(value_cache=vc[:, :8])
    yield "head_dim", dict(q=q[..., :32])
    yield "multiple of", dict(q=torch.randn(2, 3, 64))
    yield "stride 1", dict(q=q.transpose(1, 2).contiguous().transpose(1, 2))
    yield "stride 1", dict(key_cache=kc.transpose(2, 3).contiguous().transpose(2, 3))
    yield "empty batch", dict(q=q[:0], block_tables=bt[:0], seq_lens=sl[:0])
    yield "seq_lens has", dict(seq_lens=sl[:1])
    yield "seq_lens has dtype", dict(seq_lens=sl.float())
    yield "block_tables has 1 rows", dict(block_tables=bt[:1])
    yield "block_tables has dtype", dict(block_tables=bt.float())
    yield "capacity", dict(seq_lens=torch.tensor([4, bt.shape[1] * 16 + 1], dtype=torch.int32))
    yield "seq_lens must be >= 1", dict(seq_lens=torch.tensor([0, 20], dtype=torch.int32))
    out_of_range = bt.clone()
    out_of_range[1, 1] = num_blocks
    yield "outside", dict(block_tables=out_of_range)
    negative = bt.clone()
    negative[0, 0] = -1
    yield "outside", dict(block_tables=negative)
    yield "max_seq_len", dict(max_seq_len=19)
    yield "max_seq_len", dict(max_seq_len=0)
    yield "num_splits", dict(num_splits=0)
    yield "num_splits", dict(num_splits=1000)
    yield "scale", dict(scale=float("nan"))


@pytest.mark.parametrize("message,override", list(_bad_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_value_error(message, override):
    q, kc, vc, bt, sl = make_inputs([4, 20], 4, 2, 64, 16, torch.float32, fill=0)
    kwargs = dict(q=q, key_cache=kc, value_cache=vc, block_tables=bt, seq_lens=sl)
    kwargs.update(override)
    q, kc, vc, bt, sl = (kwargs.pop(k) for k in ("q", "key_cache", "value_cache", "block_tables", "seq_lens"))
    with pytest.raises(ValueError, match=message):
        paged_decode_attention(q, kc, vc, bt, sl, **kwargs)
