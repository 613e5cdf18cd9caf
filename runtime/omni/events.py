"""What an omni turn yields besides the Thinker's `TokenEvent`s: audio packets as they are decoded,
and the turn's result (text, codes, waveform, timings) last."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["SAMPLE_RATE", "AudioEvent", "TurnResult"]

SAMPLE_RATE = 24_000  # BigVGAN's output rate (100 mel frames/s x 240 samples)


@dataclass
class AudioEvent:
    """One packet of speech: `samples` (n,) float32 PCM in [-1, 1] at 24 kHz, playable at once,
    starting at sample `start_sample` of the turn's audio. `packet` is the Token2Wav packet (code
    range, DiT / vocoder milliseconds); t: when it was ready (time.perf_counter())."""

    packet: object
    t: float = field(default_factory=time.perf_counter)

    @property
    def samples(self) -> torch.Tensor:
        return self.packet.samples

    @property
    def start_sample(self) -> int:
        return self.packet.start_sample

    sample_rate = SAMPLE_RATE


@dataclass
class TurnResult:
    """A finished turn. text / token_ids: the Thinker's answer; codes: the Talker's codes that went
    to the codec (stop codes excluded); dropped_codes: codes the Talker emitted that the codec's
    table cannot take (dropped, never decoded); waveform (samples,) float32 at 24 kHz, None when the
    turn did not speak; finish_reason: the Thinker's; timings (seconds from the turn's start unless
    named otherwise): first_text, first_audio, end, text_tokens, codes, audio_seconds, rtf
    (processing time / audio duration), codes_per_s, dit_ms and vocoder_ms per chunk, code_t (when
    each Talker code, stop codes included, was sampled); start: the turn's start
    (time.perf_counter(), what the others count from)."""

    text: str
    token_ids: list[int]
    finish_reason: Optional[str]
    codes: list[int] = field(default_factory=list)
    dropped_codes: int = 0
    waveform: Optional[torch.Tensor] = None
    speaker: Optional[str] = None
    timings: dict = field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.waveform is None else self.waveform.numel() / self.sample_rate
