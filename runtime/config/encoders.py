"""The Thinker's encoders: audio (`AudioEncoderConfig`) and vision (`VisionEncoderConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .rope import RopeParameters, _read_rope
from .sections import _positive, _Section


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
