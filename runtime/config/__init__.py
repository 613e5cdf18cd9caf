"""Qwen2.5-Omni configuration as plain dataclasses (no transformers import).

Field names mirror the keys of the published `config.json` (and transformers 5.24's config
classes); defaults equal transformers 5.24's `configuration_qwen2_5_omni.py` defaults, which are
the 7B values for the Thinker. Two transformers defaults are *not* the 7B values and are kept as
transformers has them, so that a config.json that omits them builds the same model here as there:
the vision `hidden_size` (3584; the 7B checkpoint says 1280) and the talker widths (3584 wide,
28 layers/heads; the 7B talker is 896 wide, 24 layers, 12 heads).

Both RoPE spellings are read:
- published 2025 style: `"rope_scaling": {"mrope_section": [...], "type"/"rope_type": ...}` plus
  a top-level `"rope_theta"`;
- transformers 5.x style: `"rope_parameters": {"rope_type", "rope_theta", "mrope_section"}`.
When both are present `rope_scaling` wins, as in transformers' `convert_rope_params_to_dict`.

Unknown keys are kept (per section) in `extra` and written back by `to_dict`. Wrong types and
inconsistent values raise `ValueError` naming the dotted field path.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

__all__ = [
    "RopeParameters",
    "AudioEncoderConfig",
    "VisionEncoderConfig",
    "TextConfig",
    "ThinkerConfig",
    "TalkerConfig",
    "DiTConfig",
    "BigVGANConfig",
    "Token2WavConfig",
    "OmniConfig",
    "load",
]

# RoPE types our kernels implement. "mrope" is the Qwen2-VL-era name of the same math as
# "default" (sections come from mrope_section), so it is normalised to "default".
_TEXT_ROPE_TYPES = ("default",)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list[{_type_name(arg)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, path: str):
    """Check `value` against the annotation `tp`; return it normalised (tuples -> lists,
    ints -> floats for float fields). Raises ValueError naming `path`."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")
        return [_coerce(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__} {value!r:.80}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, _Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__} {value!r:.80}")
        return tp.from_dict(value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # JSON has no int/float split for e.g. 2.0; bool is an int subclass but never a count.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")


class _Section:
    """Shared from_dict/to_dict for the config dataclasses."""

    # config.json key -> field name, used only when the field's own key is absent.
    _aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def _preprocess(cls, d: dict, path: str) -> dict:
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str = "config"):
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected an object, got {type(d).__name__}")
        d = cls._preprocess(dict(d), path)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = _coerce(value, hints[key], f"{path}.{key}")
        for key, value in d.items():
            if key in names:
                continue
            target = cls._aliases.get(key)
            if target is not None and target not in kwargs:
                kwargs[target] = _coerce(value, hints[target], f"{path}.{key}")
            else:
                extra[key] = value
        obj = cls(**kwargs, extra=extra)  # __post_init__ derives defaults as transformers does
        obj.validate(path)
        return obj

    def __post_init__(self) -> None:
        pass

    def validate(self, path: str = "config") -> None:
        pass

    def to_dict(self, style: str = "transformers") -> dict:
        """Plain dict for config.json. style="transformers" writes `rope_parameters` (5.x);
        style="2025" writes `rope_scaling` + `rope_theta` as the published checkpoint does."""
        if style not in ("transformers", "2025"):
            raise ValueError(f"style must be 'transformers' or '2025', got {style!r}")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict(style)
            out[f.name] = value
        out = self._postprocess_dict(out, style)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return json.loads(json.dumps(out))  # deep copy, JSON-clean

    def _postprocess_dict(self, out: dict, style: str) -> dict:
        return out


