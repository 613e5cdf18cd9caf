"""The Thinker's language model: `thinker.model` (a Qwen2 decoder with TMRoPE, see
omni_runtime.layers.decoder) + `thinker.lm_head` (untied).

Parameter names are the official checkpoint's with the leading "thinker." stripped, so
`load_state_dict(strict=True)` takes the `thinker.model.*` / `thinker.lm_head.*` tensors as they
are. Implements the engine's `DecoderLM` protocol (omni_runtime.engine.protocol): `embed`,
`forward_embeds`, `compute_logits` and the cache-shape attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn

from ..config import TextConfig
from ..layers import MODES, PREFILL, DecoderModel, build_and_adopt
from ..layers.decoder import check_decoder_config
from .decoder_lm import DecoderLMBase

__all__ = ["ThinkerLM", "ThinkerOutput", "kv_cache_list"]


def kv_cache_list(kv_caches, num_layers: int, mode: str) -> list:
    """A `PagedKVCache` or a list of (key, value) per layer -> the list; None only for "prefill"."""
    if kv_caches is None:
        if mode != PREFILL:
            raise ValueError(f"mode {mode!r} reads the KV cache: pass kv_caches")
        return [(None, None)] * num_layers
    if hasattr(kv_caches, "key_caches"):
        kv_caches = list(zip(kv_caches.key_caches, kv_caches.value_caches))
    if len(kv_caches) != num_layers:
        raise ValueError(f"got KV caches for {len(kv_caches)} layers, the model has {num_layers}")
    return kv_caches


@dataclass
class ThinkerOutput:
    """hidden_states (N, hidden): final-norm hidden state of every token of the step (transformers'
    `hidden_states[-1]`, what the Talker consumes); inputs_embeds (N, hidden): the embeddings that
    went in (`hidden_states[0]`); logits (M, vocab) at `state.logits_indices` (all rows when None)."""

    hidden_states: torch.Tensor
    inputs_embeds: torch.Tensor
    logits: Optional[torch.Tensor]


class ThinkerLM(DecoderLMBase, nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        if not isinstance(config, TextConfig):
            raise ValueError(f"config must be an omni_runtime.config.TextConfig, got {type(config).__name__}")
        check_decoder_config(config, "Thinker")
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # the DecoderLM protocol: what the engine sizes its buffers and KV cache from
        self._set_protocol(config, config.hidden_size)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_state_dict(cls, config: TextConfig, tensors: Mapping[str, torch.Tensor], device=None,
                        dtype: Optional[torch.dtype] = None) -> "ThinkerLM":
        """Build around tensors named as in the checkpoint, with or without "thinker." (other
        thinker components are ignored), adopting them as they are; ValueError lists mismatches."""
        own = {}
        for name, t in tensors.items():
            key = name[len("thinker."):] if name.startswith("thinker.") else name
            if key.startswith(("model.", "lm_head.")):
                own[key] = t
        return build_and_adopt(lambda: cls(config), own, "Thinker LM", device, dtype)

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu", dtype=None, progress=None) -> "ThinkerLM":
        """Load `thinker.model.*` and `thinker.lm_head.*` of an opened checkpoint
        (`omni_runtime.io.checkpoint.open_checkpoint`) straight to `device` / `dtype`."""
        from ..io import checkpoint, layout

        config = ckpt.config.thinker_config.text_config
        if ckpt.config.thinker_config.tie_word_embeddings:
            raise ValueError("a Thinker with tied embeddings (tie_word_embeddings=True) is not supported")
        shapes = layout.thinker_text_tensors(config, tie_word_embeddings=False)
        tensors = {}
        for prefix in ("thinker.model.", "thinker.lm_head."):
            tensors.update(checkpoint.load_tensors(ckpt, prefix=prefix, device=device, dtype=dtype,
                                                   expected=layout.select(shapes, prefix), progress=progress))
        return cls.from_state_dict(config, tensors)

    # ------------------------------------------------------------------ DecoderLM protocol
    def forward_embeds(self, inputs_embeds: torch.Tensor, state, kv_caches) -> torch.Tensor:
        """(N, hidden) embeddings of a step's packed tokens -> final-norm hidden states (N, hidden)."""
        return self.model(inputs_embeds, state, kv_caches)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    # ------------------------------------------------------------------ one checked step
    def forward(self, state, kv_caches, input_ids: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None) -> ThinkerOutput:
        """One checked step over the packed tokens `state` describes (for direct use; the engine
        calls `forward_embeds`). Exactly one of input_ids (N,) and inputs_embeds (N, hidden).
        kv_caches: a `PagedKVCache` or (key, value) per layer; None only in "prefill" mode."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if state.mode not in MODES:
            raise ValueError(f"state.mode must be one of {MODES}, got {state.mode!r}")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        if inputs_embeds.dim() != 2 or inputs_embeds.shape[1] != self.hidden_size:
            raise ValueError(f"inputs_embeds must be (N, hidden={self.hidden_size}), got {tuple(inputs_embeds.shape)}")
        if inputs_embeds.dtype != self.dtype:
            raise ValueError(f"inputs_embeds has dtype {inputs_embeds.dtype}, the model runs in {self.dtype}")
        hidden = self.forward_embeds(inputs_embeds, state, kv_cache_list(kv_caches, self.num_layers, state.mode))
        rows = hidden if state.logits_indices is None else hidden.index_select(0, state.logits_indices)
        return ThinkerOutput(hidden, inputs_embeds, self.compute_logits(rows))
