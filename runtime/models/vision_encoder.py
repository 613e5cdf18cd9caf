"""The Qwen2.5-Omni vision encoder (Qwen2.5-VL ViT), equal to transformers' Qwen2_5OmniVisionEncoder.

    encoder = VisionEncoder.from_state_dict(omni_config.thinker_config.vision_config,
                                            {k: v for k, v in tensors.items() if k.startswith("thinker.visual.")})
    embeddings = encoder(pixel_values, grid_thw)        # (sum(t*h*w) / merge**2, out_hidden_size)

The config is `omni_runtime.config.VisionEncoderConfig` (config.json's `thinker_config.vision_config`);
the constructor validates it and rejects what this module cannot run (an unknown `hidden_act`, a
head_dim the block-sparse kernel lacks).

Submodule names equal transformers' (patch_embed.proj, blocks.N.{norm1,norm2,attn.{q,k,v,proj},
mlp.{gate,up,down}_proj}, merger.{ln_q,mlp.0,mlp.2}), so the checkpoint's `thinker.visual.*`
tensors load with strict=True. The rotary embedding holds no tensors (transformers' inv_freq is a
non-persistent buffer, absent from checkpoints).

Forward, as transformers: patch embedding (the Conv3d with stride = kernel, applied as one matmul);
tokens reordered by the window index (groups of merge**2 = 4 patches, windows of
window_size / patch_size = 8 x 8 patches, raster order per frame); 2-D rotary angles (h, w) of each
patch in the same order; blocks with window attention, except `fullatt_block_indexes` which attend
over the whole frame (per temporal frame); merger (RMSNorm, 2x2 concat, MLP); tokens put back in
raster order. Attention runs through `omni_kernels.block_sparse_attention` with the masks of
`omni_kernels.vision_window_block_mask` / `vision_full_block_mask` (the op picks SDPA on CPU or
the Triton kernel on CUDA); q and k are rotated in fp32 first, as transformers does.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni_kernels import block_sparse_attention, vision_full_block_mask, vision_window_block_mask
from omni_kernels.block_sparse_attention import HEAD_DIMS
from omni_kernels.rotary import apply_rotate_half

from ..config import VisionEncoderConfig
from ..layers import RMSNorm, build_and_adopt

__all__ = ["VisionEncoder"]

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PatchEmbed(nn.Module):
    """Conv3d(kernel = stride = (temporal_patch_size, patch_size, patch_size), no bias): with stride
    equal to the kernel it is a matmul of each flattened patch (C, T, P, P) with the flattened weight."""

    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=False)
        self.embed_dim = config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(self.embed_dim, -1))


class VisionRotaryEmbedding(nn.Module):
    """The 2-D (h, w) rotary angles: head_dim / 4 frequencies per axis (theta ** (-2i / (head_dim/2))),
    [h-angles, w-angles] duplicated to head_dim (rotate-half convention). inv_freq is computed in fp32
    on the CPU exactly as transformers does and kept out of the state dict and out of dtype casts."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        spatial_dim = head_dim // 2
        # on the CPU even under a meta-device build (arange on meta would import torch._dynamo)
        self._inv_freq = 1.0 / (theta ** (torch.arange(0, spatial_dim, 2, dtype=torch.float, device="cpu") / spatial_dim))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (N, 2) -> fp32 cos, sin (N, head_dim)."""
        inv_freq = self._inv_freq.to(position_ids.device)
        freqs = position_ids[..., None].float() * inv_freq  # (N, 2, head_dim / 4)
        freqs = freqs.flatten(1)  # [h-freqs, w-freqs]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


class VisionAttention(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q = nn.Linear(dim, dim, bias=True)
        self.k = nn.Linear(dim, dim, bias=True)
        self.v = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.scaling = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask) -> torch.Tensor:
        n = x.shape[0]
        q = apply_rotate_half(self.q(x).view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotate_half(self.k(x).view(n, self.num_heads, self.head_dim), cos, sin)
        v = self.v(x).view(n, self.num_heads, self.head_dim)
        out = block_sparse_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                     mask, scale=self.scaling)
        return self.proj(out[0].transpose(0, 1).reshape(n, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act_fn = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, 1e-6)
        self.norm2 = RMSNorm(config.hidden_size, 1e-6)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.hidden_size = config.hidden_size * config.spatial_merge_size ** 2
        self.ln_q = RMSNorm(config.hidden_size, 1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.hidden_size, self.hidden_size), nn.GELU(),
                                 nn.Linear(self.hidden_size, config.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).reshape(-1, self.hidden_size))


def _vision_position_ids(grid: list[tuple[int, int, int]], merge: int, device) -> torch.Tensor:
    """(sum t*h*w, 2) (h, w) patch coordinates, merge x merge blocks contiguous (block-major), repeated
    per frame: transformers' `get_vision_position_ids`."""
    out = []
    for t, h, w in grid:
        hpos = torch.arange(h, device=device)[:, None].expand(h, w)
        wpos = torch.arange(w, device=device)[None, :].expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(1, 2).flatten()
        wpos = wpos.reshape(block).transpose(1, 2).flatten()
        out.append(torch.stack((hpos, wpos), dim=-1).repeat(t, 1))
    return torch.cat(out)


