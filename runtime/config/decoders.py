"""The two Qwen2 decoders: the Thinker LLM (`TextConfig`) and the Talker (`TalkerConfig`), with
their shared validation (`_DecoderMixin`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from .rope import _TEXT_ROPE_TYPES, RopeParameters, _read_rope
from .sections import _positive, _Section


class _DecoderMixin:
    """Validation and derived values shared by the Thinker LLM and the Talker (Qwen2 decoders)."""

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters.rope_theta

    @property
    def mrope_section(self) -> list[int]:
        return list(self.rope_parameters.mrope_section)

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim else self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        # Same derivations as transformers' __post_init__, so to_dict() matches its to_dict().
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.sliding_window = self.sliding_window if self.use_sliding_window else None
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        rp = self.rope_parameters
        if rp.rope_type == "mrope":
            rp.rope_type = "default"

    def _validate_decoder(self, path: str) -> None:
        _positive(self, path, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{path}.hidden_size ({self.hidden_size}) must be divisible by "
                f"{path}.num_attention_heads ({self.num_attention_heads}) when head_dim is not given"
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ValueError(f"{path}.head_dim must be a positive integer, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{path}.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"{path}.num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.dim_per_head % 2:
            raise ValueError(f"{path}: head_dim {self.dim_per_head} must be even for rotary embeddings")
        rp = self.rope_parameters
        if rp.rope_type not in _TEXT_ROPE_TYPES:
            raise ValueError(
                f"{path}.rope_parameters.rope_type {rp.rope_type!r} is not supported (supported: default/mrope)"
            )
        if rp.rope_theta <= 0:
            raise ValueError(f"{path}.rope_parameters.rope_theta must be > 0, got {rp.rope_theta}")
        ms = rp.mrope_section
        if ms is None or len(ms) != 3 or any(s < 0 for s in ms):
            raise ValueError(f"{path}.rope_parameters.mrope_section must be 3 non-negative ints (t, h, w), got {ms}")
        if sum(ms) * 2 != self.dim_per_head:
            raise ValueError(
                f"{path}.rope_parameters.mrope_section {ms} sums to {sum(ms)}, but head_dim/2 = "
                f"{self.dim_per_head // 2}"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"{path}.layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        if self.rms_norm_eps <= 0:
            raise ValueError(f"{path}.rms_norm_eps must be > 0, got {self.rms_norm_eps}")

    def _postprocess_dict(self, out, style):
        if style == "2025":
            rp = out.pop("rope_parameters")
            out["rope_theta"] = rp.pop("rope_theta")
            rp.setdefault("type", rp["rope_type"])
            out["rope_scaling"] = rp
        if out.get("head_dim") is None and "head_dim" in out and type(self) is TextConfig:
            out.pop("head_dim")  # transformers' text config has no head_dim field
        return out


@dataclass
class TextConfig(_DecoderMixin, _Section):
    """thinker_config.text_config: the Thinker LLM (a Qwen2 decoder with TMRoPE)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: Optional[int] = 4
    # Not a transformers field; honoured (as transformers' getattr does) when config.json has it.
    head_dim: Optional[int] = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    rope_parameters: RopeParameters = field(
        default_factory=lambda: RopeParameters("default", 1_000_000.0, [16, 24, 24])
    )
    use_sliding_window: bool = False
    sliding_window: Optional[int] = 32768
    max_window_layers: int = 28
    layer_types: Optional[list[str]] = None
    attention_dropout: float = 0.0
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Union[int, list[int], None] = None
    tie_word_embeddings: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        return _read_rope(d, path, 1_000_000.0, [16, 24, 24])

    def validate(self, path="config"):
        self._validate_decoder(path)

@dataclass
class TalkerConfig(_DecoderMixin, _Section):
    """talker_config: the codec-token decoder (a Qwen2 decoder with an explicit head_dim)."""

    _aliases: ClassVar[dict[str, str]] = {
        "image_token_id": "image_token_index",
        "video_token_id": "video_token_index",
        "audio_token_id": "audio_token_index",
    }

    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    vocab_size: int = 8448
    tts_text_start_token_id: int = 151860
    tts_text_end_token_id: int = 151861
    tts_text_pad_token_id: int = 151859
    tts_codec_start_token_id: int = 8293
    tts_codec_end_token_id: int = 8294
    tts_codec_pad_token_id: int = 8292
    tts_codec_mask_token_id: int = 8296
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    embedding_size: int = 3584
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: Optional[int] = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    head_dim: Optional[int] = 128
    use_cache: bool = True
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    sliding_window: Optional[int] = 32768
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    rope_parameters: RopeParameters = field(
        default_factory=lambda: RopeParameters("default", 1_000_000.0, [16, 24, 24])
    )
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    initializer_range: float = 0.02
    spatial_merge_size: int = 2
    layer_types: Optional[list[str]] = None
    pad_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        return _read_rope(d, path, 1_000_000.0, [16, 24, 24])

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @property
    def video_token_id(self) -> int:
        return self.video_token_index

    @property
    def audio_token_id(self) -> int:
        return self.audio_token_index

    def validate(self, path="config"):
        self._validate_decoder(path)
        _positive(self, path, "embedding_size", "spatial_merge_size")
        codec = {
            "tts_codec_start_token_id": self.tts_codec_start_token_id,
            "tts_codec_end_token_id": self.tts_codec_end_token_id,
            "tts_codec_pad_token_id": self.tts_codec_pad_token_id,
            "tts_codec_mask_token_id": self.tts_codec_mask_token_id,
        }
        for name, value in codec.items():
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{path}.{name} = {value} is outside the codec vocabulary (vocab_size = {self.vocab_size})")
