"""What the Thinker's and the Talker's LMs share as the engine's `DecoderLM`s: the cache-shape
attributes from their config, device / dtype, and `embed` through the decoder's token table."""
from __future__ import annotations

import torch

__all__ = ["DecoderLMBase"]


class DecoderLMBase:
    """Mixin for an nn.Module with `self.model` (a layers.DecoderModel). input_width: the width of
    the embeddings the engine hands it (`hidden_size` in the protocol)."""

    def _set_protocol(self, config, input_width: int) -> None:
        self.hidden_size = input_width
        self.vocab_size = config.vocab_size
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.dim_per_head
        self.max_position_embeddings = config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (..., width) of ids (...,)."""
        return self.model.embed_tokens(ids)
