"""Streaming Token2Wav: codes arrive in any pieces, playable 24 kHz PCM packets come out.

    stream = t2w.stream("Chelsie", seed=0)
    for codes in talker_output:
        for packet in stream.push(codes):
            play(packet.samples)
    for packet in stream.finish():
        play(packet.samples)

DiT. Mel frames are decoded in chunks of whole DiT blocks (`StreamPlan`: a small first chunk for a
fast first packet, larger ones after, doubling up to `max_chunk_blocks`: each chunk re-solves its
context, so larger chunks cost less per frame, and a packet that plays longer leaves more time
for the next). Chunk [s, e) is solved over the window [s - left, e + right)
(clipped to the sequence), whose edges lie on the global block grid, so the block-attention pattern
is the whole decode's; the window's noise is its slice of `initial_noise(seed, ...)`, the same
numbers the whole decode draws. The chunk's frames are kept ("final"); the right context's frames
are "provisional". Chunk k is decoded as soon as the codes up to its window's end exist -- never
earlier, never later -- so packets do not depend on how the codes were pushed. `finish()` decodes
the rest as one chunk whose window ends at the last code.

Vocoder. BigVGAN is convolutional: a sample of frame f reads mel frames f - 34 .. f + 34 (its
`receptive_field_frames()` on the real layout; measurable influence ends ~20-26 frames out). Chunk
k vocodes [final mel of the previous `vocoder_left` frames (default: the receptive field, so the
left edge is exact)] + [its final mel] + [its provisional mel, at most `vocoder_right` frames] and
keeps the samples of its own frames plus `crossfade` frames more (the "tail", from provisional
mel). The next packet begins with a raised-cosine cross-fade (amplitude-complementary: the two
signals are nearly equal) from that tail into its own samples of the same frames, so where the two
vocoder runs saw different mels there is no step. The fade is short on purpose: the new run has the
exact left context and better mel there, so every fade frame blends in a worse signal (measured:
-0.7 dB SNR per frame); 2 frames (20 ms) only remove the step.

Packets tile the waveform: packet k holds samples [s * hop, e * hop); together they are exactly the
non-streamed length. `Packet.depends_on` is the code range that can influence a packet: changing a
code outside it leaves the packet bit-identical.

CUDA graphs. A stream's chunks have a few shapes (`regular_shapes`; only the last chunk's differs):
with graphs on (the default on CUDA) each chunk's DiT solve and vocoder run replay CUDA graphs of
those shapes (graphs.py), captured when the first stream of a plan and schedule starts; the
packets are the same.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..io.speakers import Speaker
from .flow import Schedule, initial_noise

__all__ = ["StreamPlan", "Packet", "Chunk", "Token2WavStream", "decode_together"]


@dataclass(frozen=True)
class StreamPlan:
    """Chunk sizes and contexts. DiT sizes are in DiT blocks (24 mel frames = 12 codes), vocoder
    sizes in mel frames; None takes the vocoder's receptive field (left: every frame a kept sample
    reads, so the left edge is exact; right: as much provisional mel as the window has, up to the
    receptive field). The defaults and their measurements are in the README (Token2Wav)."""

    first_chunk_blocks: int = 1
    chunk_blocks: int = 3
    max_chunk_blocks: Optional[int] = 12
    left_blocks: int = 2
    right_blocks: int = 1
    vocoder_left: Optional[int] = None
    vocoder_right: Optional[int] = None
    crossfade: int = 2

    def __post_init__(self):
        for name, low in (("first_chunk_blocks", 1), ("chunk_blocks", 1), ("left_blocks", 0), ("right_blocks", 0),
                          ("vocoder_left", 0), ("vocoder_right", 0), ("crossfade", 0)):
            v = getattr(self, name)
            if v is None and name.startswith("vocoder"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"StreamPlan.{name} must be an int >= {low}, got {v!r}")
        m = self.max_chunk_blocks
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < self.chunk_blocks):
            raise ValueError(f"StreamPlan.max_chunk_blocks must be None or an int >= chunk_blocks "
                             f"({self.chunk_blocks}), got {m!r}")

    def chunk_size(self, k: int) -> int:
        """Blocks in chunk k: the first chunk, then chunk_blocks doubling up to max_chunk_blocks."""
        if k == 0:
            return self.first_chunk_blocks
        cap = self.chunk_blocks if self.max_chunk_blocks is None else self.max_chunk_blocks
        return min(self.chunk_blocks << min(k - 1, 32), cap)


@dataclass
class Packet:
    """PCM for the codes [codes[0], codes[1]): `samples` (1-D float32, CPU) start at `start_sample`
    of the whole waveform. dit_ms / vocoder_ms: the compute this packet took; batch: how many
    streams' chunks that compute decoded at once (this one's included)."""

    index: int
    samples: torch.Tensor
    start_sample: int
    codes: tuple[int, int]
    depends_on: tuple[int, int]
    dit_ms: float
    vocoder_ms: float
    batch: int = 1


@dataclass(eq=False)
class Chunk:
    """A chunk handed out by `Token2WavStream.next_chunk`: mel frames [start, end) of `stream`,
    solved over the DiT window [window_start, window_end) from `codes` (that window's codes) and
    `noise` (1, window frames, mel_dim). The vocoder step fills in the rest."""

    stream: "Token2WavStream"
    index: int
    start: int
    end: int
    window_start: int
    window_end: int
    codes: torch.Tensor
    noise: torch.Tensor
    final: Optional[torch.Tensor] = None
    provisional: Optional[torch.Tensor] = None
    left_frames: int = 0


def _fade_in(n: int) -> torch.Tensor:
    return 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n)


class Token2WavStream:
    """One utterance. Made by `Token2Wav.stream`; not thread-safe."""

    def __init__(self, t2w, speaker: Union[str, Speaker], *, seed: int, schedule: Schedule,
                 plan: Optional[StreamPlan] = None, runners=None):
        self.t2w = t2w
        self.plan = StreamPlan() if plan is None else plan
        if not isinstance(self.plan, StreamPlan):
            raise ValueError(f"plan must be a StreamPlan, got {type(self.plan).__name__}")
        if t2w.block_size % t2w.repeats:
            raise ValueError(f"streaming needs block_size ({t2w.block_size}) divisible by repeats ({t2w.repeats})")
        initial_noise(seed, 0, 1, t2w.mel_dim, t2w.block_size)  # rejects a bad seed now, not at the first chunk
        rf_left, rf_right = t2w.vocoder.receptive_field_frames()
        p = self.plan
        self._voc_left = rf_left if p.vocoder_left is None else p.vocoder_left
        self._voc_right = min(rf_right, p.right_blocks * t2w.block_size) if p.vocoder_right is None else p.vocoder_right
        if p.crossfade > self._voc_right:
            raise ValueError(f"StreamPlan.crossfade ({p.crossfade}) exceeds the vocoder's right context "
                             f"({self._voc_right} frames): the tail is vocoded from the provisional mel there")
        self.seed, self.schedule = seed, schedule
        self._ends: list[int] = []  # mel frame where chunk k ends, as far as asked
        ref_mel, cond = t2w.speaker_tensors(speaker)
        with torch.inference_mode():  # ECAPA and the time modulations now, before the first codes arrive
            self._speaker = t2w.sampler.speaker_condition(ref_mel, cond, schedule)
            t2w.sampler.grid_and_modulation(schedule)
        # The DiT solve and the vocoder: plain calls, or `graphs.Token2WavGraphs` (static buffers,
        # CUDA graphs), whose runners for this plan's chunk shapes are made (captured) now.
        self.sample, self.vocode = t2w.sampler.sample, t2w.vocoder
        self.runners = runners
        if runners is not None:
            runners.prepare(schedule, *self.regular_shapes())
            self.sample, self.vocode = runners.solve, runners.vocode
        self._codes = torch.empty(0, dtype=torch.int64, device=t2w.device)
        self._chunk = 0  # the next chunk to decode
        self._mel = torch.empty(1, 0, t2w.mel_dim, device=t2w.device)  # final mel before the next chunk
        self._tail = None  # samples vocoded past the last packet, for the cross-fade
        self._finished = False
        self._pending = False  # a chunk is handed out and its packet not made yet

    # ---- the chunk grid (mel frames) ------------------------------------------------------------
    def _end(self, k: int) -> int:
        ends = self._ends
        while len(ends) <= k:
            ends.append((ends[-1] if ends else 0) + self.plan.chunk_size(len(ends)) * self.t2w.block_size)
        return ends[k]

    def _start(self, k: int) -> int:
        return 0 if k == 0 else self._end(k - 1)

    def _window_start(self, k: int) -> int:
        return max(0, self._start(k) - self.plan.left_blocks * self.t2w.block_size)

    def _chunk_of(self, frame: int) -> int:
        k = 0
        while self._end(k) <= frame:
            k += 1
        return k

    def regular_shapes(self) -> tuple[list[int], list[int]]:
        """(DiT window frames, vocoder mel frames) of the chunks `push` decodes: those of chunks 0,
        1, ... up to the first one whose DiT and vocoder left contexts are whole; every later chunk
        has its shapes. Only `finish()`'s last chunk can differ."""
        b, p = self.t2w.block_size, self.plan
        right = p.right_blocks * b
        windows, mels = set(), set()
        k = 0
        while True:
            start, end = self._start(k), self._end(k)
            windows.add(end + right - self._window_start(k))
            mels.add(min(self._voc_left, start) + end - start + min(self._voc_right, right))
            steady = p.chunk_size(k) == p.chunk_size(k + 1)
            if k >= 1 and steady and start >= max(p.left_blocks * b, self._voc_left):
                return sorted(windows), sorted(mels)
            k += 1

    @property
    def codes_pushed(self) -> int:
        return self._codes.numel()

    def codes_needed(self) -> int:
        """How many codes in all the next packet waits for (the first packet's latency in codes)."""
        return (self._end(self._chunk) + self.plan.right_blocks * self.t2w.block_size) // self.t2w.repeats

    # ---- pushing ------------------------------------------------------------------------------
    def push(self, codes) -> list[Packet]:
        """Append codes (list / 1-D tensor, possibly empty); returns the packets now complete. Bad
        codes raise ValueError and leave the stream as it was."""
        self.add_codes(codes)
        return self._decode_ready(finishing=False)

    def finish(self) -> list[Packet]:
        """The rest, as one packet whose window ends at the last code; no packet for an empty
        stream. Later calls return []."""
        return self._decode_ready(finishing=True)

    def add_codes(self, codes) -> None:
        """Append codes without decoding (`next_chunk` then says what is ready)."""
        if self._finished:
            raise ValueError("push after finish(): this stream is closed")
        self._codes = torch.cat([self._codes, self.t2w.check_codes(codes, allow_empty=True)])

    def _decode_ready(self, finishing: bool) -> list[Packet]:
        out = []
        while (chunk := self.next_chunk(finishing)) is not None:
            out += [packet for _, packet in decode_together([chunk])]
        return out

    # ---- one chunk, in three steps: its DiT window, its vocoder window, its packet ------------------
    # (`decode_together` runs them, for one chunk or chunks of several streams at once)
    @property
    def speaker_condition(self):
        return self._speaker

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def pending(self) -> bool:
        """A chunk is handed out (`next_chunk`) and its packet not made yet."""
        return self._pending

    def next_chunk(self, finishing: bool = False) -> Optional[Chunk]:
        """The next chunk whose codes and look-ahead exist (with `finishing`: else the last one,
        over the codes left; then the stream is finished), or None. Chunks come in order; the next
        is only handed out after `packet` completed this one."""
        if self._finished or self._pending:
            return None
        frames = self._codes.numel() * self.t2w.repeats
        right = self.plan.right_blocks * self.t2w.block_size
        start, end = self._start(self._chunk), self._end(self._chunk)
        if end + right <= frames:
            window_end = end + right
        elif finishing:
            self._finished = True
            if frames <= start:
                return None
            end = window_end = frames
        else:
            return None
        r, window_start = self.t2w.repeats, self._window_start(self._chunk)
        noise = initial_noise(self.seed, window_start, window_end - window_start, self.t2w.mel_dim,
                              self.t2w.block_size).to(self.t2w.device)
        self._pending = True
        return Chunk(self, self._chunk, start, end, window_start, window_end,
                     self._codes[window_start // r:window_end // r], noise)

    def vocoder_input(self, chunk: Chunk, window: torch.Tensor) -> torch.Tensor:
        """The chunk's DiT window (1, frames, mel_dim) -> the mel its vocoder run reads (1, mel_dim,
        F): the last final frames before it, its final frames, its provisional frames."""
        chunk.final = window[:, chunk.start - chunk.window_start:chunk.end - chunk.window_start]
        chunk.provisional = window[:, chunk.end - chunk.window_start:][:, :self._voc_right]
        left = self._mel[:, self._mel.shape[1] - min(self._voc_left, self._mel.shape[1]):]
        chunk.left_frames = left.shape[1]
        return torch.cat([left, chunk.final, chunk.provisional], dim=1).transpose(1, 2)

    def packet(self, chunk: Chunk, wave: torch.Tensor, dit_ms: float, vocoder_ms: float, batch: int = 1) -> Packet:
        """The chunk's vocoder output (samples,) -> its packet (cross-faded into the last one's tail)."""
        k, plan, r, hop = chunk.index, self.plan, self.t2w.repeats, self.t2w.hop_length
        start, end = chunk.start, chunk.end
        wave = wave.float().cpu()
        keep = end - start + min(plan.crossfade, chunk.provisional.shape[1])
        wave = wave[chunk.left_frames * hop:(chunk.left_frames + keep) * hop]
        samples, tail = wave[:(end - start) * hop].clone(), wave[(end - start) * hop:]
        if self._tail is not None:
            n = min(self._tail.numel(), samples.numel())
            w = _fade_in(n)
            samples[:n] = self._tail[:n] * (1 - w) + samples[:n] * w
        self._tail = tail if tail.numel() else None
        self._mel = torch.cat([self._mel, chunk.final], dim=1)[:, -self._voc_left:] if self._voc_left else self._mel
        # The earliest code this packet can see: the tail and the left mel came from earlier windows.
        first_window = chunk.window_start if k == 0 else self._window_start(
            self._chunk_of(max(0, self._start(k - 1) - self._voc_left)))
        self._chunk += 1
        self._pending = False
        # Frame counts here are whole codes: block edges are (block_size % repeats == 0), and so is the end.
        return Packet(index=k, samples=samples, start_sample=start * hop, codes=(start // r, end // r),
                      depends_on=(first_window // r, chunk.window_end // r), dit_ms=dit_ms,
                      vocoder_ms=vocoder_ms, batch=batch)


def decode_together(group: list[Chunk]) -> list[tuple[Chunk, Packet]]:
    """Chunks of different streams sharing a DiT window length (and runners, schedule), decoded as
    one DiT batch, then one vocoder batch per mel length; one chunk is the plain case. All the
    compute first, then the packets (which advance the streams): a group that raises leaves every
    stream as it was, so its chunks can be re-run one by one."""
    first = group[0].stream
    t0 = time.perf_counter()
    with torch.inference_mode():
        if len(group) == 1:
            spk, codes, noise = first.speaker_condition, group[0].codes[None], group[0].noise
        else:
            spk = tuple(torch.cat([c.stream.speaker_condition[i] for c in group]) for i in range(2))
            codes, noise = torch.stack([c.codes for c in group]), torch.cat([c.noise for c in group])
        windows = first.sample(codes, spk, noise, first.schedule)
        mels = [c.stream.vocoder_input(c, windows[i:i + 1]) for i, c in enumerate(group)]
        dit_ms = (time.perf_counter() - t0) * 1e3
        waves, vocoder_ms = [None] * len(group), [0.0] * len(group)
        by_length: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            by_length.setdefault(mel.shape[2], []).append(i)
        for part in by_length.values():
            t1 = time.perf_counter()
            out = first.vocode(torch.cat([mels[i] for i in part]) if len(part) > 1 else mels[part[0]])
            ms = (time.perf_counter() - t1) * 1e3
            for j, i in enumerate(part):
                waves[i], vocoder_ms[i] = out[j], ms
    return [(c, c.stream.packet(c, waves[i], dit_ms, vocoder_ms[i], batch=len(group))) for i, c in enumerate(group)]
