"""dit_window_attention: Triton kernel (interpreter) and torch path vs the fp32 reference, and both
vs transformers' DiTAttention (which deinterleaves head 0 and rotates halves) on the same inputs.

Error bounds (helpers.rel_err, ||out - ref|| / ||ref||), per output dtype; the reference is
computed in fp32 and rounded to the output dtype:
  fp32 1e-5  (measured ~2e-7 on the kernel and torch path; ~3e-7 vs transformers)
  fp16 2e-3  (measured ~3e-4: q/k rotated in fp32 then rounded to fp16 for the dot, p in fp16)
  bf16 1.5e-2 (kernel via the fp32 cast path: ~0; torch path, bf16 SDPA on CPU: ~3e-3)
"""
import importlib
import types

import pytest
import torch
from helpers import rel_err

from omni_kernels import use_backend
from omni_kernels.dit_window_attention import dit_window_attention
from omni_kernels.kernels import dit_window_attention as kernel
from omni_kernels.reference.dit_window_attention import dit_window_attention_reference
from omni_kernels.rotary import rope_inv_freq

# The module, even once the package re-exports the function under the same name.
public = importlib.import_module("omni_kernels.dit_window_attention")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
THETA = 10000.0

# (B, H, L, D, block_size, back, ahead, dtype)
CASES = {
    "L1": (1, 2, 1, 64, 24, 0, 0, torch.float32),
    "L17_bs5_back1_B2": (2, 2, 17, 64, 5, 1, 0, torch.float32),
    "L131_bs24_back1": (1, 3, 131, 64, 24, 1, 0, torch.float32),
    "L131_bs7_ahead1_d80_fp16": (1, 2, 131, 80, 7, 0, 1, torch.float16),
    "L96_bs32_back2_ahead1_d128": (1, 2, 96, 128, 32, 2, 1, torch.float32),
    "L48_bs24_back1_ahead1_fp16": (1, 2, 48, 64, 24, 1, 1, torch.float16),
    "L70_bs24_d128_fp16": (1, 2, 70, 128, 24, 0, 0, torch.float16),
    "L40_bs1_band": (1, 2, 40, 64, 1, 3, 2, torch.float32),
    "L30_block_longer_than_L": (1, 2, 30, 64, 100, 0, 0, torch.float32),
    "L70_bs5_window_wider_than_L": (1, 2, 70, 64, 5, 10**12, 10**12, torch.float32),
    "L50_bs24_back1_bf16": (2, 2, 50, 64, 24, 1, 0, torch.bfloat16),
    "L60_H1_bs24_ahead1": (1, 1, 60, 64, 24, 0, 1, torch.float32),
}


def _inputs(B, H, L, D, dtype):
    return [torch.randn(B, H, L, D, dtype=dtype) for _ in range(3)]


def _reference(q, k, v, block_size, back, ahead):
    return dit_window_attention_reference(q, k, v, block_size, back, ahead, THETA, q.shape[-1] ** -0.5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, backend):
    B, H, L, D, block_size, back, ahead, dtype = CASES[case]
    q, k, v = _inputs(B, H, L, D, dtype)
    with use_backend(backend):
        out = dit_window_attention(q, k, v, block_size=block_size, back=back, ahead=ahead)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    ref = _reference(q, k, v, block_size, back, ahead)
    assert rel_err(out, ref) < TOL[dtype]


SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}
WIDE_Q_TILES = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}


