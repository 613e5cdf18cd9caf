"""Streaming audio input: a turn whose audio is encoded and prefilled while it arrives (see
omni_runtime.thinker.thinker's module docstring for what streaming changes, exactly)."""
from __future__ import annotations

import time
import weakref
from typing import Iterator, Optional

import torch

from ..engine import SamplingParams, Sequence, TokenEvent
from ..media.streaming_mel import StreamingMel
from ..models.audio_encoder_stream import AudioEncoderStream
from .items import Media

__all__ = ["AudioStreamSession"]

class AudioStreamSession:
    """One turn with streamed audio input; create with `Thinker.stream_audio`.

    push(samples) -> audio tokens prefilled by this call (0 while a 2-second chunk is incomplete);
    finish() -> iterator of TokenEvents (the rest of the prompt, then the answer).
    Attributes: `seq` (the engine Sequence), `audio_tokens` (streamed audio tokens so far),
    `chunk_timings` (per prefilled chunk: tokens, encode seconds, prefill seconds), after finish
    `mel_max_deviation` (see the module docstring) and `t_audio_end` (perf_counter at finish()).

    A context manager: leaving the `with` block without finish() aborts the turn, and so does
    dropping the session (a finalizer), so a failed or abandoned session frees its KV blocks and
    never holds up other requests (a waiting session is simply not scheduled meanwhile)."""

    def __init__(self, thinker, conversation, *, sample_rate, audios, images, videos, use_audio_in_video,
                 system_prompt, params: SamplingParams, keep_hidden_states: bool, return_logits: bool,
                 media_options):
        self.thinker = thinker
        self.engine = thinker.engine
        self.aiv = bool(use_audio_in_video)
        self.timings: dict = {}
        raw, media = thinker._layout(conversation, audios, images, videos, system_prompt, stream=True)
        thinker._load_media(media, self.aiv, self.timings, media_options)
        ph = thinker.placeholders
        k = next(i for i, m in enumerate(media) if m.stream)
        # the streamed audio's placeholder in the raw ids: the (number of placeholders before it)-th one
        kinds = {ph.audio, ph.image, ph.video}
        slots = [i for i, t in enumerate(raw) if t in kinds]
        p = slots[k]
        if p == 0 or raw[p - 1] != ph.audio_bos or p + 1 >= len(raw) or raw[p + 1] != ph.audio_eos:
            raise ValueError("the streamed audio placeholder must sit between <|audio_bos|> and <|audio_eos|>")
        self._before, self._after = media[:k], media[k + 1:]
        self.prefix_ids = thinker._expand(raw[:p], self._before, self.aiv)
        self.suffix_ids = thinker._expand(raw[p + 1:], self._after, self.aiv)
        thinker._check_length(len(self.prefix_ids) + len(self.suffix_ids))
        # Prefix positions: positions run left to right, so the prefix's do not depend on what
        # follows; rope_index needs a closed audio segment, so close it with a one-token stand-in.
        # The streamed tokens then sit at bos + 1, bos + 2, ... (TMRoPE's audio rule) -- passed
        # explicitly: after an audio-in-video segment the next id is eos + 1, not max + 1.
        n = len(self.prefix_ids)
        stand_in = Media("audio", stream=True, mel=torch.empty(0, 3))  # 3 mel frames -> 1 token
        pos, _ = thinker._positions(self.prefix_ids + [ph.audio, ph.audio_eos], [*self._before, stand_in], self.aiv)
        positions = pos[:, :n]
        self._audio_base = int(pos[0, n])
        embeds = thinker._embed(self.prefix_ids, self._before, self.timings)
        self.mel = StreamingMel(sample_rate, device=thinker.device, chunk_length=media_options.audio_max_seconds)
        self.encoder = AudioEncoderStream(thinker.audio_tower)
        self.audio_tokens = 0
        self.chunk_timings: list[dict] = []
        self.mel_max_deviation: Optional[float] = None
        self.t_audio_end: Optional[float] = None
        self._finished = False
        self.params = params
        t0 = time.perf_counter()
        self.seq: Sequence = self.engine.add_request(
            self.prefix_ids, params, inputs_embeds=embeds, positions=positions, prompt_complete=False,
            keep_hidden_states=keep_hidden_states, return_logits=return_logits,
            detokenizer=thinker._detokenizer())
        self._finalizer = weakref.finalize(self, self.engine.abort, self.seq)
        self._drain()
        self.timings["prefix_prefill_s"] = time.perf_counter() - t0

    def _drain(self) -> None:
        """Prefill everything received so far (chunked prefill onto the cache; other requests'
        steps run in the same forwards)."""
        seq = self.seq
        self.engine.wait_until(lambda: seq.finished or seq.num_computed >= seq.num_prompt_tokens)

    def __enter__(self) -> "AudioStreamSession":
        return self

    def __exit__(self, *exc) -> None:
        if not self._finished or exc[0] is not None:
            self.abort()

    def _append_audio(self, tokens: torch.Tensor, t_encode: float) -> int:
        n = int(tokens.shape[0])
        if n == 0:
            return 0
        t0 = time.perf_counter()
        positions = (self._audio_base + self.audio_tokens + torch.arange(n)).expand(3, n)
        self.engine.extend_prompt(self.seq, [self.thinker.placeholders.audio] * n, inputs_embeds=tokens,
                                  positions=positions)
        self._drain()
        self.audio_tokens += n
        self.chunk_timings.append({"tokens": n, "encode_s": t_encode, "prefill_s": time.perf_counter() - t0})
        return n

    @torch.no_grad()
    def push(self, samples) -> int:
        """Add audio samples (1-D, at the session's sample_rate; any piece size). Every 2-second
        chunk completed by them is encoded and prefilled now; returns its audio tokens."""
        if self._finished:
            raise ValueError("push() after finish()")
        t0 = time.perf_counter()
        frames = self.mel.push(samples)
        tokens = self.encoder.push(frames) if frames.shape[1] else None
        if tokens is None:
            return 0
        return self._append_audio(tokens, time.perf_counter() - t0)

    def finish(self) -> Iterator[TokenEvent]:
        """End of audio: the last partial chunk, `<|audio_eos|>` and the rest of the prompt are
        prefilled, then the answer streams. Returns an iterator of TokenEvents."""
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        self.t_audio_end = time.perf_counter()
        try:
            self._close_prompt()
        except BaseException:
            self.abort()
            raise
        self._finalizer.detach()  # from now on the answer's stream owns the request
        return self.engine.stream(self.seq)

    @torch.no_grad()
    def _close_prompt(self) -> None:
        t0 = time.perf_counter()
        frames = self.mel.finish()
        self.mel_max_deviation = self.mel.max_deviation
        tokens = self.encoder.push(frames) if frames.shape[1] else None
        last = self.encoder.finish()
        tokens = last if tokens is None else torch.cat([tokens, last])
        self._append_audio(tokens, time.perf_counter() - t0)
        th = self.thinker
        stream_media = Media("audio", stream=True, mel=torch.empty(0, self.mel.emitted))
        media = [*self._before, stream_media, *self._after]
        ids = self.prefix_ids + [th.placeholders.audio] * self.audio_tokens + self.suffix_ids
        th._check_length(len(ids))
        positions, delta = th._positions(ids, media, self.aiv)
        start = len(ids) - len(self.suffix_ids)
        streamed = positions[:, len(self.prefix_ids):start]
        if not torch.equal(streamed, (self._audio_base + torch.arange(self.audio_tokens)).expand(3, -1)):
            raise RuntimeError("internal error: the streamed audio positions differ from rope_index's")
        embeds = th._embed(self.suffix_ids, self._after, self.timings)
        self.engine.extend_prompt(self.seq, self.suffix_ids, inputs_embeds=embeds,
                                  positions=positions[:, start:], prompt_complete=True, rope_delta=delta)

    def abort(self) -> None:
        """End the turn now and free its request."""
        self._finished = True
        self._finalizer.detach()
        self.engine.abort(self.seq)


