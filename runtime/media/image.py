"""Images -> (pixel_values, grid_thw) for the vision encoder, equal to transformers' processors.

    pixel_values, grid_thw = preprocess_image(image)

The steps (RGB, `smart_resize`, bicubic resize, normalize, patchify) are in `vision`'s docstring.
The published checkpoint's preprocessor_config.json may override the pixel bounds: read them with
`image_kwargs_from_preprocessor_config`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .vision import (IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, MERGE_SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PATCH_SIZE,
                     TEMPORAL_PATCH_SIZE, _check_sizes, _resize_and_normalize, patchify, to_rgb_uint8)

__all__ = ["preprocess_image", "preprocess_images", "image_kwargs_from_preprocessor_config"]


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
