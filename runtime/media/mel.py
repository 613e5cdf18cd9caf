"""Whisper log-mel features of 16 kHz audio, offline and streaming, as Qwen2.5-Omni's processor computes them.

    mel = log_mel_features(wav, device="cuda", chunk_length=300)   # (128, frames) float32 on the device

`log_mel_features(wav, chunk_length=X)` equals what transformers'
`WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=X,
n_fft=400)` feeds the model when `Qwen2_5OmniProcessor._process_audio` calls it
(`padding="max_length"`, `return_attention_mask=True`, the extractor's default `truncation=True`):

* the waveform is cut to P = X * 16000 samples, or zero-padded to P, then
  `torch.stft(n_fft=400, hop=160, hann window, center=True, reflect)`, the last frame dropped
  (P // 160 frames), |.|^2, slaney mel filters (0-8 kHz), `log10(max(., 1e-10))`,
  `max(x, x.max() - 8)` with the max over all P // 160 frames, `(x + 4) / 4`;
* the frames the model sees are the first `feature_attention_mask.sum()` = ceil(N / 160) of them
  (N = samples after the cut; P // 160 if that is fewer). That is what this function returns.

X is the checkpoint's `preprocessor_config.json` `chunk_length` (`MediaOptions.audio_max_seconds`):
the published one says 300 s, the extractor's class default (and this module's) is 30 s. Audio
longer than X is cut, with a warning. Where the audio ends within 25 ms of P (e.g. exactly 30.0 s
with X = 30) the last frames see the reflect padding of real samples, so X matters even for audio
shorter than X. `chunk_length=None` keeps everything: the result of any X long enough that P lies
25 ms or more past the audio (then the padding holds only zeros near the audio).

Only the frames whose STFT window overlaps the audio are computed (the rest of the padding is
silence: those frames hold the minimum value log10(1e-10) and cannot change the max), so a 1 s
clip costs 1 s of STFT, not X. Against transformers (fp32, CPU): tolerance 1e-5 max abs error,
measured <= 1.2e-7 on noise, sines and speech-like signals, 1 sample to 45 s, X = 30 and 300
(tests/runtime/test_audio.py; the values span about [-1.5, 2.5]).

Streaming: `streaming_mel.StreamingMel` (same frames, computed as the samples arrive).
"""
from __future__ import annotations

import math
import numbers
import warnings
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .options import DEFAULT_AUDIO_MAX_SECONDS
from .waveform import SAMPLE_RATE, _as_mono_float

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
LOG_FLOOR = 8.0  # Whisper: log_spec = max(log_spec, log_spec.max() - 8)

__all__ = ["N_FFT", "HOP_LENGTH", "N_MELS", "mel_filter_bank", "log_mel_features", "num_mel_frames"]


def _hertz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-30) / 1000.0) * (27.0 / np.log(6.4)), mels)


def _mel_to_hertz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), freq)


@lru_cache(maxsize=8)
def _mel_filter_bank_np(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    n_freqs = 1 + n_fft // 2
    mel_freqs = np.linspace(_hertz_to_mel_slaney(0.0), _hertz_to_mel_slaney(8000.0), n_mels + 2)
    filter_freqs = _mel_to_hertz_slaney(mel_freqs)
    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    enorm = 2.0 / (filter_freqs[2:n_mels + 2] - filter_freqs[:n_mels])
    return fb * enorm[None, :]  # (n_freqs, n_mels) float64, as transformers' mel_filter_bank


_DEVICE_CACHE: dict = {}


def mel_filter_bank(device=None, n_mels: int = N_MELS) -> torch.Tensor:
    """(n_mels, 201) float32: slaney-scale, slaney-normalized triangles over 0-8 kHz (transposed
    transformers' `mel_filter_bank(201, n_mels, 0, 8000, 16000, norm="slaney", mel_scale="slaney")`)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = ("mel", device, n_mels)
    if key not in _DEVICE_CACHE:
        fb = torch.from_numpy(_mel_filter_bank_np(n_mels, N_FFT, SAMPLE_RATE)).to(torch.float32)
        _DEVICE_CACHE[key] = fb.T.contiguous().to(device)
    return _DEVICE_CACHE[key]


def _hann(device) -> torch.Tensor:
    key = ("hann", device)
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = torch.hann_window(N_FFT, device=device)
    return _DEVICE_CACHE[key]


def _raw_log_mel(padded: torch.Tensor) -> torch.Tensor:
    """log10 mel power of the frames of an already centre-padded signal: frame f covers
    padded[f * 160 : f * 160 + 400]. (128, frames) float32, before Whisper's floor/scale."""
    stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=_hann(padded.device), center=False, return_complex=True)
    magnitudes = (stft.abs() ** 2).contiguous()
    mel = mel_filter_bank(padded.device) @ magnitudes
    return torch.clamp(mel, min=1e-10).log10()


