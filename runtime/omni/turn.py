"""One omni turn, driven from its consumer's loop: Thinker steps, Talker steps and Token2Wav
chunks interleave, and every text token and audio packet is yielded the moment it exists.

The loop: hand out the Thinker's new tokens (each also tells the Talker's inputs the reply so
far); start the Talker once its prompt is ready; pass new codes to the Token2Wav stream (codes the
codec's table cannot take are dropped and counted -- they never reach the DiT, where transformers
raises an IndexError), which the Omni's codec thread (`token2wav.batching.StreamBatcher`) decodes
while this loop goes on, in batches with the other turns' chunks; hand out the packets it has
finished, in order; then run one step of each engine that has work. Both engines are shared:
other turns' steps batch with this one, and a step another consumer runs delivers this turn's
events too (`Engine.try_step`). Leaving the iterator early aborts both requests at once.
"""
from __future__ import annotations

import threading
import time

import torch

from ..talker import TalkerInputs
from .events import AudioEvent, TurnResult

__all__ = ["Turn"]

_IDLE_S = 0.005  # nothing could run: wait at most this long for another driver's step to end
_FINISH_POLL_S = 0.05  # waiting for the last packets: how often a cancel is noticed


class Turn:
    def __init__(self, omni, prepared, params, speaker, talker_params, *, seed: int, noise, streamed: bool):
        self.omni, self.prepared, self.params = omni, prepared, params
        self.speaker, self.talker_params = speaker, talker_params
        self.seed, self.noise, self.streamed = seed, noise, streamed
        self.codes: list[int] = []
        self.dropped = 0
        self.timings: dict = {"dit_ms": [], "vocoder_ms": [], "codec_batch": [], "code_t": []}
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the turn from any thread: its iterator ends at its next pass (within a step),
        aborting both requests."""
        self._cancelled.set()

    def events(self):
        omni, th = self.omni, self.omni.thinker
        speak = self.speaker is not None
        t0 = time.perf_counter()
        self.timings["start"] = t0
        inputs = None
        if speak:
            inputs = TalkerInputs(self.prepared, omni.talker.lm, th.lm.embed, self.speaker.bos_token,
                                  th.thinker_config.vision_config.spatial_merge_size)
        th_seq = th.engine.add_request(**self.prepared.request(), params=self.params, detokenizer=th._detokenizer(),
                                       sink=inputs.sink if speak else None)
        ta_seq = None
        decoder = omni.codec().open(self.speaker, seed=self.seed) if speak and self.streamed else None
        num_codes_max = omni.token2wav.num_codes if speak else 0
        stops = set(omni.talker.stop_codes) if speak else set()
        pieces = []
        try:
            while not self._cancelled.is_set():
                while th_seq.events:
                    ev = th_seq.events.popleft()
                    self.timings.setdefault("first_text", ev.t - t0)
                    if speak:
                        inputs.add_reply_token(ev.token_id)
                    yield ev
                th_done = th_seq.finished and not th_seq.events
                if th_done and th_seq.error is not None:
                    raise th_seq.error
                if speak and th_done and not inputs.finished:
                    inputs.thinker_finished()
                if speak and ta_seq is None and inputs.prompt_ready:
                    ta_seq = omni.talker.start(inputs, self.talker_params)
                    self.timings["talker_start"] = time.perf_counter() - t0
                if ta_seq is not None and ta_seq.events:
                    new = self._take_codes(ta_seq, stops, num_codes_max, t0)
                    if new and decoder is not None:
                        decoder.push(new)
                for packet in decoder.ready() if decoder is not None else ():
                    pieces.append(packet.samples)
                    yield self._audio_event(packet, t0)
                ta_done = not speak or inputs.silent or (ta_seq is not None and ta_seq.finished and not ta_seq.events)
                if ta_seq is not None and ta_done and ta_seq.error is not None:
                    raise ta_seq.error
                if th_done and ta_done:
                    break
                ran = th.engine.try_step() if not th_seq.finished else False
                if ta_seq is not None and not ta_seq.finished:
                    ran = omni.talker.engine.try_step() or ran
                if not ran and not th_seq.events and not (ta_seq is not None and ta_seq.events):
                    if decoder is not None and decoder.busy:
                        decoder.wait(_IDLE_S)  # nothing to step: a packet is what comes next
                    else:  # another consumer drives (or everything waits for it): sleep until a step ends
                        busy = th.engine if not th_seq.finished else omni.talker.engine
                        busy.wait_for_step(_IDLE_S)
            if self._cancelled.is_set():
                return  # the finally aborts both requests
            self.timings["codes_done"] = time.perf_counter() - t0
            waveform = None
            if decoder is not None:
                decoder.finish()
                while True:
                    for packet in decoder.ready():  # (raises the stream's error, if it failed)
                        pieces.append(packet.samples)
                        yield self._audio_event(packet, t0)
                    if decoder.done and not decoder.has_packets:
                        break
                    if self._cancelled.is_set():
                        return
                    decoder.wait(_FINISH_POLL_S)
                waveform = torch.cat(pieces) if pieces else torch.zeros(0)
            elif speak:
                waveform = self._decode_all(t0)
            yield self._result(th_seq, waveform, t0)
        finally:
            if decoder is not None:
                decoder.cancel()
            for seq, engine in ((th_seq, th.engine), (ta_seq, omni.talker.engine if speak else None)):
                if seq is not None and not seq.finished:
                    engine.abort(seq)

    def _take_codes(self, ta_seq, stops, num_codes_max, t0) -> list[int]:
        new = []
        while ta_seq.events:
            ev = ta_seq.events.popleft()
            code = ev.token_id
            self.timings["code_t"].append(ev.t - t0)
            if code in stops:
                continue
            if 0 <= code < num_codes_max:
                new.append(code)
            else:
                self.dropped += 1
        self.codes.extend(new)
        return new

    def _audio_event(self, packet, t0) -> AudioEvent:
        ev = AudioEvent(packet)
        self.timings.setdefault("first_audio", ev.t - t0)
        self.timings["dit_ms"].append(packet.dit_ms)
        self.timings["vocoder_ms"].append(packet.vocoder_ms)
        self.timings["codec_batch"].append(packet.batch)
        return ev

    def _decode_all(self, t0) -> torch.Tensor:
        if not self.codes:
            return torch.zeros(0)
        t = time.perf_counter()
        noise = self.noise
        if callable(noise):
            noise = noise(len(self.codes) * self.omni.token2wav.config.dit_config.repeats)
        wav = self.omni.codec().decode(self.codes, self.speaker, noise=noise, seed=self.seed).result()
        self.timings["token2wav_ms"] = 1000 * (time.perf_counter() - t)
        self.timings.setdefault("first_audio", time.perf_counter() - t0)
        return wav

    def _result(self, th_seq, waveform, t0) -> TurnResult:
        end = time.perf_counter() - t0
        tm = self.timings
        tm.update(end=end, text_tokens=len(th_seq.output_ids), codes=len(self.codes))
        audio_s = 0.0 if waveform is None else waveform.numel() / AudioEvent.sample_rate
        tm["audio_seconds"] = audio_s
        tm["rtf"] = end / audio_s if audio_s else None
        talk_s = tm.get("codes_done", end) - tm.get("talker_start", 0.0)
        tm["codes_per_s"] = len(self.codes) / talk_s if self.codes and talk_s > 0 else None
        return TurnResult(text=th_seq.text, token_ids=list(th_seq.output_ids), finish_reason=th_seq.finish_reason,
                          codes=list(self.codes), dropped_codes=self.dropped, waveform=waveform,
                          speaker=None if self.speaker is None else self.speaker.name, timings=tm)