def _positive(obj, path: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None or value <= 0:
            raise ValueError(f"{path}.{name} must be a positive integer, got {value!r}")


@dataclass
class RopeParameters(_Section):
    """Normalised RoPE settings (the 5.x `rope_parameters` dict)."""

    rope_type: str = "default"
    rope_theta: float = 1_000_000.0
    mrope_section: Optional[list[int]] = None
    extra: dict = field(default_factory=dict)

    def _postprocess_dict(self, out, style):
        if out.get("mrope_section") is None:
            out.pop("mrope_section")
        return out


def _read_rope(d: dict, path: str, default_theta: float, default_mrope: Optional[list[int]]) -> dict:
    """Fold `rope_scaling`/`rope_theta`/`rope_parameters` into one `rope_parameters` dict, with
    transformers' precedence (rope_scaling, then rope_parameters; theta from the dict, then the
    top-level key, then the default)."""
    scaling = d.pop("rope_scaling", None)
    params = d.pop("rope_parameters", None)
    theta = d.pop("rope_theta", None)
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}.{key}: expected an object, got {type(value).__name__} {value!r:.80}")
    rp = dict(scaling or params or {})
    if theta is not None:
        rp.setdefault("rope_theta", theta)
    rp.setdefault("rope_theta", default_theta)
    rp.setdefault("rope_type", rp.get("type", "default"))
    if rp.get("type") == rp["rope_type"]:
        del rp["type"]  # the legacy duplicate; to_dict("2025") writes it back
    if default_mrope is not None:
        rp.setdefault("mrope_section", list(default_mrope))
    d["rope_parameters"] = rp
    return d


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
class AudioEncoderConfig(_Section):
    """thinker_config.audio_config: the Whisper-like audio encoder."""

    _aliases: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "encoder_layers",
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "intermediate_size": "encoder_ffn_dim",
    }

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_function: str = "gelu"
    activation_dropout: float = 0.0
    scale_embedding: bool = False
    initializer_range: float = 0.02
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 3584
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def chunk_frames(self) -> int:
        """Mel frames per attention chunk (2 * n_window = 200 = 2 s for the published models)."""
        return 2 * self.n_window

    def validate(self, path="config"):
        _positive(self, path, "num_mel_bins", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                  "d_model", "max_source_positions", "n_window", "output_dim")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(
                f"{path}.d_model ({self.d_model}) must be divisible by "
                f"{path}.encoder_attention_heads ({self.encoder_attention_heads})"
            )
        if self.d_model % 2:
            raise ValueError(f"{path}.d_model ({self.d_model}) must be even (sinusoidal positions)")
        if self.n_window > self.max_source_positions:
            # a chunk of 2 * n_window frames gives n_window tokens, each needing a position row
            raise ValueError(
                f"{path}.n_window ({self.n_window}) tokens per chunk exceed "
                f"{path}.max_source_positions ({self.max_source_positions})"
            )


