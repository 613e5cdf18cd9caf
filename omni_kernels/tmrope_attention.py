"""Public op: causal prefill attention with TMRoPE applied inside the kernel.

    out, k_rot = tmrope_attention(q, k, v, positions, cu_seqlens, mrope_section=[16, 24, 24])

q (N, Hq, D), k and v (N, Hk, D): packed tokens of a variable-length batch, un-rotated; any token
and head strides, contiguous last dim (so q/k/v may be views into one fused qkv projection).
positions (3, N): the t/h/w TMRoPE position of every token (`rope_index`). cu_seqlens (B+1,) int32:
sequence boundaries (None = one sequence). Returns the attention output (N, Hq, D) and the rotated
keys (N, Hk, D), which is what the KV cache stores.
"""
import functools

import torch

from . import backend
from .checks import FLOAT_DTYPES, check_last_dim_contiguous, check_finite_positive, check_tensor
from .rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq


@functools.lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return rope_inv_freq(head_dim, theta, device)


def _tmrope_attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                           cu_seqlens: torch.Tensor, max_seqlen: int, mrope_section: list[int],
                           rope_theta: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = _inv_freq(q.shape[-1], float(rope_theta), q.device)
    if backend.use_triton(q.device):
        from .kernels import tmrope_attention as kernel

        compute = backend.kernel_dtype(q.dtype)
        out, k_rot = kernel.launch(q.to(compute), k.to(compute), v.to(compute), positions, inv_freq,
                                   cu_seqlens, max_seqlen, mrope_section, scale)
        return out.to(q.dtype), k_rot.to(k.dtype)
    return _torch_path(q, k, v, positions, cu_seqlens, inv_freq, mrope_section, scale)


_tmrope_attention_op = torch.library.custom_op("omni_kernels::tmrope_attention", _tmrope_attention_impl,
                                               mutates_args=())


@_tmrope_attention_op.register_fake
def _(q, k, v, positions, cu_seqlens, max_seqlen, mrope_section, rope_theta, scale):
    return torch.empty_like(q), torch.empty_like(k)


def _torch_path(q, k, v, positions, cu_seqlens, inv_freq, mrope_section, scale):
    """Rotation as transformers does it (fp32, cast back), then SDPA per sequence."""
    cos, sin = mrope_cos_sin(positions, inv_freq, mrope_section)
    q_rot = apply_rotate_half(q, cos, sin)
    k_rot = apply_rotate_half(k, cos, sin)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        # 4-D inputs: SDPA's fast CPU kernels take (B, H, L, D); 3-D falls back to the math path.
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            q_rot[None, start:end].transpose(1, 2), k_rot[None, start:end].transpose(1, 2),
            v[None, start:end].transpose(1, 2), is_causal=True, scale=scale, enable_gqa=True,
        )[0].transpose(0, 1)
    return out, k_rot


def tmrope_attention(q, k, v, positions, cu_seqlens=None, *, mrope_section, rope_theta: float = 1e6,
                     scale: float | None = None, max_seqlen: int | None = None):
    """See the module docstring. `max_seqlen` avoids a device->host read of cu_seqlens (CUDA graphs)."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    device = q.device
    check_tensor("k", k, ndim=3, dtypes=(q.dtype,), device=device)
    check_tensor("v", v, ndim=3, dtypes=(q.dtype,), device=device)
    n_tokens, n_heads, head_dim = q.shape
    if n_tokens == 0:
        raise ValueError("q is empty: tmrope_attention needs at least one token")
    if k.shape != v.shape or k.shape[0] != n_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (N={n_tokens}, Hk, D={head_dim})")
    if k.shape[1] == 0 or n_heads % k.shape[1]:
        raise ValueError(f"q heads ({n_heads}) must be a multiple of k/v heads ({k.shape[1]})")
    if head_dim % 2 or head_dim > 256:
        raise ValueError(f"head_dim must be even and at most 256, got {head_dim}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    check_tensor("positions", positions, ndim=2, dtypes=(torch.int32, torch.int64), device=device)
    if positions.shape != (3, n_tokens):
        raise ValueError(f"positions must be (3, N={n_tokens}), got {tuple(positions.shape)}")
    section = [int(s) for s in mrope_section]
    if len(section) != 3 or min(section) < 0 or sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {list(mrope_section)} must be 3 non-negative ints summing to head_dim/2 = {head_dim // 2}")
    check_finite_positive("rope_theta", rope_theta)
    scale = head_dim ** -0.5 if scale is None else scale
    check_finite_positive("scale", scale)
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, n_tokens], dtype=torch.int32, device=device)
        max_seqlen = n_tokens
    else:
        check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64), device=device)
        if cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens needs at least 2 entries (0 and N)")
        if max_seqlen is None:
            lengths = cu_seqlens.diff()
            if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != n_tokens:
                raise ValueError(f"cu_seqlens must start at 0 and end at N={n_tokens}, got {cu_seqlens.tolist()}")
            if bool((lengths <= 0).any()):
                raise ValueError(f"cu_seqlens has an empty or negative-length sequence: {cu_seqlens.tolist()}")
            max_seqlen = int(lengths.max())
        cu_seqlens = cu_seqlens.to(torch.int32)
    # CPU eager: the implementation itself, without the custom op's dispatch (backend.direct_cpu_call).
    op = _tmrope_attention_impl if backend.direct_cpu_call(q, k, v, positions, cu_seqlens) else _tmrope_attention_op
    return op(q, k, v, positions.contiguous(), cu_seqlens, int(max_seqlen), section, float(rope_theta), float(scale))
