"""Audio input: loading, resampling to 16 kHz, and Whisper log-mel features, offline and streaming.

    wav = load_audio("speech.flac")                 # float32 mono, 16 kHz, CPU tensor
    mel = log_mel_features(wav, device="cuda")      # (128, frames) float32 on the device

`log_mel_features` equals what Qwen2.5-Omni's processor feeds the model: transformers'
`WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
n_fft=400)` called by `Qwen2_5OmniProcessor._process_audio` with `padding="max_length"`,
`return_attention_mask=True` and the extractor's default `truncation=True`, i.e.

* every waveform is zero-padded (or cut) to 30 s = 480000 samples, then
  `torch.stft(n_fft=400, hop=160, hann window, center=True, reflect)`, the last frame dropped,
  |.|^2, slaney mel filters (0-8 kHz), `log10(max(., 1e-10))`,
  `max(x, x.max() - 8)` with the max over all 3000 frames of that audio, `(x + 4) / 4`;
* the frames the model sees are the first `feature_attention_mask.sum()` = ceil(N / 160) of them
  (N = samples after the cut). That is what this function returns: (128, ceil(N / 160)).

So audio longer than 30 s is **truncated at 30 s** by the reference processor; `truncate=True`
(default) does the same (with a warning). `truncate=False` keeps everything, like the
extractor with `truncation=False`: one STFT over the whole waveform, one global max, N // 160
frames (the extractor's attention mask for N > 480000).

Only the frames whose STFT window overlaps the audio are computed (the rest of the 30 s padding is
silence: those frames hold the minimum value log10(1e-10) and cannot change the max), so a 1 s
clip costs 1 s of STFT, not 30 s. Against transformers (fp32, CPU): tolerance 1e-5 max abs error,
measured <= 1.2e-7 on noise, sines and speech-like signals, 1 sample to 30 s and beyond
(tests/runtime/test_audio.py; the values span about [-1.5, 2.5])

Resampling (`resample`, `load_audio`): band-limited (windowed-sinc) interpolation over the exact
rational ratio new/orig (reduced by their gcd), Kaiser window, 64 zero crossings each side, cutoff
0.9476 x the lower Nyquist, beta 14.77 -- torchaudio's `sinc_interp_kaiser` formula with resampy's
"kaiser_best" parameters. It runs as a polyphase filter bank (one precomputed kernel row per output
phase, applied as one strided conv1d); for ratios with very many phases (e.g. 16001 -> 16000 Hz)
the same taps are evaluated per output sample instead. Output length ceil(N * new / orig); the
signal is taken as zero outside its ends (as scipy's resample_poly and torchaudio do). Measured:
a 1 kHz sine comes out within 6e-7 of the ideal one, a band-limited noise within 2e-5 (relative)
of its exact Fourier resampling, 6-7 kHz tones keep amplitude 1 +- 1e-4, a 12 kHz tone at 48 kHz
is removed to < 1e-7 (no alias); scipy.signal.resample_poly (Kaiser beta 5) is ~1e-3 from ideal.

Streaming (`StreamingMel`): feed samples as they arrive (any piece sizes, e.g. 2 s); it emits
every frame whose STFT window is complete (a frame needs 200 samples after its center, so a
2 s piece releases its frames up to 1.25 frames before its end; `finish()` releases the rest).
The STFT values of every frame are identical to the offline ones. The one thing a stream cannot
know is Whisper's floor `max(x, global_max - 8)`: the global max is over the whole (30 s) audio.
A frame emitted before the end is floored with the *running* max m (max over all frames computed
so far); offline it is floored with the final max g >= m. So an emitted value equals the offline
value exactly, except for log-mel bins more than 8 (80 dB) below the final global max that were
emitted while m < g: those come out lower, by at most (g - m) / 4. Frames released by `finish()` use g and are exact. After `finish()`,
`max_deviation` reports the exact largest |streamed - offline| over all emitted frames (0.0 when
the loudest frame came in the first frames emitted, or nothing emitted early was that quiet), and
`features()` returns the exact offline features (the stream keeps the pre-floor frames).
"""
from __future__ import annotations

import math
import os
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
CHUNK_LENGTH = 30  # seconds: the processor pads / truncates every audio to this
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
MAX_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000
LOG_FLOOR = 8.0  # Whisper: log_spec = max(log_spec, log_spec.max() - 8)

