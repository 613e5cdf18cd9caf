"""Block-sparse attention: the Triton kernel (under the interpreter, forced with
use_backend("triton")) and the CPU torch path against the fp32 reference, FlexAttention (eager, on
CPU) and transformers' own Qwen2.5-Omni audio / vision attention; the mask builders; every
ValueError.

Error bounds, rel_err = ||out - expected|| / ||expected|| with the expected output in fp32:
  fp32: 1e-5  the interpreter's fp32 dots are exact; only the online-softmax order differs (~3e-7)
  fp16: 3e-3  fp16 inputs, P rounded to fp16 before P @ V, fp16 output (~2.5e-4 measured)
  bf16: 1e-2  the cast path (bf16 -> fp32 kernel under the interpreter, see NOTES), output rounded
              to bf16 (~2e-3 measured; bf16 has 8 significant bits)
"""
import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from omni_kernels.backend import use_backend
from omni_kernels.block_mask import (
    BlockSparseMask, audio_chunk_block_mask, chunked_prefill_block_mask, indices_from_table, segment_block_mask,
    vision_full_block_mask, vision_window_block_mask, vision_window_index,
)
from omni_kernels.block_sparse_attention import block_sparse_attention
from omni_kernels.kernels import block_sparse_attention as kernel_module
from omni_kernels.reference.block_sparse_attention import block_sparse_attention_reference

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


# -- helpers ---------------------------------------------------------------------------------

