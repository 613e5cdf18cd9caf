"""Audio input: files, arrays and video soundtracks -> float32 mono 16 kHz waveforms.

    wav = load_audio("speech.flac")                 # float32 mono, 16 kHz, CPU tensor
    track = load_audio_track("clip.mp4")            # the soundtrack of a video (PyAV)

Other rates are converted with `resample.Resampler`; the features of a waveform come from
`mel.log_mel_features` / `streaming_mel.StreamingMel`. soundfile and PyAV are imported when a
file is read.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .resample import _cached_resampler
from .waveform import SAMPLE_RATE, _as_mono_float, _check_finite_nonempty, _check_sample_rate

__all__ = ["SAMPLE_RATE", "load_audio", "load_audio_track"]


def load_audio(path_or_array, sample_rate=None, *, device=None) -> torch.Tensor:
    """A float32 mono waveform at 16 kHz (1-D tensor on `device`, default CPU).

    * a path (str / os.PathLike) or a binary file object: read with soundfile (WAV, FLAC, OGG,
      MP3 with libsndfile >= 1.1, ...) as float32; its own sample rate is used (`sample_rate`
      must then be None or equal to it).
    * an array (numpy, torch, list): 1-D samples or 2-D (channels x samples, or samples x
      channels -- the shorter axis is taken as channels); `sample_rate` defaults to 16000.
      Integer PCM is scaled to [-1, 1) (int16 / 32768, ...).

    Channels are averaged; any other rate is resampled (see `Resampler`).
    Raises ValueError on empty audio, NaN/inf samples, more than 2 dims, a rate <= 0.
    """
    if isinstance(path_or_array, (str, os.PathLike)) or hasattr(path_or_array, "read"):
        import soundfile

        if isinstance(path_or_array, (str, os.PathLike)) and not os.path.exists(path_or_array):
            raise FileNotFoundError(f"no such audio file: {os.fspath(path_or_array)!r}")
        try:
            data, file_rate = soundfile.read(path_or_array, dtype="float32", always_2d=True)
        except RuntimeError as e:  # soundfile.LibsndfileError and older soundfile errors
            raise ValueError(f"cannot decode audio {path_or_array!r}: {e}") from None
        if sample_rate is not None and _check_sample_rate(sample_rate) != file_rate:
            raise ValueError(f"sample_rate={sample_rate} given, but {path_or_array!r} is {file_rate} Hz")
        sample_rate = file_rate
        data = torch.from_numpy(data)  # (frames, channels)
        _check_finite_nonempty(data, f"audio in {path_or_array!r}")
        wav = data.mean(dim=1).contiguous()
    else:
        wav = _as_mono_float(path_or_array, "audio", allow_int=True)
    rate = SAMPLE_RATE if sample_rate is None else _check_sample_rate(sample_rate)
    if device is not None:
        wav = wav.to(device)
    if rate != SAMPLE_RATE:
        wav = _cached_resampler(rate, SAMPLE_RATE)(wav)
    return wav


def load_audio_track(path, *, device=None) -> torch.Tensor:
    """The soundtrack of a video file (or any container ffmpeg reads), decoded with PyAV: float32
    mono at 16 kHz (1-D tensor on `device`). Channels are averaged and the rate converted with
    `Resampler`, as `load_audio` does (qwen-omni-utils reads it with librosa at 16 kHz; the two
    resamplers agree to ~1e-3 of full scale, not bit for bit). Raises ValueError when the file
    has no audio stream, no samples, or NaN/inf samples."""
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    pieces, rate = [], None
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError(f"{path!r} has no audio track")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.sample_rate
            convert = av.AudioResampler(format="fltp")  # planar float32, rate and layout kept
            for frame in container.decode(stream):
                for out in convert.resample(frame):
                    pieces.append(torch.from_numpy(out.to_ndarray().astype(np.float32, copy=False)).mean(0))
            for out in convert.resample(None):
                pieces.append(torch.from_numpy(out.to_ndarray().astype(np.float32, copy=False)).mean(0))
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode the audio of {path!r}: {e}") from None
    if not pieces or sum(p.numel() for p in pieces) == 0:
        raise ValueError(f"the audio track of {path!r} is empty")
    wav = torch.cat(pieces)
    _check_finite_nonempty(wav, f"audio track of {path!r}")
    if device is not None:
        wav = wav.to(device)
    rate = _check_sample_rate(rate)
    return wav if rate == SAMPLE_RATE else _cached_resampler(rate, SAMPLE_RATE)(wav)
