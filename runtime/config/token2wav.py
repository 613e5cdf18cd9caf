"""Token2Wav: the DiT (`DiTConfig`), the BigVGAN vocoder (`BigVGANConfig`) and their pair
(`Token2WavConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .rope import RopeParameters, _read_rope
from .sections import _positive, _Section


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