def blocks_of_dense(dense: torch.Tensor, block_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force from an element mask [B, H, Lq, Lk]: (visited, full) bool [B, H, M, N]. A block
    is visited iff it holds an allowed pair, full iff every in-range pair is allowed."""
    qb, kb = block_size
    b, h, lq, lk = dense.shape
    m, n = -(-lq // qb), -(-lk // kb)
    pad = (0, n * kb - lk, 0, m * qb - lq)
    any_ = F.pad(dense, pad, value=False).reshape(b, h, m, qb, n, kb)
    all_ = F.pad(dense, pad, value=True).reshape(b, h, m, qb, n, kb)
    return any_.any(5).any(3), all_.all(5).all(3)


def mask_from_dense(dense: torch.Tensor, block_size, causal=False, q_segment_ids=None,
                    kv_segment_ids=None) -> BlockSparseMask:
    """The minimal BlockSparseMask whose to_dense() is `dense` (given the element spec it encodes)."""
    visited, full = blocks_of_dense(dense, block_size)
    num, idx = indices_from_table(visited & ~full)
    fnum, fidx = indices_from_table(full)
    return BlockSparseMask(num, idx, block_size, dense.shape[2:], full_kv_num_blocks=fnum, full_kv_indices=fidx,
                           causal=causal, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)


def causal_dense(q_len, kv_len):
    return torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + (kv_len - q_len)


def segment_dense(cu):
    length = cu[-1]
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), torch.tensor(cu).diff())
    assert seg.numel() == length
    return seg[:, None] == seg[None, :]


def make_qkv(batch, hq, hk, q_len, kv_len, head_dim, dtype, strided=False):
    if strided:  # q, k, v as views of one fused projection (B, L, H*, D): non-contiguous strides
        assert q_len == kv_len
        qkv = torch.randn(batch, q_len, hq + 2 * hk, head_dim).to(dtype)
        q, k, v = qkv.split([hq, hk, hk], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return (torch.randn(batch, hq, q_len, head_dim).to(dtype), torch.randn(batch, hk, kv_len, head_dim).to(dtype),
            torch.randn(batch, hk, kv_len, head_dim).to(dtype))


def run_kernel(q, k, v, mask, **kw):
    with use_backend("triton"):
        return block_sparse_attention(q, k, v, mask, **kw)


def run_flex(q, k, v, mask, scale=None):
    return flex_attention(q.float(), k.float(), v.float(), block_mask=mask.to_flex(), scale=scale, enable_gqa=True)


# -- named shapes: kernel vs reference vs FlexAttention vs the CPU torch path ----------------

def _random_blocks_mask():
    """Per-batch, per-head random block lists with no element mask (pure block sparsity), full and
    partial blocks, Lk not a multiple of the block (the bound mask on both kinds)."""
    g = torch.Generator().manual_seed(1)
    code = torch.randint(0, 3, (2, 2, 3, 5), generator=g)  # 0 none, 1 partial, 2 full
    num, idx = indices_from_table(code == 1)
    fnum, fidx = indices_from_table(code == 2)
    return BlockSparseMask(num, idx, 16, (40, 67), full_kv_num_blocks=fnum, full_kv_indices=fidx)


def _causal_segments_mask():
    """causal AND per-batch segment ids (B=2), Lq < Lk, blocks (16, 32)."""
    q_len, kv_len = 40, 75
    kv_seg = torch.stack([torch.repeat_interleave(torch.arange(3), torch.tensor([20, 30, 25])),
                          torch.repeat_interleave(torch.arange(2), torch.tensor([60, 15]))]).to(torch.int32)
    q_seg = kv_seg[:, kv_len - q_len:].contiguous()
    dense = (q_seg[:, None, :, None] == kv_seg[:, None, None, :]) & causal_dense(q_len, kv_len)
    return mask_from_dense(dense, (16, 32), causal=True, q_segment_ids=q_seg, kv_segment_ids=kv_seg)


def _empty_rows_mask():
    """q block 1's only block is partial and holds no causally allowed pair; q block 2 lists no
    block at all -> rows that see no key (output 0)."""
    num = torch.tensor([[[1, 1, 0]]], dtype=torch.int32)
    idx = torch.tensor([[[[0], [2], [0]]]], dtype=torch.int32)
    return BlockSparseMask(num, idx, 16, (40, 40), causal=True)


def _case(mask, batch, q_heads, kv_heads, head_dim, dtype, strided=False):
    return mask, batch, q_heads, kv_heads, head_dim, dtype, strided


CASES = {
    # name: (mask factory, batch, q heads, kv heads, head_dim, dtype, strided)
    "decode_L1_over_17_gqa7_d64_fp32":
        _case(lambda: chunked_prefill_block_mask(1, 17, 16), 1, 7, 1, 64, torch.float32),
    "causal_L17_mha_d80_fp16":
        _case(lambda: chunked_prefill_block_mask(17, 17, 16), 1, 2, 2, 80, torch.float16),
    "chunk_131_of_200_gqa7_d128_fp32":
        _case(lambda: chunked_prefill_block_mask(131, 200, 32), 1, 7, 1, 128, torch.float32),
    "segments_L131_b2_mha_d64_fp16_strided":
        _case(lambda: segment_block_mask([0, 3, 60, 61, 131], 16), 2, 2, 2, 64, torch.float16, strided=True),
    "segments_L131_gqa2_d128_bf16":
        _case(lambda: segment_block_mask([0, 50, 131], 32), 1, 2, 1, 128, torch.bfloat16),
    "causal_L131_blocks128_tiles64_d64_fp16":
        _case(lambda: chunked_prefill_block_mask(131, 131, 128), 1, 1, 1, 64, torch.float16),
    "segments_L128_even_kv_full_blocks_gqa7_d128_fp16":
        _case(lambda: segment_block_mask([0, 64, 100, 128], 32), 1, 7, 1, 128, torch.float16),
    "segments_L100_blocks_q16_kv64_d80_fp32":
        _case(lambda: segment_block_mask([0, 30, 31, 100], (16, 64)), 1, 2, 2, 80, torch.float32),
    "random_blocks_b2_h2_no_element_mask_d64_fp32":
        _case(_random_blocks_mask, 2, 2, 1, 64, torch.float32),
    "causal_and_segments_b2_gqa2_d64_fp16":
        _case(_causal_segments_mask, 2, 2, 1, 64, torch.float16),
    "empty_rows_d64_fp32":
        _case(_empty_rows_mask, 1, 2, 2, 64, torch.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference_flex_and_torch_path(name):
    factory, batch, hq, hk, head_dim, dtype, strided = CASES[name]
    mask = factory()
    q_len, kv_len = mask.seq_lengths
    q, k, v = make_qkv(batch, hq, hk, q_len, kv_len, head_dim, dtype, strided)
    scale = head_dim ** -0.5
    expected = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask, scale)
    out = run_kernel(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, expected) < TOL[dtype], rel_err(out, expected)
    flex = run_flex(q, k, v, mask)
    assert rel_err(flex, expected) < 1e-5
    assert rel_err(out, flex) < TOL[dtype]
    torch_path = block_sparse_attention(q, k, v, mask)  # CPU, no forcing: SDPA with the dense mask
    assert torch.isfinite(torch_path).all()
    assert rel_err(torch_path, expected) < TOL[dtype]
    # Rows that see no key are exactly 0 on every path, as in FlexAttention.
    empty = ~mask.to_dense().any(-1).expand(batch, hq, q_len)
    if name == "empty_rows_d64_fp32":
        assert empty.sum() > 0
    for result in (out, torch_path, flex):
        assert (result[empty] == 0).all()


def test_kernel_scale_and_head_broadcast():
    """An explicit scale, and a mask with per-head block lists (H = Hq) over a GQA 4:2 layout."""
    causal = causal_dense(48, 48)
    dense = torch.stack([causal, segment_dense([0, 20, 48]), causal & segment_dense([0, 9, 48]),
                         torch.ones(48, 48, dtype=torch.bool)])[None]
    visited, _ = blocks_of_dense(dense, (16, 16))
    num, idx = indices_from_table(visited)  # all visited blocks as partial (the element mask is all-true)
    mask = BlockSparseMask(num, idx, 16, (48, 48))
    q, k, v = make_qkv(1, 4, 2, 48, 48, 64, torch.float32)
    out = run_kernel(q, k, v, mask, scale=0.3)
    expected = block_sparse_attention_reference(q, k, v, mask, 0.3)
    assert rel_err(out, expected) < TOL[torch.float32]
    assert rel_err(run_flex(q, k, v, mask, scale=0.3), expected) < 1e-5


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the other q blocks do read the poisoned blocks
def test_kernel_reads_only_listed_blocks():
    """Poison (NaN) every kv block a q block does not list: that q block's rows stay finite and equal
    to the clean result, so the kernel never loads an unlisted block."""
    mask = segment_block_mask([0, 10, 40, 41, 64], 16)
    q, k, v = make_qkv(1, 2, 1, 64, 64, 64, torch.float32)
    clean = run_kernel(q, k, v, mask)
    visited = mask.block_table()[0, 0] > 0
    assert (~visited).any()
    for m in range(mask.num_q_blocks):
        kp, vp = k.clone(), v.clone()
        for n in (~visited[m]).nonzero().flatten().tolist():
            kp[:, :, n * 16:(n + 1) * 16] = float("nan")
            vp[:, :, n * 16:(n + 1) * 16] = float("nan")
        out = run_kernel(q, kp, vp, mask)
        rows = slice(m * 16, (m + 1) * 16)
        assert torch.isfinite(out[:, :, rows]).all(), m
        assert torch.equal(out[:, :, rows], clean[:, :, rows]), m


def test_unused_index_entries_are_ignored():
    """Entries past kv_num_blocks may hold anything (FlexAttention leaves garbage there)."""
    mask = chunked_prefill_block_mask(40, 40, 16)
    idx = F.pad(mask.kv_indices, (0, 2), value=0).clone()
    full_idx = F.pad(mask.full_kv_indices, (0, 2), value=0).clone()
    used = torch.arange(idx.shape[-1]) < mask.kv_num_blocks[..., None]
    idx[~used] = 12345
    full_used = torch.arange(full_idx.shape[-1]) < mask.full_kv_num_blocks[..., None]
    full_idx[~full_used] = -7
    garbage = BlockSparseMask(mask.kv_num_blocks, idx, 16, (40, 40), full_kv_num_blocks=mask.full_kv_num_blocks,
                              full_kv_indices=full_idx, causal=True)
    assert torch.equal(garbage.to_dense(), mask.to_dense())
    q, k, v = make_qkv(1, 1, 1, 40, 40, 64, torch.float32)
    assert torch.equal(run_kernel(q, k, v, garbage), run_kernel(q, k, v, mask))


def test_flex_roundtrip():
    """A FlexAttention BlockMask from create_block_mask (bottom-right causal, Lq < Lk, lengths not
    multiples of the block) -> BlockSparseMask.from_flex -> kernel == FlexAttention on the original."""
    q_len, kv_len = 37, 70

    def causal_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + (kv_len - q_len)

    flex_mask = create_block_mask(causal_mod, None, None, q_len, kv_len, device="cpu", BLOCK_SIZE=16)
    mask = BlockSparseMask.from_flex(flex_mask, causal=True)
    assert torch.equal(mask.to_dense()[0, 0], causal_dense(q_len, kv_len))
    assert torch.equal(mask.to_flex().to_dense(), flex_mask.to_dense())
    # Same visited blocks as our builder (FlexAttention marks the last, ragged q block partial
    # where ours says full: both are exact).
    ours = chunked_prefill_block_mask(q_len, kv_len, 16)
    assert torch.equal(mask.block_table() > 0, ours.block_table() > 0)
    q, k, v = make_qkv(1, 2, 2, q_len, kv_len, 64, torch.float32)
    expected = flex_attention(q, k, v, block_mask=flex_mask)
    assert rel_err(run_kernel(q, k, v, mask), expected) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_custom_op_opcheck(backend):
    """torch.library.opcheck: schema, fake (meta) kernel, dispatch -- on both implementations."""
    mask = segment_block_mask([0, 7, 20], 16)
    q, k, v = make_qkv(1, 2, 1, 20, 20, 64, torch.float32)
    args = (q, k, v, mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
            mask.q_segment_ids, mask.kv_segment_ids, 16, 16, False, 0.125)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.omni_kernels.block_sparse_attention.default, args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_path_low_precision(dtype):
    mask = chunked_prefill_block_mask(33, 50, 16)
    q, k, v = make_qkv(2, 4, 2, 33, 50, 80, dtype)
    out = block_sparse_attention(q, k, v, mask)
    expected = block_sparse_attention_reference(q.float(), k.float(), v.float(), mask, 80 ** -0.5)
    assert out.dtype == dtype and rel_err(out, expected) < TOL[dtype]


# -- against transformers' own attention -----------------------------------------------------

@pytest.fixture(scope="module")
def omni():
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni
    return modeling_qwen2_5_omni


def _capture(module):
    seen = {}

    def hook(mod, args, kwargs, out):
        seen.update(hidden=args[0] if args else kwargs["hidden_states"], kwargs=kwargs, out=out)

    module.register_forward_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("feature_lens,n_window", [
    ([450, 130], 100), ([200], 100), ([1], 100), ([201, 400, 3, 999], 100), ([37, 16, 15], 8), ([5000], 100),
])
def test_audio_cu_seqlens_match_transformers(omni, feature_lens, n_window):
    lens = torch.tensor(feature_lens)
    features = torch.zeros(1, int(lens.sum()))
    _, chunk_lengths = omni.chunk_and_pad_features(features, lens, n_window)
    expected = omni.get_audio_cu_seqlens(chunk_lengths)
    mask, cu_seqlens = audio_chunk_block_mask(lens, n_window, block_size=64)
    assert cu_seqlens.dtype == torch.int32 and torch.equal(cu_seqlens, expected)
    assert mask.seq_lengths == (int(expected[-1]),) * 2
    # Sequence length = the encoder's tokens: sum over audios of the stride-2 conv output of each chunk.


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_audio_encoder_attention_matches_transformers(omni, attn_implementation):
    """Run a tiny Qwen2_5OmniAudioEncoder; take its first layer's attention input, cu_seqlens and
    output; recompute the layer with the block-sparse kernel over audio_chunk_block_mask."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig

    config = Qwen2_5OmniAudioEncoderConfig(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2,
                                           encoder_ffn_dim=64, d_model=128, output_dim=32, max_source_positions=200,
                                           n_window=100)
    config._attn_implementation = attn_implementation
    encoder = omni.Qwen2_5OmniAudioEncoder(config).eval()
    seen = _capture(encoder.layers[0].self_attn)
    feature_lens = torch.tensor([450, 130])  # chunks of 200, 200, 50 | 130 frames -> 100, 100, 25 | 65 tokens
    with torch.no_grad():
        encoder(torch.randn(16, int(feature_lens.sum())), feature_lens=feature_lens)

    mask, cu_seqlens = audio_chunk_block_mask(feature_lens, config.n_window, block_size=32)
    assert torch.equal(cu_seqlens, seen["kwargs"]["cu_seqlens"])
    attn = encoder.layers[0].self_attn
    hidden = seen["hidden"]
    length, heads = hidden.shape[0], attn.num_heads
    with torch.no_grad():
        q, k, v = (proj(hidden).reshape(length, heads, -1).transpose(0, 1)[None]
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = run_kernel(q, k, v, mask, scale=attn.scaling)
        out = attn.out_proj(out[0].transpose(0, 1).reshape(length, -1))
    assert rel_err(out, seen["out"]) < TOL[torch.float32]


VISION_GRIDS = [
    [[1, 12, 20]], [[1, 16, 16]], [[2, 8, 8], [1, 4, 6]], [[1, 34, 50]], [[3, 14, 22], [1, 2, 2]], [[1, 8, 40]],
]


@pytest.mark.parametrize("grid", VISION_GRIDS)
def test_vision_window_index_matches_transformers(omni, grid):
    grid_thw = torch.tensor(grid)
    expected_index, expected_cu = omni.get_vision_window_index(grid_thw, spatial_merge_size=2, window_size=112,
                                                               patch_size=14)
    window_index, cu = vision_window_index(grid_thw, 112, 14, 2)
    assert torch.equal(window_index, expected_index)
    assert cu.dtype == torch.int32 and torch.equal(cu, expected_cu)
    mask, window_index2, cu2 = vision_window_block_mask(grid_thw, block_size=64)
    assert torch.equal(window_index2, expected_index) and torch.equal(cu2, expected_cu)
    from transformers.vision_utils import get_vision_cu_seqlens
    full_mask, full_cu = vision_full_block_mask(grid_thw, block_size=64)
    assert torch.equal(full_cu, get_vision_cu_seqlens(grid_thw))
    assert mask.seq_lengths == full_mask.seq_lengths == (int(grid_thw.prod(1).sum()),) * 2


def test_vision_encoder_attention_matches_transformers(omni):
    """A tiny Qwen2_5OmniVisionEncoder (head_dim 80, window layer 0, full-attention layer 1): both
    layers' attention recomputed with the kernel over the window / full block masks."""
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniVisionEncoderConfig

    config = Qwen2_5OmniVisionEncoderConfig(depth=2, hidden_size=160, num_heads=2, intermediate_size=64,
                                            out_hidden_size=32, fullatt_block_indexes=[1])
    config._attn_implementation = "sdpa"
    encoder = omni.Qwen2_5OmniVisionEncoder(config).eval()
    seen = [_capture(block.attn) for block in encoder.blocks]
    grid_thw = torch.tensor([[1, 12, 20], [2, 8, 8]])
    with torch.no_grad():
        encoder(torch.randn(int(grid_thw.prod(1).sum()), 3 * 2 * 14 * 14), grid_thw=grid_thw)

    window_mask, _, cu_window = vision_window_block_mask(grid_thw, block_size=32)
    full_mask, cu_full = vision_full_block_mask(grid_thw, block_size=32)
    assert window_mask.density() < full_mask.density() < 1
    for layer, mask, cu in ((0, window_mask, cu_window), (1, full_mask, cu_full)):
        assert torch.equal(cu, seen[layer]["kwargs"]["cu_seqlens"])
        attn = encoder.blocks[layer].attn
        hidden, (cos, sin) = seen[layer]["hidden"], seen[layer]["kwargs"]["position_embeddings"]
        length = hidden.shape[0]
        with torch.no_grad():
            q, k, v = (proj(hidden).reshape(length, attn.num_heads, -1) for proj in (attn.q, attn.k, attn.v))
            q, k = omni.apply_rotary_pos_emb_vision(q, k, cos, sin)
            q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
            out = run_kernel(q, k, v, mask, scale=attn.scaling)
            out = attn.proj(out[0].transpose(0, 1).reshape(length, -1))
        assert rel_err(out, seen[layer]["out"]) < TOL[torch.float32], layer


# -- builders --------------------------------------------------------------------------------

def assert_minimal(mask: BlockSparseMask, expected_dense: torch.Tensor):
    """to_dense() is the intended element mask, and the block lists are exactly the blocks holding
    an allowed pair, split into full / partial correctly."""
    dense = mask.to_dense()
    assert torch.equal(dense[0, 0], expected_dense)
    visited, full = blocks_of_dense(expected_dense[None, None], mask.block_size)
    table = mask.block_table()
    assert torch.equal(table > 0, visited)
    assert torch.equal(table == 2, full & visited)
    assert mask.density() == pytest.approx(visited.float().mean().item())
    assert int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum()) == int(visited.sum())


@pytest.mark.parametrize("cu,block", [([0, 5, 40, 41, 100], 16), ([0, 64, 128], 32), ([0, 1], 16),
                                      ([0, 3, 3, 50], (16, 32)), ([0, 100, 230], 128)])
def test_segment_block_mask(cu, block):
    mask = segment_block_mask(torch.tensor(cu, dtype=torch.int32), block)
    assert mask.kv_num_blocks.dtype == torch.int32 and mask.kv_indices.dtype == torch.int32
    assert_minimal(mask, segment_dense(cu))


def test_segment_block_mask_counts():
    # Two aligned segments of 64 with 32-blocks: 2 x 2 full blocks each, nothing partial, density 1/2.
    mask = segment_block_mask([0, 64, 128], 32)
    assert mask.full_kv_num_blocks.flatten().tolist() == [2, 2, 2, 2]
    assert mask.kv_num_blocks.flatten().tolist() == [0, 0, 0, 0]
    assert mask.density() == 0.5


@pytest.mark.parametrize("q_len,kv_len,block", [(1, 17, 16), (17, 17, 16), (37, 70, 16), (131, 200, (32, 64)),
                                                (256, 256, 128)])
def test_chunked_prefill_block_mask(q_len, kv_len, block):
    mask = chunked_prefill_block_mask(q_len, kv_len, block)
    assert mask.causal
    assert_minimal(mask, causal_dense(q_len, kv_len))


def test_chunked_prefill_counts():
    mask = chunked_prefill_block_mask(1024, 1024, 128)  # 8 q blocks: 7 .. 0 full blocks + 1 diagonal each
    assert mask.full_kv_num_blocks.flatten().tolist() == list(range(8))
    assert mask.kv_num_blocks.flatten().tolist() == [1] * 8
    assert mask.density() == pytest.approx(36 / 64)
    decode = chunked_prefill_block_mask(1, 1000, 128)  # one query sees everything: all full, no masking
    assert decode.kv_num_blocks.sum() == 0 and decode.full_kv_num_blocks.item() == 8


def test_audio_chunk_block_mask_structure():
    mask, cu = audio_chunk_block_mask([450, 130], 100, block_size=32)
    assert cu.tolist() == [0, 100, 200, 225, 290]
    assert_minimal(mask, segment_dense(cu.tolist()))


@pytest.mark.parametrize("grid", [[[1, 12, 20]], [[2, 8, 8], [1, 4, 6]]])
def test_vision_block_masks_structure(grid):
    mask, _, cu = vision_window_block_mask(torch.tensor(grid), block_size=16)
    assert_minimal(mask, segment_dense(cu.tolist()))
    full, cu_full = vision_full_block_mask(torch.tensor(grid), block_size=16)
    assert_minimal(full, segment_dense(cu_full.tolist()))


def test_builders_scale_without_dense_matrices():
    """Long sequences: the builders cost O((L / block)^2), never L x L (1M x 1M bools would be 1 TB)."""
    mask = chunked_prefill_block_mask(4096, 1 << 20, 128)
    assert mask.kv_num_blocks.shape == (1, 1, 32) and int(mask.full_kv_num_blocks.max()) == 8191
    cu = torch.arange(0, (1 << 17) + 1, 1000).tolist() + [1 << 17]
    seg = segment_block_mask(cu, 128)
    assert seg.density() < 0.02
    audio, audio_cu = audio_chunk_block_mask([30000] * 8, 100)  # 8 x 5 min of audio
    assert int(audio_cu[-1]) == 8 * 150 * 100
    window, _, _ = vision_window_block_mask([[1, 200, 200]], block_size=128)
    assert window.seq_lengths == (40000, 40000) and window.density() < 0.05


# -- ValueErrors -----------------------------------------------------------------------------

def _mask_kwargs():
    base = chunked_prefill_block_mask(40, 40, 16)
    return dict(kv_num_blocks=base.kv_num_blocks, kv_indices=base.kv_indices, block_size=16, seq_lengths=(40, 40),
                full_kv_num_blocks=base.full_kv_num_blocks, full_kv_indices=base.full_kv_indices, causal=True)


I32 = torch.int32
MASK_ERRORS = {
    "kv_num_blocks dtype": (dict(kv_num_blocks=torch.ones(1, 1, 3, dtype=torch.int64)), "kv_num_blocks"),
    "kv_num_blocks ndim": (dict(kv_num_blocks=torch.ones(1, 3, dtype=I32)), "kv_num_blocks"),
    "kv_num_blocks not tensor": (dict(kv_num_blocks=[1, 1, 1]), "kv_num_blocks"),
    "q blocks vs Lq": (dict(seq_lengths=(60, 60)), "kv_num_blocks"),
    "kv_indices shape": (dict(kv_indices=torch.zeros(1, 1, 2, 1, dtype=I32)), "kv_indices"),
    "kv_indices dtype": (dict(kv_indices=torch.zeros(1, 1, 3, 1, dtype=torch.int64)), "kv_indices"),
    "num > K": (dict(kv_num_blocks=torch.full((1, 1, 3), 2, dtype=I32)), "kv_num_blocks"),
    "num < 0": (dict(kv_num_blocks=torch.full((1, 1, 3), -1, dtype=I32)), "kv_num_blocks"),
    "index out of range": (dict(kv_indices=torch.full((1, 1, 3, 1), 3, dtype=I32)), "kv_indices"),
    "negative index": (dict(kv_indices=torch.full((1, 1, 3, 1), -1, dtype=I32)), "kv_indices"),
    "full index out of range": (dict(full_kv_indices=torch.full((1, 1, 3, 2), 5, dtype=I32)), "full_kv_indices"),
    "duplicate block": (dict(kv_indices=torch.zeros(1, 1, 3, 1, dtype=I32)), "more than once"),
    "full without indices": (dict(full_kv_indices=None), "full_kv_num_blocks and full_kv_indices"),
    "full shape": (dict(full_kv_num_blocks=torch.zeros(1, 2, 3, dtype=I32)), "full_kv_num_blocks"),
    "full_kv_indices shape": (dict(full_kv_indices=torch.zeros(1, 1, 4, 2, dtype=I32)), "full_kv_indices"),
    "full dtype": (dict(full_kv_num_blocks=torch.zeros(1, 1, 3)), "full_kv_num_blocks"),
    "block_size zero": (dict(block_size=0), "block_size"),
    "block_size triple": (dict(block_size=(16, 16, 16)), "block_size"),
    "seq_lengths": (dict(seq_lengths=(40, 0)), "seq_lengths"),
    "seq_lengths type": (dict(seq_lengths=40.0), "seq_lengths"),
    "causal type": (dict(causal=1), "causal"),
    "only q segments": (dict(q_segment_ids=torch.zeros(1, 40, dtype=I32)), "q_segment_ids and kv_segment_ids"),
    "q segments shape": (dict(q_segment_ids=torch.zeros(1, 41, dtype=I32),
                              kv_segment_ids=torch.zeros(1, 40, dtype=I32)), "q_segment_ids"),
    "kv segments dtype": (dict(q_segment_ids=torch.zeros(1, 40, dtype=I32), kv_segment_ids=torch.zeros(1, 40)),
                          "kv_segment_ids"),
    "segments batch differ": (dict(q_segment_ids=torch.zeros(2, 40, dtype=I32),
                                   kv_segment_ids=torch.zeros(3, 40, dtype=I32)), "kv_segment_ids batch"),
}


@pytest.mark.parametrize("name", list(MASK_ERRORS))
def test_mask_validation(name):
    change, match = MASK_ERRORS[name]
    kwargs = {**_mask_kwargs(), **change}
    with pytest.raises(ValueError, match=match):
        BlockSparseMask(**kwargs)


def test_mask_segment_batch_must_broadcast():
    base = _mask_kwargs()
    kwargs = {**base, "kv_num_blocks": base["kv_num_blocks"].expand(2, 1, 3),
              "kv_indices": base["kv_indices"].expand(2, 1, 3, -1),
              "full_kv_num_blocks": base["full_kv_num_blocks"].expand(2, 1, 3),
              "full_kv_indices": base["full_kv_indices"].expand(2, 1, 3, -1),
              "q_segment_ids": torch.zeros(3, 40, dtype=I32), "kv_segment_ids": torch.zeros(3, 40, dtype=I32)}
    with pytest.raises(ValueError, match="q_segment_ids batch"):
        BlockSparseMask(**kwargs)


BUILDER_ERRORS = {
    "cu_seqlens start": (lambda: segment_block_mask([1, 5]), "cu_seqlens"),
    "cu_seqlens decreasing": (lambda: segment_block_mask([0, 5, 3]), "cu_seqlens"),
    "cu_seqlens float": (lambda: segment_block_mask(torch.tensor([0.0, 4.0])), "cu_seqlens"),
    "cu_seqlens short": (lambda: segment_block_mask([0]), "cu_seqlens"),
    "cu_seqlens empty": (lambda: segment_block_mask([0, 0]), "cu_seqlens"),
    "segment block_size": (lambda: segment_block_mask([0, 5], 0), "block_size"),
    "feature_lens zero": (lambda: audio_chunk_block_mask([100, 0]), "feature_lens"),
    "feature_lens 2d": (lambda: audio_chunk_block_mask([[100]]), "feature_lens"),
    "n_window": (lambda: audio_chunk_block_mask([100], 0), "n_window"),
    "kv_len < q_len": (lambda: chunked_prefill_block_mask(10, 5), "kv_len"),
    "q_len zero": (lambda: chunked_prefill_block_mask(0, 5), "q_len"),
    "prefill block_size": (lambda: chunked_prefill_block_mask(5, 5, -16), "block_size"),
    "grid shape": (lambda: vision_window_block_mask([[1, 4]]), "grid_thw"),
    "grid odd h": (lambda: vision_window_block_mask([[1, 5, 4]]), "grid_thw"),
    "grid zero t": (lambda: vision_full_block_mask([[0, 4, 4]]), "grid_thw"),
    "window_size small": (lambda: vision_window_block_mask([[1, 4, 4]], window_size=14), "window_size"),
    "patch_size": (lambda: vision_window_block_mask([[1, 4, 4]], patch_size=0), "patch_size"),
}


@pytest.mark.parametrize("name", list(BUILDER_ERRORS))
def test_builder_validation(name):
    call, match = BUILDER_ERRORS[name]
    with pytest.raises(ValueError, match=match):
        call()


def _op_inputs():
    mask = chunked_prefill_block_mask(20, 30, 16)
    q, k, v = make_qkv(2, 4, 2, 20, 30, 64, torch.float32)
    return q, k, v, mask


OP_ERRORS = {
    "q ndim": (lambda q, k, v, m: (q[0], k, v, m), "q must have 4 dims"),
    "q dtype": (lambda q, k, v, m: (q.double(), k, v, m), "q has dtype"),
    "q not tensor": (lambda q, k, v, m: (q.tolist(), k, v, m), "q must be a torch.Tensor"),
    "k dtype": (lambda q, k, v, m: (q, k.half(), v, m), "k has dtype"),
    "v device": (lambda q, k, v, m: (q, k, v.to("meta"), m), "v is on meta"),
    "k v shapes": (lambda q, k, v, m: (q, k, v[:, :1], m), "k .* and v"),
    "batch": (lambda q, k, v, m: (q, k[:1], v[:1], m), "B=2"),
    "head dim mismatch": (lambda q, k, v, m: (q, k[..., :32], v[..., :32], m), "D=64"),
    "heads": (lambda q, k, v, m: (q[:, :3], k, v, m), "multiple of k/v heads"),
    "head_dim": (lambda q, k, v, m: (q[..., :32], k[..., :32], v[..., :32], m), "head_dim"),
    "empty q": (lambda q, k, v, m: (q[:, :, :0], k, v, m), "q is empty"),
    "q stride": (lambda q, k, v, m: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v, m), "stride 1"),
    "mask type": (lambda q, k, v, m: (q, k, v, m.to_dense()), "block_mask must be a BlockSparseMask"),
    "seq_lengths": (lambda q, k, v, m: (q[:, :, :10], k, v, m), "seq_lengths"),
    "mask batch": (lambda q, k, v, m: (q, k, v, _expand_mask(m, 3, 1)), "block_mask batch"),
    "mask heads": (lambda q, k, v, m: (q, k, v, _expand_mask(m, 1, 3)), "block_mask heads"),
    "segment batch": (lambda q, k, v, m: (q, k, v, _with_segments(m, 3)), "q_segment_ids batch"),
    "mask device": (lambda q, k, v, m: (q.to("meta"), k.to("meta"), v.to("meta"), m), "block_mask is on cpu"),
}


