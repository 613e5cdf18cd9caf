"""VisionEncoder vs transformers 5.24's Qwen2_5OmniVisionEncoder on random tiny weights (fp32).

The tiny config keeps the real structure: head_dim 64 (a block-sparse kernel size), 4 blocks with
full attention at 1 and 3, window_size 56 px = 2 x 2 merged units = 16 patches per window, so
images of 4 x 6 or more patches span several (ragged) windows.
"""
import dataclasses

import numpy as np
import pytest
import torch

import omni_kernels
from helpers import rel_err
from omni_runtime.media.image import preprocess_image, preprocess_images
from omni_runtime.media.video import preprocess_video
from omni_runtime.config import RopeParameters, VisionEncoderConfig
from omni_runtime.models.vision_encoder import VisionEncoder

transformers = pytest.importorskip("transformers")
from transformers import Qwen2_5OmniVisionEncoderConfig  # noqa: E402
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniVisionEncoder  # noqa: E402

TINY = dict(depth=4, hidden_size=128, intermediate_size=96, num_heads=2, out_hidden_size=48,
            fullatt_block_indexes=[1, 3], window_size=56)
TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(1234)
    hf_config = Qwen2_5OmniVisionEncoderConfig(**TINY)
    hf_config._attn_implementation = "sdpa"
    reference = Qwen2_5OmniVisionEncoder(hf_config).eval()
    with torch.no_grad():  # non-trivial norms and larger weights than the 0.02 init
        for name, p in reference.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.05)
    ours = VisionEncoder(VisionEncoderConfig.from_dict(hf_config.to_dict())).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _compare(models, pixel_values, grid_thw, **kwargs):
    reference, ours = models
    with torch.no_grad():
        expected = reference(pixel_values, grid_thw).pooler_output
        actual = ours(pixel_values, grid_thw, **kwargs)
    assert actual.shape == expected.shape
    err = rel_err(actual, expected)
    assert err < TOL, err
    return actual


def _small(h, w, seed):
    # min/max pixels chosen so that the resized size is exactly h x w
    return preprocess_image(_image(h, w, seed), min_pixels=h * w, max_pixels=h * w)


