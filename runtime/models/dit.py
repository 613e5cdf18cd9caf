"""The Token2Wav DiT (transformers' `Qwen2_5OmniToken2WavDiTModel`): the velocity field of the flow
matching that turns codec codes into a mel spectrogram, with its ECAPA speaker encoder.

One evaluation, for the noisy mel x (L frames) at time t:

    h   = proj([x, ecapa(ref_mel), codec_embed(codes) repeated `repeats` times, cond])
    h   = DiT blocks: AdaLN-Zero(t) -> block-window attention (RoPE on head 0) -> AdaLN(t) -> GELU MLP
    v   = proj_out(LayerNorm(h) * (1 + scale(t)) + shift(t))

transformers recomputes everything in every one of the solver's 36 evaluations. Here the parts that
do not depend on the ODE state are computed once:

- `condition(codes, speaker_vec, cond)`: `proj` is linear over the concatenation, so its weight is
  split by input; the speaker / code / cond columns (and the bias) give a per-frame constant
  (B, L, hidden) once per solve; each evaluation adds only x @ W_x.
- `modulation(times)`: the time embedding and every layer's AdaLN linear (and `norm_out`'s) for all
  the solver's time points at once: one matmul per layer per time grid.

Parameter names are the checkpoint's with `token2wav.code2wav_dit_model.` cut. Dropout is off
(inference only).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from omni_kernels import dit_window_attention

from ..config import DiTConfig
from ..layers import Embedding, build_and_adopt
from .ecapa import ECAPA

__all__ = ["DiT", "Modulation", "DIT_PREFIX"]

DIT_PREFIX = "token2wav.code2wav_dit_model."
_TIME_FEATURES = 256  # sinusoidal timestep features (transformers' DiTTimestepEmbedding default)
_LN_EPS = 1e-6


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=_LN_EPS)


class TimestepEmbedding(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.time_mlp = nn.ModuleList([nn.Linear(_TIME_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (N,) -> (N, hidden): sin/cos features of 1000 t (SinusPositionEmbedding), then the MLP."""
        half = _TIME_FEATURES // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        angles = 1000 * t.unsqueeze(1) * freqs.unsqueeze(0)
        x = torch.cat((angles.sin(), angles.cos()), dim=-1)
        for layer in self.time_mlp:
            x = layer(x)
        return x


class CodecEmbedding(nn.Module):
    def __init__(self, num_embeds: int, dim: int):
        super().__init__()
        self.codec_embed = Embedding(num_embeds + 1, dim)


class InputEmbedding(nn.Module):
    """`proj` over [x (mel_dim), ecapa (enc_dim), code embedding (emb_dim), cond (enc_emb_dim)]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.proj = nn.Linear(config.mel_dim + config.enc_dim + config.emb_dim + config.enc_emb_dim,
                              config.hidden_size)
        self.spk_encoder = ECAPA(config)
        self.widths = (config.mel_dim, config.enc_dim, config.emb_dim, config.enc_emb_dim)

    def weight_parts(self) -> tuple[torch.Tensor, ...]:
        """proj.weight split by input: (W_x, W_speaker, W_code, W_cond)."""
        return torch.split(self.proj.weight, self.widths, dim=1)


class AdaNorm(nn.Module):
    """The modulation linear of AdaLayerNormZero (6 x hidden) or of the final norm (2 x hidden); the
    SiLU in front and the LayerNorm are applied by the DiT (they are shared across layers)."""

    def __init__(self, hidden: int, n: int):
        super().__init__()
        self.linear = nn.Linear(hidden, n * hidden)


class Attention(nn.Module):
    def __init__(self, config: DiTConfig, back: int, ahead: int):
        super().__init__()
        inner = config.inner_dim
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.back, self.ahead, self.block_size = back, ahead, config.block_size
        self.rope_theta = config.rope_parameters.rope_theta
        self.to_q = nn.Linear(config.hidden_size, inner)
        self.to_k = nn.Linear(config.hidden_size, inner)
        self.to_v = nn.Linear(config.hidden_size, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, config.hidden_size)])  # [1] was a dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape

        def heads(t):  # (B, L, H * D) -> (B, H, L, D), a view
            return t.view(b, length, self.heads, self.head_dim).transpose(1, 2)

        out = dit_window_attention(heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)),
                                   block_size=self.block_size, back=self.back, ahead=self.ahead,
                                   rope_theta=self.rope_theta)
        return self.to_out[0](out.transpose(1, 2).reshape(b, length, -1))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, mult: int):
        super().__init__()
        inner = int(hidden * mult)
        # Indices 0 and 3 are the checkpoint's ff.ff.0 / ff.ff.3; 2 was a dropout.
        self.ff = nn.ModuleList([nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Identity(),
                                 nn.Linear(inner, hidden)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.ff:
            x = layer(x)
        return x


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig, back: int, ahead: int):
        super().__init__()
        self.attn_norm = AdaNorm(config.hidden_size, 6)
        self.attn = Attention(config, back, ahead)
        self.ff = FeedForward(config.hidden_size, config.ff_mult)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """mod (6, hidden): shift, 1 + scale, gate for attention, then the same for the MLP."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        x = x + gate_a * self.attn(_layer_norm(x) * scale_a + shift_a)
        return x + gate_m * self.ff(_layer_norm(x) * scale_m + shift_m)