def _expand_mask(m, batch, heads):
    def ex(t):
        return t.expand(batch, heads, *t.shape[2:])
    return BlockSparseMask(ex(m.kv_num_blocks), ex(m.kv_indices), m.block_size, m.seq_lengths,
                           full_kv_num_blocks=ex(m.full_kv_num_blocks), full_kv_indices=ex(m.full_kv_indices),
                           causal=m.causal)


def _with_segments(m, batch):
    return BlockSparseMask(m.kv_num_blocks, m.kv_indices, m.block_size, m.seq_lengths,
                           full_kv_num_blocks=m.full_kv_num_blocks, full_kv_indices=m.full_kv_indices, causal=m.causal,
                           q_segment_ids=torch.zeros(batch, 20, dtype=I32),
                           kv_segment_ids=torch.zeros(batch, 30, dtype=I32))


@pytest.mark.parametrize("name", list(OP_ERRORS))
def test_op_validation(name):
    change, match = OP_ERRORS[name]
    args = change(*_op_inputs())
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(*args)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan"), "0.1"])
def test_op_validation_scale(scale):
    q, k, v, mask = _op_inputs()
    with pytest.raises(ValueError, match="scale"):
        block_sparse_attention(q, k, v, mask, scale=scale)


def test_op_validation_kernel_block_size():
    """The kernel runs mask blocks of 16/32/64/128 (64/128 on a GPU); the torch path takes any."""
    mask = segment_block_mask([0, 20], 8)
    q, k, v = make_qkv(1, 1, 1, 20, 20, 64, torch.float32)
    with pytest.raises(ValueError, match="block_size"):
        run_kernel(q, k, v, mask)
    expected = block_sparse_attention_reference(q, k, v, mask, 0.125)
    assert rel_err(block_sparse_attention(q, k, v, mask), expected) < TOL[torch.float32]


def test_aot_configs_cover_gpu_launches():
    """Every GPU launch (blocks 64/128 either side, any dtype / head dim / EVEN_KV) picks a
    configuration listed in AOT_CONFIGS, and the list stays small."""
    assert len(kernel_module.AOT_CONFIGS) <= 100
    def key(constexprs, options):
        return tuple(sorted(constexprs.items())) + tuple(sorted(options.items()))

    specs = [kernel_module.aot_spec(c) for c in kernel_module.AOT_CONFIGS]
    listed = {key(spec["constexprs"], spec["options"]) for spec in specs}
    for dtype in ("fp16", "bf16", "fp32"):
        for head_dim in (64, 80, 128):
            for block in [(a, b) for a in kernel_module.GPU_BLOCK_SIZES for b in kernel_module.GPU_BLOCK_SIZES]:
                for even_kv in (False, True):
                    constexprs, options = kernel_module.kernel_meta(dtype, head_dim, block, even_kv)
                    assert key(constexprs, options) in listed
