"""The official Qwen2.5-Omni chat template, and chat messages -> prompt ids (`build_prompt_ids`).

`render_prompt` reproduces the published `chat_template` (CHAT_TEMPLATE below, as shipped with
Qwen/Qwen2.5-Omni-7B) for system/user/assistant turns whose content is a string or a list of
`{"type": "text"|"image"|"audio"|"video", ...}` items. Each media item becomes one placeholder:
`<|audio_bos|><|AUDIO|><|audio_eos|>`, `<|vision_bos|><|IMAGE|><|vision_eos|>`,
`<|vision_bos|><|VIDEO|><|vision_eos|>`.

`build_prompt_ids` tokenizes that text and expands each placeholder *in id space* (never
tokenizing thousands of placeholder strings) with `placeholders.expand_placeholder_ids`, the way
transformers' Qwen2_5OmniProcessor does.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .placeholders import PlaceholderIds, expand_placeholder_ids
from .tokenizer import Tokenizer

__all__ = [
    "OMNI_SYSTEM_PROMPT",
    "TEMPLATE_FALLBACK_SYSTEM_PROMPT",
    "CHAT_TEMPLATE",
    "render_prompt",
    "build_prompt_ids",
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


def item_kind(item: dict) -> Optional[str]:
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
            kind = item_kind(item)
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
                kind = item_kind(item)
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
