"""Streaming audio encoding: 2-second chunks encoded as they complete (see AudioEncoderStream)."""
from __future__ import annotations

import torch

from .audio_encoder import AudioEncoder

__all__ = ["AudioEncoderStream"]


class AudioEncoderStream:
    """Encodes one audio whose mel frames arrive in pieces (any sizes; e.g. StreamingMel output):
    every complete 2 * n_window-frame chunk is encoded as soon as it is there (several complete
    chunks are encoded together), `finish()` encodes the last partial chunk. The concatenated
    outputs equal `AudioEncoder.forward` on the whole audio: chunks never attend to each other and
    positions restart per chunk; an unpaired last token of a chunk (odd n_window only) is kept and
    averaged with the first token of the next chunk, as the offline pooling does."""

    def __init__(self, encoder: AudioEncoder):
        self.encoder = encoder
        self._pending = None  # (mel, frames) not yet encoded
        self._carry = None  # (1, d_model) unpaired token state
        self.frames = 0
        self.tokens = 0
        self.finished = False

    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        chunk = enc.chunk_frames
        lens = torch.tensor([chunk] * (mel.shape[1] // chunk) + ([mel.shape[1] % chunk] if mel.shape[1] % chunk else []),
                            dtype=torch.int64, device=enc.conv1.weight.device)
        # every chunk as its own "audio": same chunking, same block-diagonal mask
        hidden = enc._hidden(mel.to(enc.conv1.weight.device, enc.conv1.weight.dtype), lens)
        if self._carry is not None:
            hidden = torch.cat([self._carry, hidden])
        usable = hidden.shape[0] // 2 * 2
        self._carry = hidden[usable:] if usable < hidden.shape[0] else None
        pairs = hidden[:usable].view(-1, 2, hidden.shape[1])
        pooled = (pairs[:, 0] + pairs[:, 1]) / 2
        out = enc._project(pooled)
        self.tokens += out.shape[0]
        return out

    def _empty(self) -> torch.Tensor:
        w = self.encoder.proj.weight
        return w.new_zeros(0, self.encoder.config.output_dim)

    def push(self, mel_frames: torch.Tensor) -> torch.Tensor:
        """Add (num_mel_bins, k) frames; returns the tokens of the chunks now complete."""
        if self.finished:
            raise ValueError("push() after finish()")
        if not isinstance(mel_frames, torch.Tensor) or mel_frames.dim() != 2 \
                or mel_frames.shape[0] != self.encoder.num_mel_bins:
            raise ValueError(f"mel_frames must be a ({self.encoder.num_mel_bins}, frames) tensor, got "
                             f"{tuple(mel_frames.shape) if isinstance(mel_frames, torch.Tensor) else type(mel_frames)}")
        if mel_frames.shape[1] == 0:
            return self._empty()
        self.frames += mel_frames.shape[1]
        mel = mel_frames if self._pending is None else torch.cat([self._pending, mel_frames.to(self._pending)], dim=1)
        ready = mel.shape[1] // self.encoder.chunk_frames * self.encoder.chunk_frames
        self._pending = mel[:, ready:] if ready < mel.shape[1] else None
        if ready == 0:
            return self._empty()
        return self._encode(mel[:, :ready])

    def finish(self) -> torch.Tensor:
        """Tokens of the last partial chunk (if any). Total tokens = output_lengths(frames)."""
        if self.finished:
            raise ValueError("finish() called twice")
        self.finished = True
        if self.frames == 0:
            raise ValueError("no mel frames were pushed")
        out = self._encode(self._pending) if self._pending is not None else self._empty()
        self._pending = self._carry = None
        return out
