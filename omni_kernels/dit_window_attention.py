"""Public op: the Token2Wav DiT's block-sliding-window attention, RoPE on head 0 inside the kernel.

    out = dit_window_attention(q, k, v, block_size=24, back=1, ahead=0)

q, k, v (B, H, L, D): un-rotated projections of the L mel frames (any batch/head/frame strides,
contiguous last dim, so they may be `view(B, L, H, D).transpose(1, 2)` of the projection output,
as transformers' DiTAttention makes them). Frames form blocks of `block_size`; a frame in block i
attends to every frame in blocks i - back .. i + ahead (transformers: block_diff = j - i and the
mask (block_diff >= -back) & (block_diff <= ahead)). RoPE with positions 0..L-1 is applied to
head 0 only, on interleaved pairs (x0, x1), (x2, x3), ... -- what the checkpoint was trained with;
transformers deinterleaves q/k of head 0 and rotates halves, which gives the same scores because q
and k get the same permutation and v is untouched. Returns out (B, H, L, D), contiguous, q's dtype.
The real model: D=64, H=16, block_size 24, fp32, (back, ahead) = (1, 0) in layers 0 and 20,
(0, 1) in layer 10, (0, 0) elsewhere, rope_theta 10000.
"""
import functools
import numbers

import torch

from . import backend
from .checks import FLOAT_DTYPES, check_finite_positive, check_last_dim_contiguous, check_tensor
from .rotary import apply_interleaved_rope, interleaved_cos_sin, rope_inv_freq

# The torch path attends this many query frames (rounded to whole blocks) at a time, each chunk
# against its own KV window only, so its masks and scores stay O(L * window), not O(L^2).
_TORCH_CHUNK_FRAMES = 1024

# CUDA grid dim 1 (heads) is limited to 65535.
_MAX_HEADS = 65535


@functools.lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return rope_inv_freq(head_dim, theta, device)


def _dit_window_attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, back: int,
                               ahead: int, rope_theta: float, scale: float) -> torch.Tensor:
    inv_freq = _inv_freq(q.shape[-1], float(rope_theta), q.device)
    if backend.use_triton(q.device):
        from .kernels import dit_window_attention as kernel

        compute = backend.kernel_dtype(q.dtype)
        out = kernel.launch(q.to(compute), k.to(compute), v.to(compute), inv_freq, block_size, back, ahead, scale)
        return out.to(q.dtype)
    return _torch_path(q, k, v, inv_freq, block_size, back, ahead, scale, float(rope_theta))


_dit_window_attention_op = torch.library.custom_op("omni_kernels::dit_window_attention",
                                                   _dit_window_attention_impl, mutates_args=())


@_dit_window_attention_op.register_fake
def _(q, k, v, block_size, back, ahead, rope_theta, scale):
    return q.new_empty(q.shape)


@functools.lru_cache(maxsize=64)
def _head0_cos_sin(length: int, head_dim: int, theta: float, device: torch.device):
    return interleaved_cos_sin(length, _inv_freq(head_dim, theta, device))


@functools.lru_cache(maxsize=64)
def _windows(length: int, block_size: int, back: int, ahead: int, device: torch.device) -> tuple:
    """The torch path's chunks of query blocks: (q_lo, q_hi, kv_lo, kv_hi, visible mask), each
    computed once per shape (a DiT stream asks for the same few windows thousands of times)."""
    block = torch.arange(length, device=device) // block_size
    n_blocks = (length + block_size - 1) // block_size
    chunk_blocks = max(1, _TORCH_CHUNK_FRAMES // block_size)
    out = []
    for b0 in range(0, n_blocks, chunk_blocks):
        b1 = min(b0 + chunk_blocks, n_blocks)  # query blocks [b0, b1)
        q_lo, q_hi = b0 * block_size, min(b1 * block_size, length)
        kv_lo, kv_hi = max(b0 - back, 0) * block_size, min((b1 + ahead) * block_size, length)
        diff = block[None, kv_lo:kv_hi] - block[q_lo:q_hi, None]
        out.append((q_lo, q_hi, kv_lo, kv_hi, (diff >= -back) & (diff <= ahead)))
    return tuple(out)


def _rope_head0(x: torch.Tensor, inv_freq: torch.Tensor, cos_sin) -> torch.Tensor:
    out = x.clone(memory_format=torch.contiguous_format)
    out[:, :1] = apply_interleaved_rope(x[:, :1], inv_freq, cos_sin)
    return out


def _torch_path(q, k, v, inv_freq, block_size, back, ahead, scale, theta):
    """Rotate head 0 (fp32, cast back), then SDPA with the window mask, chunk by chunk of query blocks."""
    length = q.shape[-2]
    cos_sin = _head0_cos_sin(length, q.shape[-1], theta, q.device)
    q = _rope_head0(q, inv_freq, cos_sin)
    k = _rope_head0(k, inv_freq, cos_sin)
    windows = _windows(length, block_size, back, ahead, q.device)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if len(windows) == 1:
        *_, visible = windows[0]
        return sdpa(q, k, v, attn_mask=visible, scale=scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for q_lo, q_hi, kv_lo, kv_hi, visible in windows:
        out[:, :, q_lo:q_hi] = sdpa(q[:, :, q_lo:q_hi], k[:, :, kv_lo:kv_hi], v[:, :, kv_lo:kv_hi],
                                    attn_mask=visible, scale=scale)
    return out


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def dit_window_attention(q, k, v, *, block_size: int = 24, back: int = 0, ahead: int = 0,
                         rope_theta: float = 10000.0, scale: float | None = None) -> torch.Tensor:
    """See the module docstring. rope_theta defaults to transformers' Qwen2_5OmniDiTConfig value
    (10000); scale defaults to head_dim ** -0.5 (what SDPA uses in DiTAttention)."""
    check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES)
    device = q.device
    check_tensor("k", k, ndim=4, dtypes=(q.dtype,), device=device)
    check_tensor("v", v, ndim=4, dtypes=(q.dtype,), device=device)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have q's shape {tuple(q.shape)} (B, H, L, D)")
    batch, n_heads, length, head_dim = q.shape
    if batch == 0 or n_heads == 0 or length == 0:
        raise ValueError(f"q is empty (shape {tuple(q.shape)}): dit_window_attention needs B, H, L >= 1")
    if n_heads > _MAX_HEADS:
        raise ValueError(f"q has {n_heads} heads; at most {_MAX_HEADS} are supported")
    if head_dim % 2 or head_dim == 0 or head_dim > 256:
        raise ValueError(f"head_dim (q.shape[-1]) must be even and in [2, 256], got {head_dim}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    block_size = _check_int("block_size", block_size, 1)
    back = _check_int("back", back, 0)
    ahead = _check_int("ahead", ahead, 0)
    # Same masks, bounded ints: a block longer than L holds all of L, and a window wider than the
    # number of blocks reaches every block either way.
    block_size = min(block_size, length)
    n_blocks = -(-length // block_size)
    back, ahead = min(back, n_blocks), min(ahead, n_blocks)
    check_finite_positive("rope_theta", rope_theta)
    scale = head_dim ** -0.5 if scale is None else scale
    check_finite_positive("scale", scale)
    # CPU eager: the implementation itself, without the custom op's dispatch (backend.direct_cpu_call).
    op = _dit_window_attention_impl if backend.direct_cpu_call(q, k, v) else _dit_window_attention_op
    return op(q, k, v, block_size, back, ahead, float(rope_theta), float(scale))
