"""Image and video preprocessing for Qwen2.5-Omni, equal to transformers' processors on the same pixels.

    pixel_values, grid_thw = preprocess_image(image)
    frames, sample_fps = load_video("clip.mp4")            # PyAV decode, 2 fps sampling
    pixel_values, grid_thw, second_per_grid = preprocess_video(frames, sample_fps)

`pixel_values` is float32 (grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size**2)
= (N, 1176) for the published model, `grid_thw` int64 (1, 3); the vision encoder consumes both
(`omni_runtime.vision_encoder.VisionEncoder`). The steps are transformers' (5.24):

1. RGB uint8 pixels. PIL images: `convert("RGB")`, transparency composited onto white (as
   transformers' `convert_to_rgb`). Arrays / tensors: HWC or CHW (channels first when ambiguous, as
   `infer_channel_dimension_format`), 1 channel -> 3, 4 channels -> composited onto white. Floats
   are taken as 0..255 when integer-valued in [0, 255], else as [0, 1] (transformers' rule for
   PIL conversion) and rounded to uint8 (transformers truncates there; it then rescales such
   images twice unless `do_rescale=False`, so float [0, 1] input is not a parity case).
2. `smart_resize` to multiples of patch_size * merge_size = 28 with the pixel count in
   [min_pixels, max_pixels]; bicubic resize.
   * images (default `resize_backend="pil"`): PIL `Image.resize(BICUBIC)` on uint8, then
     `x.astype(float64) * (1/255)` -> float32 and `(x - mean) / std` in float32 -- exactly
     `Qwen2VLImageProcessorPil`, the processor transformers uses for Qwen2.5-Omni when torchvision
     is absent (bitwise equal, see tests/runtime/test_vision.py).
   * videos (default `resize_backend="torch"`): what `Qwen2VLVideoProcessor` (which needs
     torchvision) does on CPU: torchvision's `resize` of a uint8 tensor with BICUBIC+antialias is
     `torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True)` (no-op when the size
     is unchanged), then the fused rescale+normalize `(x.float() - mean*255) / (std*255)`. The same
     backend serves images as transformers' torchvision `Qwen2VLImageProcessor` does.
3. Patchify: frames are grouped by temporal_patch_size (an image is repeated to 2 frames; a video
   with an odd frame count repeats its last frame) and flattened in transformers' order
   (t, h/merge, w/merge, merge_h, merge_w, C, temporal, patch_h, patch_w).

Defaults: images min/max pixels 56*56 / 28*28*1280 (Qwen2VLImageProcessor), videos
128*28*28 / 768*28*28 (Qwen2_5OmniProcessor's video kwargs). The published checkpoint's
preprocessor_config.json may override the image bounds (pass them in).

Video frame sampling follows the official qwen-omni-utils (`smart_nframes`): n = total / video_fps *
fps clamped to [4, min(768, total)] and floored to a multiple of 2, frames
`linspace(0, total - 1, n).round()`; the actual sampling rate n / total * video_fps is returned.
`second_per_grid = temporal_patch_size / fps` for the fps passed to `preprocess_video`. Note: the
official README calls the processor without `fps`, so transformers then uses 2.0 whatever the
actual sampling rate was; pass fps=2.0 to reproduce that, or the sample fps for true timing.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MAX_ASPECT_RATIO = 200
RESCALE_FACTOR = 1 / 255
RESIZE_BACKENDS = ("pil", "torch")

__all__ = [
    "smart_resize", "to_rgb_uint8", "preprocess_image", "preprocess_images", "preprocess_video",
    "sample_frame_indices", "load_video", "patchify", "image_kwargs_from_preprocessor_config",
    "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
]


# -- sizes ----------------------------------------------------------------------------------------

def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE,
                 min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """transformers' `smart_resize`: (height, width) rounded to multiples of `factor`, scaled (aspect
    kept as far as possible) so that the pixel count lies in [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image is empty: height={height}, width={width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)} ({height}x{width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_sizes(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size, resize_backend) -> None:
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels), ("patch_size", patch_size),
                        ("merge_size", merge_size), ("temporal_patch_size", temporal_patch_size)):
        _check_positive_int(name, value)
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    if resize_backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")