@pytest.mark.parametrize("config", [SMALL_TILES, WIDE_Q_TILES], ids=["m16n16", "m32n16"])
@pytest.mark.parametrize("block_size,back,ahead", [(5, 1, 0), (7, 0, 1), (24, 2, 1), (3, 0, 0), (16, 1, 1)])
def test_kernel_tile_and_block_alignments(config, block_size, back, ahead):
    """Small tiles: many q tiles and KV tiles, tile edges cutting through blocks every way, so the
    per-tile KV range (and everything outside it being skipped) is exercised."""
    q, k, v = _inputs(1, 2, 83, 64, torch.float32)
    inv_freq = rope_inv_freq(64, THETA)
    out = kernel.launch(q, k, v, inv_freq, block_size, back, ahead, 64 ** -0.5, config=config)
    assert rel_err(out, _reference(q, k, v, block_size, back, ahead)) < TOL[torch.float32]


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
@pytest.mark.parametrize("config", [SMALL_TILES, None], ids=["m16n16", "default"])
def test_kernel_skips_keys_outside_the_window(config):
    """Keys no query of a tile can see are never loaded: poison them with NaN and the rows whose
    tile cannot reach them stay finite. Tiles of 16 rows, blocks of 16: q tile t covers block t
    exactly, so with back=ahead=0 it reads only keys [16t, 16t + 16)."""
    q, k, v = _inputs(1, 2, 64, 64, torch.float32)
    k[:, :, 48:] = float("nan")
    v[:, :, 48:] = float("nan")
    out = kernel.launch(q, k, v, rope_inv_freq(64, THETA), 16, 0, 0, 0.125, config=config)
    if config is None:  # one 64-row q tile sees every key; the NaN rows reach every output
        assert out[:, :, :48].isnan().any()
    else:
        assert out[:, :, :48].isfinite().all() and out[:, :, 48:].isnan().all()
        ref = _reference(q[:, :, :48], k[:, :, :48], v[:, :, :48], 16, 0, 0)
        assert rel_err(out[:, :, :48], ref) < TOL[torch.float32]


def test_torch_path_chunks(monkeypatch):
    """The torch path attends chunks of query blocks against their own KV windows: small chunks."""
    monkeypatch.setattr(public, "_TORCH_CHUNK_FRAMES", 10)
    q, k, v = _inputs(2, 2, 77, 64, torch.float32)
    for block_size, back, ahead in ((3, 1, 0), (5, 0, 1), (4, 2, 3), (24, 1, 0), (1, 0, 0)):
        with use_backend("torch"):
            out = dit_window_attention(q, k, v, block_size=block_size, back=back, ahead=ahead)
        assert rel_err(out, _reference(q, k, v, block_size, back, ahead)) < TOL[torch.float32]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_strided_inputs(backend):
    """q/k/v as views of one fused (B, L, 3, H, D) projection, and every other head: any strides
    with a contiguous last dim."""
    B, L, H, D = 2, 45, 4, 64
    qkv = torch.randn(B, L, 3, 2 * H, D)
    q, k, v = (qkv[:, :, i, ::2].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    with use_backend(backend):
        out = dit_window_attention(q, k, v, block_size=7, back=1, ahead=1, rope_theta=500.0, scale=0.2)
    ref = dit_window_attention_reference(q, k, v, 7, 1, 1, 500.0, 0.2)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_rope_only_on_head_0():
    """Heads >= 1 are plain window attention: rotating them too would change the output."""
    q, k, v = _inputs(1, 2, 40, 64, torch.float32)
    with use_backend("triton"):
        out = dit_window_attention(q, k, v, block_size=8, back=1)
    block = torch.arange(40) // 8
    diff = block[None, :] - block[:, None]
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(diff >= -1) & (diff <= 0))
    assert rel_err(out[:, 1], plain[:, 1]) < TOL[torch.float32]
    assert rel_err(out[:, 0], plain[:, 0]) > 1e-2


# ---- transformers' DiTAttention: the numerical reference for the model --------------------------

transformers_omni = pytest.importorskip("transformers.models.qwen2_5_omni.modeling_qwen2_5_omni")
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniDiTConfig  # noqa: E402


def _dit_attention(heads, head_dim, block_size):
    config = Qwen2_5OmniDiTConfig(hidden_size=heads * head_dim, num_attention_heads=heads, head_dim=head_dim,
                                  block_size=block_size, dropout=0.0)
    config._attn_implementation = "sdpa"
    return config, transformers_omni.DiTAttention(config).eval()


def test_defaults_match_transformers_config():
    config = Qwen2_5OmniDiTConfig()
    assert config.rope_parameters["rope_theta"] == THETA == public.dit_window_attention.__kwdefaults__["rope_theta"]
    assert config.block_size == 24 == public.dit_window_attention.__kwdefaults__["block_size"]
    assert (config.num_attention_heads, config.head_dim) == (16, 64)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("back,ahead", [(0, 0), (1, 0), (0, 1), (2, 1)])
