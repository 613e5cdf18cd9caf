"""Multimodal placeholder expansion in id space, with transformers' Qwen2_5OmniProcessor formulas:
each single `<|AUDIO|>` / `<|IMAGE|>` / `<|VIDEO|>` id becomes its full run of ids.

- audio: ((L - 1)//2 + 1 - 2)//2 + 1 tokens for L mel frames (the encoder's conv + pooling);
- image/video: t*h*w / merge_size**2 tokens for a patch grid (t, h, w);
- video with its own audio track (use_audio_in_video): `<|VIDEO|>` becomes
  `<|audio_bos|>` + video and audio chunks of `seconds_per_chunk` interleaved + `<|audio_eos|>`
  (so the prompt reads vision_bos audio_bos V.. A.. V.. A.. audio_eos vision_eos).

Media lengths are consumed in the order the items appear in the messages: each audio item takes
the next `audio_lengths` entry; each video takes the next `video_grids` (and
`second_per_grids`) entry and, with use_audio_in_video, also the next `audio_lengths` entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .tokenizer import Tokenizer

__all__ = [
    "audio_token_count",
    "vision_token_count",
    "chunked_index",
    "audio_in_video_layout",
    "PlaceholderIds",
    "expand_placeholder_ids",
]


def _nonneg_int(value, what: str) -> int:
    if hasattr(value, "item") and not isinstance(value, (int, bool)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def audio_token_count(mel_frames: int) -> int:
    """Audio tokens for `mel_frames` feature frames (100 per second): conv2 stride 2, then the
    stride-2 average pool."""
    n = _nonneg_int(mel_frames, "audio length (mel frames)")
    if n == 0:
        raise ValueError("audio length is 0 mel frames (empty audio)")
    n = (n - 1) // 2 + 1
    return (n - 2) // 2 + 1


def _check_grid(grid, merge_size: int, what: str) -> tuple[int, int, int]:
    if hasattr(grid, "tolist"):
        grid = grid.tolist()
    if not isinstance(grid, (list, tuple)) or len(grid) != 3:
        raise ValueError(f"{what} must be a (t, h, w) patch grid, got {grid!r}")
    t, h, w = (_nonneg_int(g, what) for g in grid)
    if t == 0 or h == 0 or w == 0:
        raise ValueError(f"{what} {grid} has a zero size")
    if h % merge_size or w % merge_size:
        raise ValueError(f"{what} {grid}: h and w must be multiples of the spatial merge size {merge_size}")
    return t, h, w


def vision_token_count(grid_thw, merge_size: int = 2) -> int:
    """Tokens for an image or video patch grid (t, h, w) after the merge_size x merge_size merger."""
    t, h, w = _check_grid(grid_thw, merge_size, "grid")
    return t * h * w // merge_size**2


def chunked_index(token_indices: Sequence[float], tokens_per_chunk: int) -> list[tuple[int, int]]:
    """transformers' `get_chunked_index`: split a non-decreasing list of time indices into
    (start, end) slices whose values fall in successive windows of `tokens_per_chunk`. Like the
    original it advances one window per token, so a jump over several windows yields empty
    slices."""
    out = []
    start, chunk = 0, 1
    for i, value in enumerate(token_indices):
        if value >= chunk * tokens_per_chunk:
            out.append((start, i))
            start = i
            chunk += 1
    out.append((start, len(token_indices)))
    return out


def audio_in_video_layout(
    video_grid,
    audio_tokens: int,
    second_per_grid: float = 1.0,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
) -> list[tuple[str, int]]:
    """The interleaved (kind, count) runs that replace `<|VIDEO|>` for a video with audio:
    [("video", n0), ("audio", m0), ("video", n1), ...] (bos/eos not included)."""
    t, h, w = _check_grid(video_grid, merge_size, "video grid")
    audio_tokens = _nonneg_int(audio_tokens, "audio tokens")
    if not isinstance(second_per_grid, (int, float)) or isinstance(second_per_grid, bool) or second_per_grid <= 0:
        raise ValueError(f"second_per_grid must be a positive number, got {second_per_grid!r}")
    per_frame = (h // merge_size) * (w // merge_size)
    # Same float arithmetic as the processor: frame index * second_per_grid * ids per second.
    video_index = [ti * second_per_grid * position_id_per_seconds for ti in range(t) for _ in range(per_frame)]
    tokens_per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    if tokens_per_chunk <= 0:
        raise ValueError("position_id_per_seconds * seconds_per_chunk must be >= 1")
    video_chunks = chunked_index(video_index, tokens_per_chunk)
    audio_chunks = chunked_index(list(range(audio_tokens)), tokens_per_chunk)
    runs: list[tuple[str, int]] = []
    for j in range(max(len(video_chunks), len(audio_chunks))):
        if j < len(video_chunks):
            runs.append(("video", video_chunks[j][1] - video_chunks[j][0]))
        if j < len(audio_chunks):
            runs.append(("audio", audio_chunks[j][1] - audio_chunks[j][0]))
    return runs


@dataclass(frozen=True)
class PlaceholderIds:
    audio: int
    image: int
    video: int
    audio_bos: int
    audio_eos: int
    vision_bos: int
    vision_eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "PlaceholderIds":
        t = tokenizer.special_token_id
        return cls(
            audio=t("<|AUDIO|>"),
            image=t("<|IMAGE|>"),
            video=t("<|VIDEO|>"),
            audio_bos=t("<|audio_bos|>"),
            audio_eos=t("<|audio_eos|>"),
            vision_bos=t("<|vision_bos|>"),
            vision_eos=t("<|vision_eos|>"),
        )

    @classmethod
    def from_config(cls, config) -> "PlaceholderIds":
        th = getattr(config, "thinker_config", config)
        return cls(
            audio=th.audio_token_index,
            image=th.image_token_index,
            video=th.video_token_index,
            audio_bos=th.audio_start_token_id,
            audio_eos=th.audio_end_token_id,
            vision_bos=th.vision_start_token_id,
            vision_eos=th.vision_end_token_id,
        )


def expand_placeholder_ids(
    ids: Sequence[int],
    placeholders: PlaceholderIds,
    audio_lengths: Optional[Sequence[int]] = None,
    image_grids: Optional[Sequence[Sequence[int]]] = None,
    video_grids: Optional[Sequence[Sequence[int]]] = None,
    second_per_grids: Optional[Sequence[float]] = None,
    use_audio_in_video: bool = False,
    *,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
) -> list[int]:
    """Replace each single <|AUDIO|>/<|IMAGE|>/<|VIDEO|> id with its full run of ids.
    `audio_lengths` are mel frame counts (see `audio_token_count`)."""
    audio_lengths = list(audio_lengths or [])
    image_grids = list(image_grids or [])
    video_grids = list(video_grids or [])
    if second_per_grids is None:
        second_per_grids = [1.0] * len(video_grids)  # temporal_patch_size 2 / 2 fps, the processor default
    second_per_grids = list(second_per_grids)
    if len(second_per_grids) != len(video_grids):
        raise ValueError(f"second_per_grids has {len(second_per_grids)} entries for {len(video_grids)} video grids")

    n_audio_ph = sum(1 for t in ids if t == placeholders.audio)
    n_image_ph = sum(1 for t in ids if t == placeholders.image)
    n_video_ph = sum(1 for t in ids if t == placeholders.video)
    n_audio_needed = n_audio_ph + (n_video_ph if use_audio_in_video else 0)
    if n_audio_needed != len(audio_lengths):
        extra = " (with use_audio_in_video each video takes one too)" if use_audio_in_video and n_video_ph else ""
        raise ValueError(
            f"the prompt needs {n_audio_needed} audio lengths{extra} ({n_audio_ph} <|AUDIO|> placeholders), "
            f"got {len(audio_lengths)}"
        )
    if n_image_ph != len(image_grids):
        raise ValueError(f"the prompt has {n_image_ph} <|IMAGE|> placeholders but {len(image_grids)} image grids were given")
    if n_video_ph != len(video_grids):
        raise ValueError(f"the prompt has {n_video_ph} <|VIDEO|> placeholders but {len(video_grids)} video grids were given")

    out: list[int] = []
    ai = ii = vi = 0
    for t in ids:
        if t == placeholders.audio:
            out.extend([placeholders.audio] * audio_token_count(audio_lengths[ai]))
            ai += 1
        elif t == placeholders.image:
            out.extend([placeholders.image] * vision_token_count(image_grids[ii], merge_size))
            ii += 1
        elif t == placeholders.video:
            if use_audio_in_video:
                runs = audio_in_video_layout(
                    video_grids[vi], audio_token_count(audio_lengths[ai]), second_per_grids[vi],
                    merge_size, position_id_per_seconds, seconds_per_chunk,
                )
                ai += 1
                out.append(placeholders.audio_bos)
                for kind, n in runs:
                    out.extend([placeholders.video if kind == "video" else placeholders.audio] * n)
                out.append(placeholders.audio_eos)
            else:
                out.extend([placeholders.video] * vision_token_count(video_grids[vi], merge_size))
            vi += 1
        else:
            out.append(t)
    return out