def image_kwargs_from_preprocessor_config(d: dict) -> dict:
    """`preprocessor_config.json` (a checkpoint's image-processor settings) -> keyword arguments for
    `preprocess_image`, read as transformers reads them: `min_pixels` / `max_pixels`, else
    `size.shortest_edge` / `size.longest_edge`; patch/merge/temporal sizes; mean and std. Keys that
    are absent keep the defaults (the published Qwen2.5 configs set max_pixels = 12845056, far above
    the class default 1003520, so reading this file matters for large images)."""
    if not isinstance(d, dict):
        raise ValueError(f"preprocessor config must be a dict, got {type(d).__name__}")
    out = {}
    size = d.get("size") if isinstance(d.get("size"), dict) else {}
    for key, size_key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = d.get(key, size.get(size_key))
        if value is not None:
            out[key] = value
    for key in ("patch_size", "merge_size", "temporal_patch_size"):
        if d.get(key) is not None:
            out[key] = d[key]
    for key in ("image_mean", "image_std"):
        if d.get(key) is not None:
            value = tuple(float(x) for x in d[key])
            if len(value) != 3:
                raise ValueError(f"preprocessor config {key} must have 3 values, got {d[key]!r}")
            out[key] = value
    return out


# -- pixels ---------------------------------------------------------------------------------------

def _pil_to_rgb(image) -> np.ndarray:
    from PIL import Image

    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty: size {image.size}")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _float_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if array.size and np.allclose(array, np.round(array)) and array.min() >= 0 and array.max() <= 255:
        return np.round(array).astype(np.uint8)
    if array.size and array.min() >= 0 and array.max() <= 1:
        return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    raise ValueError(f"{what} has float values in [{lo}, {hi}]: floats must be integer-valued in [0, 255] "
                     f"or lie in [0, 1]")


def _as_numpy(image, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.is_floating_point() and image.dtype not in (torch.float32, torch.float64):
            image = image.float()
        return image.numpy()
    if isinstance(image, np.ndarray):
        return image
    raise ValueError(f"{what} must be a PIL.Image, numpy array or torch tensor, got {type(image).__name__}")


def _channels_last(array: np.ndarray, what: str) -> np.ndarray:
    """(H, W) / (H, W, C) / (C, H, W) -> (H, W, C), channel axis chosen as transformers infers it."""
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise ValueError(f"{what} must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dims, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4):
        return np.moveaxis(array, 0, -1)
    if array.shape[-1] in (1, 3, 4):
        return array
    raise ValueError(f"{what} must have 1, 3 or 4 channels (first or last axis), got shape {array.shape}")


def _hwc_to_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """(..., H, W, C) numbers -> contiguous uint8 (..., H, W, 3)."""
    if array.shape[-3] == 0 or array.shape[-2] == 0:
        raise ValueError(f"{what} is empty: shape {array.shape}")
    if array.dtype == np.bool_:
        raise ValueError(f"{what} must hold numbers, got a bool array")
    if np.issubdtype(array.dtype, np.floating):
        array = _float_to_uint8(array, what)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{what} has unsupported dtype {array.dtype}")
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"{what} has integer values in [{array.min()}, {array.max()}], outside [0, 255]")
        array = array.astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:  # composite onto white, as transformers' convert_to_rgb for uint8 arrays
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    elif channels != 3:
        raise ValueError(f"{what} must have 1, 3 or 4 channels, got {channels} (shape {array.shape})")
    return np.ascontiguousarray(array)


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a runtime dependency
        return False
    return isinstance(image, Image.Image)


def to_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """PIL image, numpy array or torch tensor -> contiguous uint8 (H, W, 3) RGB, as transformers'
    `convert_to_rgb` lays it out. Raises ValueError for empty images, unsupported channel counts,
    NaN/inf or out-of-range values."""
    if _is_pil(image):
        return np.ascontiguousarray(_pil_to_rgb(image))
    return _hwc_to_rgb(_channels_last(_as_numpy(image, what), what), what)


def _resize_pil(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), resample=Image.BICUBIC, reducing_gap=None))


def _pil_normalize(rgb_hwc: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) as Qwen2VLImageProcessorPil: rescale in float64 then
    float32, normalize in float32."""
    chw = np.moveaxis(rgb_hwc, -1, 0)
    scaled = (chw.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((scaled.T - mean) / std).T))


def _torch_resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) on CPU -> uint8 (T, 3, height, width): torchvision's resize (BICUBIC,
    antialias) of a uint8 CPU tensor, which is torch's native uint8 interpolate."""
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def _torch_normalize(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32, transformers' fused rescale + normalize (torchvision backend)."""
    mean_t = torch.tensor(mean) * (1.0 / RESCALE_FACTOR)
    std_t = torch.tensor(std) * (1.0 / RESCALE_FACTOR)
    return frames.to(torch.float32).sub_(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))


# -- patches --------------------------------------------------------------------------------------

