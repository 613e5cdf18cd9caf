"""Sampling one step's tokens and turning them into events (stop ids, lengths, detokenized text)."""
from __future__ import annotations

import time

import torch

from .sampling import sample, seen_mask
from .sequence import TokenEvent

__all__ = ["sample_step"]


def sample_step(engine, seqs, logits: torch.Tensor) -> list[TokenEvent]:
    """Sample the next token of each sequence from its logits row (one host read for all), record
    it, finish the sequences that stop, and queue each event on its sequence's stream."""
    params = [s.params for s in seqs]
    seen = None
    if any(p.repetition_penalty != 1.0 for p in params):
        for s in seqs:
            if s._seen is None:
                s._seen = seen_mask(s.token_ids, s.vocab_size, logits.device)
        seen = torch.stack([s._seen for s in seqs])
    tokens = sample(logits, params, [s.generator for s in seqs], seen).tolist()
    now = time.perf_counter()
    events = []
    for seq, token, row in zip(seqs, tokens, logits):
        if seq.return_logits:
            seq._output_logits.append(row.float())
        if seq._seen is not None and 0 <= token < seq.vocab_size:
            seq._seen[token] = True
        seq.token_ids.append(token)
        seq.output_ids.append(token)
        if seq.t_first_token is None:
            seq.t_first_token = now
        text = seq.detokenizer.push([token]) if seq.detokenizer is not None else ""
        reason = None
        if not seq.params.ignore_eos and token in seq.params.stop_token_ids:
            reason = "stop"
        elif len(seq.output_ids) >= seq.params.max_new_tokens or len(seq.token_ids) >= engine.max_model_len:
            reason = "length"
        if reason is not None and seq.detokenizer is not None:
            text += seq.detokenizer.finish()
        seq.text += text
        ev = TokenEvent(seq, token, text, reason is not None, reason, now, next(engine._order))
        seq.events.append(ev)  # before finishing: a consumer that sees `finished` finds its last event
        events.append(ev)
        if reason is not None:
            engine._finish(seq, reason)
    return events
