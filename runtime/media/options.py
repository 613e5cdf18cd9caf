"""How media is cut and sized before the encoders: one object, read from the checkpoint's
`preprocessor_config.json` and overridable per request (API) or per run (CLI).

    opts = MediaOptions.from_preprocessor_config(json.load(open(ckpt / "preprocessor_config.json")))
    opts = opts.replace(image_max_pixels=512 * 28 * 28, video_fps=1.0)

audio_max_seconds: audio beyond this is dropped, as the processor's `chunk_length` does (the
published checkpoint says 300 s, Whisper's class default is 30 s); None keeps everything.
image_min_pixels / image_max_pixels: the pixel-count bounds of `smart_resize` for images (the
published config sets max 12,845,056). video_min_pixels / video_max_pixels: the same for video
frames (qwen-omni-utils' defaults 128*28*28 / 768*28*28). video_fps: frames sampled per second of
video (2.0, as qwen-omni-utils). video_max_frames: at most this many sampled frames.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from .vision import (FPS_MAX_FRAMES, IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, VIDEO_FPS, VIDEO_MAX_PIXELS,
                     VIDEO_MIN_PIXELS)

__all__ = ["MediaOptions", "DEFAULT_AUDIO_MAX_SECONDS"]

DEFAULT_AUDIO_MAX_SECONDS = 30.0  # WhisperFeatureExtractor's class default; checkpoints override it


@dataclass(frozen=True)
class MediaOptions:
    audio_max_seconds: Optional[float] = DEFAULT_AUDIO_MAX_SECONDS
    image_min_pixels: int = IMAGE_MIN_PIXELS
    image_max_pixels: int = IMAGE_MAX_PIXELS
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_fps: float = VIDEO_FPS
    video_max_frames: int = FPS_MAX_FRAMES

    def __post_init__(self):
        a = self.audio_max_seconds
        if a is not None:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0 < a < math.inf):
                raise ValueError(f"audio_max_seconds must be a positive number of seconds or None, got {a!r}")
            object.__setattr__(self, "audio_max_seconds", float(a))
        for name in ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels",
                     "video_max_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for lo, hi in (("image_min_pixels", "image_max_pixels"), ("video_min_pixels", "video_max_pixels")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must not exceed {hi} ({getattr(self, hi)})")
        fps = self.video_fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (0 < fps < math.inf):
            raise ValueError(f"video_fps must be a positive number, got {fps!r}")
        object.__setattr__(self, "video_fps", float(fps))

    def replace(self, **changes) -> "MediaOptions":
        """A copy with some fields changed (None values are ignored, except audio_max_seconds=None
        only when passed explicitly as `keep_all_audio=True`)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)} - {"keep_all_audio"}
        if unknown:
            raise ValueError(f"unknown media option(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        keep_all = changes.pop("keep_all_audio", False)
        changes = {k: v for k, v in changes.items() if v is not None}
        if keep_all:
            changes["audio_max_seconds"] = None
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preprocessor_config(cls, d: Optional[dict]) -> "MediaOptions":
        """Read `chunk_length` (audio) and `min_pixels` / `max_pixels` (else `size.shortest_edge` /
        `size.longest_edge`) as transformers' processors do; absent keys keep the defaults."""
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"preprocessor config must be a dict, got {type(d).__name__}")
        kw = {}
        if d.get("chunk_length") is not None:
            kw["audio_max_seconds"] = d["chunk_length"]
        size = d.get("size") if isinstance(d.get("size"), dict) else {}
        for key, size_key in (("image_min_pixels", "shortest_edge"), ("image_max_pixels", "longest_edge")):
            value = d.get(key[len("image_"):], size.get(size_key))
            if value is not None:
                kw[key] = value
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"preprocessor_config.json: {e}") from None

    def image_kwargs(self) -> dict:
        return dict(min_pixels=self.image_min_pixels, max_pixels=self.image_max_pixels)

    def video_kwargs(self) -> dict:
        return dict(min_pixels=self.video_min_pixels, max_pixels=self.video_max_pixels)
