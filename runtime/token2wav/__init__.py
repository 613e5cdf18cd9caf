"""Token2Wav: codec codes -> mel (DiT flow matching, `flow`) -> 24 kHz waveform (BigVGAN), whole
(`token2wav.Token2Wav`) or streamed (`streaming.Token2WavStream`); input checks in `inputs`."""
from .flow import Schedule, initial_noise
from .streaming import Packet, StreamPlan, Token2WavStream
from .token2wav import Token2Wav

__all__ = ["Token2Wav", "Token2WavStream", "StreamPlan", "Packet", "Schedule", "initial_noise"]
