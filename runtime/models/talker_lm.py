"""The Talker's language model: `talker.thinker_to_talker_proj` + `talker.model` (a Qwen2 decoder
with TMRoPE, omni_runtime.layers.decoder) + `talker.codec_head`.

    logits = codec_head(decoder(thinker_to_talker_proj(x)))

x is as wide as the Thinker (embedding_size): per prompt row the Thinker's hidden state plus its
input embedding, per step the codec embedding of the previous code plus the next reply part (see
omni_runtime.talker.inputs). Implements the engine's `DecoderLM` protocol, so the Talker runs on
the same engine as the Thinker; its `hidden_size` there is the width it *takes* (embedding_size),
`decoder_hidden_size` the width it computes in.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..config import TalkerConfig
from ..layers import DecoderModel, build_and_adopt
from ..layers.decoder import check_decoder_config
from .decoder_lm import DecoderLMBase

__all__ = ["TalkerLM"]


class TalkerLM(DecoderLMBase, nn.Module):
    def __init__(self, config: TalkerConfig):
        super().__init__()
        if not isinstance(config, TalkerConfig):
            raise ValueError(f"config must be an omni_runtime.config.TalkerConfig, got {type(config).__name__}")
        check_decoder_config(config, "Talker")
        self.config = config
        self.thinker_to_talker_proj = nn.Linear(config.embedding_size, config.hidden_size)
        self.model = DecoderModel(config, embedding_size=config.embedding_size)
        self.codec_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # the DecoderLM protocol: it takes Thinker-wide embeddings
        self._set_protocol(config, config.embedding_size)
        self.decoder_hidden_size = config.hidden_size

    @classmethod
    def from_state_dict(cls, config: TalkerConfig, tensors: Mapping[str, torch.Tensor], device=None,
                        dtype: Optional[torch.dtype] = None) -> "TalkerLM":
        """Build around tensors named as in the checkpoint, with or without "talker."."""
        own = {(k[len("talker."):] if k.startswith("talker.") else k): t for k, t in tensors.items()}
        return build_and_adopt(lambda: cls(config), own, "Talker", device, dtype)

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu", dtype=None, progress=None) -> "TalkerLM":
        """Load `talker.*` of an opened checkpoint straight to `device` / `dtype`; a checkpoint
        without them (a Thinker-only export) is a ValueError saying so."""
        from ..io import checkpoint, layout

        if not ckpt.config.enable_audio_output or not ckpt.names("talker."):
            raise ValueError(f"{ckpt.path} has no Talker weights (talker.*): it cannot speak; "
                             "use a checkpoint with enable_audio_output and talker/token2wav tensors")
        config = ckpt.config.talker_config
        tensors = checkpoint.load_tensors(ckpt, prefix="talker.", device=device, dtype=dtype,
                                          expected=layout.talker_tensors(config), progress=progress)
        return cls.from_state_dict(config, tensors)

    def forward_embeds(self, inputs_embeds: torch.Tensor, state, kv_caches) -> torch.Tensor:
        """(N, embedding_size) -> final-norm hidden states (N, hidden_size)."""
        return self.model(self.thinker_to_talker_proj(inputs_embeds), state, kv_caches)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden_states).float()
