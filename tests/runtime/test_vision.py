"""Image / video preprocessing vs transformers 5.24 (reference only; the runtime never imports it).

Images: `Qwen2VLImageProcessorPil`, the processor transformers builds for Qwen2.5-Omni without
torchvision -- compared bitwise. Videos: transformers' `Qwen2VLVideoProcessor` imports torchvision at
module level (not installable here), so the reference is assembled from transformers' own pieces --
its `smart_resize` and `patchify` read from the module source without importing it, its fused
mean/std -- plus torchvision's CPU uint8 BICUBIC resize, which is torch's native uint8 interpolate
(restated below from torchvision's `resize_image`). Frame sampling vs qwen-omni-utils' rule on
frames decoded by transformers' `read_video_pyav`.
"""
import ast
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from omni_runtime.media.image import image_kwargs_from_preprocessor_config, preprocess_image, preprocess_images
from omni_runtime.media.video import load_video, preprocess_video, sample_frame_indices
from omni_runtime.media.vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, smart_resize

transformers = pytest.importorskip("transformers")
from transformers import Qwen2VLImageProcessorPil  # noqa: E402


@pytest.fixture(scope="module")
def pil_processor():
    return Qwen2VLImageProcessorPil()


def _random_image(h, w, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _smooth_frames(n, h, w):
    """Frames whose content identifies the frame index even after lossy coding."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        r = (x * 255 // max(w - 1, 1))
        g = (y * 255 // max(h - 1, 1))
        b = np.full_like(x, (i * 8) % 256)
        frames.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(frames)


# -- images vs Qwen2VLImageProcessorPil ----------------------------------------------------------

@pytest.mark.parametrize("hw", [(50, 80), (300, 200), (37, 41), (1200, 900), (28, 28), (5, 700)])
def test_image_matches_transformers(pil_processor, hw):
    """Sizes cover: round to 28, min_pixels upscale, max_pixels downscale, extreme aspect ratio."""
    image = _random_image(*hw, seed=hw[0])
    ref = pil_processor(images=Image.fromarray(image), return_tensors="np")
    pixel_values, grid_thw = preprocess_image(image)
    assert pixel_values.dtype == torch.float32
    assert grid_thw.tolist() == ref["image_grid_thw"].tolist()
    np.testing.assert_array_equal(pixel_values.numpy(), ref["pixel_values"])  # bitwise: max abs diff 0


def test_image_input_layouts_match_transformers(pil_processor):
    """PIL RGB/RGBA/L/P, numpy HWC/CHW, torch tensor, float [0, 1] and float 0..255."""
    rgb = _random_image(45, 70, seed=1)
    rgba = _random_image(45, 70, channels=4, seed=2)
    gray = _random_image(45, 70, channels=1, seed=3)[..., 0]
    cases = [
        (Image.fromarray(rgba, "RGBA"), Image.fromarray(rgba, "RGBA")),
        (Image.fromarray(gray, "L"), Image.fromarray(gray, "L")),
        (Image.fromarray(rgb).convert("P"), Image.fromarray(rgb).convert("P")),
        (np.moveaxis(rgb, -1, 0).copy(), Image.fromarray(rgb)),
        (torch.from_numpy(rgb), Image.fromarray(rgb)),
        (rgba, rgba),  # numpy RGBA: transformers composites onto white
        (rgb.astype(np.float32), Image.fromarray(rgb)),  # integer-valued floats = 0..255
        (rgb.astype(np.float64) / 255, Image.fromarray(rgb)),  # [0, 1] floats, rounded back to uint8
    ]
    for ours_in, ref_in in cases:
        ref = pil_processor(images=ref_in, return_tensors="np")
        pixel_values, grid_thw = preprocess_image(ours_in)
        assert grid_thw.tolist() == ref["image_grid_thw"].tolist()
        np.testing.assert_array_equal(pixel_values.numpy(), ref["pixel_values"])


def test_image_pixel_bounds_and_batch_match_transformers():
    images = [_random_image(300, 500, seed=4), _random_image(90, 60, seed=5)]
    kwargs = dict(min_pixels=28 * 28 * 8, max_pixels=28 * 28 * 40)
    ref = Qwen2VLImageProcessorPil(**kwargs)(images=[Image.fromarray(i) for i in images], return_tensors="np")
    pixel_values, grid_thw = preprocess_images(images, **kwargs)
    assert grid_thw.tolist() == ref["image_grid_thw"].tolist()
    np.testing.assert_array_equal(pixel_values.numpy(), ref["pixel_values"])


def test_preprocessor_config_kwargs_match_transformers():
    config = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
              "temporal_patch_size": 2, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
              "image_processor_type": "Qwen2VLImageProcessor"}
    kwargs = image_kwargs_from_preprocessor_config(config)
    assert kwargs["max_pixels"] == 12845056 and kwargs["min_pixels"] == 3136
    image = _random_image(1100, 1000, seed=6)  # above the class default max_pixels, below the config's
    ref = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)(images=Image.fromarray(image),
                                                                         return_tensors="np")
    pixel_values, grid_thw = preprocess_image(image, **kwargs)
    assert grid_thw.tolist() == ref["image_grid_thw"].tolist() == [[1, 78, 72]]
    np.testing.assert_array_equal(pixel_values.numpy(), ref["pixel_values"])
    sized = image_kwargs_from_preprocessor_config({"size": {"shortest_edge": 100, "longest_edge": 200}})
    assert sized == {"min_pixels": 100, "max_pixels": 200}


def test_torch_resize_backend_close_to_pil():
    """The torchvision-equivalent backend differs from PIL only by resampling rounding (sanity)."""
    image = _smooth_frames(1, 120, 90)[0]
    a, ga = preprocess_image(image)
    b, gb = preprocess_image(image, resize_backend="torch")
    assert ga.tolist() == gb.tolist()
    assert (a - b).abs().max().item() < 3 / 255 / min(OPENAI_CLIP_STD)


# -- videos --------------------------------------------------------------------------------------

def _transformers_video_reference_fns():
    """smart_resize and Qwen2VLVideoProcessor.patchify from transformers' source file, which cannot be
    imported without torchvision."""
    import transformers.models.qwen2_vl as pkg

    path = inspect.getfile(pkg).replace("__init__.py", "video_processing_qwen2_vl.py")
    tree = ast.parse(open(path).read())
    wanted = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "smart_resize":
            wanted["smart_resize"] = node
        if isinstance(node, ast.ClassDef) and node.name == "Qwen2VLVideoProcessor":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "patchify":
                    item.returns = None
                    wanted["patchify"] = item
    assert set(wanted) == {"smart_resize", "patchify"}
    namespace = {"math": math, "torch": torch}
    module = ast.Module(body=list(wanted.values()), type_ignores=[])
    exec(compile(module, path, "exec"), namespace)
    return namespace["smart_resize"], namespace["patchify"]


def _reference_video(frames_thwc, backend, min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28):
    tf_smart_resize, tf_patchify = _transformers_video_reference_fns()
    video = torch.from_numpy(frames_thwc).permute(0, 3, 1, 2).contiguous()  # (T, C, H, W) uint8
    h, w = tf_smart_resize(video.shape[2], video.shape[3], factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    if backend == "torch":
        from transformers.image_processing_backends import TorchvisionBackend

        # torchvision resize_image, uint8 + BICUBIC on CPU: native uint8 interpolate, no-op at equal size.
        if (h, w) != tuple(video.shape[-2:]):
            video = F.interpolate(video, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
        mean, std, _ = TorchvisionBackend._fuse_mean_std_and_rescale_factor(
            None, do_normalize=True, image_mean=tuple(OPENAI_CLIP_MEAN), image_std=tuple(OPENAI_CLIP_STD),
            do_rescale=True, rescale_factor=1 / 255, device=torch.device("cpu"))
        video = video.to(torch.float32).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))  # tvF.normalize
    else:  # the PIL image processor's resize / rescale / normalize per frame
        from transformers.image_utils import SizeDict

        ip = Qwen2VLImageProcessorPil()
        out = []
        for frame in frames_thwc:
            x = ip.resize(np.moveaxis(frame, -1, 0), size=SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels),
                          resample=3, factor=28)
            x = ip.normalize(ip.rescale(x, 1 / 255), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
            out.append(torch.from_numpy(np.ascontiguousarray(x)))
        video = torch.stack(out)
    patches, gt, gh, gw = tf_patchify(None, video[None], patch_size=14, merge_size=2, temporal_patch_size=2)
    return patches[0], [[gt, gh, gw]]


@pytest.mark.parametrize("backend", ["torch", "pil"])
@pytest.mark.parametrize("shape", [(6, 48, 64), (5, 300, 420), (4, 1000, 700)])
def test_video_matches_transformers_pieces(backend, shape):
    """(T, H, W): upscale to min_pixels, in-range (odd T -> last frame repeated), downscale."""
    frames = np.stack([_random_image(*shape[1:], seed=i) for i in range(shape[0])])
    ref, ref_grid = _reference_video(frames, backend)
    pixel_values, grid_thw, second_per_grid = preprocess_video(frames, fps=2.0, resize_backend=backend)
    assert grid_thw.tolist() == ref_grid
    assert second_per_grid == 1.0
    np.testing.assert_array_equal(pixel_values.numpy(), ref.numpy())


def test_video_layouts_and_image_consistency():
    frames = _smooth_frames(4, 60, 90)
    base = preprocess_video(frames)
    for other in (np.moveaxis(frames, -1, 1).copy(), torch.from_numpy(frames), list(frames),
                  [Image.fromarray(f) for f in frames]):
        out = preprocess_video(other)
        assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])
    # An image is a 2-frame video of itself (same bounds, same resampling).
    image = frames[0]
    img_pv, img_grid = preprocess_image(image)
    vid_pv, vid_grid, _ = preprocess_video(np.stack([image, image]), min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                                           resize_backend="pil")
    assert torch.equal(img_pv, vid_pv) and img_grid.tolist() == vid_grid.tolist()
    assert preprocess_video(frames, fps=4.0)[2] == 0.5


def test_video_pixel_cap():
    frames = _smooth_frames(8, 600, 800)
    _, grid, _ = preprocess_video(frames, cap_pixels_per_frame=True, max_video_tokens=4000)
    # budget: 4000 * 28**2 * 0.9 * 2 / 8 pixels per frame
    h, w = smart_resize(600, 800, 28, 128 * 28 * 28, max(int(4000 * 28 * 28 * 0.9) * 2 // 8, int(128 * 28 * 28 * 1.05)))
    assert grid.tolist() == [[4, h // 14, w // 14]]


def _gray_level(i):
    return 10 + 7 * i


def _write_video(path, n_frames, fps, codec="mpeg4", h=48, w=64):
    """Frame i is uniform gray at _gray_level(i): identifiable after lossy coding."""
    import av

    frames = np.stack([np.full((h, w, 3), _gray_level(i), np.uint8) for i in range(n_frames)])
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def _decode_all_with_transformers(path):
    from transformers.video_utils import read_video_pyav

    frames, _ = read_video_pyav(str(path), sample_indices_fn=lambda metadata, **kw: np.arange(metadata.total_num_frames))
    return frames


@pytest.mark.parametrize("seconds,fps,expected", [
    (3, 2.0, [0, 6, 12, 17, 23, 29]),  # 30 frames at 10 fps -> 6 frames, 2.0 fps
    (3, 1.0, [0, 10, 19, 29]),  # 3 frames -> raised to min_frames = 4
    (1, 2.0, [0, 3, 6, 9]),  # 2 frames -> 4
])
def test_load_video_sampling(tmp_path, seconds, fps, expected):
    path = tmp_path / "clip.mp4"
    written = _write_video(path, seconds * 10, 10)
    frames, sample_fps = load_video(path, fps=fps)
    assert sample_frame_indices(seconds * 10, 10.0, fps) == expected
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (len(expected), 48, 64, 3)
    reference = _decode_all_with_transformers(path)
    assert len(reference) == seconds * 10
    np.testing.assert_array_equal(frames.numpy(), reference[expected])
    # the decoded frames are the written ones (lossy codec: identify them by their gray level)
    level = frames.float().mean((1, 2, 3))
    assert torch.allclose(level, torch.tensor([_gray_level(i) for i in expected], dtype=torch.float32), atol=2)
    assert sample_fps == pytest.approx(len(expected) / (seconds * 10) * 10)
    assert written.shape[0] == seconds * 10
    _, grid, second_per_grid = preprocess_video(frames, sample_fps)
    assert grid[0, 0].item() == len(expected) // 2
    assert second_per_grid == pytest.approx(2 / sample_fps)


def test_load_video_without_frame_count(tmp_path):
    """Matroska stores no frame count: frames are counted by decoding."""
    path = tmp_path / "clip.mkv"
    _write_video(path, 30, 10, codec="ffv1")
    import av

    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    frames, sample_fps = load_video(path)
    np.testing.assert_array_equal(frames.numpy(), reference[[0, 6, 12, 17, 23, 29]])
    assert sample_fps == pytest.approx(2.0)


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 0, 3), np.uint8), "empty"),
    (torch.zeros(3, 0, 5, dtype=torch.uint8), "empty"),
    (np.zeros((10, 10, 2), np.uint8), "channels"),
    (np.zeros((10, 10, 5), np.uint8), "channels"),
    (np.zeros((5, 10, 10), np.uint8), "channels"),
    (np.zeros((2, 10, 10, 3), np.uint8), "dims"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (torch.full((3, 10, 10), float("inf")), "NaN"),
    (np.full((10, 10, 3), 300.5, np.float32), r"\[0, 1\]"),
    (np.full((10, 10, 3), -1, np.int32), "outside"),
    (np.zeros((2, 500, 3), np.uint8), "aspect ratio"),
    ("image.png", "PIL.Image, numpy array or torch tensor"),
])
def test_image_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        preprocess_image(bad)


def test_zero_size_pil_image():
    with pytest.raises(ValueError, match="empty"):
        preprocess_image(Image.new("RGB", (0, 8)))


def test_bad_options():
    image = _random_image(30, 30)
    with pytest.raises(ValueError, match="min_pixels"):
        preprocess_image(image, min_pixels=10_000, max_pixels=100)
    with pytest.raises(ValueError, match="resize_backend"):
        preprocess_image(image, resize_backend="cv2")
    with pytest.raises(ValueError, match="non-empty"):
        preprocess_images([])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 10, 10, 3), np.uint8), "no frames"),
    ([], "no frames"),
    (np.zeros((10, 10, 3), np.uint8), "4-D"),
    (np.full((2, 10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((2, 10, 10, 2), np.uint8), "channels"),
    ([np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)], "one size"),
    ("clip.mp4", "load_video"),
])
def test_video_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        preprocess_video(bad)


def test_video_fps_and_file_errors(tmp_path):
    frames = _smooth_frames(2, 30, 30)
    for fps in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="fps"):
            preprocess_video(frames, fps)
    with pytest.raises(ValueError, match="not found"):
        load_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        load_video(junk)
    audio_only = tmp_path / "audio.wav"
    import av

    with av.open(str(audio_only), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(ValueError, match="no video stream"):
        load_video(audio_only)
    one_frame = tmp_path / "one.mp4"
    _write_video(one_frame, 1, 10)
    with pytest.raises(ValueError, match="at least 2"):
        load_video(one_frame)
    with pytest.raises(ValueError, match="total_frames"):
        sample_frame_indices(0, 10.0)


def test_runtime_modules_do_not_import_transformers():
    from omni_runtime.media import image, video, vision
    from omni_runtime.models import vision_encoder

    for module in (vision, image, video, vision_encoder):
        source = inspect.getsource(module)
        assert "import transformers" not in source and "from transformers" not in source


def test_media_and_io_imports_leave_decoders_unloaded():
    """PIL, PyAV, soundfile, tokenizers and safetensors are imported when media or a checkpoint is
    read, not when omni_runtime.media.* / omni_runtime.io.* are imported."""
    code = ("import importlib, pkgutil, sys, omni_runtime.media, omni_runtime.io\n"
            "for pkg in (omni_runtime.media, omni_runtime.io):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
            "print(sorted(m for m in ('PIL', 'av', 'soundfile', 'tokenizers', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