class Modulation:
    """Every evaluation's AdaLN parameters for a fixed list of time points: `layers` (N, layers, 6,
    hidden) with the scales stored as 1 + scale, `final` (N, 2, hidden) as (1 + scale, shift)."""

    def __init__(self, layers: torch.Tensor, final: torch.Tensor):
        self.layers, self.final = layers, final

    def __len__(self) -> int:
        return self.layers.shape[0]


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.repeats = config.repeats
        self.time_embed = TimestepEmbedding(config.hidden_size)
        self.text_embed = CodecEmbedding(config.num_embeds, config.emb_dim)
        self.input_embed = InputEmbedding(config)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(config, back=int(i in config.look_backward_layers), ahead=int(i in config.look_ahead_layers))
            for i in range(config.num_hidden_layers)
        )
        self.norm_out = AdaNorm(config.hidden_size, 2)
        self.proj_out = nn.Linear(config.hidden_size, config.mel_dim)

    @classmethod
    def from_state_dict(cls, config: DiTConfig, tensors: Mapping[str, torch.Tensor], device=None) -> "DiT":
        """Build around the DiT's tensors, named with or without `token2wav.code2wav_dit_model.`
        (other `token2wav.*` tensors are ignored), adopted in fp32; ValueError lists mismatches."""
        own = {}
        for name, t in tensors.items():
            if name.startswith(DIT_PREFIX):
                own[name[len(DIT_PREFIX):]] = t
            elif not name.startswith("token2wav."):
                own[name] = t
        return build_and_adopt(lambda: cls(config), own, "Token2Wav DiT", device, torch.float32)

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    # ---- the parts that do not depend on the ODE state --------------------------------------
    def speaker_vectors(self, ref_mel: torch.Tensor) -> torch.Tensor:
        """ECAPA of the reference mel and of a zero mel (CFG's unconditioned half): (2, enc_dim)."""
        return self.input_embed.spk_encoder(torch.cat([ref_mel, torch.zeros_like(ref_mel)], dim=0))

    def condition(self, codes: torch.Tensor, speaker_vec: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """codes (n,) or (N, n) int64 (N streams' windows of one length), speaker_vec (N * R,
        enc_dim), cond (N * R, enc_emb_dim) -> (N * R, n * repeats, hidden): proj's bias plus its
        speaker, code and cond columns. R = 2 is CFG: each stream's second row is the unconditioned
        half (code 0 everywhere, zero speaker vector and cond passed in); R = 1 is no CFG."""
        _, w_spk, w_code, w_cond = self.input_embed.weight_parts()
        table = self.text_embed.codec_embed.weight
        codes = codes.reshape(-1, codes.shape[-1])
        n_streams, rows = codes.shape[0], speaker_vec.shape[0] // codes.shape[0]
        per_frame = F.embedding(codes, table) @ w_code.t()  # (N, n, hidden)
        if rows == 2:
            null = (table[0] @ w_code.t()).expand_as(per_frame)
            per_frame = torch.stack([per_frame, null], dim=1).flatten(0, 1)
        per_frame = per_frame.repeat_interleave(self.repeats, dim=1)
        constant = self.input_embed.proj.bias + speaker_vec @ w_spk.t() + cond @ w_cond.t()  # (N * R, hidden)
        return per_frame + constant.unsqueeze(1)

    def modulation(self, times: torch.Tensor) -> Modulation:
        """AdaLN parameters for every time point in `times` (N,): one matmul per layer."""
        emb = F.silu(self.time_embed(times))
        n, h = emb.shape[0], self.config.hidden_size
        layers = torch.stack([blk.attn_norm.linear(emb).view(n, 6, h) for blk in self.transformer_blocks], dim=1)
        layers[:, :, (1, 4)] += 1  # scale_msa, scale_mlp -> 1 + scale
        scale, shift = self.norm_out.linear(emb).view(n, 2, h).unbind(1)
        return Modulation(layers.contiguous(), torch.stack([1 + scale, shift], dim=1))

    # ---- one evaluation ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, condition: torch.Tensor, modulation: Modulation, step: int) -> torch.Tensor:
        """x (N, L, mel_dim), condition (N * R, L, hidden) from `condition`, the AdaLN parameters of
        evaluation `step` -> velocity (N * R, L, mel_dim): each stream's state feeds its R rows."""
        w_x = self.input_embed.weight_parts()[0]
        state = x @ w_x.t()
        if state.shape[0] != condition.shape[0]:
            state = state.repeat_interleave(condition.shape[0] // state.shape[0], dim=0)
        h = condition + state
        mods = modulation.layers[step]
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, mods[i])
        scale, shift = modulation.final[step]
        return self.proj_out(_layer_norm(h) * scale + shift)
