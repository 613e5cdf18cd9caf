"""The Thinker's language model: a Qwen2 decoder with TMRoPE, over omni_kernels' paged attention.

Parameter names are the official checkpoint's with the leading "thinker." stripped:
`model.embed_tokens`, `model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head` -- so `load_state_dict(strict=True)` takes the
`thinker.model.*` / `thinker.lm_head.*` tensors of a checkpoint as they are.

Tokens are packed: a step's tokens of all its sequences form one (N, hidden) matrix, and a
`StepState` (see `omni_runtime.engine`) says what they are. Attention per layer, by `state.mode`:

- "prefill" (every sequence starts at cache position 0): `tmrope_attention` (causal varlen, TMRoPE
  inside) returns the rotated K, which `store_kv` writes into the paged cache.
- "chunked_prefill" (some sequence already has cached tokens -- a prompt fed in chunks, streaming
  audio, a prefix-cache hit): rotate the new K in torch, `store_kv`, then `paged_prefill_attention`
  (rotates q inside; attends to the cached prefix and causally within the chunk).
- "decode" (one new token per sequence): rotate q and k at the decode position
  (cache_len + rope_delta on all three axes), `store_kv`, `paged_decode_attention`.

The ops choose their implementation from the tensors' device (Triton on CUDA, torch on CPU); the
model has no device branches. Numerics follow transformers: RMSNorm in fp32 cast back, rotary in
fp32 cast back, SiLU-gated MLP, logits from `lm_head` in the model dtype.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn

from omni_kernels import paged_decode_attention, paged_prefill_attention, store_kv, tmrope_attention
from omni_kernels.rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq

from ..config import TextConfig

__all__ = ["ThinkerLM", "ThinkerModel", "ThinkerOutput", "DecoderLayer", "Attention", "MLP", "RMSNorm",
           "PREFILL", "CHUNKED_PREFILL", "DECODE", "MODES"]

PREFILL = "prefill"
CHUNKED_PREFILL = "chunked_prefill"
DECODE = "decode"
MODES = (PREFILL, CHUNKED_PREFILL, DECODE)


def _check_config(config: TextConfig) -> None:
    if not isinstance(config, TextConfig):
        raise ValueError(f"config must be an omni_runtime.config.TextConfig, got {type(config).__name__}")
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (the Thinker uses 'silu')")
    if any(t != "full_attention" for t in config.layer_types):
        raise ValueError("sliding-window attention layers (use_sliding_window=True) are not supported; "
                         "Qwen2.5-Omni's Thinker uses full attention in every layer")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.dim_per_head
        self.scale = self.head_dim ** -0.5
        self.mrope_section = config.mrope_section
        self.rope_theta = config.rope_theta
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, state, rope, k_cache, v_cache) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        rope_args = dict(mrope_section=self.mrope_section, rope_theta=self.rope_theta, scale=self.scale)
        if state.mode == PREFILL:
            o, k = tmrope_attention(q, k, v, state.positions, state.cu_seqlens_q, max_seqlen=state.max_seqlen_q,
                                    **rope_args)
            if k_cache is not None:
                store_kv(k, v, k_cache, v_cache, state.slot_mapping)
        elif state.mode == CHUNKED_PREFILL:
            store_kv(apply_rotate_half(k, *rope), v, k_cache, v_cache, state.slot_mapping)
            o = paged_prefill_attention(q, state.positions, k_cache, v_cache, state.block_tables, state.cu_seqlens_q,
                                        state.seq_lens, max_seqlen_q=state.max_seqlen_q, **rope_args)
        else:
            q = apply_rotate_half(q, *rope)
            store_kv(apply_rotate_half(k, *rope), v, k_cache, v_cache, state.slot_mapping)
            o = paged_decode_attention(q, k_cache, v_cache, state.block_tables, state.seq_lens, scale=self.scale,
                                       max_seq_len=state.max_seq_len)
        return self.o_proj(o.reshape(n, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, state, rope, k_cache, v_cache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), state, rope, k_cache, v_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@functools.lru_cache(maxsize=16)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    # Not a buffer: `model.to(torch.bfloat16)` must not round the frequencies.
    return rope_inv_freq(head_dim, theta, device)


class ThinkerModel(nn.Module):
    """`thinker.model`: embeddings, decoder layers, final norm."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def rope(self, positions: torch.Tensor):
        """fp32 (cos, sin), each (N, head_dim), of TMRoPE positions (3, N)."""
        c = self.config
        return mrope_cos_sin(positions, _inv_freq(c.dim_per_head, float(c.rope_theta), positions.device),
                             c.mrope_section)

    def forward(self, inputs_embeds: torch.Tensor, state, kv_caches) -> torch.Tensor:
        """inputs_embeds (N, hidden) -> final-norm hidden states (N, hidden)."""
        # The prefill kernel rotates inside; the other modes rotate in torch, once for all layers.
        rope = None if state.mode == PREFILL else self.rope(state.positions)
        x = inputs_embeds
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = layer(x, state, rope, k_cache, v_cache)
        return self.norm(x)


