"""A conversation's media items and the prepared prompt, and the checks on user-given media values."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..media.audio import SAMPLE_RATE, load_audio, load_audio_track
from ..media.video import load_video

__all__ = ["Media", "PreparedPrompt", "KINDS"]

KINDS = ("audio", "image", "video")

@dataclass
class Media:
    """One media item in order of appearance. `stream` marks the streamed audio."""

    kind: str
    value: Any = None
    stream: bool = False
    # filled by Thinker._load_media
    mel: Optional[torch.Tensor] = None            # audio, or a video's soundtrack (use_audio_in_video)
    pixel_values: Optional[torch.Tensor] = None   # image / video
    grid: Optional[tuple[int, int, int]] = None
    second_per_grid: Optional[float] = None


def _describe(value) -> str:
    if isinstance(value, (str, os.PathLike)):
        return repr(os.fspath(value))
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


@dataclass
class PreparedPrompt:
    """A conversation ready for the LLM (see the module docstring).

    ids: prompt token ids, placeholders expanded. inputs_embeds (L, hidden): token embeddings with
    the audio/image/video features in the placeholder rows, in the model dtype on its device (a
    text-only prompt is sent to the engine as ids: it embeds them itself and can share their KV
    blocks through prefix caching). positions (3, L) int64 (CPU) and
    rope_delta: TMRoPE. The preprocessing products are kept (what transformers' processor would
    return): `mels` (one (128, L_i) float32 per audio, in order of appearance, video soundtracks
    included), `pixel_values` / `image_grid_thw` (n, 3), `pixel_values_videos` / `video_grid_thw` /
    `video_second_per_grid` (n,), `use_audio_in_video`. `timings`: seconds per stage."""

    ids: list[int]
    inputs_embeds: torch.Tensor
    positions: torch.Tensor
    rope_delta: int
    mels: list[torch.Tensor] = field(default_factory=list)
    pixel_values: Optional[torch.Tensor] = None
    image_grid_thw: Optional[torch.Tensor] = None
    pixel_values_videos: Optional[torch.Tensor] = None
    video_grid_thw: Optional[torch.Tensor] = None
    video_second_per_grid: Optional[torch.Tensor] = None
    use_audio_in_video: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    @property
    def has_media(self) -> bool:
        return bool(self.mels) or self.pixel_values is not None or self.pixel_values_videos is not None

    @property
    def audio_lengths(self) -> list[int]:
        """Mel frames of each audio (the processor's feature_attention_mask.sum(-1))."""
        return [int(m.shape[1]) for m in self.mels]

    def request(self) -> dict:
        """Keyword arguments for `Engine.add_request` / items of `Engine.generate`
        (ids alone for a text-only prompt: same positions, the engine embeds them)."""
        if not self.has_media:
            return {"prompt_ids": self.ids}
        return {"prompt_ids": self.ids, "inputs_embeds": self.inputs_embeds, "positions": self.positions,
                "rope_delta": self.rope_delta}



# ====================================================================================================
# helpers
# ====================================================================================================
def _as_list(x, name: str) -> list:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike, torch.Tensor)) or not isinstance(x, (list, tuple)):
        raise ValueError(f"{name} must be a list (one entry per item), got {_describe(x)}")
    return list(x)


def _is_ids(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() and x.dim() <= 2
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in x)


def _check_file(value, what: str) -> str:
    path = os.fspath(value)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes)")
    return path


def _waveform(value) -> torch.Tensor:
    if isinstance(value, (str, os.PathLike)):
        return load_audio(_check_file(value, "audio"))
    if isinstance(value, tuple) and len(value) == 2:
        return load_audio(value[0], sample_rate=value[1])
    if value is None:
        raise ValueError("an audio item has no data")
    return load_audio(value)


def _image(value):
    if isinstance(value, (str, os.PathLike)):
        path = _check_file(value, "image")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    if value is None:
        raise ValueError("an image item has no data")
    return value


def _video(value, default_fps: float, need_audio: bool, max_frames: int):
    """-> (frames, fps, soundtrack waveform or None). A file is sampled at default_fps."""
    audio = None
    if isinstance(value, (str, os.PathLike)):
        path = _check_file(value, "video")
        frames, fps = load_video(path, fps=default_fps, max_frames=max_frames)
        if need_audio:
            audio = load_audio_track(path)
        return frames, fps, audio
    fps = default_fps
    if isinstance(value, dict):
        frames, fps = value.get("frames"), value.get("fps", default_fps)
        audio = value.get("audio")
        if audio is not None and value.get("audio_sample_rate") not in (None, SAMPLE_RATE):
            audio = (audio, value["audio_sample_rate"])
    elif isinstance(value, tuple) and len(value) in (2, 3):
        frames, fps = value[0], value[1]
        audio = value[2] if len(value) == 3 else None
    else:
        frames = value
    if frames is None:
        raise ValueError("a video item has no frames")
    if need_audio:
        if audio is None:
            raise ValueError("use_audio_in_video needs each video's soundtrack: pass a video file, or "
                             "(frames, fps, waveform) / {'frames', 'fps', 'audio'}")
        audio = _waveform(audio)
    return frames, fps, audio


def _scatter(embeds: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, kind: str) -> None:
    """embeds[mask] = feats in row order (transformers' masked_scatter), counts checked."""
    n = int(mask.sum())
    if n != feats.shape[0]:
        raise ValueError(f"the prompt has {n} {kind} placeholder tokens but the {kind} encoder produced "
                         f"{feats.shape[0]} {kind} features")
    embeds[mask] = feats.to(embeds.dtype)

