"""The benchmark's three scenarios and their synthetic media, made in-process (no files): every
scenario answers in text + speech with fixed lengths, so runs compare.

- text:  a text prompt.
- audio: a question about `seconds` of 16 kHz audio: a 440 Hz tone with a slow vibrato under
  seeded white noise (speech-like loudness, non-silent in every mel frame).
- video: a question about a clip of random RGB frames at 2 fps (an even count: the ViT's temporal
  patch takes frames in pairs) with that waveform as its soundtrack, fed as audio-in-video (video
  and audio rows interleaved in 2-second chunks).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Scenario", "AUDIO_RATE", "VIDEO_FPS", "VIDEO_SIZE", "waveform", "frames", "build_scenarios"]

AUDIO_RATE = 16_000  # what the audio encoder's features take
VIDEO_FPS = 2.0      # qwen-omni-utils' default sampling rate; frames are given already sampled
VIDEO_SIZE = 224     # pixels per side; the processor resizes to its video pixel bounds


@dataclass
class Scenario:
    """One prompt: `conversation` and the media keyword arguments of `Thinker.prepare`."""

    name: str
    what: str
    conversation: str
    media: dict = field(default_factory=dict)

    def prepare(self, thinker):
        return thinker.prepare(self.conversation, **self.media)


def waveform(seconds: float, seed: int) -> np.ndarray:
    """(n,) float32 at 16 kHz in [-1, 1]: tone + vibrato + noise."""
    n = max(1, round(seconds * AUDIO_RATE))
    t = np.arange(n) / AUDIO_RATE
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * 440 * t + 3.0 * np.sin(2 * np.pi * 5 * t))
    return np.clip(tone + 0.05 * rng.standard_normal(n), -1, 1).astype(np.float32)


def frames(seconds: float, seed: int, size: int = VIDEO_SIZE) -> np.ndarray:
    """(T, size, size, 3) uint8 random frames, T = 2 fps x seconds rounded to an even count >= 2."""
    count = max(2, 2 * round(seconds * VIDEO_FPS / 2))
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def build_scenarios(names, seconds: float, seed: int) -> list[Scenario]:
    wav = waveform(seconds, seed)
    clip = frames(seconds, seed)
    made = {
        "text": Scenario("text", "text -> text + speech", "Tell me about the weather today, in a few words."),
        "audio": Scenario("audio", f"audio ({seconds:g} s) -> text + speech", "What do you hear?",
                          dict(audios=[(wav, AUDIO_RATE)])),
        "video": Scenario("video", f"video + audio ({clip.shape[0]} frames, {seconds:g} s) -> text + speech",
                          "What happens in this clip?",
                          dict(videos=[(clip, VIDEO_FPS, wav)], use_audio_in_video=True)),
    }
    return [made[n] for n in names]
