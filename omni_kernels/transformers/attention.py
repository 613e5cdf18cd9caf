"""Decoder attention with TMRoPE (Thinker, Talker, Qwen2-VL / Qwen2.5-VL language models) through
`tmrope_attention`: q/k/v projections, then one fused kernel that rotates q and k by the 3-D
positions and attends causally over every sequence of the batch; the rotated keys go to the cache.

Served: a prefill -- no cache, or a cache still empty at this layer -- whose mask is causal (None
under sdpa, or exactly transformers' causal mask: bool, or 0 / finfo.min floats), positions from
a plain rotary module (`rotary.RotaryTables`), sdpa or eager, no sliding window, no attention
weights recorded. Everything else runs the original forward: decode steps over a filled cache
(transformers' own rotation and SDPA over its DynamicCache layout), any other mask (padding, a
packed-sequence block mask), output_attentions=True, dropout in training, autograd.
"""
import torch

from ..tmrope_attention import tmrope_attention
from . import registry, serving
from .rotary import RotaryTables

KIND = "attention"
IMPLEMENTATIONS = ("sdpa", "eager")


def _is_causal_mask(mask: torch.Tensor, batch: int, length: int) -> bool:
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1 \
            or tuple(mask.shape[2:]) != (length, length):
        return False
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        expected = causal
    elif mask.dtype.is_floating_point:  # eager: 0 where allowed, the dtype's minimum elsewhere
        expected = torch.zeros((), dtype=mask.dtype, device=mask.device).where(causal, torch.finfo(mask.dtype).min)
    else:
        return False
    return torch.equal(mask, expected.expand_as(mask))


def _servable(module, hidden_states, attention_mask, cache, tables, kwargs) -> bool:
    batch, length = hidden_states.shape[:2]
    if not isinstance(tables, RotaryTables) or tables.mrope_section is None \
            or tuple(tables.position_ids.shape) != (3, batch, length):
        return False
    if cache is not None and cache.get_seq_length(module.layer_idx) != 0:  # a decode step, or a later chunk
        return False
    head_dim = module.head_dim
    if head_dim % 2 or head_dim > 256 or sum(tables.mrope_section) != head_dim // 2:
        return False
    implementation = module.config._attn_implementation
    if implementation not in IMPLEMENTATIONS or module.sliding_window is not None:
        return False
    if not (serving.no_dropout(module, module.attention_dropout) and serving.plain_call(module, hidden_states, kwargs)):
        return False
    if serving.collecting_attentions():
        return False
    if attention_mask is None:  # sdpa then runs is_causal; eager would attend everywhere
        return implementation == "sdpa" or length == 1
    return serving.memo.get(attention_mask, ("causal", batch, length),
                            lambda: _is_causal_mask(attention_mask, batch, length))


def make_forward(original):
    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, position_embeddings=None,
                **kwargs):
        if not _servable(self, hidden_states, attention_mask, cache, position_embeddings, kwargs):
            registry.count(KIND, served=False)
            return original(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, position_embeddings=position_embeddings, **kwargs)
        registry.count(KIND)
        batch, length, _ = hidden_states.shape
        tokens = batch * length
        q, k, v = (proj(hidden_states).view(tokens, -1, self.head_dim)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cu_seqlens = torch.arange(0, tokens + 1, length, dtype=torch.int32, device=hidden_states.device)
        out, k_rot = tmrope_attention(
            q, k, v, position_embeddings.position_ids.reshape(3, tokens), cu_seqlens,
            mrope_section=position_embeddings.mrope_section, rope_theta=position_embeddings.rope_theta,
            scale=self.scaling, max_seqlen=length)
        if cache is not None:  # what the original stores: rotated keys, (B, Hk, L, D)
            def heads_first(t):
                return t.view(batch, length, -1, self.head_dim).transpose(1, 2)

            cache.update(heads_first(k_rot), heads_first(v), self.layer_idx, kwargs=kwargs)
        return self.o_proj(out.view(batch, length, -1)), None

    return forward
