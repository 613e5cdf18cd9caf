"""What the engine needs of a decoder LM (the Thinker's and the Talker's implement it).

    class MyLM(nn.Module):
        hidden_size: int              # width of the embeddings the model takes (and of its hidden states)
        vocab_size: int               # rows of its output head (ids the engine can sample)
        num_layers, num_kv_heads, head_dim: int   # the paged KV cache's shape
        max_position_embeddings: int  # longest sequence it supports
        device: torch.device; dtype: torch.dtype
        def embed(self, ids (N,) int64) -> (N, hidden)
        def forward_embeds(self, inputs_embeds (N, hidden), state: StepState, kv_caches) -> (N, hidden)
        def compute_logits(self, hidden (M, hidden)) -> (M, vocab)

`forward_embeds` must be graph-safe: no host reads, no allocation that depends on values, only
the StepState's tensors and host ints (mode, num_tokens, max_seqlen_q, max_seq_len).
Model-specific inputs (the Talker's codec embedding + Thinker row) enter as caller-given
embeddings (`Engine.add_request(inputs_embeds=...)`, an `InputProvider`), never through the engine.
"""
from __future__ import annotations

import torch

__all__ = ["REQUIRED_ATTRIBUTES", "REQUIRED_METHODS", "check_decoder_lm"]

REQUIRED_ATTRIBUTES = ("hidden_size", "vocab_size", "num_layers", "num_kv_heads", "head_dim",
                       "max_position_embeddings", "device", "dtype")
REQUIRED_METHODS = ("embed", "forward_embeds", "compute_logits")


def check_decoder_lm(model) -> None:
    """ValueError naming what a model lacks to run on the engine."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(model, a)]
    missing += [m + "()" for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise ValueError(f"{type(model).__name__} does not implement the engine's DecoderLM protocol "
                         f"(omni_runtime.engine.protocol): missing {', '.join(missing)}")
    for a in REQUIRED_ATTRIBUTES[:6]:
        v = getattr(model, a)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(model).__name__}.{a} must be a positive int, got {v!r}")
    if not isinstance(model.dtype, torch.dtype) or not model.dtype.is_floating_point:
        raise ValueError(f"{type(model).__name__}.dtype must be a floating torch.dtype, got {model.dtype!r}")