class VisionEncoder(nn.Module):
    """See the module docstring. `block_size` is the attention mask's block (64 or 128 run on a GPU;
    16..128 under the Triton interpreter)."""

    def __init__(self, config: VisionEncoderConfig, block_size: int = 128):
        super().__init__()
        if not isinstance(config, VisionEncoderConfig):
            raise ValueError(f"config must be an omni_runtime.config.VisionEncoderConfig, got {type(config).__name__}")
        config.validate("vision_config")
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"vision_config.hidden_act must be one of {sorted(_ACTIVATIONS)}, got {config.hidden_act!r}")
        if config.head_dim not in HEAD_DIMS:
            raise ValueError(f"vision head_dim = hidden_size / num_heads = {config.head_dim} is not supported by "
                             f"the block-sparse attention kernel (one of {HEAD_DIMS})")
        if not _is_int(block_size) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.config = config
        self.block_size = block_size
        self.spatial_merge_size = config.spatial_merge_size
        self.spatial_merge_unit = config.spatial_merge_size ** 2
        self.fullatt_block_indexes = frozenset(config.fullatt_block_indexes)
        self.patch_embed = PatchEmbed(config)
        self.rotary_pos_emb = VisionRotaryEmbedding(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList([VisionBlock(config) for _ in range(config.depth)])
        self.merger = PatchMerger(config)

    @classmethod
    def from_state_dict(cls, config: VisionEncoderConfig, tensors: Mapping[str, torch.Tensor],
                        prefix: str = "thinker.visual.", block_size: int = 128) -> "VisionEncoder":
        """Build around the given tensors (names with or without `prefix`), adopting them as they
        are (built on the meta device: the weights are never held twice); the rotary frequencies
        are computed in fp32 as in __init__. Missing / unexpected / mis-shaped tensors raise
        ValueError listing them."""
        own = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
        model = build_and_adopt(lambda: cls(config, block_size=block_size), own, "vision encoder")
        model.rotary_pos_emb = VisionRotaryEmbedding(config.head_dim, config.rope_theta)
        return model.eval().requires_grad_(False)

    def _check_inputs(self, pixel_values, grid_thw) -> list[tuple[int, int, int]]:
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            raise ValueError("pixel_values must be a floating-point torch.Tensor")
        if pixel_values.dim() != 2 or pixel_values.shape[1] != self.config.patch_dim:
            raise ValueError(f"pixel_values must be (num_patches, {self.config.patch_dim}), got "
                             f"{tuple(pixel_values.shape)}")
        if not isinstance(grid_thw, torch.Tensor):
            try:
                grid_thw = torch.as_tensor(grid_thw, dtype=torch.int64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"grid_thw must be an (n, 3) integer tensor, got {grid_thw!r}") from None
        if grid_thw.dim() != 2 or grid_thw.shape[1] != 3 or grid_thw.shape[0] == 0 \
                or grid_thw.is_floating_point() or grid_thw.dtype == torch.bool:
            raise ValueError(f"grid_thw must be a non-empty (n, 3) integer tensor, got {grid_thw.dtype} of shape "
                             f"{tuple(grid_thw.shape)}")
        grid = [tuple(int(x) for x in row) for row in grid_thw.tolist()]
        merge = self.spatial_merge_size
        for t, h, w in grid:
            if min(t, h, w) <= 0 or h % merge or w % merge:
                raise ValueError(f"grid_thw rows must be positive with h and w multiples of spatial_merge_size "
                                 f"({merge}), got {(t, h, w)}")
        total = sum(t * h * w for t, h, w in grid)
        if total != pixel_values.shape[0]:
            raise ValueError(f"grid_thw describes {total} patches but pixel_values has {pixel_values.shape[0]} rows")
        if not bool(torch.isfinite(pixel_values).all()):
            raise ValueError("pixel_values contains NaN or infinite values")
        return grid

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values (sum t*h*w, C*T*P*P), grid_thw (n, 3) -> (sum t*h*w / merge**2, out_hidden_size)
        in the parameters' dtype, images / videos in order, tokens in raster order of merged units."""
        grid = self._check_inputs(pixel_values, grid_thw)
        cfg = self.config
        device = self.patch_embed.proj.weight.device
        pixel_values = pixel_values.to(device)
        grid_t = torch.tensor(grid, dtype=torch.int64, device=device)
        window_mask, window_index, _ = vision_window_block_mask(
            grid_t, cfg.window_size, cfg.patch_size, cfg.spatial_merge_size, self.block_size)
        full_mask, _ = vision_full_block_mask(grid_t, self.block_size, cfg.spatial_merge_size)

        unit = self.spatial_merge_unit
        seq_len = pixel_values.shape[0]

        def to_windows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(seq_len // unit, unit, -1)[window_index].reshape(seq_len, -1)

        hidden = to_windows(self.patch_embed(pixel_values))
        cos, sin = self.rotary_pos_emb(_vision_position_ids(grid, self.spatial_merge_size, device))
        cos, sin = to_windows(cos), to_windows(sin)
        for i, block in enumerate(self.blocks):
            mask = full_mask if i in self.fullatt_block_indexes else window_mask
            hidden = block(hidden, cos, sin, mask)
        merged = self.merger(hidden)
        reverse = torch.empty_like(window_index)
        reverse[window_index] = torch.arange(window_index.numel(), device=device)
        return merged[reverse]