def patchify(frames: torch.Tensor, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
             temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """float (T, C, H, W), H and W multiples of patch_size * merge_size -> (pixel_values
    (grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size**2), (grid_t, grid_h, grid_w)).
    T is padded to a multiple of temporal_patch_size by repeating the last frame."""
    frames_n, channels, height, width = frames.shape
    if pad := -frames_n % temporal_patch_size:
        frames = torch.cat((frames, frames[-1:].expand(pad, -1, -1, -1)), dim=0)
        frames_n += pad
    grid_t, grid_h, grid_w = frames_n // temporal_patch_size, height // patch_size, width // patch_size
    patches = frames.reshape(grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size, patch_size,
                             grid_w // merge_size, merge_size, patch_size)
    # (t, h/m, w/m, m_h, m_w, C, temporal, p_h, p_w)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return flat.contiguous(), (grid_t, grid_h, grid_w)


def _resize_and_normalize(frames_hwc: list[np.ndarray] | torch.Tensor, min_pixels, max_pixels, factor,
                          resize_backend, mean, std) -> torch.Tensor:
    """uint8 frames of one size -> float32 (T, 3, h, w) resized + normalized."""
    if isinstance(frames_hwc, torch.Tensor):
        height, width = frames_hwc.shape[1:3]
    else:
        height, width = frames_hwc[0].shape[:2]
    new_h, new_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if resize_backend == "pil":
        return torch.stack([_pil_normalize(_resize_pil(np.asarray(f), new_h, new_w), mean, std) for f in frames_hwc])
    stacked = frames_hwc if isinstance(frames_hwc, torch.Tensor) else torch.from_numpy(np.stack(frames_hwc))
    stacked = stacked.permute(0, 3, 1, 2).contiguous()
    return _torch_normalize(_torch_resize(stacked, new_h, new_w), mean, std)


def preprocess_image(image, *, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS,
                     patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE, resize_backend: str = "pil",
                     image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
                     image_std: Sequence[float] = OPENAI_CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (PIL.Image, numpy array or torch tensor; HWC or CHW; uint8 or float) ->
    (pixel_values float32 (grid_h * grid_w, C * temporal_patch_size * patch_size**2),
    grid_thw int64 (1, 3) = [[1, grid_h, grid_w]]). The image is repeated to temporal_patch_size
    frames, as transformers does."""
    _check_sizes(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size, resize_backend)
    rgb = to_rgb_uint8(image)
    frame = _resize_and_normalize([rgb], min_pixels, max_pixels, patch_size * merge_size, resize_backend,
                                  image_mean, image_std)
    pixel_values, (_, grid_h, grid_w) = patchify(frame.expand(temporal_patch_size, -1, -1, -1), patch_size,
                                                 merge_size, temporal_patch_size)
    return pixel_values, torch.tensor([[1, grid_h, grid_w]], dtype=torch.int64)


def preprocess_images(images: Sequence, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Several images -> concatenated pixel_values and grid_thw (n, 3), as transformers batches them."""
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty sequence of images")
    outs = [preprocess_image(image, **kwargs) for image in images]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _video_frames_uint8(frames) -> torch.Tensor:
    """Video frames -> uint8 (T, H, W, 3) tensor. Accepts a (T, H, W, C) / (T, C, H, W) array or
    tensor, or a sequence of images."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        array = _as_numpy(frames, "video")
        if array.ndim != 4:
            raise ValueError(f"video must be a 4-D (T, H, W, C) or (T, C, H, W) array, got shape {array.shape}")
        if array.shape[0] == 0:
            raise ValueError("video has no frames")
        if array.shape[1] in (1, 3, 4):  # channels first (preferred when ambiguous, as transformers)
            array = np.moveaxis(array, 1, -1)
        elif array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"video frames must have 1, 3 or 4 channels, got shape {array.shape}")
        return torch.from_numpy(_hwc_to_rgb(array, "video"))
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise ValueError("preprocess_video takes decoded frames; use load_video(path) to decode a file")
    if not isinstance(frames, Sequence):
        raise ValueError(f"video must be an array, a tensor or a sequence of frames, got {type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("video has no frames")
    rgb = [to_rgb_uint8(f, what=f"video frame {i}") for i, f in enumerate(frames)]
    if len({f.shape for f in rgb}) != 1:
        raise ValueError(f"video frames must all have one size, got {sorted({f.shape for f in rgb})}")
    return torch.from_numpy(np.stack(rgb))


def preprocess_video(frames, fps: float = VIDEO_FPS, *, min_pixels: int = VIDEO_MIN_PIXELS,
                     max_pixels: int = VIDEO_MAX_PIXELS, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE, resize_backend: str = "torch",
                     cap_pixels_per_frame: bool = False, max_video_tokens: int = 128000,
                     image_mean: Sequence[float] = OPENAI_CLIP_MEAN, image_std: Sequence[float] = OPENAI_CLIP_STD,
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Sampled video frames (see `_video_frames_uint8` for the layouts) at `fps` frames per second ->
    (pixel_values float32 (grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size**2),
    grid_thw int64 (1, 3), second_per_grid = temporal_patch_size / fps).

    `cap_pixels_per_frame` applies transformers' / qwen-omni-utils' total-video pixel budget
    (max_video_tokens * 28**2 * 0.9 shared over the frames); off by default as in transformers 5.24."""
    _check_sizes(min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size, resize_backend)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    video = _video_frames_uint8(frames)
    factor = patch_size * merge_size
    if cap_pixels_per_frame:
        _check_positive_int("max_video_tokens", max_video_tokens)
        total_pixels = int(max_video_tokens * factor * factor * 0.9)
        max_pixels = max(min(max_pixels, total_pixels * temporal_patch_size // video.shape[0]),
                         int(min_pixels * 1.05))
    resized = _resize_and_normalize(video, min_pixels, max_pixels, factor, resize_backend, image_mean, image_std)
    pixel_values, grid = patchify(resized, patch_size, merge_size, temporal_patch_size)
    return pixel_values, torch.tensor([grid], dtype=torch.int64), temporal_patch_size / float(fps)


# -- video files ----------------------------------------------------------------------------------

def sample_frame_indices(total_frames: int, video_fps: float, fps: float = VIDEO_FPS, *,
                         min_frames: int = FPS_MIN_FRAMES, max_frames: int = FPS_MAX_FRAMES,
                         frame_factor: int = TEMPORAL_PATCH_SIZE) -> list[int]:
    """qwen-omni-utils' `smart_nframes` + `linspace(0, total - 1, n).round()`: the frames sampled
    at `fps` from a video of `total_frames` frames at `video_fps`."""
    _check_positive_int("total_frames", total_frames)
    for name, value in (("video_fps", video_fps), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    _check_positive_int("frame_factor", frame_factor)
    if total_frames < frame_factor:
        raise ValueError(f"video has {total_frames} frame(s); at least {frame_factor} are needed")
    lo = math.ceil(min_frames / frame_factor) * frame_factor
    hi = math.floor(min(max_frames, total_frames) / frame_factor) * frame_factor
    nframes = total_frames / video_fps * fps
    nframes = min(min(max(nframes, lo), hi), total_frames)
    nframes = math.floor(nframes / frame_factor) * frame_factor
    if not frame_factor <= nframes <= total_frames:
        raise ValueError(f"cannot sample {nframes} frames from a {total_frames}-frame video")
    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()


def _decode(path: str, keep: set[int] | None) -> tuple[dict[int, np.ndarray], int]:
    """Decode the first video stream; returns ({index: rgb24 frame} for kept indices, frames decoded)."""
    import av

    frames: dict[int, np.ndarray] = {}
    count = 0
    last = max(keep) if keep else None
    with av.open(path) as container:
        container.streams.video[0].thread_type = "AUTO"  # frame/slice threads: same frames, faster
        for frame in container.decode(video=0):
            if keep is None or count in keep:
                frames[count] = frame.to_ndarray(format="rgb24")
            count += 1
            if last is not None and count > last:
                break
    return frames, count


def load_video(path, fps: float = VIDEO_FPS, *, min_frames: int = FPS_MIN_FRAMES,
               max_frames: int = FPS_MAX_FRAMES) -> tuple[torch.Tensor, float]:
    """Decode a video file with PyAV and sample it at `fps` (qwen-omni-utils' rule, see
    `sample_frame_indices`). Returns (frames uint8 (T, H, W, 3) RGB, sample_fps = T / total_frames *
    video_fps). Only the sampled frames are kept in memory."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a runtime dependency
        raise ImportError("load_video needs PyAV (pip install av)") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"video file not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else 0.0
            total = int(stream.frames or 0)
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot open video {path}: {e}") from e
    if video_fps <= 0:
        raise ValueError(f"{path}: the video stream reports no frame rate, cannot sample at {fps} fps")
    if total <= 0:  # container without a frame count: count by decoding
        total = _decode(path, keep=set())[1]
    if total == 0:
        raise ValueError(f"{path} has no video frames")
    indices = sample_frame_indices(total, video_fps, fps, min_frames=min_frames, max_frames=max_frames)
    frames, decoded = _decode(path, keep=set(indices))
    if len(frames) < len(set(indices)):  # the container's frame count was wrong: resample on the real count
        total = _decode(path, keep=set())[1]
        if total == 0:
            raise ValueError(f"{path} has no decodable video frames")
        indices = sample_frame_indices(total, video_fps, fps, min_frames=min_frames, max_frames=max_frames)
        frames, _ = _decode(path, keep=set(indices))
    video = torch.from_numpy(np.stack([frames[i] for i in indices]))
    return video, len(indices) / total * video_fps