@dataclass
class VisionEncoderConfig(_Section):
    """thinker_config.vision_config: the Qwen2.5-VL ViT."""

    # attribute_map of transformers plus the Qwen2.5-VL-era names some published configs carry.
    _aliases: ClassVar[dict[str, str]] = {
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "depth",
        "embed_dim": "hidden_size",
        "in_chans": "in_channels",
        "spatial_patch_size": "patch_size",
    }

    depth: int = 32
    hidden_size: int = 3584
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    initializer_range: float = 0.02
    rope_parameters: RopeParameters = field(default_factory=lambda: RopeParameters("axial", 10_000.0, None))
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        return _read_rope(d, path, 10_000.0, None)

    def __post_init__(self):
        if self.rope_parameters.rope_type == "default":  # transformers forces the axial label
            self.rope_parameters.rope_type = "axial"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters.rope_theta

    @property
    def patch_dim(self) -> int:
        """Length of one pixel_values row: in_channels * temporal_patch_size * patch_size**2."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    def validate(self, path="config"):
        _positive(self, path, "depth", "hidden_size", "intermediate_size", "num_heads", "in_channels",
                  "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size", "out_hidden_size")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{path}.hidden_size ({self.hidden_size}) must be divisible by {path}.num_heads ({self.num_heads})"
            )
        if self.window_size < self.patch_size * self.spatial_merge_size:
            raise ValueError(
                f"{path}.window_size ({self.window_size}) must be at least patch_size * spatial_merge_size "
                f"({self.patch_size * self.spatial_merge_size})"
            )
        if self.rope_parameters.rope_theta <= 0:
            raise ValueError(f"{path}.rope_parameters.rope_theta must be > 0, got {self.rope_parameters.rope_theta}")
        if self.head_dim % 4:
            raise ValueError(f"{path}: head_dim {self.head_dim} must be a multiple of 4 (2-D rotary over h and w)")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"{path}.fullatt_block_indexes {bad} are outside 0..depth-1 ({self.depth - 1})")
        if self.rope_parameters.rope_type != "axial":
            raise ValueError(f"{path}.rope_parameters.rope_type must be 'axial', got {self.rope_parameters.rope_type!r}")

    def _postprocess_dict(self, out, style):
        if style == "2025" and self.rope_parameters.to_dict() == RopeParameters("axial", 10_000.0, None).to_dict():
            out.pop("rope_parameters")
        return out


@dataclass
class ThinkerConfig(_Section):
    """thinker_config: audio + vision encoders and the LLM, plus the multimodal token ids."""

    _aliases: ClassVar[dict[str, str]] = {
        "image_token_id": "image_token_index",
        "video_token_id": "video_token_index",
        "audio_token_id": "audio_token_index",
    }

    audio_config: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    vision_config: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    user_token_id: int = 872
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    # Not transformers fields, but in the published config.json and read by transformers'
    # get_rope_index (it fails without vision_start_token_id when images are present).
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    extra: dict = field(default_factory=dict)

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @property
    def video_token_id(self) -> int:
        return self.video_token_index

    @property
    def audio_token_id(self) -> int:
        return self.audio_token_index

    def token_ids(self) -> dict[str, int]:
        return {
            "audio": self.audio_token_index,
            "image": self.image_token_index,
            "video": self.video_token_index,
            "audio_start": self.audio_start_token_id,
            "audio_end": self.audio_end_token_id,
            "vision_start": self.vision_start_token_id,
            "vision_end": self.vision_end_token_id,
        }

    def check_token_ids(self, path="config.thinker_config") -> None:
        """Multimodal ids must index the embedding table. Not part of parsing: transformers
        accepts (and text-only prompts run with) tiny test configs that keep the 7B ids."""
        vocab = self.text_config.vocab_size
        for name, value in self.token_ids().items():
            if not 0 <= value < vocab:
                key = {"audio": "audio_token_index", "image": "image_token_index", "video": "video_token_index"}.get(
                    name, f"{name}_token_id"
                )
                raise ValueError(f"{path}.{key} = {value} is outside the vocabulary (text_config.vocab_size = {vocab})")

    def validate(self, path="config"):
        _positive(self, path, "position_id_per_seconds", "seconds_per_chunk")
        ids = self.token_ids()
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"{path}: multimodal token ids must be distinct, got {ids}")
        hidden = self.text_config.hidden_size
        if self.audio_config.output_dim != hidden:
            raise ValueError(
                f"{path}.audio_config.output_dim ({self.audio_config.output_dim}) must equal "
                f"{path}.text_config.hidden_size ({hidden})"
            )
        if self.vision_config.out_hidden_size != hidden:
            raise ValueError(
                f"{path}.vision_config.out_hidden_size ({self.vision_config.out_hidden_size}) must equal "
                f"{path}.text_config.hidden_size ({hidden})"
            )


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


@dataclass
class DiTConfig(_Section):
    """token2wav_config.dit_config: the flow-matching DiT with its ECAPA-TDNN speaker encoder."""

    # Names used by the original Qwen release (F5-TTS style) before transformers renamed them.
    _aliases: ClassVar[dict[str, str]] = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads"}

    hidden_size: int = 1024
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    ff_mult: int = 2
    emb_dim: int = 512
    head_dim: int = 64
    rope_parameters: RopeParameters = field(default_factory=lambda: RopeParameters("default", 10_000.0, None))
    max_position_embeddings: int = 32768
    block_size: int = 24
    look_ahead_layers: list[int] = field(default_factory=lambda: [10])
    look_backward_layers: list[int] = field(default_factory=lambda: [0, 20])
    repeats: int = 2
    num_embeds: int = 8193
    mel_dim: int = 80
    dropout: float = 0.1
    enc_emb_dim: int = 192
    enc_dim: int = 128
    enc_channels: list[int] = field(default_factory=lambda: [256, 256, 256, 256, 768])
    enc_kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        return _read_rope(d, path, 10_000.0, None)

    @property
    def inner_dim(self) -> int:
        return self.head_dim * self.num_attention_heads

    def validate(self, path="config"):
        _positive(self, path, "hidden_size", "num_hidden_layers", "num_attention_heads", "ff_mult", "emb_dim",
                  "head_dim", "block_size", "repeats", "num_embeds", "mel_dim", "enc_emb_dim", "enc_dim",
                  "enc_attention_channels", "enc_res2net_scale", "enc_se_channels", "max_position_embeddings")
        if self.rope_parameters.rope_type != "default":
            raise ValueError(f"{path}.rope_parameters.rope_type must be 'default', got {self.rope_parameters.rope_type!r}")
        if self.head_dim % 2:
            raise ValueError(f"{path}.head_dim ({self.head_dim}) must be even for rotary embeddings")
        for name in ("look_ahead_layers", "look_backward_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"{path}.{name} {bad} are outside 0..num_hidden_layers-1 ({self.num_hidden_layers - 1})")
        ch, ks, dil = self.enc_channels, self.enc_kernel_sizes, self.enc_dilations
        if not (len(ch) == len(ks) == len(dil)):
            raise ValueError(
                f"{path}.enc_channels, enc_kernel_sizes and enc_dilations must have the same length, "
                f"got {len(ch)}, {len(ks)}, {len(dil)}"
            )
        if len(ch) < 3:
            raise ValueError(f"{path}.enc_channels needs at least 3 entries (TDNN, SE-Res2Net blocks, MFA), got {ch}")
        if any(c <= 0 for c in ch) or any(k <= 0 for k in ks) or any(x <= 0 for x in dil):
            raise ValueError(f"{path}: enc_channels/enc_kernel_sizes/enc_dilations must be positive")
        # MFA concatenates the SE-Res2Net outputs, and its conv is sized enc_channels[-1].
        if ch[-1] != sum(ch[1:-1]):
            raise ValueError(f"{path}.enc_channels[-1] ({ch[-1]}) must equal sum(enc_channels[1:-1]) ({sum(ch[1:-1])})")
        # The SE-Res2Net blocks add their input back, so their width cannot change.
        if len(set(ch[:-1])) != 1:
            raise ValueError(f"{path}.enc_channels[:-1] must all be equal (residual blocks), got {ch[:-1]}")
        if ch[0] % self.enc_res2net_scale:
            raise ValueError(
                f"{path}.enc_channels[0] ({ch[0]}) must be divisible by enc_res2net_scale ({self.enc_res2net_scale})"
            )

    def _postprocess_dict(self, out, style):
        if style == "2025" and self.rope_parameters.to_dict() == RopeParameters("default", 10_000.0, None).to_dict():
            out.pop("rope_parameters")
        return out


@dataclass
class BigVGANConfig(_Section):
    """token2wav_config.bigvgan_config: the mel -> 24 kHz waveform vocoder."""

    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    upsample_rates: list[int] = field(default_factory=lambda: [5, 3, 2, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 7, 4, 4, 4, 4])
    extra: dict = field(default_factory=dict)

    @property
    def hop_length(self) -> int:
        out = 1
        for r in self.upsample_rates:
            out *= r
        return out

    def validate(self, path="config"):
        _positive(self, path, "mel_dim", "upsample_initial_channel")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(
                f"{path}.upsample_rates ({len(self.upsample_rates)}) and upsample_kernel_sizes "
                f"({len(self.upsample_kernel_sizes)}) must have the same length"
            )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"{path}.resblock_kernel_sizes ({len(self.resblock_kernel_sizes)}) and resblock_dilation_sizes "
                f"({len(self.resblock_dilation_sizes)}) must have the same length"
            )
        if not self.upsample_rates or not self.resblock_kernel_sizes:
            raise ValueError(f"{path}: upsample_rates and resblock_kernel_sizes must not be empty")
        for i, d in enumerate(self.resblock_dilation_sizes):
            if len(d) != 3:  # the AMP block has exactly three dilated convs
                raise ValueError(f"{path}.resblock_dilation_sizes[{i}] must have 3 entries, got {d}")
        if any(v <= 0 for v in self.upsample_rates + self.upsample_kernel_sizes + self.resblock_kernel_sizes):
            raise ValueError(f"{path}: upsample rates and kernel sizes must be positive")
        n = len(self.upsample_rates)
        # Every upsampling stage halves the channels; the last stage must keep at least one.
        if self.upsample_initial_channel % (2**n):
            raise ValueError(
                f"{path}.upsample_initial_channel ({self.upsample_initial_channel}) must be divisible by "
                f"2**len(upsample_rates) = {2**n}"
            )


@dataclass
class Token2WavConfig(_Section):
    """token2wav_config: codec codes -> mel (DiT) -> waveform (BigVGAN)."""

    dit_config: DiTConfig = field(default_factory=DiTConfig)
    bigvgan_config: BigVGANConfig = field(default_factory=BigVGANConfig)
    extra: dict = field(default_factory=dict)

    def validate(self, path="config"):
        if self.dit_config.mel_dim != self.bigvgan_config.mel_dim:
            raise ValueError(
                f"{path}.dit_config.mel_dim ({self.dit_config.mel_dim}) must equal "
                f"{path}.bigvgan_config.mel_dim ({self.bigvgan_config.mel_dim})"
            )


@dataclass
class OmniConfig(_Section):
    """The whole Qwen2.5-Omni config.json."""

    thinker_config: ThinkerConfig = field(default_factory=ThinkerConfig)
    talker_config: TalkerConfig = field(default_factory=TalkerConfig)
    token2wav_config: Token2WavConfig = field(default_factory=Token2WavConfig)
    enable_audio_output: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        model_type = d.get("model_type", "qwen2_5_omni")
        if model_type != "qwen2_5_omni":
            raise ValueError(f"{path}.model_type must be 'qwen2_5_omni', got {model_type!r}")
        return d

    def validate(self, path="config"):
        thinker_hidden = self.thinker_config.text_config.hidden_size
        if self.enable_audio_output:
            if self.talker_config.embedding_size != thinker_hidden:
                # The talker consumes thinker hidden states and thinker token embeddings.
                raise ValueError(
                    f"{path}.talker_config.embedding_size ({self.talker_config.embedding_size}) must equal "
                    f"thinker_config.text_config.hidden_size ({thinker_hidden})"
                )

    def check_token_ids(self, path="config") -> None:
        """Token ids that must index embedding tables: the Thinker's multimodal ids and the
        Talker's tts_text_* ids (looked up in the Thinker's embedding). Call before running
        multimodal prompts or speech output; parsing alone accepts them (see ThinkerConfig)."""
        self.thinker_config.check_token_ids(f"{path}.thinker_config")
        if self.enable_audio_output:
            vocab = self.thinker_config.text_config.vocab_size
            for name in ("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id"):
                value = getattr(self.talker_config, name)
                if not 0 <= value < vocab:
                    raise ValueError(
                        f"{path}.talker_config.{name} = {value} must be a Thinker token id "
                        f"(thinker_config.text_config.vocab_size = {vocab})"
                    )

    def _postprocess_dict(self, out, style):
        # Key order of a real config.json: architectures/model_type first.
        head = {"architectures": ["Qwen2_5OmniForConditionalGeneration"], "model_type": "qwen2_5_omni"}
        for key in head:
            if key in self.extra:
                head[key] = self.extra[key]
        return {**head, **out}

    @property
    def thinker(self) -> ThinkerConfig:
        return self.thinker_config

    @property
    def text(self) -> TextConfig:
        return self.thinker_config.text_config

    @property
    def talker(self) -> TalkerConfig:
        return self.talker_config

    @property
    def dit(self) -> DiTConfig:
        return self.token2wav_config.dit_config

    @property
    def bigvgan(self) -> BigVGANConfig:
        return self.token2wav_config.bigvgan_config

    def save(self, path, style: str = "2025") -> Path:
        """Write config.json (to `path`, or into it when it is a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_dict(style), indent=2, sort_keys=False) + "\n")
        return path


def load(path) -> OmniConfig:
    """Read a config.json (or the config.json inside a checkpoint directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return OmniConfig.from_dict(data, "config")
