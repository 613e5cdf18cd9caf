"""Token2Wav: codec codes -> mel (DiT flow matching) -> 24 kHz waveform (BigVGAN), fp32, equal to
transformers' `Qwen2_5OmniToken2WavModel.forward` given the same initial noise.

    t2w = Token2Wav.from_checkpoint("/path/to/Qwen2.5-Omni-7B")
    wave = t2w(codes, "Chelsie")                      # (len(codes) * repeats * hop,) float32, CPU
    for packet in t2w.stream("Chelsie").push(codes):  # streaming: see streaming.py
        ...

The initial noise is `flow.initial_noise(seed, ...)` (per DiT block, so the streamed decode draws
the same numbers as the whole); `noise=` passes an explicit (1, frames, mel_dim) tensor instead
(e.g. transformers' `torch.randn`).

`graphs` (None: on for CUDA, off otherwise): a stream's chunks replay CUDA graphs of the DiT solve
and the vocoder (graphs.py), the same outputs as the plain calls; `stream(..., static=True)` runs
that static-buffer path without capture (how the CPU tests check it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..config import Token2WavConfig
from ..io.speakers import Speaker
from ..models.bigvgan import BIGVGAN_PREFIX, BigVGAN
from ..models.dit import DIT_PREFIX, DiT
from .flow import FlowSampler, Schedule, initial_noise
from .graphs import Token2WavGraphs, graphs_enabled
from .inputs import check_codes, check_mel, check_noise, check_speaker
from .streaming import StreamPlan, Token2WavStream

__all__ = ["Token2Wav"]


class Token2Wav:
    """The DiT and the vocoder of one checkpoint, with its speakers."""

    def __init__(self, config: Token2WavConfig, dit: DiT, vocoder: BigVGAN, speakers: Mapping[str, Speaker],
                 graphs: Optional[bool] = None):
        self.config = config
        self.dit = dit
        self.vocoder = vocoder
        self.sampler = FlowSampler(dit)
        self._speakers = dict(speakers)
        dit_cfg = config.dit_config
        self.num_embeds, self.mel_dim, self.repeats = dit_cfg.num_embeds, dit_cfg.mel_dim, dit_cfg.repeats
        self.block_size, self.max_frames = dit_cfg.block_size, dit_cfg.max_position_embeddings
        self.hop_length = config.bigvgan_config.hop_length
        self.graphs = graphs_enabled(graphs, self.device)
        self._runners: dict[bool, Token2WavGraphs] = {}  # by capture (CUDA graphs) or not, made on first use

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: Token2WavConfig, tensors: Mapping[str, torch.Tensor],
                        speakers: Mapping[str, Speaker], device=None, graphs: Optional[bool] = None) -> "Token2Wav":
        """tensors named as in the checkpoint (`token2wav.code2wav_dit_model.*`,
        `token2wav.code2wav_bigvgan_model.*`); both models are built in fp32 on `device`."""
        config.validate()
        dit = DiT.from_state_dict(config.dit_config, {k: v for k, v in tensors.items() if k.startswith(DIT_PREFIX)},
                                  device=device)
        vocoder_tensors = {k: v for k, v in tensors.items() if k.startswith(BIGVGAN_PREFIX)}
        vocoder = BigVGAN.from_state_dict(config.bigvgan_config, vocoder_tensors, device=device)
        return cls(config, dit, vocoder, speakers, graphs=graphs)

    @classmethod
    def from_checkpoint(cls, ckpt_or_path, device="cpu", graphs: Optional[bool] = None) -> "Token2Wav":
        """An opened checkpoint (`omni_runtime.io.checkpoint.open_checkpoint`) or its directory:
        loads `token2wav.*` in fp32 straight to `device`, and the checkpoint's speakers."""
        from ..io.checkpoint import Checkpoint, load_tensors, open_checkpoint

        ckpt = open_checkpoint(ckpt_or_path) if isinstance(ckpt_or_path, (str, Path)) else ckpt_or_path
        if not isinstance(ckpt, Checkpoint):
            raise ValueError(f"from_checkpoint needs a checkpoint directory or an opened Checkpoint, "
                             f"got {type(ckpt_or_path).__name__}")
        if not ckpt.config.enable_audio_output:
            raise ValueError(f"checkpoint {ckpt.path} has no Token2Wav (config enable_audio_output is false)")
        tensors = load_tensors(ckpt, prefix="token2wav.", device=device, dtype=torch.float32)
        return cls.from_state_dict(ckpt.config.token2wav_config, tensors, ckpt.speakers, device=device, graphs=graphs)

    # ---- speakers and codes ------------------------------------------------------------------
    @property
    def speakers(self) -> list[str]:
        return sorted(self._speakers)

    def speaker(self, name: str) -> Speaker:
        if name not in self._speakers:
            raise ValueError(f"unknown speaker {name!r} (available: {', '.join(self.speakers) or 'none'})")
        return self._speakers[name]

    def speaker_tensors(self, speaker: Union[str, Speaker]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ref_mel (1, frames, mel_dim), cond (1, enc_emb_dim)) of a name or a Speaker, checked
        (shapes, NaN / Inf), fp32 on the model's device."""
        if isinstance(speaker, str):
            speaker = self.speaker(speaker)
        return check_speaker(speaker, self.config.dit_config, self.device)

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def num_codes(self) -> int:
        """Rows of the DiT's codec table: valid codes are 0 .. num_codes - 1."""
        return self.num_embeds + 1

    def valid_codes(self, codes) -> torch.Tensor:
        """Bool mask of the codes the DiT can take (0..num_embeds); the Talker's special codes are not."""
        codes = torch.as_tensor(codes)
        return (codes >= 0) & (codes <= self.num_embeds)

    def check_codes(self, codes, allow_empty: bool = False) -> torch.Tensor:
        return check_codes(codes, self.num_embeds, self.device, allow_empty)

    # ---- decoding ----------------------------------------------------------------------------
    def mel(self, codes, speaker: Union[str, Speaker], *, noise: Optional[torch.Tensor] = None, seed: int = 0,
            num_steps: int = 10, guidance_scale: float = 0.5, sway_coefficient: Optional[float] = -1.0) -> torch.Tensor:
        """The DiT's mel (1, mel_dim, len(codes) * repeats) for the whole code sequence at once."""
        codes = self.check_codes(codes)
        frames = codes.numel() * self.repeats
        if frames > self.max_frames:
            raise ValueError(f"{codes.numel()} codes give {frames} mel frames, more than the DiT's "
                             f"max_position_embeddings ({self.max_frames}); decode them with stream()")
        schedule = Schedule(num_steps, guidance_scale, sway_coefficient)
        ref_mel, cond = self.speaker_tensors(speaker)
        if noise is None:
            noise = initial_noise(seed, 0, frames, self.mel_dim, self.block_size)
        noise = check_noise(noise, frames, self.mel_dim, self.device)
        with torch.inference_mode():
            spk = self.sampler.speaker_condition(ref_mel, cond, schedule)
            return self.sampler.sample(codes, spk, noise, schedule).transpose(1, 2)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, mel_dim, frames) -> waveform (B, frames * hop_length) in [-1, 1]."""
        mel = check_mel(mel, self.mel_dim, self.device)
        with torch.inference_mode():
            return self.vocoder(mel)

    def __call__(self, codes, speaker: Union[str, Speaker], **kwargs) -> torch.Tensor:
        """Non-streamed: waveform (len(codes) * repeats * hop_length,) float32 on the CPU. Keyword
        arguments as `mel`."""
        return self.vocode(self.mel(codes, speaker, **kwargs))[0].float().cpu()

    def stream(self, speaker: Union[str, Speaker], *, seed: int = 0, num_steps: int = 10,
               guidance_scale: float = 0.5, sway_coefficient: Optional[float] = -1.0,
               plan: Optional[StreamPlan] = None, graphs: Optional[bool] = None,
               static: bool = False) -> Token2WavStream:
        """A `Token2WavStream` (streaming.py): push codes as they come, get playable packets. `plan`:
        chunk sizes and contexts (default `StreamPlan()`); `graphs`: CUDA graphs (None: this
        Token2Wav's setting); `static=True` with graphs off: the same static-buffer path, uncaptured."""
        graphs = self.graphs if graphs is None else graphs_enabled(graphs, self.device)
        if not isinstance(static, bool):
            raise ValueError(f"static must be True or False, got {static!r}")
        return Token2WavStream(self, speaker, seed=seed, schedule=Schedule(num_steps, guidance_scale, sway_coefficient),
                               plan=plan, runners=self.runners(graphs) if graphs or static else None)

    def runners(self, capture: bool) -> Token2WavGraphs:
        """The static-buffer runners of this Token2Wav's streams, captured as CUDA graphs or not
        (`graphs.Token2WavGraphs`); shared by its streams."""
        return self._runners.setdefault(capture, Token2WavGraphs(self.sampler, self.vocoder, capture=capture))
