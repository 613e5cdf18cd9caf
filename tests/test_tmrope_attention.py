"""Fused TMRoPE attention: Triton kernel (interpreter) vs the math reference, vs transformers'
own rotary + attention, and the CPU torch path; bad inputs.

Error bounds (relative, ||a-e||/||e||): fp32 1e-5; fp16 3e-3 (fp16 rounding of the rotated
q/k and of p before p@v); bf16 2e-2 (through the fp32 cast path under the interpreter, compared
with transformers computing in bf16).
"""
import pytest
import torch
import torch.nn as nn
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig

from helpers import rel_err
from omni_kernels import tmrope_attention, use_backend
from omni_kernels.reference.tmrope_attention import tmrope_attention_reference

BOUND = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SECTIONS = {64: [16, 8, 8], 80: [8, 16, 16], 128: [16, 24, 24]}
# name: (sequence lengths, q heads, kv heads, head_dim)
SHAPES = {
    "len1_gqa7_d128": ([1], 7, 1, 128),
    "len17_mha_d64": ([17], 2, 2, 64),
    "len131_gqa7_d128": ([131], 7, 1, 128),
    "varlen_1_17_131_d80": ([1, 17, 131], 4, 2, 80),
    "varlen_unaligned_d64": ([65, 128, 3], 2, 1, 64),
}


def make_inputs(lengths, hq, hk, d, dtype, max_pos=5000):
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, d).to(dtype) for h in (hq, hk, hk))
    positions = torch.randint(0, max_pos, (3, n))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return q, k, v, positions, cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_reference(shape, dtype):
    lengths, hq, hk, d = SHAPES[shape]
    q, k, v, pos, cu = make_inputs(lengths, hq, hk, d, dtype)
    with use_backend("triton"):
        out, k_rot = tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[d])
    ref_out, ref_k = tmrope_attention_reference(q, k, v, pos, cu, SECTIONS[d], 1e6, d ** -0.5)
    assert out.dtype == dtype and k_rot.dtype == dtype
    assert rel_err(out, ref_out) < BOUND[dtype]
    assert rel_err(k_rot, ref_k) < BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_path_matches_reference(dtype):
    lengths, hq, hk, d = SHAPES["varlen_1_17_131_d80"]
    q, k, v, pos, cu = make_inputs(lengths, hq, hk, d, dtype)
    out, k_rot = tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[d])
    ref_out, ref_k = tmrope_attention_reference(q, k, v, pos, cu, SECTIONS[d], 1e6, d ** -0.5)
    assert rel_err(out, ref_out) < BOUND[dtype] and rel_err(k_rot, ref_k) < BOUND[dtype]


def transformers_attention(q, k, v, positions, d, hq, hk, theta):
    """transformers' Qwen2.5-Omni path on one sequence: its rotary embedding (t/h/w sections),
    apply_rotary_pos_emb, and eager attention with a dense causal mask."""
    cfg = Qwen2_5OmniTextConfig(hidden_size=hq * d, num_attention_heads=hq, num_key_value_heads=hk,
                                rope_parameters={"rope_type": "default", "rope_theta": theta,
                                                 "mrope_section": SECTIONS[d]})
    rotary = hf.Qwen2_5OmniRotaryEmbedding(cfg)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
    cos, sin = rotary(qb, positions[:, None, :])
    q_rot, k_rot = hf.apply_rotary_pos_emb(qb, kb, cos, sin)
    length = q.shape[0]
    mask = torch.full((length, length), float("-inf")).triu(1).to(q.dtype)[None, None]
    module = nn.Module()
    module.num_key_value_groups = hq // hk
    out, _ = hf.eager_attention_forward(module, q_rot, k_rot, vb, mask, scaling=d ** -0.5)
    return out[0], k_rot[0].transpose(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ["len17_mha_d64", "len131_gqa7_d128"], ids=str)
def test_kernel_matches_transformers(shape, dtype):
    lengths, hq, hk, d = SHAPES[shape]
    q, k, v, pos, cu = make_inputs(lengths, hq, hk, d, dtype)
    with use_backend("triton"):
        out, k_rot = tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[d])
    hf_out, hf_k = transformers_attention(q, k, v, pos, d, hq, hk, 1e6)
    assert rel_err(out, hf_out) < BOUND[dtype]
    assert rel_err(k_rot, hf_k) < BOUND[dtype]


