"""The BigVGAN vocoder of Token2Wav: log-mel (B, mel_dim, T) -> 24 kHz waveform (B, T * hop_length),
equal to transformers' `Qwen2_5OmniToken2WavBigVGANModel` (5.24) except that the batch dim is kept.

    mel -> exp -> 20 log10(max(., 10^(-115/20))) - 20 dB -> onto [-1, 1]     (process_mel_spectrogram)
        -> conv_pre (k7) -> per stage i: ups.i (transposed conv, x rate_i), then the mean of the
           stage's AMP blocks -> anti-aliased SnakeBeta -> conv_post (k7, no bias) -> clamp [-1, 1]

An AMP block is three times  x += conv2(act(conv1_dilated(act(x))))  with `act` the anti-aliased
SnakeBeta: upsample x2 with a 12-tap kaiser-sinc filter, SnakeBeta  x + sin(e^a x)^2 / (e^b + 1e-9),
low-pass with the same filter and keep every 2nd sample. The filter is computed as transformers'
`kaiser_sinc_filter1d` computes it and kept as a non-persistent buffer (never read from a checkpoint).

Speed on CPU: the resampling runs as transformers' depthwise (grouped) convolutions, with the x2
of the upsampler folded into its filter, the edge replication done by concatenating edge views
(F.pad's replicate mode is ~4x slower), the down-sampler's replicate padding written into the
activation's output instead of a padded copy, and SnakeBeta in place -- the same arithmetic per
sample (measured: the waveform is bit-identical to transformers' on CPU). The dense convolutions,
~75% of the time at the 7B's width, are transformers' own nn.Conv1d calls.

`receptive_field_frames(config)` -> (left, right): an output sample of mel frame f is computed from
frames f - left .. f + right only -- including every padding of every layer, so a window of the
mel holding those frames reproduces the sample exactly (what a streaming decoder needs).

Parameter names are the checkpoint's with `token2wav.code2wav_bigvgan_model.` cut.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BigVGANConfig
from ..io.layout import is_computed_buffer
from ..layers import build_and_adopt

__all__ = ["BigVGAN", "BIGVGAN_PREFIX", "kaiser_sinc_filter1d", "receptive_field_frames"]

BIGVGAN_PREFIX = "token2wav.code2wav_bigvgan_model."
_MIN_DB = -115.0  # the dB floor of process_mel_spectrogram
# transformers' floor exp(-115 / 20 * ln 10), computed as it does (a float32 exp), kept as a Python
# float (exactly that float32 value): clamp takes it without making a device tensor per call
_MIN_LEVEL = float(torch.tensor(_MIN_DB / 20.0 * math.log(10), dtype=torch.float32).exp())
_REF_DB = 20.0  # subtracted after amplitude_to_db


def kaiser_sinc_filter1d(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """A kaiser-windowed sinc low-pass (1, 1, kernel_size) summing to 1: transformers' function, op for op
    (float32, on the CPU even under a meta-device build)."""
    if not 0.0 < cutoff <= 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5], got {cutoff}")
    half_size = kernel_size // 2
    delta_f = 4 * half_width
    attenuation = 2.285 * (half_size - 1) * math.pi * delta_f + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False, dtype=torch.float32, device="cpu")
    if kernel_size % 2 == 0:
        time_indices = torch.arange(-half_size, half_size, device="cpu") + 0.5
    else:
        time_indices = torch.arange(kernel_size, device="cpu") - half_size
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time_indices)
    taps /= taps.sum()
    return taps.view(1, 1, kernel_size)


@functools.lru_cache(maxsize=None)
def _resampling_filter(ratio: int, taps: int) -> torch.Tensor:
    # UpSample1d and DownSample1d of one activation use the same filter (cutoff 0.5/r, width 0.6/r).
    return kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, taps)


class SnakeBeta(nn.Module):
    """x + sin(x e^alpha)^2 / (e^beta + 1e-9), per channel (alpha, beta are log-scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T), any strides -> a new contiguous tensor."""
        alpha = self.alpha.exp()[:, None]
        inv_beta = (1.0 / (self.beta.exp() + 1e-9))[:, None]
        return torch.mul(x, alpha).sin_().square_().mul_(inv_beta).add_(x)


class AntiAliasedSnakeBeta(nn.Module):
    """transformers' Qwen2_5OmniAntiAliasedActivation1d with its defaults: UpSample1d(2, 12) ->
    SnakeBeta -> DownSample1d(2, 12). Lengths are kept (T -> 2T -> T)."""

    RATIO, TAPS = 2, 12
    # UpSample1d: replicate-pad the input by UP_PAD, transposed conv (stride RATIO), keep [UP_CROP:-UP_CROP]
    # (transformers' pad_left = pad_right when TAPS - RATIO is even).
    UP_PAD = TAPS // RATIO - 1
    UP_CROP = UP_PAD * RATIO + (TAPS - RATIO) // 2
    # DownSample1d: replicate-pad (DOWN_LEFT, DOWN_RIGHT), conv with stride RATIO.
    DOWN_LEFT, DOWN_RIGHT = TAPS // 2 - 1, TAPS // 2

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        taps = _resampling_filter(self.RATIO, self.TAPS).expand(channels, 1, self.TAPS)
        # transformers multiplies the upsampled signal by RATIO; folded into the filter (x2 is exact).
        self.register_buffer("up_filter", (self.RATIO * taps).contiguous(), persistent=False)
        self.register_buffer("down_filter", taps.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, length = x.shape[1], x.shape[2]
        pad = self.UP_PAD
        x = torch.cat([x[..., :1].expand(-1, -1, pad), x, x[..., -1:].expand(-1, -1, pad)], dim=-1)
        up = F.conv_transpose1d(x, self.up_filter, stride=self.RATIO, groups=channels)
        # The 2T samples transformers keeps are up[UP_CROP : UP_CROP + 2T]; take DOWN_LEFT / DOWN_RIGHT
        # more on each side so the activation's output already has room for the down-sampler's padding.
        start = self.UP_CROP - self.DOWN_LEFT
        z = self.act(up[..., start:start + self.RATIO * length + self.DOWN_LEFT + self.DOWN_RIGHT])
        left, right = self.DOWN_LEFT, self.DOWN_RIGHT
        z[..., :left] = z[..., left:left + 1]  # replicate the first and the last of the 2T samples
        z[..., -right:] = z[..., -right - 1:-right]
        return F.conv1d(z, self.down_filter, stride=self.RATIO, groups=channels)

    @classmethod
    def spans(cls, lo: int, hi: int, rate: int) -> list[tuple[int, int, int]]:
        """Input index spans (lo, hi, samples per mel frame) read by outputs lo..hi at `rate`: the
        upsampled signal's, then the input's (padding included: indices outside the signal)."""
        z_lo = cls.RATIO * lo - cls.DOWN_LEFT
        z_hi = cls.RATIO * hi - cls.DOWN_LEFT + cls.TAPS - 1
        x_lo, x_hi = _transposed_span(z_lo + cls.UP_CROP, z_hi + cls.UP_CROP, cls.RATIO, cls.TAPS, 0)
        return [(z_lo, z_hi, cls.RATIO * rate), (x_lo - cls.UP_PAD, x_hi - cls.UP_PAD, rate)]


def _check_geometry(config) -> None:
    """The config, validated, with every stage and block keeping lengths exact (T -> rate * T)."""
    if not isinstance(config, BigVGANConfig):
        raise ValueError(f"config must be an omni_runtime.config.BigVGANConfig, got {type(config).__name__}")
    config.validate("bigvgan_config")
    for i, (rate, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
        if (k - rate) % 2:  # else the stage's output is one sample longer than rate * T
            raise ValueError(f"bigvgan_config: upsample_kernel_sizes[{i}] - upsample_rates[{i}] ({k} - {rate}) "
                             f"must be even")
    for k, dils in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
        if any(d <= 0 or d * (k - 1) % 2 for d in dils):  # else a block's conv changes the length
            raise ValueError(f"bigvgan_config: resblock kernel {k} with dilations {dils} needs positive "
                             f"dilations with dilation * (kernel - 1) even")


def _conv_span(lo: int, hi: int, kernel: int, dilation: int = 1) -> tuple[int, int]:
    """Inputs read by outputs lo..hi of a stride-1 "same" conv (zero padding counts as read)."""
    half = dilation * (kernel - 1) // 2
    return lo - half, hi + half


def _transposed_span(lo: int, hi: int, stride: int, kernel: int, padding: int) -> tuple[int, int]:
    """Inputs m read by outputs lo..hi of a transposed conv: j = stride * m + t - padding, 0 <= t < kernel."""
    return -((kernel - 1 - lo - padding) // stride), (hi + padding) // stride


class AMPBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                               padding=d * (kernel_size - 1) // 2) for d in dilations])
        self.convs2 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                     for _ in dilations])
        # activations[2i] precedes convs1[i], activations[2i + 1] precedes convs2[i] (transformers' order).
        self.activations = nn.ModuleList([AntiAliasedSnakeBeta(channels) for _ in range(2 * len(dilations))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = conv1(self.activations[2 * i](x))
            x = conv2(self.activations[2 * i + 1](h)).add_(x)
        return x

    @staticmethod
    def spans(lo: int, hi: int, rate: int, kernel_size: int, dilations: list[int]) -> list[tuple[int, int, int]]:
        """Every span read inside a block by outputs lo..hi; the last is the block input's."""
        out = []
        for d in reversed(dilations):
            for dilation in (1, d):  # conv2, then conv1, each behind its activation
                lo, hi = _conv_span(lo, hi, kernel_size, dilation)
                out.append((lo, hi, rate))
                out += AntiAliasedSnakeBeta.spans(lo, hi, rate)
                lo, hi = out[-1][:2]
        return out


