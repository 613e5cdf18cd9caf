"""The three attention kernels compiled for a real GPU (TRITON_INTERPRET=0): tmrope_attention,
dit_window_attention and block_sparse_attention on CUDA tensors in fp16, bf16 and fp32 at the
model's shapes, against the fp32 references in omni_kernels/reference/, and under CUDA graph
capture (replay equals eager).

Skipped without CUDA, and when the Triton interpreter is on (tests/conftest.py sets
TRITON_INTERPRET=1 by default; benchmarks/run_gpu.sh runs this file with TRITON_INTERPRET=0).

Error bounds, rel_err = ||out - ref|| / ||ref||, the reference in fp32 from the same (rounded)
inputs:
  fp32 1e-4  the kernels' fp32 dots run as 3xTF32 (~fp32 accuracy); online-softmax order and
             exp2 differ from the reference's softmax
  fp16 3e-3  rotated q/k and the probabilities are rounded to fp16 before the dots; fp16 output
  bf16 2e-2  the same roundings with bf16's 8 significant bits; bf16 output
"""
import pytest
import torch
from helpers import capture_cuda_graph, rel_err

from omni_kernels import backend
from omni_kernels.block_mask import (
    audio_chunk_block_mask, chunked_prefill_block_mask, segment_block_mask, vision_full_block_mask,
    vision_window_block_mask,
)
from omni_kernels.block_sparse_attention import block_sparse_attention
from omni_kernels.dit_window_attention import dit_window_attention
from omni_kernels.reference.block_sparse_attention import block_sparse_attention_reference
from omni_kernels.reference.dit_window_attention import dit_window_attention_reference
from omni_kernels.reference.tmrope_attention import tmrope_attention_reference
from omni_kernels.tmrope_attention import tmrope_attention

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(backend.interpreter_active(),
                       reason="TRITON_INTERPRET=1 (tests/conftest.py's default): run with TRITON_INTERPRET=0 "
                              "to test the compiled kernels"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
BOUND = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
CUDA = "cuda"


def _randn(*shape, dtype):
    return torch.randn(*shape, device=CUDA, dtype=torch.float32).to(dtype)


def test_cuda_tensors_take_the_triton_path():
    assert backend.use_triton(torch.device(CUDA)), "OMNI_KERNELS_BACKEND forces the torch path"


# -- tmrope_attention: thinker shapes (28 q heads, 4 kv heads, d=128, mrope [16, 24, 24]) ----------

HQ, HK, D = 28, 4, 128
SECTION = [16, 24, 24]
TMROPE_SHAPES = {"single_1024": [1024], "single_4096": [4096], "varlen_1500_2048_548": [1500, 2048, 548]}


def tmrope_inputs(lengths, dtype):
    n = sum(lengths)
    q, k, v = _randn(n, HQ, D, dtype=dtype), _randn(n, HK, D, dtype=dtype), _randn(n, HK, D, dtype=dtype)
    # Positions as rope_index makes them for text + an image: t/h/w differ inside the image.
    pos = []
    for length in lengths:
        p = torch.arange(length).repeat(3, 1)
        side = 16
        lo = length // 3
        idx = torch.arange(side * side)
        p[0, lo:lo + side * side] = lo
        p[1, lo:lo + side * side] = lo + idx // side
        p[2, lo:lo + side * side] = lo + idx % side
        p[:, lo + side * side:] -= side * side - side
        pos.append(p)
    positions = torch.cat(pos, 1).to(CUDA)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=CUDA)
    return q, k, v, positions, cu


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(TMROPE_SHAPES))
def test_tmrope_attention_gpu(shape, dtype):
    lengths = TMROPE_SHAPES[shape]
    q, k, v, positions, cu = tmrope_inputs(lengths, dtype)
    out, k_rot = tmrope_attention(q, k, v, positions, cu, mrope_section=SECTION, max_seqlen=max(lengths))
    ref_out, ref_k = tmrope_attention_reference(q, k, v, positions, cu, SECTION, 1e6, D ** -0.5)
    assert out.dtype == dtype and k_rot.dtype == dtype and out.device == q.device
    assert torch.isfinite(out).all()
    assert rel_err(out, ref_out) < BOUND[dtype], rel_err(out, ref_out)
    assert rel_err(k_rot, ref_k) < BOUND[dtype], rel_err(k_rot, ref_k)


def test_tmrope_attention_fused_qkv_views_gpu():
    """q/k/v as views into one fused qkv projection output (token stride != heads * D)."""
    n, dtype = 2048, torch.bfloat16
    qkv = _randn(n, (HQ + 2 * HK) * D, dtype=dtype)
    q = qkv[:, :HQ * D].view(n, HQ, D)
    k = qkv[:, HQ * D:(HQ + HK) * D].view(n, HK, D)
    v = qkv[:, (HQ + HK) * D:].view(n, HK, D)
    _, _, _, positions, cu = tmrope_inputs([n], dtype)
    out, k_rot = tmrope_attention(q, k, v, positions, cu, mrope_section=SECTION, max_seqlen=n)
    ref_out, ref_k = tmrope_attention_reference(q, k, v, positions, cu, SECTION, 1e6, D ** -0.5)
    assert rel_err(out, ref_out) < BOUND[dtype] and rel_err(k_rot, ref_k) < BOUND[dtype]