def test_large_positions_keep_fp32_accuracy():
    # Angles reach ~1e5 rad: the kernel's range reduction must keep cos/sin accurate.
    q, k, v, pos, cu = make_inputs([40], 2, 1, 64, torch.float32, max_pos=100_000)
    with use_backend("triton"):
        out, k_rot = tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[64])
    hf_out, hf_k = transformers_attention(q, k, v, pos, 64, 2, 1, 1e6)
    assert rel_err(out, hf_out) < 1e-5 and rel_err(k_rot, hf_k) < 1e-5


def test_strided_views_of_fused_qkv():
    # q/k/v as views into one fused projection output: token stride != H*D, no copy needed.
    n, hq, hk, d = 33, 4, 2, 64
    qkv = torch.randn(n, (hq + 2 * hk) * d)
    q = qkv[:, : hq * d].view(n, hq, d)
    k = qkv[:, hq * d: (hq + hk) * d].view(n, hk, d)
    v = qkv[:, (hq + hk) * d:].view(n, hk, d)
    pos = torch.randint(0, 100, (3, n))
    with use_backend("triton"):
        out, k_rot = tmrope_attention(q, k, v, pos, mrope_section=SECTIONS[d])
    ref_out, ref_k = tmrope_attention_reference(q, k, v, pos, torch.tensor([0, n]), SECTIONS[d], 1e6, d ** -0.5)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(k_rot, ref_k) < 1e-5


def test_custom_op_contract():
    q, k, v, pos, cu = make_inputs([5, 9], 4, 2, 64, torch.float32)
    torch.library.opcheck(torch.ops.omni_kernels.tmrope_attention.default,
                          (q, k, v, pos, cu, 9, SECTIONS[64], 1e6, 0.125))


def test_torch_compile_fullgraph():
    q, k, v, pos, cu = make_inputs([5, 9], 4, 2, 64, torch.float32)

    @torch.compile(fullgraph=True, backend="eager")
    def attend(q, k, v, pos, cu):
        return tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[64], max_seqlen=9)

    out, _ = attend(q, k, v, pos, cu)
    ref_out, _ = tmrope_attention_reference(q, k, v, pos, cu, SECTIONS[64], 1e6, 0.125)
    assert rel_err(out, ref_out) < 1e-5


def _bad_cases():
    q, k, v, pos, cu = make_inputs([4, 6], 4, 2, 64, torch.float32)
    yield "must both be", dict(q=q[..., :32])
    yield "k", dict(k=k.half())
    yield "v", dict(v=v[:5])
    yield "heads", dict(q=torch.randn(10, 3, 64))
    yield "stride 1", dict(q=q.transpose(1, 2).contiguous().transpose(1, 2))
    yield "positions", dict(positions=pos[:2])
    yield "positions", dict(positions=pos.float())
    yield "mrope_section", dict(mrope_section=[16, 8, 9])
    yield "mrope_section", dict(mrope_section=[32, 0])
    yield "cu_seqlens", dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    yield "cu_seqlens", dict(cu_seqlens=torch.tensor([0, 4, 4, 10], dtype=torch.int32))
    yield "cu_seqlens", dict(cu_seqlens=torch.tensor([10], dtype=torch.int32))
    yield "rope_theta", dict(rope_theta=-1.0)
    yield "scale", dict(scale=float("inf"))
    yield "q is empty", dict(q=q[:0], k=k[:0], v=v[:0], positions=pos[:, :0], cu_seqlens=None)
    yield "q has dtype", dict(q=q.int(), k=k.int(), v=v.int())


@pytest.mark.parametrize("message,override", list(_bad_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_value_error(message, override):
    q, k, v, pos, cu = make_inputs([4, 6], 4, 2, 64, torch.float32)
    kwargs = dict(q=q, k=k, v=v, positions=pos, cu_seqlens=cu, mrope_section=SECTIONS[64])
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        tmrope_attention(**kwargs)


def test_forcing_triton_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, pos, cu = make_inputs([4], 2, 1, 64, torch.float32)
    with use_backend("triton"), pytest.raises(ValueError, match="TRITON_INTERPRET"):
        tmrope_attention(q, k, v, pos, cu, mrope_section=SECTIONS[64])
