"""Encoder attention (Qwen2.5-Omni's audio and vision encoders, Qwen2-VL / Qwen2.5-VL vision) through
`block_sparse_attention` over one block-diagonal mask of the layer's `cu_seqlens`.

transformers runs one attention per segment (a 2-second audio chunk, a vision window, a frame for
the full-attention vision layers), reading cu_seqlens back to the host every layer; ours is one
kernel over the `segment_block_mask` of those cu_seqlens, built once per encoder forward (the
model hands every layer the same cu_seqlens tensor) and reused by its layers. The vision rotary is
transformers' own function (it is applied before the attention, not fused).

Served: sdpa or eager, head_dim one of the kernel's (64, 80, 128 -- the models' 64 and 80),
cu_seqlens covering exactly the tokens; otherwise, and under autograd, the original forward.
"""
from ..block_mask import segment_block_mask
from ..block_sparse_attention import HEAD_DIMS, block_sparse_attention
from . import registry, serving

AUDIO, VISION = "audio", "vision"
IMPLEMENTATIONS = ("sdpa", "eager")
# The mask block our own encoders use (omni_runtime.models, the AOT gate's configurations): the
# kernel runs 64 x 64 tiles over it on CPU and GPU.
SEGMENT_BLOCK = 128


def _mask(cu_seqlens, length: int):
    """The segment mask of cu_seqlens, or None when it does not cover exactly `length` tokens."""
    def build():
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[-1]) != length:
            return None
        return segment_block_mask(cu_seqlens, SEGMENT_BLOCK)

    return serving.memo.get(cu_seqlens, ("segments", SEGMENT_BLOCK, length), build)


def _servable(module, hidden_states, cu_seqlens, kwargs):
    """The mask to serve this call with, or None."""
    if module.config._attn_implementation not in IMPLEMENTATIONS or module.head_dim not in HEAD_DIMS:
        return None
    if hidden_states.dim() != 2 or not serving.no_dropout(module, module.attention_dropout):
        return None
    if not serving.plain_call(module, hidden_states, kwargs):
        return None
    return _mask(cu_seqlens, hidden_states.shape[0])


def _attend(module, q, k, v, mask):
    """q, k, v (L, H, D) -> (L, H * D)."""
    def batch_heads_first(t):
        return t.transpose(0, 1)[None]

    out = block_sparse_attention(batch_heads_first(q), batch_heads_first(k), batch_heads_first(v), mask,
                                 scale=module.scaling)
    return out[0].transpose(0, 1).reshape(q.shape[0], -1)


def make_audio_forward(original):
    def forward(self, hidden_states, cu_seqlens, max_seqlen=None, **kwargs):
        mask = _servable(self, hidden_states, cu_seqlens, kwargs)
        if mask is None:
            registry.count(AUDIO, served=False)
            return original(self, hidden_states, cu_seqlens, max_seqlen=max_seqlen, **kwargs)
        registry.count(AUDIO)
        length = hidden_states.shape[0]
        q, k, v = (proj(hidden_states).reshape(length, self.num_heads, -1)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(_attend(self, q, k, v, mask))

    return forward


def make_vision_forward(original):
    # The rotary of the module the original forward comes from (Omni, Qwen2-VL and Qwen2.5-VL each have one).
    rotate = original.__globals__["apply_rotary_pos_emb_vision"]

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        mask = None if position_embeddings is None else _servable(self, hidden_states, cu_seqlens, kwargs)
        if mask is None:
            registry.count(VISION, served=False)
            return original(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                            max_seqlen=max_seqlen, **kwargs)
        registry.count(VISION)
        length = hidden_states.shape[0]
        if hasattr(self, "qkv"):  # Qwen2-VL / Qwen2.5-VL: one fused projection
            q, k, v = self.qkv(hidden_states).reshape(length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        else:
            q, k, v = (proj(hidden_states).reshape(length, self.num_heads, -1) for proj in (self.q, self.k, self.v))
        cos, sin = position_embeddings
        q, k = rotate(q, k, cos, sin)
        return self.proj(_attend(self, q, k, v, mask))

    return forward
