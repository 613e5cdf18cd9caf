"""The flash-attention core every attention kernel here shares, plus in-register rotary.

`attend_tile` is one online-softmax step over one KV tile: fp32 running max `m`, running sum `l`
and accumulator `acc`, scores kept in the log2 domain (scale pre-multiplied by log2(e)) so the
exponentials are `exp2`. The kernels differ only in which KV tiles they visit and how they mask.
"""
import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# The dtype names used in kernel configs and AOT signatures.
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# CUDA limits grid dims 1 and 2 to 65535: launchers slice larger batches.
MAX_GRID_YZ = 65535


@triton.jit
def _reduce_angle(angle):
    # Why: position * inv_freq reaches ~1e5 rad; the GPU's fast sin/cos are only accurate near 0.
    # Cody-Waite split of 2*pi: 6.28125 has few mantissa bits, so k * 6.28125 is exact in fp32.
    k = tl.floor(angle * 0.15915494309189535 + 0.5)
    return (angle - k * 6.28125) - k * 0.0019353071795864769


@triton.jit
def rope_tile(x, x_partner, pos_t, pos_h, pos_w, inv_freq_ptr, offs_d, head_dim, section_t, section_h,
              INTERLEAVED: tl.constexpr):
    """Rotate a (rows, BLOCK_D) fp32 tile. `x_partner[:, d]` is x at d's rotation partner
    (see `partner_columns`). Frequency f uses position axis t if f < section_t, h if
    f < section_t + section_h, else w (TMRoPE); 1-D RoPE passes section_t = head_dim // 2.
    head_dim and the sections are runtime values: fewer compiled variants, same speed."""
    half = head_dim // 2
    if INTERLEAVED:
        freq = offs_d // 2
        sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
    else:
        freq = offs_d % half
        sign = tl.where(offs_d < half, -1.0, 1.0)
    inv_freq = tl.load(inv_freq_ptr + freq, mask=offs_d < head_dim, other=0.0)
    use_t = (freq < section_t)[None, :]
    use_h = (freq < section_t + section_h)[None, :]
    pos = tl.where(use_t, pos_t[:, None], tl.where(use_h, pos_h[:, None], pos_w[:, None]))
    angle = _reduce_angle(pos * inv_freq[None, :])
    return x * tl.cos(angle) + sign[None, :] * x_partner * tl.sin(angle)


@triton.jit
def partner_columns(offs_d, head_dim, INTERLEAVED: tl.constexpr):
    """Each column's rotation partner: d ^ 1 for interleaved pairs, d +- head_dim/2 for rotate-half."""
    if INTERLEAVED:
        return offs_d ^ 1
    else:
        return (offs_d + head_dim // 2) % head_dim


@triton.jit
def load_tile(base, rows, row_stride, offs_d, row_mask, d_mask):
    return tl.load(base + rows[:, None] * row_stride + offs_d[None, :],
                   mask=row_mask[:, None] & d_mask[None, :], other=0.0)


@triton.jit
def attend_tile(acc, m_i, l_i, q, k, v, qk_scale, mask,
                APPLY_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step: fold scores q @ k^T (masked where `mask` is False) into acc/m/l."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if APPLY_MASK:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen only masked keys keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def finish_rows(acc, l_i):
    # Rows that saw no key at all (possible with block-sparse masks) return 0, like FlexAttention.
    return acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]


def dot_precision(dtype_name: str) -> str:
    """fp32 inputs use 3xTF32: tensor cores (wgmma on sm_90) with ~fp32 accuracy."""
    return "tf32x3" if dtype_name == "fp32" else "tf32"


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)