# -- dit_window_attention: Token2Wav DiT shapes (B=2 for CFG, 16 heads, d=64, blocks of 24) -------

DIT_B, DIT_H, DIT_D, DIT_BLOCK = 2, 16, 64, 24
PATTERNS = [(0, 0), (1, 0), (0, 1)]


def dit_inputs(length, dtype):
    """Views of a (B, L, H*D) projection, as DiTAttention makes them."""
    return tuple(_randn(DIT_B, length, DIT_H, DIT_D, dtype=dtype).transpose(1, 2) for _ in range(3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("back_ahead", PATTERNS, ids=lambda p: f"back{p[0]}_ahead{p[1]}")
@pytest.mark.parametrize("length", [1000, 4096])
def test_dit_window_attention_gpu(length, back_ahead, dtype):
    back, ahead = back_ahead
    q, k, v = dit_inputs(length, dtype)
    out = dit_window_attention(q, k, v, block_size=DIT_BLOCK, back=back, ahead=ahead)
    ref = dit_window_attention_reference(q, k, v, DIT_BLOCK, back, ahead, 10000.0, DIT_D ** -0.5)
    assert out.dtype == dtype and out.device == q.device and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < BOUND[dtype], rel_err(out, ref)


# -- block_sparse_attention with the mask builders -------------------------------------------------

def _mask(name):
    """(mask, (hq, hk, d)) on the GPU, built by the public builders."""
    dev = torch.device(CUDA)
    if name == "segments_unaligned_2k":
        return segment_block_mask(torch.tensor([0, 300, 1000, 1100, 2048], device=dev)), (HQ, HK, D)
    if name == "chunked_prefill_1k_over_3k":
        return chunked_prefill_block_mask(1024, 3072, device=dev), (HQ, HK, D)
    if name == "chunked_prefill_unaligned_block64":
        return chunked_prefill_block_mask(1000, 3000, block_size=64, device=dev), (HQ, HK, D)
    if name == "audio_30s":
        return audio_chunk_block_mask(torch.tensor([3000], device=dev))[0], (20, 20, 64)
    if name == "vision_window_1280x720":
        return vision_window_block_mask(torch.tensor([[1, 52, 92]], device=dev))[0], (16, 16, 80)
    if name == "vision_full_video":
        return vision_full_block_mask(torch.tensor([[2, 36, 64]], device=dev))[0], (16, 16, 80)
    raise ValueError(name)


MASKS = ["segments_unaligned_2k", "chunked_prefill_1k_over_3k", "chunked_prefill_unaligned_block64", "audio_30s",
         "vision_window_1280x720", "vision_full_video"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_name", MASKS)
def test_block_sparse_attention_gpu(mask_name, dtype):
    mask, (hq, hk, d) = _mask(mask_name)
    q_len, kv_len = mask.seq_lengths
    q = _randn(1, hq, q_len, d, dtype=dtype)
    k, v = _randn(1, hk, kv_len, d, dtype=dtype), _randn(1, hk, kv_len, d, dtype=dtype)
    out = block_sparse_attention(q, k, v, mask)
    ref = block_sparse_attention_reference(q, k, v, mask, d ** -0.5)
    assert out.dtype == dtype and out.device == q.device
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < BOUND[dtype], rel_err(out, ref)


# -- CUDA graphs: capture + replay equals eager ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_tmrope_attention_cuda_graph(dtype):
    """Graph over static buffers with max_seqlen given (no host sync): new q/k/v/positions and new
    sequence boundaries (same bound) copied in, replay == eager."""
    lengths_a, lengths_b, max_len = [1000, 2048, 1048], [2048, 500, 1548], 2048
    q, k, v, positions, cu = tmrope_inputs(lengths_a, dtype)

    def step():
        return tmrope_attention(q, k, v, positions, cu, mrope_section=SECTION, max_seqlen=max_len)

    graph, (out, k_rot) = capture_cuda_graph(step)
    q2, k2, v2, positions2, cu2 = tmrope_inputs(lengths_b, dtype)
    for dst, src in ((q, q2), (k, k2), (v, v2), (positions, positions2), (cu, cu2)):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    eager_out, eager_k = tmrope_attention(q2, k2, v2, positions2, cu2, mrope_section=SECTION, max_seqlen=max_len)
    assert torch.equal(out, eager_out) and torch.equal(k_rot, eager_k)
    ref_out, _ = tmrope_attention_reference(q2, k2, v2, positions2, cu2, SECTION, 1e6, D ** -0.5)
    assert rel_err(out, ref_out) < BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dit_window_attention_cuda_graph(dtype):
    q, k, v = dit_inputs(2400, dtype)

    def step():
        return dit_window_attention(q, k, v, block_size=DIT_BLOCK, back=1, ahead=0)

    graph, out = capture_cuda_graph(step)
    q2, k2, v2 = dit_inputs(2400, dtype)
    for dst, src in ((q, q2), (k, k2), (v, v2)):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    eager = dit_window_attention(q2, k2, v2, block_size=DIT_BLOCK, back=1, ahead=0)
    assert torch.equal(out, eager)
    ref = dit_window_attention_reference(q2, k2, v2, DIT_BLOCK, 1, 0, 10000.0, DIT_D ** -0.5)
    assert rel_err(out, ref) < BOUND[dtype]
