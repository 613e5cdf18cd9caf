"""The CPU torch paths of the paged ops against the math references: decode (per-sequence K/V as a
view of consecutive blocks or one index_select, GQA folded into the query rows), prefill (prefix and
causal chunk merged by log-sum-exp, and its dense-mask fallback), at batches of very different
lengths, length 1, GQA 7:1 and 1:1, pages 16/32, fp32/fp16/bf16; `validate=False` gives the same
results; bad inputs still raise ValueError with validate=True.
"""
import importlib

import pytest
import torch

from helpers import rel_err
from test_paged_decode_attention import make_inputs as decode_inputs
from test_paged_prefill_attention import make_inputs as prefill_inputs
from omni_kernels import copy_blocks, paged_decode_attention, paged_prefill_attention, store_kv, swap_blocks
from omni_kernels.reference.kv_cache_ops import copy_blocks_reference, store_kv_reference, swap_blocks_reference
from omni_kernels.reference.paged_decode_attention import paged_decode_attention_reference
from omni_kernels.reference.paged_prefill_attention import paged_prefill_attention_reference

BOUND = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SECTIONS = {64: [16, 8, 8], 128: [16, 24, 24]}
# (q heads, kv heads, head_dim, page size)
HEADS = {"gqa7_d128_page16": (28, 4, 128, 16), "mha_d64_page32": (2, 2, 64, 32)}
DECODE_LENGTHS = {"mixed": [1, 1000, 3, 517, 32], "all_len_1": [1, 1, 1], "single": [77]}
PREFILL_PAIRS = {"mixed": [(0, 1), (0, 33), (1000, 1), (517, 40), (15, 17), (5, 0)], "single": [(300, 64)]}


