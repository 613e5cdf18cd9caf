"""The Talker: the codec-token decoder on the shared engine (no second engine, no copied decoder).

    talker = Talker.from_checkpoint(ckpt, device="cuda", dtype=torch.bfloat16)
    inputs = TalkerInputs(prepared, talker.lm, thinker.lm.embed, speaker.bos_token, merge)
    # ... Thinker request with sink=inputs.sink; once inputs.prompt_ready:
    seq = talker.start(inputs, talker.sampling_params())
    for ev in talker.engine.stream(seq): ...     # one codec code per event

Sampling defaults are transformers' `generate` defaults for the Talker: top-k 40, top-p 0.8,
temperature 0.9, repetition penalty 1.05 (over the codec track: the prompt's mask / pad / bos ids
and the codes so far), codec bos suppressed, stop on codec pad or codec eos, up to 4096 codes.
`greedy=True` keeps the penalty and the suppression and takes the argmax (transformers'
`talker_do_sample=False`).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Optional

from ..engine import Engine, SamplingParams
from ..models.talker_lm import TalkerLM
from .inputs import TalkerInputs

__all__ = ["Talker", "MAX_CODES"]

MAX_CODES = 4096


class Talker:
    def __init__(self, lm: TalkerLM, engine_kwargs: Optional[dict] = None):
        self.lm, self.config = lm, lm.config
        self._engine_kwargs = dict(engine_kwargs or {})
        self._engine: Optional[Engine] = None
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu", dtype=None, progress=None, *,
                        engine_kwargs: Optional[dict] = None) -> "Talker":
        return cls(TalkerLM.from_checkpoint(ckpt, device=device, dtype=dtype, progress=progress), engine_kwargs)

    @property
    def engine(self) -> Engine:
        """The Talker's engine, created on first use (its KV cache is allocated then)."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.lm, **self._engine_kwargs)
            return self._engine

    @property
    def stop_codes(self) -> tuple[int, int]:
        return self.config.tts_codec_pad_token_id, self.config.tts_codec_end_token_id

    def sampling_params(self, *, greedy: bool = False, seed: Optional[int] = None, max_new_tokens: int = MAX_CODES,
                        **overrides) -> SamplingParams:
        """The official Talker sampling (see the module doc); overrides are SamplingParams fields."""
        kwargs = dict(do_sample=not greedy, top_k=40, top_p=0.8, temperature=0.9, repetition_penalty=1.05,
                      suppress_token_ids=(self.config.tts_codec_start_token_id,), stop_token_ids=self.stop_codes,
                      max_new_tokens=max_new_tokens, seed=seed)
        kwargs.update(overrides)
        return SamplingParams(**kwargs)

    def start(self, inputs: TalkerInputs, params: Optional[SamplingParams] = None):
        """Queue the Talker request of a turn whose prompt is ready; its decode steps then take
        their inputs from `inputs.provide` as the Thinker produces them."""
        if not inputs.prompt_ready:
            raise ValueError("the Talker's prompt is not ready: it needs the Thinker's first reply row")
        params = self.sampling_params() if params is None else params
        prompt = inputs.prompt()
        # the prompt and every code must fit the Talker's context
        room = self.engine.max_model_len - len(prompt.ids)
        if room < 1:
            raise ValueError(f"the Talker's prompt has {len(prompt.ids)} rows, more than its context "
                             f"(max_model_len {self.engine.max_model_len})")
        if params.max_new_tokens > room:
            params = dataclasses.replace(params, max_new_tokens=room)
        return self.engine.add_request(**prompt.request(), params=params, external_inputs=True,
                                       input_provider=inputs.provide)
