"""The Token2Wav DiT's decoder layer with its attention through `dit_window_attention`: the block
sliding window and the RoPE of head 0 in one kernel.

transformers builds, in every layer, an (B, H, L, L) boolean mask from the model's block_diff and
rotates head 0 with the rotary tables; the replaced layer forward checks once per DiT forward
(memoized on the block_diff tensor its layers share) that block_diff is the model's block grid
and that the rotary tables came from positions 0..L-1, then runs the window kernel with the
layer's (look_backward_block, look_ahead_block). The rest of the layer (AdaLN-zero, feed-forward)
is transformers' code, unchanged. Anything else -- another block_diff, other positions, autograd,
an attention implementation other than sdpa (the DiT's only working one) -- runs the original.
"""
import torch

from ..dit_window_attention import dit_window_attention
from . import registry, serving
from .rotary import RotaryTables

KIND = "dit"


def _is_block_grid(block_diff: torch.Tensor, length: int, block_size: int) -> bool:
    """block_diff[..., i, j] == j // block_size - i // block_size everywhere."""
    if block_diff.dtype != torch.int64 or tuple(block_diff.shape[-2:]) != (length, length):
        return False
    block = torch.arange(length, device=block_diff.device) // block_size
    expected = block[None, :] - block[:, None]
    if block_diff.dim() == 4 and block_diff.stride(0) == 0 and block_diff.stride(1) == 0:
        block_diff = block_diff[0, 0]  # the model's expand(): one (L, L) grid seen B * H times
    return torch.equal(block_diff, expected.expand_as(block_diff))


def _servable(layer, hidden_states, tables, block_diff) -> bool:
    attn = layer.attn
    if attn.config._attn_implementation != "sdpa" or hidden_states.dim() != 3:
        return False
    if not isinstance(tables, RotaryTables) or tables.mrope_section is not None or block_diff is None:
        return False
    back, ahead = layer.look_backward_block, layer.look_ahead_block
    if not all(isinstance(n, int) and n >= 0 for n in (back, ahead)):
        return False
    head_dim = attn.inner_dim // attn.heads
    if head_dim % 2 or head_dim > 256 or not serving.plain_call(layer, hidden_states, {}):
        return False
    batch, length = hidden_states.shape[:2]
    positions = tables.position_ids
    if tuple(positions.shape) != (batch, length) or tuple(block_diff.shape) != (batch, attn.heads, length, length):
        return False
    from_zero = serving.memo.get(positions, ("arange", length), lambda: torch.equal(
        positions, torch.arange(length, device=positions.device).expand(batch, length)))
    return from_zero and serving.memo.get(block_diff, ("blocks", length, attn.config.block_size),
                                          lambda: _is_block_grid(block_diff, length, attn.config.block_size))


def _window_attention(layer, x, rope_theta: float):
    """DiTAttention.forward with the window mask and head-0 RoPE inside one kernel."""
    attn = layer.attn
    batch = x.shape[0]
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = k.shape[-1] // attn.heads

    def heads_first(t):
        return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    out = dit_window_attention(heads_first(q), heads_first(k), heads_first(v), block_size=attn.config.block_size,
                               back=layer.look_backward_block, ahead=layer.look_ahead_block, rope_theta=rope_theta)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    return attn.to_out[1](attn.to_out[0](out))


def make_forward(original):
    def forward(self, hidden_states, timestep, position_embeddings=None, block_diff=None):
        if not _servable(self, hidden_states, position_embeddings, block_diff):
            registry.count(KIND, served=False)
            return original(self, hidden_states, timestep, position_embeddings=position_embeddings,
                            block_diff=block_diff)
        registry.count(KIND)
        # From here on DiTDecoderLayer.forward, with the attention call replaced.
        norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(hidden_states, emb=timestep)
        attn_output = _window_attention(self, norm, position_embeddings.rope_theta)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
        norm = self.ff_norm(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        ff_output = self.ff(norm)
        return hidden_states + gate_mlp.unsqueeze(1) * ff_output

    return forward