def _consecutive(tables, lengths, page):
    """The same sequences with consecutive physical blocks (the view path), sequence after sequence."""
    out, start = tables.clone(), 0
    for b, length in enumerate(lengths):
        n = -(-length // page)
        out[b, :n] = torch.arange(start, start + n, dtype=torch.int32)
        start += n
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("lengths", DECODE_LENGTHS, ids=str)
def test_decode_torch_path(lengths, heads, dtype):
    hq, hk, d, page = HEADS[heads]
    lengths = DECODE_LENGTHS[lengths]
    q, kc, vc, bt, sl = decode_inputs(lengths, hq, hk, d, page, dtype)
    for tables in (bt, _consecutive(bt, lengths, page)):
        ref = paged_decode_attention_reference(q, kc, vc, tables, sl, d ** -0.5)
        out = paged_decode_attention(q, kc, vc, tables, sl)
        assert out.dtype == dtype and out.shape == q.shape
        assert rel_err(out, ref) < BOUND[dtype]
        trusted = paged_decode_attention(q, kc, vc, tables, sl, validate=False)
        assert torch.equal(trusted, out)


def test_decode_int64_tables_and_strided_q_without_validation():
    q, kc, vc, bt, sl = decode_inputs([9, 40], 8, 2, 64, 16, torch.float32)
    q = torch.randn(2, 12 * 64)[:, : 8 * 64].view(2, 8, 64)  # a view into a fused qkv
    out = paged_decode_attention(q, kc, vc, bt.long(), sl.long(), validate=False)
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


@pytest.mark.parametrize("dense_fallback", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=str)
@pytest.mark.parametrize("pairs", PREFILL_PAIRS, ids=str)
def test_prefill_torch_path(pairs, heads, dtype, dense_fallback, monkeypatch):
    if dense_fallback:  # the path for torch builds without the CPU flash op (and CUDA tensors)
        module = importlib.import_module("omni_kernels.paged_prefill_attention")
        monkeypatch.setattr(module, "_FLASH_CPU", None)
    hq, hk, d, page = HEADS[heads]
    pairs = PREFILL_PAIRS[pairs]
    q, pos, kc, vc, bt, cu, sl = prefill_inputs(pairs, hq, hk, d, page, dtype)
    lengths = sl.tolist()
    for tables in (bt, _consecutive(bt, lengths, page)):
        ref = paged_prefill_attention_reference(q, pos, kc, vc, tables, cu, sl, SECTIONS[d], 1e6, d ** -0.5)
        out = paged_prefill_attention(q, pos, kc, vc, tables, cu, sl, mrope_section=SECTIONS[d])
        assert out.dtype == dtype and out.shape == q.shape
        assert rel_err(out, ref) < BOUND[dtype]
        trusted = paged_prefill_attention(q, pos, kc, vc, tables, cu, sl, mrope_section=SECTIONS[d], validate=False)
        assert torch.equal(trusted, out)


def test_store_copy_swap_without_validation():
    k_cache, v_cache = torch.randn(8, 16, 2, 64), torch.randn(8, 16, 2, 64)
    key, value = torch.randn(5, 2, 64), torch.randn(5, 2, 64)
    slots = torch.tensor([3, -1, 40, 127, 17])
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    store_kv_reference(key, value, ref_k, ref_v, slots)
    store_kv(key, value, k_cache, v_cache, slots, validate=False)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    mapping = torch.tensor([[0, 5], [2, 6]])
    copy_blocks_reference([ref_k], [ref_v], mapping)
    copy_blocks([k_cache], [v_cache], mapping, validate=False)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    dst, ref_dst = torch.zeros(3, 16, 2, 64), torch.zeros(3, 16, 2, 64)
    swap_blocks_reference(k_cache, ref_dst, torch.tensor([[7, 0], [1, 2]]))
    swap_blocks(k_cache, dst, torch.tensor([[7, 0], [1, 2]]), validate=False)
    assert torch.equal(dst, ref_dst)


def test_bad_values_still_raise_with_validate_true():
    q, kc, vc, bt, sl = decode_inputs([4, 20], 4, 2, 64, 16, torch.float32, fill=0)
    bad = bt.clone()
    bad[1, 1] = kc.shape[0]
    with pytest.raises(ValueError, match="outside"):
        paged_decode_attention(q, kc, vc, bad, sl, validate=True)
    with pytest.raises(ValueError, match="seq_lens must be >= 1"):
        paged_decode_attention(q, kc, vc, bt, torch.tensor([0, 3], dtype=torch.int32), validate=True)
    with pytest.raises(ValueError, match="q must have 3 dims"):
        paged_decode_attention(q[0], kc, vc, bt, sl, validate=True)
    q, pos, kc, vc, bt, cu, sl = prefill_inputs([(4, 3), (16, 6)], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="more new tokens"):
        paged_prefill_attention(q, pos, kc, vc, bt, cu, torch.tensor([2, 22], dtype=torch.int32),
                                mrope_section=SECTIONS[64], validate=True)
    with pytest.raises(ValueError, match="mrope_section"):
        paged_prefill_attention(q, pos, kc, vc, bt, cu, sl, mrope_section=[16, 8, 9], validate=True)
    k_cache, v_cache = torch.zeros(4, 16, 2, 64), torch.zeros(4, 16, 2, 64)
    with pytest.raises(ValueError, match="twice"):
        store_kv(torch.randn(2, 2, 64), torch.randn(2, 2, 64), k_cache, v_cache, torch.tensor([3, 3]), validate=True)
    with pytest.raises(ValueError, match="destination"):
        copy_blocks([k_cache], [v_cache], torch.tensor([[0, 1], [2, 1]]), validate=True)
    with pytest.raises(ValueError, match="out of range"):
        swap_blocks(k_cache, torch.zeros(2, 16, 2, 64), torch.tensor([[0, 2]]), validate=True)


def test_decode_scratch_buffers_across_inference_mode():
    """The torch path reuses per-thread gather buffers; they must work in and out of inference mode."""
    q, kc, vc, bt, sl = decode_inputs([20, 300, 7], 4, 2, 64, 16, torch.float32)
    ref = paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)
    with torch.inference_mode():
        first = paged_decode_attention(q, kc, vc, bt, sl)
    second = paged_decode_attention(q, kc, vc, bt, sl)
    with torch.inference_mode():
        third = paged_decode_attention(q, kc, vc, bt, sl)
    assert rel_err(first, ref) < 1e-5 and torch.equal(first, second) and torch.equal(second, third)
