"""Qwen2.5-Omni end to end: the Thinker answers in text, the Talker turns the answer into codec
codes while the Thinker is still writing it, Token2Wav turns codes into 24 kHz speech.

    omni = Omni.from_checkpoint("Qwen2.5-Omni-7B", device="cuda", dtype="bf16")
    for ev in omni.generate("Tell me a joke.", speaker="Ethan"):
        if isinstance(ev, TokenEvent): print(ev.text, end="")
        elif isinstance(ev, AudioEvent): play(ev.samples)           # 24 kHz float32 PCM
        else: result = ev                                           # TurnResult, last
    result = omni.generate("Hi!", stream=False)                     # text + the whole waveform

One turn (`turn.py`): the Thinker's request hands every computed row to a `TalkerInputs`; the
Talker's request starts as soon as the first reply row exists and each of its steps waits (not
ready, blocking nobody) until the reply row it needs exists; codes go to a Token2Wav stream, which
returns packets as soon as a chunk and its look-ahead are decoded. Non-streamed (`stream=False`)
decodes all codes at once at the end, which is what transformers' `generate` returns.
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch

from ..engine import SamplingParams
from ..io import checkpoint as _ckpt
from ..io.chat import OMNI_SYSTEM_PROMPT
from ..talker import Talker
from ..thinker.items import PreparedPrompt
from ..thinker.thinker import Thinker
from ..token2wav import Token2Wav
from ..threads import usable_cpus
from ..token2wav.batching import StreamBatcher
from ..token2wav.process import CodecProcess
from .aio import OmniStream
from .turn import Turn

__all__ = ["Omni", "DEFAULT_SPEAKER", "STEP_TOKENS"]

DEFAULT_SPEAKER = "Chelsie"
# Tokens per engine step (decode rows + prefill chunks): a long prompt arriving while others speak
# is prefilled in chunks of this size (the engine's chunked prefill; chunked and one-shot prefill
# measured 0.73-1.05x on CPU), instead of one step that would stall every stream's next row.
STEP_TOKENS = 512


class Omni:
    def __init__(self, thinker: Thinker, talker: Optional[Talker] = None, token2wav: Optional[Token2Wav] = None,
                 codec: Optional[CodecProcess] = None):
        if (talker is None) != (token2wav is None):
            raise ValueError("give both the Talker and Token2Wav, or neither")
        self.thinker, self.talker, self.token2wav = thinker, talker, token2wav
        if token2wav is not None:
            token2wav.vocoder.receptive_field_frames()  # computed once now, not in a turn
        self._codec = None
        self._codec_lock = threading.Lock()
        if codec is not None:
            self._adopt(codec)

    def codec(self):
        """What runs every Token2Wav decode of this Omni: all turns' chunks, those ready together
        decoded in one batch (`token2wav.batching.StreamBatcher`), so the Thinker and Talker steps go
        on while speech is decoded -- on a thread of this process, or (`codec_process`, the CPU
        default) in a child process (`token2wav.process.CodecProcess`)."""
        with self._codec_lock:
            if self._codec is None:
                self._adopt(StreamBatcher(self.token2wav))
            return self._codec

    def _adopt(self, codec) -> None:
        self._codec = codec
        # a dropped Omni ends its decoder (the thread holds the Token2Wav, the child a process)
        self._finalizer = weakref.finalize(self, codec.close, False)  # (no waiting inside a collection)

    def close(self) -> None:
        """End the speech decoder: its thread, or its child process (waiting until it exited). Also
        done when the Omni is collected, and for a child when this process ends."""
        if self._codec is not None:
            self._finalizer.detach()
            self._codec.close()

    @classmethod
    def from_checkpoint(cls, path=None, device="cpu", dtype=None, progress=None, *, speech: Optional[bool] = None,
                        engine_kwargs: Optional[dict] = None, talker_engine_kwargs: Optional[dict] = None,
                        media_options=None, codec_process: Optional[bool] = None) -> "Omni":
        """Thinker (see `Thinker.from_checkpoint`), and with speech (None: when the checkpoint has
        Talker and Token2Wav weights; True: required) the Talker in the same dtype and Token2Wav in
        fp32, on the same device. engine_kwargs["cuda_graphs"] (default: on for CUDA) switches the
        CUDA graphs of all three. codec_process (None: on for the CPU when more than one CPU is
        usable): decode speech in a child process, off the GIL the engines hold (process.py)."""
        # A new request's prompt is prefilled at most STEP_TOKENS tokens per step, so the turns already
        # speaking keep getting their Thinker / Talker rows every step (see STEP_TOKENS).
        engine_kwargs = {"max_num_batched_tokens": STEP_TOKENS, **(engine_kwargs or {})}
        talker_engine_kwargs = {"max_num_batched_tokens": STEP_TOKENS, **(talker_engine_kwargs or {})}
        thinker = Thinker.from_checkpoint(path, device=device, dtype=dtype, progress=progress,
                                          engine_kwargs=engine_kwargs, media_options=media_options)
        if speech is False:
            return cls(thinker)
        ckpt = _ckpt.open_checkpoint(thinker.path)
        if not _has_speech(ckpt):
            if speech:
                raise ValueError(_no_speech_message(ckpt))
            return cls(thinker)
        # one switch for all CUDA graphs: engine_kwargs' cuda_graphs (None: on for CUDA) also sets
        # the Talker's (unless its own kwargs say) and Token2Wav's
        graphs = (engine_kwargs or {}).get("cuda_graphs")
        talker_kwargs = dict(talker_engine_kwargs or {})
        if graphs is not None:
            talker_kwargs.setdefault("cuda_graphs", graphs)
        t2w_device = torch.device(device)
        if codec_process is None:
            codec_process = t2w_device.type == "cpu" and usable_cpus() > 1
        elif not isinstance(codec_process, bool):
            raise ValueError(f"codec_process must be True, False or None, got {codec_process!r}")
        if codec_process and t2w_device.type != "cpu":
            raise ValueError(f"codec_process=True is for the CPU; the model is on {t2w_device} (its CUDA stream "
                             "already runs the decoder beside the engines)")
        codec = CodecProcess(ckpt.path) if codec_process else None  # starts now, loads while we do
        try:
            talker = Talker.from_checkpoint(ckpt, device=device, dtype=thinker.dtype, engine_kwargs=talker_kwargs)
            omni = cls(thinker, talker, Token2Wav.from_checkpoint(ckpt, device=device, graphs=graphs), codec=codec)
            # the engines (their KV caches, ~0.1 s to zero even for the tiny checkpoint) now, not in the first turn
            thinker.engine, talker.engine  # noqa: B018
            if codec is not None:
                codec.wait_ready()
        except BaseException:
            if codec is not None:
                codec.close()
            raise
        return omni

    def fixed_length_talker_params(self, codes: int, **kwargs) -> SamplingParams:
        """Talker sampling that speaks exactly `codes` codes (for benchmarks): it can emit neither
        its stop codes nor codes the codec's table cannot take (the 7B's vocabulary of 8448 is
        larger) -- what transformers does with min_new_tokens and the same suppression. kwargs as
        `Talker.sampling_params` (greedy, seed, ...)."""
        if not self.can_speak:
            raise ValueError(_no_speech_message(_ckpt.open_checkpoint(self.thinker.path)))
        talker = self.talker
        banned = {talker.config.tts_codec_start_token_id, *talker.stop_codes,
                  *range(self.token2wav.num_codes, talker.config.vocab_size)}
        return talker.sampling_params(**kwargs, max_new_tokens=codes, ignore_eos=True,
                                      suppress_token_ids=tuple(sorted(banned)))

    @property
    def can_speak(self) -> bool:
        return self.talker is not None

    @property
    def speakers(self) -> list[str]:
        return sorted(self.token2wav.speakers) if self.can_speak else []

    def _speaker(self, name: Optional[str]):
        if not self.can_speak:
            raise ValueError(_no_speech_message(_ckpt.open_checkpoint(self.thinker.path)))
        if name is None:
            name = DEFAULT_SPEAKER if DEFAULT_SPEAKER in self.speakers else self.speakers[0]
        return self.token2wav.speaker(name)

    def generate(self, conversation=None, *, stream: bool = True, **kwargs):
        """One turn. Arguments as `Thinker.generate` (conversation, audios, images, videos,
        use_audio_in_video, system_prompt, prepared, params, max_new_tokens, media_options), plus:
        speak (None: when the model can), speaker (default Chelsie), talker_params (default: the
        official sampling with seed `seed`; `self.talker.sampling_params(greedy=True)` for argmax),
        seed (also the DiT's initial noise: the same seed gives the same audio, streamed or not),
        noise (non-streamed only: the DiT's initial noise, a (1, frames, mel_dim) tensor or a
        callable(frames) -> tensor).
        stream=True: an iterator of `TokenEvent`s and `AudioEvent`s, then the `TurnResult`;
        leaving it early aborts the turn and frees everything. stream=False: the `TurnResult`."""
        turn = self._turn(conversation, streamed=stream, **kwargs)
        if stream:
            return turn.events()
        result = None
        for ev in turn.events():
            result = ev
        return result

    def stream(self, conversation=None, **kwargs) -> OmniStream:
        """The asyncio API: `async for ev in omni.stream(...)` yields what `generate` yields (same
        arguments, streamed), each event as soon as it is ready; the turn runs off the event loop
        (aio.py). Leaving the loop or `aclose()` aborts it and frees its requests."""
        return OmniStream(lambda: self._turn(conversation, streamed=True, **kwargs))

    def _turn(self, conversation=None, *, streamed: bool, audios=(), images=(), videos=(),
              use_audio_in_video: bool = False, system_prompt=OMNI_SYSTEM_PROMPT,
              prepared: Optional[PreparedPrompt] = None, params: Optional[SamplingParams] = None,
              max_new_tokens: Optional[int] = None, media_options=None, speak: Optional[bool] = None,
              speaker: Optional[str] = None, talker_params: Optional[SamplingParams] = None, seed: int = 0,
              noise=None) -> Turn:
        speak = self.can_speak if speak is None else bool(speak)
        spk = self._speaker(speaker) if speak else None
        if noise is not None and streamed:
            raise ValueError("noise= is for the non-streamed decode (stream=False); streams take seed=")
        if prepared is not None and (conversation is not None or audios or images or videos):
            raise ValueError("pass either a conversation (and media) or prepared=, not both")
        if prepared is None:
            prepared = self.thinker.prepare(conversation, audios=audios, images=images, videos=videos,
                                            use_audio_in_video=use_audio_in_video, system_prompt=system_prompt,
                                            media_options=media_options)
        params = self.thinker.sampling_params(params, max_new_tokens)
        if speak and talker_params is None:
            talker_params = self.talker.sampling_params(seed=seed)
        return Turn(self, prepared, params, spk, talker_params, seed=seed, noise=noise, streamed=streamed)


def _has_speech(ckpt) -> bool:
    return bool(ckpt.config.enable_audio_output and ckpt.names("talker.") and ckpt.names("token2wav."))


def _no_speech_message(ckpt) -> str:
    return (f"{ckpt.path} has no Talker / Token2Wav weights (talker.*, token2wav.*"
            f"{'' if ckpt.config.enable_audio_output else '; config.json has enable_audio_output false'}): "
            "it can answer in text only")
