"""ECAPA-TDNN speaker encoder of the Token2Wav DiT (transformers' `ECAPA_TimeDelayNet`): a reference
log-mel (B, frames, mel_dim) -> one speaker vector (B, enc_dim).

    TDNN (conv k0, d0) -> SE-Res2Net blocks 1..n-2 (residual) -> MFA (concat of the SE-Res2Net outputs,
    conv + ReLU) -> attentive statistics pooling (weighted mean and std over time) -> fc (1x1 conv)

Every conv is "same"-padded with reflection, as the checkpoint was trained. Submodule names are the
checkpoint's (`blocks.0.conv`, `blocks.i.{tdnn1,res2net_block.blocks.j,tdnn2}.conv`,
`blocks.i.se_block.conv{1,2}`, `mfa.conv`, `asp.tdnn.conv`, `asp.conv`, `fc`), so the
`input_embed.spk_encoder.*` tensors load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig

__all__ = ["ECAPA", "min_reference_frames"]

# AttentiveStatisticsPooling clamps the variance here before the square root.
_VARIANCE_FLOOR = 1e-12


def _same_conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding="same", padding_mode="reflect")


def min_reference_frames(config: DiTConfig) -> int:
    """The fewest reference-mel frames the encoder takes: reflection padding needs more frames than
    the widest one-sided pad (PyTorch puts the odd extra on the right)."""
    pads = [d * (k - 1) - d * (k - 1) // 2 for k, d in zip(config.enc_kernel_sizes, config.enc_dilations)]
    return max(pads) + 1


class TDNN(nn.Module):
    """Conv1d + ReLU (transformers' TimeDelayNetBlock)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = _same_conv(c_in, c_out, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Res2Net(nn.Module):
    """Split channels into `scale` groups; group 0 passes, group i >= 1 is TDNN(group_i + out_{i-1})
    (no carry into group 1)."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        self.scale = scale
        self.blocks = nn.ModuleList(TDNN(channels // scale, channels // scale, kernel, dilation)
                                    for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(torch.chunk(x, self.scale, dim=1))
        out = [parts[0]]
        for i, block in enumerate(self.blocks, start=1):
            out.append(block(parts[i] if i == 1 else parts[i] + out[-1]))
        return torch.cat(out, dim=1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = _same_conv(channels, se_channels)
        self.conv2 = _same_conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))
        return x * gate


class SERes2NetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, scale: int, se_channels: int, kernel: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNN(c_in, c_out, 1, 1)
        self.res2net_block = Res2Net(c_out, scale, kernel, dilation)
        self.tdnn2 = TDNN(c_out, c_out, 1, 1)
        self.se_block = SqueezeExcitation(c_out, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _mean_std(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and std over time (dim 2); weights sum to 1 over time."""
    mean = (weights * x).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=_VARIANCE_FLOOR).sqrt()


class AttentiveStatsPool(nn.Module):
    """Per-channel attention over time, conditioned on the utterance's global mean and std; returns
    the attention-weighted mean and std concatenated (B, 2C, 1)."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TDNN(channels * 3, attention_channels, 1, 1)
        self.conv = _same_conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        uniform = torch.full((1, 1, frames), 1.0 / frames, dtype=x.dtype, device=x.device)
        mean, std = _mean_std(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _mean_std(x, attention)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class ECAPA(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        ch, ks, dil = config.enc_channels, config.enc_kernel_sizes, config.enc_dilations
        self.blocks = nn.ModuleList([TDNN(config.mel_dim, ch[0], ks[0], dil[0])])
        for i in range(1, len(ch) - 1):
            self.blocks.append(SERes2NetBlock(ch[i - 1], ch[i], config.enc_res2net_scale, config.enc_se_channels,
                                              ks[i], dil[i]))
        self.mfa = TDNN(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatsPool(ch[-1], config.enc_attention_channels)
        self.fc = _same_conv(ch[-1] * 2, config.enc_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, frames, mel_dim) -> (B, enc_dim)."""
        x = self.blocks[0](mel.transpose(1, 2))
        features = []
        for block in self.blocks[1:]:
            x = block(x)
            features.append(x)
        x = self.mfa(torch.cat(features, dim=1))
        return self.fc(self.asp(x)).squeeze(-1)
