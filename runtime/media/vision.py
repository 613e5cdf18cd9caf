"""What image and video preprocessing share, equal to transformers' processors on the same pixels:
RGB conversion, `smart_resize`, resize + normalize (two backends), `patchify`, and the defaults.
The entry points are `image.preprocess_image` and `video.load_video` / `video.preprocess_video`.

`pixel_values` is float32 (grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size**2)
= (N, 1176) for the published model, `grid_thw` int64 (1, 3); the vision encoder consumes both
(`omni_runtime.models.vision_encoder.VisionEncoder`). The steps are transformers' (5.24):

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
128*28*28 / 768*28*28 (Qwen2_5OmniProcessor's video kwargs).
"""
from __future__ import annotations

import math
import sys

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

__all__ = ["smart_resize", "to_rgb_uint8", "patchify", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]


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
    # An object can only be a PIL image once PIL is imported, so arrays never import it.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(image, pil.Image)


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
