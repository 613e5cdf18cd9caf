"""Qwen2.5-Omni end to end: text and streamed speech out (Thinker + Talker + Token2Wav)."""
from .events import SAMPLE_RATE, AudioEvent, TurnResult
from .aio import OmniStream
from .omni import DEFAULT_SPEAKER, Omni

__all__ = ["Omni", "AudioEvent", "TurnResult", "SAMPLE_RATE", "DEFAULT_SPEAKER", "OmniStream"]
