"""Speech out as OpenAI's chat completions send it: 24 kHz mono PCM16 little-endian, base64 encoded --
raw samples in each streamed `delta.audio.data`, a whole WAV file in a non-streamed
`message.audio.data`. One float -> int16 conversion serves both, so a streamed answer's samples
equal the non-streamed file's."""
from __future__ import annotations

import base64
import io
import wave

import numpy as np
import torch

from ..omni import SAMPLE_RATE

__all__ = ["pcm16_bytes", "pcm16_base64", "wav_base64", "FORMATS", "STREAM_FORMATS"]

# what `audio.format` may be: non-streamed answers take either, streamed ones raw PCM16 only (as OpenAI)
FORMATS = ("wav", "pcm16")
STREAM_FORMATS = ("pcm16",)


def pcm16_bytes(samples: torch.Tensor) -> bytes:
    """float32 samples in [-1, 1] -> int16 LE bytes: clipped, x 32767, rounded to nearest (symmetric:
    -1 and 1 map to -32767 and 32767)."""
    x = samples.detach().to("cpu", torch.float32).numpy()
    return np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm16_base64(samples: torch.Tensor) -> str:
    return base64.b64encode(pcm16_bytes(samples)).decode("ascii")


def wav_base64(samples: torch.Tensor) -> str:
    """A whole 24 kHz mono PCM16 WAV file, base64 encoded."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm16_bytes(samples))
    return base64.b64encode(buf.getvalue()).decode("ascii")