@pytest.mark.parametrize("hw", [(56, 84), (140, 196), (84, 56), (112, 112)])
def test_image_parity(models, hw):
    pixel_values, grid_thw = _small(*hw, seed=hw[0] + hw[1])
    assert grid_thw.tolist() == [[1, hw[0] // 14, hw[1] // 14]]
    out = _compare(models, pixel_values, grid_thw)
    assert out.shape == (hw[0] * hw[1] // 28 ** 2, TINY["out_hidden_size"])


def test_two_images_batched(models):
    pixel_values, grid_thw = preprocess_images([_image(56, 84, 1), _image(140, 196, 2)], min_pixels=56 * 84,
                                               max_pixels=140 * 196)
    assert grid_thw.tolist() == [[1, 4, 6], [1, 10, 14]]
    batched = _compare(models, pixel_values, grid_thw)
    # batching changes nothing: each image alone gives the same rows
    with torch.no_grad():
        first = models[1](pixel_values[:24], grid_thw[:1])
    assert rel_err(batched[:6], first) < TOL


def test_video_parity(models):
    frames = np.stack([_image(70, 100, seed=i) for i in range(5)])  # odd T: last frame repeated
    pixel_values, grid_thw, _ = preprocess_video(frames, min_pixels=56 * 84, max_pixels=56 * 112)
    assert grid_thw[0, 0].item() == 3
    _compare(models, pixel_values, grid_thw)


def test_image_and_video_batched(models):
    image_pv, image_grid = _small(56, 84, 7)
    video_pv, video_grid, _ = preprocess_video(np.stack([_image(56, 56, i) for i in range(4)]),
                                               min_pixels=56 * 56, max_pixels=56 * 56)
    _compare(models, torch.cat([video_pv, image_pv]), torch.cat([video_grid, image_grid]))


def test_windows_matter(models):
    """Guards the test itself: with every block on full attention the output moves far away."""
    reference, ours = models
    pixel_values, grid_thw = _small(140, 196, 3)
    full_cfg = dataclasses.replace(ours.config, fullatt_block_indexes=tuple(range(TINY["depth"])))
    all_full = VisionEncoder(full_cfg).eval()
    all_full.load_state_dict(ours.state_dict())
    with torch.no_grad():
        windowed, full = ours(pixel_values, grid_thw), all_full(pixel_values, grid_thw)
    assert rel_err(windowed, full) > 1e-2


def test_triton_path_interpreter(models):
    """The same model through the Triton block-sparse kernel (interpreter), with 16-token blocks so
    that ragged windows give full, partial and skipped blocks."""
    reference, ours = models
    small_blocks = VisionEncoder(ours.config, block_size=16).eval()
    small_blocks.load_state_dict(ours.state_dict())
    pixel_values, grid_thw = _small(84, 84, 5)  # 6 x 6 patches: windows of 16, 8, 8, 4 patches
    with torch.no_grad():
        expected = reference(pixel_values, grid_thw).pooler_output
        with omni_kernels.use_backend("triton"):
            actual = small_blocks(pixel_values, grid_thw)
    assert rel_err(actual, expected) < TOL


def test_bf16_close(models):
    reference, ours = models
    pixel_values, grid_thw = _small(56, 84, 9)
    bf16 = VisionEncoder(ours.config).eval()
    bf16.load_state_dict(ours.state_dict())
    bf16.to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(pixel_values, grid_thw).pooler_output
        actual = bf16(pixel_values, grid_thw)
    assert actual.dtype == torch.bfloat16
    assert rel_err(actual.float(), expected) < 5e-2


# -- config --------------------------------------------------------------------------------------

def test_config_defaults_equal_transformers():
    """The encoder takes omni_runtime.config's VisionEncoderConfig (the one config source)."""
    hf = Qwen2_5OmniVisionEncoderConfig()
    ours = VisionEncoderConfig()
    for field in dataclasses.fields(VisionEncoderConfig):
        if field.name == "extra":
            continue
        if field.name == "rope_parameters":
            assert ours.rope_theta == hf.rope_parameters["rope_theta"]
            assert ours.rope_parameters.rope_type == hf.rope_parameters["rope_type"] == "axial"
        else:
            value = getattr(hf, field.name)
            assert getattr(ours, field.name) == (list(value) if isinstance(value, tuple) else value), field.name
    assert dataclasses.replace(VisionEncoderConfig.from_dict(hf.to_dict()), extra={}) == ours


def test_config_published_layout():
    published = {  # the shape of the 2025 config.json's thinker_config.vision_config
        "depth": 32, "embed_dim": 1280, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu",
        "hidden_size": 1280, "in_channels": 3, "in_chans": 3, "init_std": 0.02, "intermediate_size": 3420,
        "model_type": "qwen2_5_omni_vision_encoder", "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2, "tokens_per_second": 25,
        "window_size": 112,
    }
    cfg = VisionEncoderConfig.from_dict(published)
    assert (cfg.hidden_size, cfg.head_dim, cfg.depth, cfg.out_hidden_size, cfg.patch_dim) == (1280, 80, 32, 3584, 1176)
    assert cfg.fullatt_block_indexes == [7, 15, 23, 31] and cfg.rope_theta == 10000.0
    assert VisionEncoderConfig.from_dict({"num_attention_heads": 4, "num_hidden_layers": 2, "hidden_size": 256,
                                          "fullatt_block_indexes": [1],
                                          "rope_parameters": {"rope_type": "axial", "rope_theta": 500.0}}) \
        == VisionEncoderConfig(num_heads=4, depth=2, hidden_size=256, fullatt_block_indexes=[1],
                               rope_parameters=RopeParameters("axial", 500.0, None))


def test_real_size_state_dict_keys_match_transformers():
    """Key names and shapes of the published-size encoder (built on the meta device: no memory)."""
    hf_config = Qwen2_5OmniVisionEncoderConfig(hidden_size=1280, depth=2, fullatt_block_indexes=[1])
    with torch.device("meta"):
        reference = Qwen2_5OmniVisionEncoder(hf_config)
        ours = VisionEncoder(VisionEncoderConfig.from_dict(hf_config.to_dict()))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


@pytest.mark.parametrize("change,match", [
    (dict(hidden_size=100, num_heads=3), "divisible by"),
    (dict(hidden_size=96, num_heads=2), "head_dim"),  # 48: no kernel for it
    (dict(hidden_act="tanhh"), "hidden_act"),
    (dict(depth=0), "depth"),
    (dict(window_size=14), "window_size"),
    (dict(fullatt_block_indexes=[1, -1]), "fullatt_block_indexes"),
])
def test_config_errors(change, match):
    with pytest.raises(ValueError, match=match):
        VisionEncoder(VisionEncoderConfig(**{**TINY, **change}))


def test_config_rope_type_error():
    # transformers relabels "default" as "axial" (the same math); anything else is refused
    assert VisionEncoderConfig.from_dict({"rope_parameters": {"rope_type": "default"}}).rope_parameters.rope_type \
        == "axial"
    with pytest.raises(ValueError, match="axial"):
        VisionEncoderConfig.from_dict({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})


# -- input errors --------------------------------------------------------------------------------

def test_forward_errors(models):
    _, ours = models
    pixel_values, grid_thw = _small(56, 84, 11)
    cases = [
        ((pixel_values[:-1], grid_thw), "describes 24 patches"),
        ((pixel_values[:, :-1], grid_thw), "1176"),
        ((pixel_values, torch.tensor([[1, 3, 8]])), "multiples of spatial_merge_size"),
        ((pixel_values, torch.tensor([[0, 4, 6]])), "positive"),
        ((pixel_values, torch.tensor([1, 4, 6])), r"\(n, 3\)"),
        ((pixel_values, torch.tensor([[1.0, 4.0, 6.0]])), "integer"),
        ((pixel_values.to(torch.int32), grid_thw), "floating-point"),
        ((torch.full_like(pixel_values, float("nan")), grid_thw), "NaN"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            ours(*args)
    with torch.no_grad():  # a plain list grid is accepted
        assert ours(pixel_values, [[1, 4, 6]]).shape == (6, TINY["out_hidden_size"])