@dataclass
class ThinkerOutput:
    """hidden_states (N, hidden): final-norm hidden state of every token of the step (what
    transformers returns as `hidden_states[-1]`, what the Talker consumes); inputs_embeds (N, hidden):
    the embeddings that went in (`hidden_states[0]`); logits (M, vocab) at `state.logits_indices`
    (all N rows when that is None), in the model dtype."""

    hidden_states: torch.Tensor
    inputs_embeds: torch.Tensor
    logits: Optional[torch.Tensor]


class ThinkerLM(nn.Module):
    """`thinker.model` + `thinker.lm_head` (untied)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.model = ThinkerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_state_dict(cls, config: TextConfig, tensors: Mapping[str, torch.Tensor], device=None,
                        dtype: Optional[torch.dtype] = None) -> "ThinkerLM":
        """Build from tensors named as in the checkpoint, with or without the "thinker." prefix
        (other "thinker.*" components -- audio_tower, visual -- are ignored). The module is built on
        the meta device and the tensors are adopted as they are (moved/cast only if device/dtype are
        given), so the weights are never held twice. Missing, extra or mis-shaped tensors raise
        ValueError listing them."""
        own = {}
        for name, t in tensors.items():
            key = name[len("thinker."):] if name.startswith("thinker.") else name
            if key.startswith(("model.", "lm_head.")):
                own[key] = t
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(own))
        extra = sorted(set(own) - set(expected))
        wrong = sorted(f"{k}: {tuple(own[k].shape)} != expected {expected[k]}" for k in set(own) & set(expected)
                       if tuple(own[k].shape) != expected[k])
        if missing or extra or wrong:
            parts = [f"{what} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                     for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
            raise ValueError("Thinker LM weights do not match the config:\n  " + "\n  ".join(parts))
        if device is not None or dtype is not None:
            own = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in own.items()}
        model.load_state_dict(own, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu", dtype=None, progress=None) -> "ThinkerLM":
        """Load `thinker.model.*` and `thinker.lm_head.*` of an opened checkpoint
        (`omni_runtime.checkpoint.open_checkpoint`) straight to `device` / `dtype`."""
        from ..io import checkpoint
        from ..io import layout

        config = ckpt.config.thinker_config.text_config
        tie = ckpt.config.thinker_config.tie_word_embeddings
        if tie:
            raise ValueError("a Thinker with tied embeddings (tie_word_embeddings=True) is not supported")
        shapes = layout.thinker_text_tensors(config, tie_word_embeddings=False)
        tensors = {}
        for prefix in ("thinker.model.", "thinker.lm_head."):
            tensors.update(checkpoint.load_tensors(ckpt, prefix=prefix, device=device, dtype=dtype,
                                                   expected=layout.select(shapes, prefix), progress=progress))
        return cls.from_state_dict(config, tensors)

    # ------------------------------------------------------------------ compute
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (..., hidden) of ids (...,)."""
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def forward(self, state, kv_caches, input_ids: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None) -> ThinkerOutput:
        """One step over the packed tokens that `state` describes.

        input_ids (N,) or inputs_embeds (N, hidden) (exactly one; the multimodal merge scatters
        audio/image/video features into the embeddings before calling). kv_caches: a
        `PagedKVCache`, or a list of (key_cache, value_cache) per layer; None only in "prefill"
        mode (nothing is cached then). Logits are computed at `state.logits_indices` (None = all)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if state.mode not in MODES:
            raise ValueError(f"state.mode must be one of {MODES}, got {state.mode!r}")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        if inputs_embeds.dim() != 2 or inputs_embeds.shape[1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must be (N, hidden={self.config.hidden_size}), "
                             f"got {tuple(inputs_embeds.shape)}")
        if inputs_embeds.dtype != self.dtype:
            raise ValueError(f"inputs_embeds has dtype {inputs_embeds.dtype}, the model runs in {self.dtype}")
        n_layers = self.config.num_hidden_layers
        if kv_caches is None:
            if state.mode != PREFILL:
                raise ValueError(f"mode {state.mode!r} reads the KV cache: pass kv_caches")
            kv_caches = [(None, None)] * n_layers
        elif hasattr(kv_caches, "key_caches"):
            kv_caches = list(zip(kv_caches.key_caches, kv_caches.value_caches))
        if len(kv_caches) != n_layers:
            raise ValueError(f"got KV caches for {len(kv_caches)} layers, the model has {n_layers}")
        hidden = self.model(inputs_embeds, state, kv_caches)
        rows = hidden if state.logits_indices is None else hidden.index_select(0, state.logits_indices)
        return ThinkerOutput(hidden, inputs_embeds, self.compute_logits(rows))