# Resampler: Kaiser-windowed sinc ("kaiser_best" in resampy / torchaudio).
LOWPASS_WIDTH = 64
ROLLOFF = 0.9475937167399596
KAISER_BETA = 14.769656459379492
_MAX_POLYPHASE_ELEMENTS = 1 << 22  # kernel rows * taps kept as a table; above it taps are evaluated per output

__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "N_MELS", "N_SAMPLES", "MAX_FRAMES",
    "load_audio", "load_audio_track", "resample", "Resampler", "StreamingResampler", "mel_filter_bank", "log_mel_features",
    "num_mel_frames", "StreamingMel",
]


# ----------------------------------------------------------------------------------------------
# validation

def _check_sample_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number of Hz, got {sample_rate!r}")
    value = float(sample_rate)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of Hz, got {sample_rate!r}")
    if value != int(value):
        raise ValueError(f"{name} must be a whole number of Hz, got {sample_rate!r}")
    return int(value)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a numeric array: {e}") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a numeric (real) array, got dtype {arr.dtype}")
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            arr = arr.copy(order="C")
        return torch.from_numpy(arr)
    raise ValueError(f"{name} must be a torch.Tensor, numpy array or list of samples, got {type(x).__name__}")


def _check_finite_nonempty(x: torch.Tensor, name: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf sample(s)")


def _as_mono_float(x, name: str, *, allow_int: bool, allow_empty: bool = False,
                   channels_first: bool = False) -> torch.Tensor:
    """-> float32 1-D tensor (same device). 2-D input is averaged over its channel axis: axis 0
    with channels_first, else the shorter axis (axis 0 on a tie)."""
    t = _to_tensor(x, name)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real samples, got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        if not allow_int:
            raise ValueError(f"{name} must be a float waveform in [-1, 1], got dtype {t.dtype} "
                             f"(use load_audio to convert integer PCM)")
        t = _int_pcm_to_float(t)
    if t.dim() == 0 or t.dim() > 2:
        raise ValueError(f"{name} must be 1-D (samples) or 2-D (channels x samples / samples x channels), "
                         f"got shape {tuple(t.shape)}")
    if allow_empty and t.numel() == 0:
        return t.reshape(0).to(torch.float32)
    _check_finite_nonempty(t, name)
    if t.dim() == 2:
        channel_axis = 0 if channels_first or t.shape[0] <= t.shape[1] else 1
        t = t.to(torch.float32).mean(dim=channel_axis)
    return t.to(torch.float32).contiguous()


def _int_pcm_to_float(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return (t.to(torch.float32) - 128.0) / 128.0
    bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}.get(t.dtype)
    if bits is None:
        raise ValueError(f"unsupported integer sample dtype {t.dtype}")
    return (t.to(torch.float64) / float(2 ** (bits - 1))).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# resampling

class Resampler:
    """Band-limited resampling orig_freq -> new_freq (see the module docstring for the filter).

    The taps for output n and input k: with r = new/orig reduced by gcd,
    base = min(orig, new) * ROLLOFF and t = base * (k / orig - n / new) clamped to
    [-W, W] (W = LOWPASS_WIDTH), h = (base / orig) * sinc(t) * I0(beta sqrt(1 - (t/W)^2)) / I0(beta).
    Output n depends on the inputs within `width` = ceil(W * orig / base) samples of n * orig / new.
    """

    def __init__(self, orig_freq, new_freq=SAMPLE_RATE, *, polyphase: bool | None = None):
        orig = _check_sample_rate(orig_freq, "orig_freq")
        new = _check_sample_rate(new_freq, "new_freq")
        g = math.gcd(orig, new)
        self.orig_freq, self.new_freq = orig, new
        self.orig, self.new = orig // g, new // g
        self.base = min(self.orig, self.new) * ROLLOFF
        self.width = math.ceil(LOWPASS_WIDTH * self.orig / self.base)
        self.taps = 2 * self.width + self.orig  # inputs read by one block of `new` outputs
        if polyphase is None:
            polyphase = self.new * self.taps <= _MAX_POLYPHASE_ELEMENTS
        self.polyphase = polyphase
        self._kernels: dict[torch.device, torch.Tensor] = {}

    @property
    def identity(self) -> bool:
        return self.orig == self.new

    def output_length(self, num_samples: int) -> int:
        return -(-num_samples * self.new // self.orig)

    def _taps(self, num: torch.Tensor) -> torch.Tensor:
        """Filter value for integer numerators num = k * new - n * orig (float64 in, float64 out)."""
        t = (num.to(torch.float64) * (self.base / (self.orig * self.new))).clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
        window = torch.special.i0(KAISER_BETA * torch.sqrt((1 - (t / LOWPASS_WIDTH) ** 2).clamp_min(0))) \
            / torch.special.i0(torch.tensor(KAISER_BETA, dtype=torch.float64))
        return torch.sinc(t) * window * (self.base / self.orig)

    def _kernel(self, device: torch.device) -> torch.Tensor:
        """(new, 1, taps) float32: row j holds the taps of output phase j over the inputs
        [b * orig - width, b * orig - width + taps) of block b (a conv1d weight)."""
        if device not in self._kernels:
            i = torch.arange(self.taps, dtype=torch.int64)[None, :] - self.width  # k - b*orig
            j = torch.arange(self.new, dtype=torch.int64)[:, None]
            taps = self._taps(i * self.new - j * self.orig)
            self._kernels[device] = taps.to(device, torch.float32)[:, None, :].contiguous()
        return self._kernels[device]

    def _blocks(self, segment: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Outputs of `num_blocks` consecutive blocks (polyphase: a strided conv1d with one output
        channel per phase); `segment` = the inputs [b0 * orig - width, (b0 + num_blocks) * orig + width)."""
        out = F.conv1d(segment[None, None], self._kernel(segment.device), stride=self.orig)[0]  # (new, blocks)
        return out[:, :num_blocks].T.reshape(-1)

    def _direct(self, read, n0: int, n1: int, device) -> torch.Tensor:
        """Outputs n0..n1-1, taps evaluated per output; read(a, b) gives inputs [a, b)."""
        out = []
        span = 2 * self.width + 2
        step = max(1, (1 << 20) // span)
        for s in range(n0, n1, step):
            e = min(n1, s + step)
            n = torch.arange(s, e, dtype=torch.int64, device=device)
            first = (n * self.orig) // self.new - self.width  # k range covering |k - n orig/new| <= width
            lo = (s * self.orig) // self.new - self.width
            hi = ((e - 1) * self.orig) // self.new - self.width + span
            x = read(lo, hi)
            k = first[:, None] + torch.arange(span, dtype=torch.int64, device=device)[None, :]
            h = self._taps(k * self.new - n[:, None] * self.orig).to(torch.float32)
            out.append((x[k - lo] * h).sum(1))
        return torch.cat(out) if out else torch.zeros(0, device=device)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """float32 1-D -> float32 1-D of length ceil(N * new / orig) (zero outside the signal)."""
        x = waveform
        if self.identity:
            return x
        n_in = x.shape[0]
        n_out = self.output_length(n_in)
        if self.polyphase:
            blocks = -(-n_out // self.new)
            segment = F.pad(x, (self.width, blocks * self.orig + self.width - n_in))
            return self._blocks(segment, blocks)[:n_out]

        def read(a, b):
            return F.pad(x[max(a, 0):max(min(b, n_in), 0)], (max(0, -a), max(0, b - max(n_in, a))))[:b - a]
        return self._direct(read, 0, n_out, x.device)


@lru_cache(maxsize=16)
def _cached_resampler(orig: int, new: int) -> Resampler:
    return Resampler(orig, new)


def resample(waveform, orig_freq, new_freq=SAMPLE_RATE) -> torch.Tensor:
    """Resample a mono float waveform (1-D tensor/array) from orig_freq to new_freq Hz
    (float32, on the waveform's device)."""
    x = _as_mono_float(waveform, "waveform", allow_int=False)
    return _cached_resampler(_check_sample_rate(orig_freq, "orig_freq"), _check_sample_rate(new_freq, "new_freq"))(x)


class StreamingResampler:
    """`Resampler` fed in pieces: `push(x)` returns every output whose input window is complete,
    `finish()` the rest (zeros after the end). The concatenated outputs equal `Resampler(...)(whole)`
    (up to float32 rounding of a different summation grouping)."""

    def __init__(self, orig_freq, new_freq=SAMPLE_RATE, device=None, *, polyphase: bool | None = None):
        self.resampler = Resampler(orig_freq, new_freq, polyphase=polyphase)
        self.device = torch.device(device) if device is not None else None
        self._buf = None  # inputs [buf_start, received)
        self._buf_start = -self.resampler.width  # virtual zeros before the signal
        self.received = 0
        self.emitted = 0
        self.finished = False

    def _append(self, x: torch.Tensor) -> None:
        if self._buf is None:
            self._buf = torch.zeros(self.resampler.width, device=x.device)
        self._buf = torch.cat([self._buf, x])
        self.received += x.shape[0]

    def _read(self, a: int, b: int) -> torch.Tensor:
        """inputs [a, b) from the buffer; zeros past the end (only valid once finished)."""
        end = self._buf_start + self._buf.shape[0]
        seg = self._buf[a - self._buf_start:min(b, end) - self._buf_start]
        return F.pad(seg, (0, max(0, b - max(end, a))))

    def _emit(self, final: bool) -> torch.Tensor:
        r = self.resampler
        if self._buf is None:
            return torch.zeros(0, device=self.device)
        total = r.output_length(self.received) if final else None
        if r.identity:
            out = self._buf[self.emitted - self._buf_start:]
            self.emitted += out.shape[0]
            self._buf_start, self._buf = self.emitted, self._buf[:0]
            return out
        if r.polyphase:
            b0 = self.emitted // r.new
            if final:
                b1 = -(-total // r.new)
            else:  # block b reads inputs < (b + 1) * orig + width
                b1 = max(b0, (self.received - r.width) // r.orig)
            if b1 <= b0:
                return torch.zeros(0, device=self._buf.device)
            seg = self._read(b0 * r.orig - r.width, b1 * r.orig + r.width)
            out = r._blocks(seg, b1 - b0)
            n_end = min(b1 * r.new, total) if final else b1 * r.new
            out = out[self.emitted - b0 * r.new:n_end - b0 * r.new]
            start_next = b1 * r.orig - r.width
        else:
            if final:
                n_end = total
            else:  # output n reads inputs up to floor(n orig / new) + width + 1
                n_end = max(self.emitted, -(-(self.received - r.width - 1) * r.new // r.orig))
                while n_end > self.emitted and ((n_end - 1) * r.orig) // r.new + r.width + 2 > self.received:
                    n_end -= 1
            if n_end <= self.emitted:
                return torch.zeros(0, device=self._buf.device)
            out = r._direct(self._read, self.emitted, n_end, self._buf.device)
            start_next = (n_end * r.orig) // r.new - r.width
        n_emitted = self.emitted + out.shape[0]
        # drop the inputs no later output reads
        keep_from = max(self._buf_start, min(start_next, self.received))
        self._buf = self._buf[keep_from - self._buf_start:]
        self._buf_start = keep_from
        self.emitted = n_emitted
        return out

    def push(self, samples) -> torch.Tensor:
        if self.finished:
            raise ValueError("push() after finish()")
        x = _as_mono_float(samples, "samples", allow_int=False, allow_empty=True, channels_first=True)
        if self.device is not None:
            x = x.to(self.device)
        self._append(x)
        return self._emit(final=False)

    def finish(self) -> torch.Tensor:
        if self.finished:
            raise ValueError("finish() called twice")
        self.finished = True
        return self._emit(final=True)


# ----------------------------------------------------------------------------------------------
# loading

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


# ----------------------------------------------------------------------------------------------
# log-mel features

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


def num_mel_frames(num_samples: int, truncate: bool = True) -> int:
    """Frames `log_mel_features` returns for a 16 kHz waveform of `num_samples` samples (=
    the processor's feature_attention_mask.sum())."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if truncate:
        num_samples = min(num_samples, N_SAMPLES)
    if num_samples <= N_SAMPLES:
        return -(-num_samples // HOP_LENGTH)
    return num_samples // HOP_LENGTH


def log_mel_features(waveform, device=None, *, truncate: bool = True) -> torch.Tensor:
    """Whisper / Qwen2.5-Omni log-mel features of a 16 kHz mono float waveform: (128, frames)
    float32 on `device` (default: the waveform's device). See the module docstring for the exact
    definition; frames = ceil(N / 160) for N <= 480000 samples."""
    x = _as_mono_float(waveform, "waveform", allow_int=False)
    if x.dim() != 1:  # pragma: no cover - _as_mono_float returns 1-D
        raise ValueError("waveform must be 1-D")
    if device is not None:
        x = x.to(device)
    n = x.shape[0]
    if n > N_SAMPLES and truncate:
        warnings.warn(f"audio of {n / SAMPLE_RATE:.2f} s truncated to {CHUNK_LENGTH} s, as Qwen2.5-Omni's "
                      f"processor does (pass truncate=False to keep it all)", stacklevel=2)
        x, n = x[:N_SAMPLES], N_SAMPLES
    total = max(n, N_SAMPLES)  # the length transformers pads to
    frames = num_mel_frames(n, truncate=False)
    # Virtual signal = x, then zeros up to `total`. Frames that reach past n + 200 see only zeros
    # (value log10(1e-10), the minimum): they are neither returned nor able to move the max, so the
    # signal is cut at n + 400 (its reflect padding then mirrors zeros, as it would in the full one).
    length = min(total, n + 2 * (N_FFT // 2))
    y = F.pad(x, (0, length - n))
    padded = F.pad(y[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    raw = _raw_log_mel(padded)
    if length == total:
        raw = raw[:, :total // HOP_LENGTH]  # transformers drops the last STFT frame
    return _finalize(raw[:, :frames], raw.max())


class StreamingMel:
    """Log-mel frames of a waveform that arrives in pieces (see the module docstring for the one
    difference to the offline features and how it is reported).

        stream = StreamingMel(sample_rate=48000, device="cuda")
        for piece in mic:                       # any sizes, e.g. 2 s
            frames = stream.push(piece)         # (128, k), k >= 0: new frames, in order
        frames = stream.finish()                # the last frames
        stream.max_deviation                    # max |streamed - offline| over all emitted frames
        stream.features()                       # == log_mel_features(whole waveform)

    `sample_rate` != 16000 resamples on the fly (`StreamingResampler`). With `truncate=True`
    (the processor's behaviour) samples after 30 s are ignored and the stream completes itself
    when 30 s have arrived.
    """

    def __init__(self, sample_rate=SAMPLE_RATE, device=None, *, truncate: bool = True, keep_frames: bool = True):
        rate = _check_sample_rate(sample_rate)
        self.device = torch.device(device) if device is not None else None
        self.truncate = truncate
        self.keep_frames = keep_frames
        self._resampler = StreamingResampler(rate, SAMPLE_RATE, device) if rate != SAMPLE_RATE else None
        self._head = None  # first samples, until the left reflect padding can be built (201 samples)
        self._pbuf = None  # centre-padded signal from padded index emitted * 160
        self.received = 0  # 16 kHz samples taken (after the 30 s cut)
        self.emitted = 0  # frames emitted
        self.finished = False
        self._running_max = None  # 0-d tensor
        self._batches = []  # (running max used, min raw value) per early emission
        self._raw = []  # pre-floor frames (keep_frames)
        self._final = None  # (raw frames, global max) after finish
        self._warned = False
        self._auto_finished = False
        self.max_deviation = None

    # -- input ------------------------------------------------------------------------------
    def _take(self, x: torch.Tensor) -> torch.Tensor:
        if self.truncate:
            room = N_SAMPLES - self.received
            if x.shape[0] > room:
                if not self._warned:
                    warnings.warn(f"streamed audio truncated at {CHUNK_LENGTH} s, as Qwen2.5-Omni's processor "
                                  f"does (truncate=False keeps it)", stacklevel=3)
                    self._warned = True
                x = x[:max(room, 0)]
        self.received += x.shape[0]
        return x

    def _append(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        if self._pbuf is None:
            self._head = x if self._head is None else torch.cat([self._head, x])
            if self._head.shape[0] > N_FFT // 2:  # reflect padding needs samples 1..200
                h = self._head
                self._pbuf = torch.cat([h[1:N_FFT // 2 + 1].flip(0), h])
                self._head = None
        else:
            self._pbuf = torch.cat([self._pbuf, x])

    def push(self, samples) -> torch.Tensor:
        """Add samples (1-D, or 2-D (channels, samples) -- averaged; an empty piece is fine);
        returns the frames now complete, (128, k)."""
        x = _as_mono_float(samples, "samples", allow_int=False, allow_empty=True, channels_first=True)
        if self.finished:
            if self._auto_finished:  # 30 s reached: the processor ignores the rest
                return self._empty()
            raise ValueError("push() after finish()")
        if self.device is not None:
            x = x.to(self.device)
        if self._resampler is not None:
            x = self._resampler.push(x)
        self._append(self._take(x))
        out = self._emit_ready()
        if self.truncate and self.received >= N_SAMPLES:
            out = torch.cat([out, self.finish()], dim=1)
            self._auto_finished = True
        return out

    # -- frames -----------------------------------------------------------------------------
    def _empty(self) -> torch.Tensor:
        dev = self.device if self.device is not None else torch.device("cpu")
        return torch.zeros(N_MELS, 0, device=dev)

    def _emit_ready(self) -> torch.Tensor:
        if self._pbuf is None:
            return self._empty()
        ready = (self._pbuf.shape[0] - N_FFT) // HOP_LENGTH + 1  # frames whose 400 samples are all here
        if ready <= 0:
            return self._empty()
        raw = _raw_log_mel(self._pbuf[:(ready - 1) * HOP_LENGTH + N_FFT])
        self._pbuf = self._pbuf[ready * HOP_LENGTH:]
        batch_max = raw.max()
        self._running_max = batch_max if self._running_max is None else torch.maximum(self._running_max, batch_max)
        self._batches.append((self._running_max, raw.min()))
        if self.keep_frames:
            self._raw.append(raw)
        self.emitted += ready
        return _finalize(raw, self._running_max)

    def finish(self) -> torch.Tensor:
        """The remaining frames (exact: floored with the final global max)."""
        if self.finished:
            if self._auto_finished:
                return self._empty()
            raise ValueError("finish() called twice")
        if self._resampler is not None and not (self.truncate and self.received >= N_SAMPLES):
            self._append(self._take(self._resampler.finish()))
        self.finished = True
        n = self.received
        if n == 0:
            raise ValueError("no audio was pushed (empty audio)")
        total = max(n, N_SAMPLES)
        frames = num_mel_frames(n, truncate=False)
        # the virtual signal beyond the received samples: zeros up to `total`, then reflection
        zeros = min(total - n, 2 * (N_FFT // 2))
        if self._pbuf is None:  # fewer than 201 samples: build the left padding from the zero-padded signal
            y = F.pad(self._head, (0, zeros))
            tail = torch.cat([y[1:N_FFT // 2 + 1].flip(0), y])
        else:
            tail = F.pad(self._pbuf, (0, zeros))
        if n + zeros == total:  # the virtual signal ends here: reflect padding of its last samples
            tail = torch.cat([tail, tail[-N_FFT // 2 - 1:-1].flip(0)])
        # frames emitted.. whose windows lie in `tail`; stop at transformers' last kept frame
        avail = (tail.shape[0] - N_FFT) // HOP_LENGTH + 1
        n_tail = min(avail, total // HOP_LENGTH - self.emitted)
        if n_tail > 0:
            raw = _raw_log_mel(tail[:(n_tail - 1) * HOP_LENGTH + N_FFT])
            tail_max = raw.max()
            g = tail_max if self._running_max is None else torch.maximum(self._running_max, tail_max)
        else:
            raw = self._empty()
            g = self._running_max
        raw = raw[:, :max(0, frames - self.emitted)]
        if self.keep_frames:
            self._raw.append(raw)
            self._final = (torch.cat(self._raw, dim=1), g)
            self._raw = []
        dev = 0.0
        for m, lo in self._batches:  # exact: bins x < g - 8 emitted with a floor m - 8 < g - 8
            dev = max(dev, float(((g - LOG_FLOOR) - torch.maximum(lo, m - LOG_FLOOR)).clamp_min(0)) / 4.0)
        self.max_deviation = dev
        self._pbuf = self._head = None
        self.emitted += raw.shape[1]
        return _finalize(raw, g)

    def features(self) -> torch.Tensor:
        """After finish(): the exact offline features of everything pushed, (128, frames)."""
        if not self.finished:
            raise ValueError("features() is available after finish()")
        if self._final is None:
            raise ValueError("features() needs keep_frames=True")
        raw, g = self._final
        return _finalize(raw, g)
