"""Checks of what users hand to Token2Wav: codec codes, speakers, noise, mels. Each bad input is a
ValueError that says what is wrong; good inputs come back as fp32 / int64 tensors on the model's
device."""
from __future__ import annotations

import numbers

import torch

from ..config import DiTConfig
from ..io.speakers import Speaker
from ..models.ecapa import min_reference_frames

__all__ = ["check_codes", "check_speaker", "check_noise", "check_mel"]

_SHOWN = 5  # bad values quoted in an error message


def check_codes(codes, num_embeds: int, device, allow_empty: bool = False) -> torch.Tensor:
    """A list / tuple of ints or a 1-D integer tensor -> (n,) int64 on `device`; every code must be
    in 0..num_embeds (the rows of the DiT's codec table)."""
    if isinstance(codes, torch.Tensor):
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex() or codes.dim() != 1:
            raise ValueError(f"codes must be a 1-D integer tensor, got {codes.dim()}-D {codes.dtype}")
        out = codes.to(device=device, dtype=torch.int64)
    elif isinstance(codes, (list, tuple)):
        bad = [c for c in codes if isinstance(c, bool) or not isinstance(c, numbers.Integral)]
        if bad:
            raise ValueError(f"codes must be ints, got {bad[:_SHOWN]!r}")
        out = torch.tensor([int(c) for c in codes], dtype=torch.int64, device=device)
    else:
        raise ValueError(f"codes must be a list of ints or a 1-D integer tensor, got {type(codes).__name__}")
    if out.numel() == 0 and not allow_empty:
        raise ValueError("codes is empty: Token2Wav needs at least one codec code")
    outside = ((out < 0) | (out > num_embeds)).nonzero().flatten().tolist()
    if outside:
        shown = ", ".join(f"codes[{i}] = {int(out[i])}" for i in outside[:_SHOWN])
        more = f" and {len(outside) - _SHOWN} more" if len(outside) > _SHOWN else ""
        raise ValueError(f"{len(outside)} code(s) outside the valid range 0..{num_embeds}: {shown}{more}")
    return out


def check_speaker(speaker, config: DiTConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A Speaker -> (ref_mel (1, frames, mel_dim), cond (1, enc_emb_dim)) fp32 on `device`."""
    if not isinstance(speaker, Speaker):
        raise ValueError(f"speaker must be a name or a Speaker, got {type(speaker).__name__}")
    where = f"speaker {speaker.name!r}"
    cond, ref = speaker.cond, speaker.ref_mel
    if not isinstance(cond, torch.Tensor) or not cond.is_floating_point() or cond.numel() != config.enc_emb_dim:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"{where}: cond must be a float tensor of enc_emb_dim = {config.enc_emb_dim} values, "
                         f"got {shape}")
    need = min_reference_frames(config)
    if (not isinstance(ref, torch.Tensor) or not ref.is_floating_point() or ref.dim() != 3 or ref.shape[0] != 1
            or ref.shape[2] != config.mel_dim or ref.shape[1] < need):
        shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise ValueError(f"{where}: ref_mel must be a float tensor (1, frames >= {need}, {config.mel_dim}), "
                         f"got {shape}")
    for name, t in (("cond", cond), ("ref_mel", ref)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: {name} holds NaN or Inf values")
    return ref.to(device=device, dtype=torch.float32), cond.reshape(1, -1).to(device=device, dtype=torch.float32)


def check_noise(noise, frames: int, mel_dim: int, device) -> torch.Tensor:
    """noise must be (1, frames, mel_dim) and finite (transformers' layout of the initial state)."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a float tensor, got {type(noise).__name__}")
    if tuple(noise.shape) != (1, frames, mel_dim):
        raise ValueError(f"noise must have shape (1, {frames}, {mel_dim}) (1, mel frames, mel_dim), "
                         f"got {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise holds NaN or Inf values")
    return noise.to(device=device, dtype=torch.float32)


def check_mel(mel, mel_dim: int, device) -> torch.Tensor:
    """A mel (B, mel_dim, frames) for the vocoder, finite, at least one frame."""
    if not isinstance(mel, torch.Tensor) or not mel.is_floating_point() or mel.dim() != 3 or mel.shape[1] != mel_dim \
            or mel.shape[0] == 0 or mel.shape[2] == 0:
        shape = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
        raise ValueError(f"mel must be a float tensor (B, {mel_dim}, frames) with B, frames >= 1, got {shape}")
    if not bool(torch.isfinite(mel).all()):
        raise ValueError("mel holds NaN or Inf values")
    return mel.to(device=device, dtype=torch.float32)