@pytest.mark.parametrize("block_size,length", [(24, 61), (7, 40)])
def test_matches_transformers_dit_attention(back, ahead, block_size, length, backend):
    """Our op on DiTAttention's own q/k/v projections (views, un-rotated, interleaved RoPE on
    head 0) vs its forward (deinterleave + rotate-half on head 0, SDPA with the block_diff mask
    built by Qwen2_5OmniToken2WavDiTModel._create_block_diff and DiTDecoderLayer's comparison)."""
    B, H, D = 2, 3, 64
    config, attn = _dit_attention(H, D, block_size)
    x = torch.randn(B, length, H * D)
    position_ids = torch.arange(length)[None, :].repeat(B, 1)  # what the DiT model's forward passes
    position_embeddings = transformers_omni.Qwen2_5OmniDiTRotaryEmbedding(config)(x, position_ids)
    owner = types.SimpleNamespace(block_size=block_size, num_attention_heads=H)
    block_diff = transformers_omni.Qwen2_5OmniToken2WavDiTModel._create_block_diff(owner, x)
    mask = (block_diff >= -float(back)) & (block_diff <= float(ahead))

    captured = {}
    hook = attn.to_out[0].register_forward_pre_hook(lambda module, args: captured.setdefault("attn", args[0]))
    with torch.no_grad():
        expected = attn(x, position_embeddings=position_embeddings, attention_mask=mask)
        hook.remove()
        q, k, v = (proj(x).view(B, length, H, D).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        with use_backend(backend):
            out = dit_window_attention(q, k, v, block_size=block_size, back=back, ahead=ahead,
                                       rope_theta=config.rope_parameters["rope_theta"])
        flat = out.transpose(1, 2).reshape(B, length, H * D)
        assert rel_err(flat, captured["attn"]) < TOL[torch.float32]
        assert rel_err(attn.to_out[0](flat), expected) < TOL[torch.float32]


def test_opcheck():
    q, k, v = _inputs(1, 2, 30, 64, torch.float32)
    torch.library.opcheck(torch.ops.omni_kernels.dit_window_attention.default, (q, k, v, 7, 1, 0, THETA, 0.125))


# ---- validation -------------------------------------------------------------------------------

def _bad_calls():
    q, k, v = _inputs(1, 2, 10, 64, torch.float32)
    wide = torch.randn(1, 2, 10, 128)
    return [
        ("q must be a torch.Tensor", (q.tolist(), k, v), {}),
        ("q must have 4 dims", (q[0], k[0], v[0]), {}),
        ("q has dtype", (q.to(torch.int32), k, v), {}),
        ("k has dtype", (q, k.half(), v), {}),
        ("v has dtype", (q, k, v.double()), {}),
        ("k is on meta", (q, k.to("meta"), v), {}),
        ("v must be a torch.Tensor", (q, k, None), {}),
        (r"k \(1, 2, 9, 64\)", (q, k[:, :, :9], v), {}),
        (r"v \(1, 1, 10, 64\)", (q, k, v[:, :1]), {}),
        ("q is empty", (q[:, :, :0], k[:, :, :0], v[:, :, :0]), {}),
        ("q is empty", (q[:0], k[:0], v[:0]), {}),
        ("head_dim", (q[..., :63], k[..., :63], v[..., :63]), {}),
        ("head_dim", (torch.randn(1, 1, 2, 258),) * 3, {}),
        ("q has 65536 heads", (torch.randn(1, 65536, 1, 2),) * 3, {}),
        ("q must have stride 1", (wide[..., ::2], k, v), {}),
        ("k must have stride 1", (q, wide[..., ::2], v), {}),
        ("v must have stride 1", (q, k, wide[..., 1::2]), {}),
        ("block_size", (q, k, v), {"block_size": 0}),
        ("block_size", (q, k, v), {"block_size": 2.5}),
        ("block_size", (q, k, v), {"block_size": True}),
        ("block_size", (q, k, v), {"block_size": "24"}),
        ("back", (q, k, v), {"back": -1}),
        ("back", (q, k, v), {"back": 1.0}),
        ("ahead", (q, k, v), {"ahead": -1}),
        ("ahead", (q, k, v), {"ahead": None}),
        ("rope_theta", (q, k, v), {"rope_theta": 0.0}),
        ("rope_theta", (q, k, v), {"rope_theta": float("inf")}),
        ("rope_theta", (q, k, v), {"rope_theta": float("nan")}),
        ("scale", (q, k, v), {"scale": -1.0}),
        ("scale", (q, k, v), {"scale": float("inf")}),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_value_errors(index):
    match, args, kwargs = _bad_calls()[index]
    with pytest.raises(ValueError, match=match):
        dit_window_attention(*args, **kwargs)