def _finalize(raw: torch.Tensor, global_max) -> torch.Tensor:
    return (torch.maximum(raw, global_max - LOG_FLOOR) + 4.0) / 4.0


def _chunk_samples(chunk_length) -> Optional[int]:
    """chunk_length seconds -> P, the samples the extractor cuts / pads every audio to (None: no cut)."""
    if chunk_length is None:
        return None
    if isinstance(chunk_length, bool) or not isinstance(chunk_length, numbers.Real) \
            or not 0 < chunk_length < math.inf:
        raise ValueError(f"chunk_length must be a positive number of seconds or None, got {chunk_length!r}")
    samples = round(chunk_length * SAMPLE_RATE)
    if samples < HOP_LENGTH:
        raise ValueError(f"chunk_length must be at least {HOP_LENGTH / SAMPLE_RATE} s (one frame), "
                         f"got {chunk_length!r}")
    return samples


def _padded_length(n: int, limit: Optional[int]) -> int:
    """The length the extractor pads n (<= limit) samples to. Without a limit any length from
    n + 400 on gives the same frames (the padding near the audio is zeros either way)."""
    return limit if limit is not None else n + N_FFT


def _num_frames(n: int, limit: Optional[int]) -> int:
    # ceil(n / 160) ones in the attention mask, of the padded length's P // 160 frames
    return min(-(-n // HOP_LENGTH), _padded_length(n, limit) // HOP_LENGTH)


def num_mel_frames(num_samples: int, chunk_length: Optional[float] = DEFAULT_AUDIO_MAX_SECONDS) -> int:
    """Frames `log_mel_features` returns for a 16 kHz waveform of `num_samples` samples (=
    the processor's feature_attention_mask.sum())."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    limit = _chunk_samples(chunk_length)
    return _num_frames(int(num_samples) if limit is None else min(int(num_samples), limit), limit)


def log_mel_features(waveform, device=None, *,
                     chunk_length: Optional[float] = DEFAULT_AUDIO_MAX_SECONDS) -> torch.Tensor:
    """Whisper / Qwen2.5-Omni log-mel features of a 16 kHz mono float waveform: (128, frames)
    float32 on `device` (default: the waveform's device), frames = ceil(N / 160) for N samples up
    to `chunk_length` seconds (longer audio is cut there; None keeps it all). See the module
    docstring for the exact definition."""
    limit = _chunk_samples(chunk_length)
    x = _as_mono_float(waveform, "waveform", allow_int=False)
    if device is not None:
        x = x.to(device)
    n = x.shape[0]
    if limit is not None and n > limit:
        warnings.warn(f"audio of {n / SAMPLE_RATE:.2f} s truncated to chunk_length={chunk_length} s, as "
                      f"Qwen2.5-Omni's processor does (chunk_length=None keeps it all)", stacklevel=2)
        x, n = x[:limit], limit
    total = _padded_length(n, limit)
    # Virtual signal = x, then zeros up to `total`. Frames that reach past n + 200 see only zeros
    # (value log10(1e-10), the minimum): they are neither returned nor able to move the max, so the
    # signal is cut at n + 400 (its reflect padding then mirrors zeros, as it would in the full one).
    length = min(total, n + N_FFT)
    y = F.pad(x, (0, length - n))
    padded = F.pad(y[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    raw = _raw_log_mel(padded)
    if length == total:
        raw = raw[:, :total // HOP_LENGTH]  # transformers drops the last STFT frame
    return _finalize(raw[:, :_num_frames(n, limit)], raw.max())
