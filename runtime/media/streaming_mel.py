"""Log-mel features of audio that arrives in pieces (a microphone, a network stream).

`StreamingMel`: feed samples as they arrive (any piece sizes, e.g. 2 s); it emits every frame
whose STFT window is complete (a frame needs 200 samples after its center, so a 2 s piece releases
its frames up to 1.25 frames before its end; `finish()` releases the rest). The STFT values of
every frame are identical to the offline ones (`mel.log_mel_features` with the same
`chunk_length`). The one thing a stream cannot know is Whisper's floor `max(x, global_max - 8)`:
the global max is over the whole audio. A frame emitted before the end is floored with the
*running* max m (max over all frames computed so far); offline it is floored with the final max
g >= m. So an emitted value equals the offline value exactly, except for log-mel bins more than 8
(80 dB) below the final global max that were emitted while m < g: those come out lower, by at
most (g - m) / 4. Frames released by `finish()` use g and are exact. After `finish()`,
`max_deviation` reports the exact largest |streamed - offline| over all emitted frames (0.0 when
the loudest frame came in the first frames emitted, or nothing emitted early was that quiet), and
`features()` returns the exact offline features (the stream keeps the pre-floor frames).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from .mel import (HOP_LENGTH, LOG_FLOOR, N_FFT, N_MELS, _chunk_samples, _finalize, _num_frames, _padded_length,
                  _raw_log_mel)
from .options import DEFAULT_AUDIO_MAX_SECONDS
from .resample import StreamingResampler
from .waveform import SAMPLE_RATE, _as_mono_float, _check_sample_rate

__all__ = ["StreamingMel"]


class StreamingMel:
    """Log-mel frames of a waveform that arrives in pieces (see the module docstring for the one
    difference to the offline features and how it is reported).

        stream = StreamingMel(sample_rate=48000, device="cuda")
        for piece in mic:                       # any sizes, e.g. 2 s
            frames = stream.push(piece)         # (128, k), k >= 0: new frames, in order
        frames = stream.finish()                # the last frames
        stream.max_deviation                    # max |streamed - offline| over all emitted frames
        stream.features()                       # == log_mel_features(whole waveform, chunk_length=...)

    `sample_rate` != 16000 resamples on the fly (`StreamingResampler`). `chunk_length` is
    `log_mel_features`' (the processor's cut): samples after it are ignored and the stream
    completes itself when that much audio has arrived; None never cuts.
    """

    def __init__(self, sample_rate=SAMPLE_RATE, device=None, *,
                 chunk_length: Optional[float] = DEFAULT_AUDIO_MAX_SECONDS, keep_frames: bool = True):
        rate = _check_sample_rate(sample_rate)
        self._limit = _chunk_samples(chunk_length)
        self.chunk_length = chunk_length
        self.device = torch.device(device) if device is not None else None
        self.keep_frames = keep_frames
        self._resampler = StreamingResampler(rate, SAMPLE_RATE, device) if rate != SAMPLE_RATE else None
        self._head = None  # first samples, until the left reflect padding can be built (201 samples)
        self._pbuf = None  # centre-padded signal from padded index emitted * 160
        self.received = 0  # 16 kHz samples taken (after the chunk_length cut)
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
        if self._limit is not None:
            room = self._limit - self.received
            if x.shape[0] > room:
                if not self._warned:
                    warnings.warn(f"streamed audio truncated at chunk_length={self.chunk_length} s, as "
                                  f"Qwen2.5-Omni's processor does (chunk_length=None keeps it)", stacklevel=3)
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
            if self._auto_finished:  # chunk_length reached: the processor ignores the rest
                return self._empty()
            raise ValueError("push() after finish()")
        if self.device is not None:
            x = x.to(self.device)
        if self._resampler is not None:
            x = self._resampler.push(x)
        self._append(self._take(x))
        out = self._emit_ready()
        if self._full:
            out = torch.cat([out, self.finish()], dim=1)
            self._auto_finished = True
        return out

    @property
    def _full(self) -> bool:
        return self._limit is not None and self.received >= self._limit

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
        if self._resampler is not None and not self._full:
            self._append(self._take(self._resampler.finish()))
        self.finished = True
        n = self.received
        if n == 0:
            raise ValueError("no audio was pushed (empty audio)")
        total = _padded_length(n, self._limit)
        frames = _num_frames(n, self._limit)
        # the virtual signal beyond the received samples: zeros up to `total`, then reflection
        zeros = min(total - n, N_FFT)
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
