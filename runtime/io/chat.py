"""The official Qwen2.5-Omni chat template and multimodal placeholder expansion.

`render_prompt` reproduces the published `chat_template` (CHAT_TEMPLATE below, as shipped with
Qwen/Qwen2.5-Omni-7B) for system/user/assistant turns whose content is a string or a list of
`{"type": "text"|"image"|"audio"|"video", ...}` items. Each media item becomes one placeholder:
`<|audio_bos|><|AUDIO|><|audio_eos|>`, `<|vision_bos|><|IMAGE|><|vision_eos|>`,
`<|vision_bos|><|VIDEO|><|vision_eos|>`.

`build_prompt_ids` tokenizes that text and expands each placeholder *in id space* (never
tokenizing thousands of placeholder strings) the way transformers' Qwen2_5OmniProcessor does:
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
from typing import Any, Optional, Sequence

from .tokenizer import Tokenizer

__all__ = [
    "OMNI_SYSTEM_PROMPT",
    "TEMPLATE_FALLBACK_SYSTEM_PROMPT",
    "CHAT_TEMPLATE",
    "render_prompt",
    "build_prompt_ids",
    "expand_placeholder_ids",
    "audio_token_count",
    "vision_token_count",
    "chunked_index",
    "audio_in_video_layout",
    "PlaceholderIds",
]

# The system prompt Qwen recommends (its model card: speech output needs this exact prompt).
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
# What the published template itself inserts when the first message is not a system turn.
TEMPLATE_FALLBACK_SYSTEM_PROMPT = "You are a helpful assistant."

# The published template (tokenizer_config.json / chat_template.json of Qwen2.5-Omni-7B). Kept
# for writing checkpoints and for testing render_prompt against a real Jinja render.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ROLES = ("system", "user", "assistant")


def _item_kind(item: dict) -> Optional[str]:
    # Same precedence as the template: image, audio, video, then text.
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind == "audio" or "audio" in item or "audio_url" in item:
        return "audio"
    if kind == "video" or "video" in item:
        return "video"
    if "text" in item:
        return "text"
    return None


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role must be one of {_ROLES}, got {role!r}")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise ValueError(f"messages[{i}].content must be a str or a list of items, got {type(content).__name__}")
        for j, item in enumerate(content):
            if not isinstance(item, dict):
                raise ValueError(f"messages[{i}].content[{j}] must be a dict, got {type(item).__name__}")
            kind = _item_kind(item)
            if kind is None:
                raise ValueError(
                    f"messages[{i}].content[{j}] is not text, image, audio or video: keys {sorted(item)}"
                )
            if kind == "text" and not isinstance(item["text"], str):
                raise ValueError(f"messages[{i}].content[{j}].text must be a str, got {type(item['text']).__name__}")
    return list(messages)


def render_prompt(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT,
    add_vision_id: bool = False,
    add_audio_id: bool = False,
) -> str:
    """The chat template's text, one placeholder per media item.

    When the first message is not a system turn, a system turn with `system_prompt` is put
    first (default: the Qwen2.5-Omni speech prompt). `system_prompt=None` keeps the template's
    own fallback, "You are a helpful assistant." (exactly what transformers' apply_chat_template
    renders for such messages).
    """
    messages = _check_messages(messages)
    if messages[0]["role"] != "system" and system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
        messages = [{"role": "system", "content": system_prompt}] + messages
    parts: list[str] = []
    counts = {"image": 0, "audio": 0, "video": 0}
    for i, m in enumerate(messages):
        if i == 0 and m["role"] != "system":
            parts.append(f"<|im_start|>system\n{TEMPLATE_FALLBACK_SYSTEM_PROMPT}<|im_end|>\n")
        parts.append(f"<|im_start|>{m['role']}\n")
        content = m["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            for item in content:
                kind = _item_kind(item)
                if kind == "text":
                    parts.append(item["text"])
                    continue
                counts[kind] += 1
                if kind == "image":
                    parts.append(f"Picture {counts[kind]}: " if add_vision_id else "")
                    parts.append("<|vision_bos|><|IMAGE|><|vision_eos|>")
                elif kind == "audio":
                    parts.append(f"Audio {counts[kind]}: " if add_audio_id else "")
                    parts.append("<|audio_bos|><|AUDIO|><|audio_eos|>")
                else:
                    parts.append(f"Video {counts[kind]}: " if add_vision_id else "")
                    parts.append("<|vision_bos|><|VIDEO|><|vision_eos|>")
        parts.append("<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# ---- placeholder sizes (transformers' processing_qwen2_5_omni.py formulas) -------------------


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


def build_prompt_ids(
    messages: Sequence[dict],
    tokenizer: Tokenizer,
    audio_lengths: Optional[Sequence[int]] = None,
    image_grids: Optional[Sequence[Sequence[int]]] = None,
    video_grids: Optional[Sequence[Sequence[int]]] = None,
    second_per_grids: Optional[Sequence[float]] = None,
    use_audio_in_video: bool = False,
    *,
    config: Any = None,
    add_generation_prompt: bool = True,
    system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT,
    add_vision_id: bool = False,
    add_audio_id: bool = False,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
) -> list[int]:
    """Chat messages -> prompt token ids with every media placeholder expanded.

    audio_lengths: mel frames per audio (100 per second; a video's soundtrack included when
    use_audio_in_video); image_grids / video_grids: (t, h, w) patch grids from the image/video
    preprocessing; second_per_grids: seconds per temporal grid step of each video (default 1.0 =
    2 frames per grid at 2 fps). With `config` (an OmniConfig), the merge size, position ids per
    second and chunk length come from it, and the tokenizer's placeholder ids are checked against
    the config's.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be an omni_runtime Tokenizer, got {type(tokenizer).__name__}")
    placeholders = PlaceholderIds.from_tokenizer(tokenizer)
    if config is not None:
        from_config = PlaceholderIds.from_config(config)
        if from_config != placeholders:
            raise ValueError(
                f"the tokenizer's multimodal token ids {placeholders} do not match the config's {from_config}"
            )
        th = config.thinker_config
        merge_size = th.vision_config.spatial_merge_size
        position_id_per_seconds = th.position_id_per_seconds
        seconds_per_chunk = float(th.seconds_per_chunk)
    text = render_prompt(
        messages,
        add_generation_prompt=add_generation_prompt,
        system_prompt=system_prompt,
        add_vision_id=add_vision_id,
        add_audio_id=add_audio_id,
    )
    ids = tokenizer.encode(text)
    return expand_placeholder_ids(
        ids,
        placeholders,
        audio_lengths,
        image_grids,
        video_grids,
        second_per_grids,
        use_audio_in_video,
        merge_size=merge_size,
        position_id_per_seconds=position_id_per_seconds,
        seconds_per_chunk=seconds_per_chunk,
    )
