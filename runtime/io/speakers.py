"""The Talker's speakers: `spk_dict.pt` (speaker name -> bos token, cond vector, reference mel)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import OmniConfig

__all__ = ["Speaker", "load_speakers", "SPEAKER_FILE"]

SPEAKER_FILE = "spk_dict.pt"


@dataclass
class Speaker:
    """One entry of spk_dict.pt, as transformers' `load_speakers` keeps it: the Talker's text
    bos token id, the speaker embedding `cond` (1, enc_emb_dim) and the reference mel
    `ref_mel` (1, frames, mel_dim) for the DiT's ECAPA encoder (normalised to these shapes)."""

    name: str
    bos_token: int
    cond: torch.Tensor
    ref_mel: torch.Tensor


def load_speakers(path: Path, config: OmniConfig) -> dict[str, Speaker]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle error, a zip error, a truncated file...
        raise ValueError(f"speaker file {path} cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"speaker file {path} must hold a dict of speakers, got {type(raw).__name__}")
    dit = config.token2wav_config.dit_config
    vocab = config.thinker_config.text_config.vocab_size
    speakers: dict[str, Speaker] = {}
    for name, entry in raw.items():
        where = f"speaker {name!r} in {path}"
        if not isinstance(entry, dict) or not {"bos_token", "cond", "ref_mel"} <= set(entry):
            raise ValueError(f"{where} must be a dict with bos_token, cond and ref_mel")
        bos = entry["bos_token"]
        if isinstance(bos, torch.Tensor) and bos.numel() == 1:
            bos = int(bos.item())
        if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < vocab:
            raise ValueError(f"{where}: bos_token must be a Thinker token id below {vocab}, got {bos!r}")
        cond, ref = entry["cond"], entry["ref_mel"]
        if not isinstance(cond, torch.Tensor) or cond.numel() != dit.enc_emb_dim:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"{where}: cond must hold dit_config.enc_emb_dim = {dit.enc_emb_dim} values, got {shape}")
        if not isinstance(ref, torch.Tensor) or ref.dim() not in (2, 3) or ref.shape[-1] != dit.mel_dim or (
            ref.dim() == 3 and ref.shape[0] != 1
        ) or ref.shape[-2] == 0:
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise ValueError(f"{where}: ref_mel must be (1, frames, {dit.mel_dim}), got {shape}")
        speakers[name] = Speaker(
            name=name,
            bos_token=bos,
            cond=cond.reshape(1, -1).float(),
            ref_mel=ref.reshape(1, ref.shape[-2], ref.shape[-1]).float(),
        )
    return speakers