class BigVGAN(nn.Module):
    """See the module docstring. `forward(mel (B, mel_dim, T))` -> (B, T * hop_length) in [-1, 1]."""

    def __init__(self, config: BigVGANConfig):
        super().__init__()
        _check_geometry(config)
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.mel_dim, c0, 7, padding=3)
        # ups.i.0: the extra ModuleList level is the checkpoint's layout.
        self.ups = nn.ModuleList([
            nn.ModuleList([nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, rate, padding=(k - rate) // 2)])
            for i, (rate, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))])
        self.blocks_per_stage = len(config.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList([
            AMPBlock(c0 // 2 ** (i + 1), k, dils)
            for i in range(len(config.upsample_rates))
            for k, dils in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)])
        c_last = c0 // 2 ** len(config.upsample_rates)
        self.activation_post = AntiAliasedSnakeBeta(c_last)
        self.conv_post = nn.Conv1d(c_last, 1, 7, padding=3, bias=False)

    @classmethod
    def from_state_dict(cls, config: BigVGANConfig, tensors: Mapping[str, torch.Tensor], device=None) -> "BigVGAN":
        """Build around `tensors` (names with or without `token2wav.code2wav_bigvgan_model.`; resampling
        filters a checkpoint may carry are ignored: they are recomputed), in fp32, on `device`
        (default: where the tensors are). Missing / unexpected / mis-shaped tensors raise ValueError
        listing them."""
        own = {k[len(BIGVGAN_PREFIX):] if k.startswith(BIGVGAN_PREFIX) else k: v for k, v in tensors.items()
               if not is_computed_buffer(k)}
        model = build_and_adopt(lambda: cls(config), own, "BigVGAN", device=device, dtype=torch.float32)
        return model.to(model.conv_pre.weight.device)  # the filter buffers were made on the CPU

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def receptive_field_frames(self) -> tuple[int, int]:
        # ~0.1 s of pure Python: computed once per model, not once per stream
        if getattr(self, "_receptive_field", None) is None:
            self._receptive_field = receptive_field_frames(self.config)
        return self._receptive_field

    def process_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Natural-log mel -> dB (floor -115, minus 20) -> [-1, 1]: transformers' process_mel_spectrogram."""
        db = 20 * torch.log10(torch.clamp(torch.exp(mel), min=_MIN_LEVEL)) - _REF_DB
        return torch.clamp(2 * ((db - _MIN_DB) / -_MIN_DB) - 1, -1, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, mel_dim, T) natural-log amplitudes, T >= 1, finite -> waveform (B, T * hop_length)
        float32 on the model's device, clamped to [-1, 1]."""
        return self.synthesize(self._check(mel))

    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """`forward` for a mel already checked (on the model's device and dtype): no host reads,
        so a CUDA graph can capture it."""
        x = self.conv_pre(self.process_mel(mel))
        n = self.blocks_per_stage
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * n:(i + 1) * n]
            total = blocks[0](x)
            for block in blocks[1:]:
                total.add_(block(x))
            x = total.div_(n)
        wave = self.conv_post(self.activation_post(x))
        return wave.clamp_(-1.0, 1.0).squeeze(1)

    def _check(self, mel) -> torch.Tensor:
        dim = self.config.mel_dim
        if not isinstance(mel, torch.Tensor) or mel.dim() != 3:
            got = f"{mel.dim()}-D {tuple(mel.shape)}" if isinstance(mel, torch.Tensor) else type(mel).__name__
            raise ValueError(f"mel must be a (batch, {dim}, frames) tensor, got {got}")
        if not mel.is_floating_point():
            raise ValueError(f"mel must be a float tensor, got {mel.dtype}")
        if mel.shape[1] != dim:
            raise ValueError(f"mel has {mel.shape[1]} mel bins, the vocoder expects {dim} (shape (batch, {dim}, frames))")
        if mel.shape[0] == 0 or mel.shape[2] == 0:
            raise ValueError(f"mel {tuple(mel.shape)} is empty: the vocoder needs a batch of at least one frame")
        weight = self.conv_pre.weight
        mel = mel.to(device=weight.device, dtype=weight.dtype)
        if not bool(torch.isfinite(mel).all()):
            raise ValueError("mel holds NaN or Inf values")
        return mel


def receptive_field_frames(config: BigVGANConfig) -> tuple[int, int]:
    """(left, right) in mel frames: an output sample of frame f (samples f * hop .. (f + 1) * hop - 1)
    reads only mel frames f - left .. f + right, counting every index each layer reads, padding
    included. So a mel window holding frames f - left .. f + right gives that sample exactly as the
    whole mel does (no layer reaches the window's edge), and no frame outside can change it.

    Computed from the config by following the index spans back from each of the hop samples of a
    frame through conv_post, the activations, every AMP block (the union over a stage's blocks), the
    transposed convs and conv_pre, at each signal's rate (samples per frame); a span lo..hi at rate
    r needs frames floor(lo / r) .. floor(hi / r)."""
    _check_geometry(config)
    hop = config.hop_length
    left = right = 0
    base = 10**6 * hop  # far from 0, so every index below stays positive
    for s in range(base, base + hop):
        frame, rate = s // hop, hop
        lo, hi = _conv_span(s, s, 7)  # conv_post
        spans = [(s, s, rate), (lo, hi, rate), *AntiAliasedSnakeBeta.spans(lo, hi, rate)]
        lo, hi = spans[-1][:2]
        for stride, kernel in reversed(list(zip(config.upsample_rates, config.upsample_kernel_sizes))):
            inputs = []
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                inner = AMPBlock.spans(lo, hi, rate, k, dilations)
                spans += inner
                inputs.append(inner[-1][:2])
            lo, hi = min(a for a, _ in inputs), max(b for _, b in inputs)
            lo, hi = _transposed_span(lo, hi, stride, kernel, (kernel - stride) // 2)
            rate //= stride
            spans.append((lo, hi, rate))
        spans.append((*_conv_span(lo, hi, 7), 1))  # conv_pre, on the mel frames
        left = max(left, frame - min(a // r for a, _, r in spans))
        right = max(right, max(b // r for _, b, r in spans) - frame)
    return left, right
