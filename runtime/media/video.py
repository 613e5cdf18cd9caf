"""Videos -> (pixel_values, grid_thw, second_per_grid) for the vision encoder.

    frames, sample_fps = load_video("clip.mp4")            # PyAV decode, 2 fps sampling
    pixel_values, grid_thw, second_per_grid = preprocess_video(frames, sample_fps)

Preprocessing is `Qwen2VLVideoProcessor`'s on CPU (see `vision`'s docstring; torch resize backend
by default). Frame sampling follows the official qwen-omni-utils (`smart_nframes`):
n = total / video_fps * fps clamped to [4, min(768, total)] and floored to a multiple of 2, frames
`linspace(0, total - 1, n).round()`; the actual sampling rate n / total * video_fps is returned.
`second_per_grid = temporal_patch_size / fps` for the fps passed to `preprocess_video`. Note: the
official README calls the processor without `fps`, so transformers then uses 2.0 whatever the
actual sampling rate was; pass fps=2.0 to reproduce that, or the sample fps for true timing.
PyAV is imported when a file is decoded.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from .vision import (FPS_MAX_FRAMES, FPS_MIN_FRAMES, MERGE_SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PATCH_SIZE,
                     TEMPORAL_PATCH_SIZE, VIDEO_FPS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, _as_numpy,
                     _check_positive_int, _check_sizes, _hwc_to_rgb, _resize_and_normalize, patchify, to_rgb_uint8)

__all__ = ["preprocess_video", "sample_frame_indices", "load_video"]


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
