"""The Qwen2 decoder shared by the Thinker's and the Talker's language models: attention with
TMRoPE over the paged KV cache, SwiGLU MLP, RMSNorm -- one copy for every decoder.

Tokens are packed: a step's tokens of all its sequences form one (N, hidden) matrix and a
`StepState` (omni_runtime.engine.step_state) says what they are. Attention by `state.mode`:
- "prefill" (every sequence starts at cache position 0): `tmrope_attention` (causal varlen,
  TMRoPE inside) returns the rotated K, which `store_kv` writes into the paged cache.
- "chunked_prefill" (some sequence already has cached tokens: a prompt fed in chunks, streamed
  audio, decode rows mixed with prefill chunks): rotate the new K, `store_kv`, then
  `paged_prefill_attention` (rotates q inside; cached prefix + causal within the chunk).
- "decode" (one new token per sequence): rotate q and k, `store_kv`, `paged_decode_attention`.
The engine built every piece of metadata itself, so the ops skip their value checks (no host reads
inside a step). Numerics follow transformers: RMSNorm and rotary in fp32 cast back.
"""
from __future__ import annotations

import torch
from torch import nn

from omni_kernels import paged_decode_attention, paged_prefill_attention, store_kv, tmrope_attention
from omni_kernels.rotary import apply_rotate_half

from .mlp import MLP, linear
from .norm import RMSNorm
from .rotary import mrope_cos_sin
from .weights import Embedding

__all__ = ["PREFILL", "CHUNKED_PREFILL", "DECODE", "MODES", "Attention", "DecoderLayer", "DecoderModel",
           "check_decoder_config"]

PREFILL = "prefill"
CHUNKED_PREFILL = "chunked_prefill"
DECODE = "decode"
MODES = (PREFILL, CHUNKED_PREFILL, DECODE)


# The engine built every piece of metadata itself: no per-call value checks (on CPU they read the
# tables on the host; on a GPU a step must not synchronise).
_TRUSTED = dict(validate=False)


def check_decoder_config(config, what: str) -> None:
    if config.hidden_act != "silu":
        raise ValueError(f"{what}: hidden_act {config.hidden_act!r} is not supported (Qwen2 decoders use 'silu')")
    if any(t != "full_attention" for t in config.layer_types):
        raise ValueError(f"{what}: sliding-window attention layers (use_sliding_window=True) are not supported; "
                         "Qwen2.5-Omni's decoders use full attention in every layer")


class Attention(nn.Module):
    """q/k/v with bias, o without; head_dim may differ from hidden / heads (the Talker widens
    896 -> 12 x 128)."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.dim_per_head
        self.scale = self.head_dim ** -0.5
        self.mrope_section = list(config.mrope_section)
        self.rope_theta = float(config.rope_theta)
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, state, rope, k_cache, v_cache) -> torch.Tensor:
        n = x.shape[0]
        q = linear(x, self.q_proj).view(n, self.num_heads, self.head_dim)
        k = linear(x, self.k_proj).view(n, self.num_kv_heads, self.head_dim)
        v = linear(x, self.v_proj).view(n, self.num_kv_heads, self.head_dim)
        rope_args = dict(mrope_section=self.mrope_section, rope_theta=self.rope_theta, scale=self.scale)
        if state.mode == PREFILL:
            o, k = tmrope_attention(q, k, v, state.positions, state.cu_seqlens_q, max_seqlen=state.max_seqlen_q,
                                    **rope_args)
            if k_cache is not None:
                store_kv(k, v, k_cache, v_cache, state.slot_mapping, **_TRUSTED)
        elif state.mode == CHUNKED_PREFILL:
            store_kv(apply_rotate_half(k, *rope), v, k_cache, v_cache, state.slot_mapping, **_TRUSTED)
            o = paged_prefill_attention(q, state.positions, k_cache, v_cache, state.block_tables, state.cu_seqlens_q,
                                        state.seq_lens, max_seqlen_q=state.max_seqlen_q, **rope_args, **_TRUSTED)
        else:
            q = apply_rotate_half(q, *rope)
            store_kv(apply_rotate_half(k, *rope), v, k_cache, v_cache, state.slot_mapping, **_TRUSTED)
            o = paged_decode_attention(q, k_cache, v_cache, state.block_tables, state.seq_lens, scale=self.scale,
                                       max_seq_len=state.max_seq_len, **_TRUSTED)
        return linear(o.reshape(n, self.num_heads * self.head_dim), self.o_proj)


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, state, rope, k_cache, v_cache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), state, rope, k_cache, v_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """`embed_tokens`, `layers`, `norm`: the official `*.model.*` tensors of a Qwen2 decoder.
    embedding_size: the embedding table's width when it differs from hidden_size (the Talker's
    codec table is as wide as the Thinker and projected down); None = hidden_size."""

    def __init__(self, config, embedding_size: int | None = None):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, embedding_size or config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, state, kv_caches) -> torch.Tensor:
        """x (N, hidden) -> final-norm hidden states (N, hidden). kv_caches: (key, value) per layer."""
        c = self.config
        # The prefill kernel rotates inside; the other modes rotate in torch, once for all layers.
        rope = None if state.mode == PREFILL else mrope_cos_sin(state.positions, c.dim_per_head, c.rope_theta,
                                                                 c.mrope_section)
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = layer(x, state, rope, k_cache, v_cache)
        return self.norm(x)
