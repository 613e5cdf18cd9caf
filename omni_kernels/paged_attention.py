"""What the two paged-KV-cache ops (`paged_decode_attention`, `paged_prefill_attention`) share:
the cache layout's checks and the torch-path gather. Not an op of its own.

Cache layout (fixed by the cache extension): per layer key_cache and value_cache, each
`[num_blocks, page_size, num_kv_heads, head_dim]` (any strides, contiguous last dim), keys already
rotated; block_tables int32 `[B, max_blocks]`: logical page p of sequence b is physical block
`block_tables[b, p]`; entries past a sequence's length are never read and may hold anything;
seq_lens int32 `[B]`: cached tokens per sequence, the new ones included.

Value checks (block-table entries in range, lengths within the table, cu_seqlens consistent) read
tensor contents, which on a GPU is a host sync: they run when the tensors are on the CPU, or on
any device when `OMNI_KERNELS_DEBUG=1`; never while torch.compile traces. The public ops take
`validate=False` to skip every check (shapes too) for metadata the engine built itself.
"""
import functools
import math
import os
import threading

import torch

from .checks import check_last_dim_contiguous, check_tensor

INDEX_DTYPES = (torch.int32, torch.int64)
MAX_HEAD_DIM = 256


def debug_enabled() -> bool:
    return os.environ.get("OMNI_KERNELS_DEBUG", "0") not in ("", "0")


def values_checkable(device: torch.device) -> bool:
    """True when the wrapper may read tensor contents to validate them (see module doc)."""
    if torch.compiler.is_compiling():
        return False
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False  # a host read would break CUDA-graph capture
    return device.type == "cpu" or debug_enabled()


@functools.lru_cache(maxsize=16)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (132 = H100 SXM when there is no GPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def check_cache(q: torch.Tensor, key_cache, value_cache) -> tuple[int, int, int]:
    """Shapes, dtypes, devices, strides of the caches against q (.., Hq, D) -> (num_blocks, page_size, Hk)."""
    device = q.device
    check_tensor("key_cache", key_cache, ndim=4, dtypes=(q.dtype,), device=device)
    check_tensor("value_cache", value_cache, ndim=4, dtypes=(q.dtype,), device=device)
    if key_cache.shape != value_cache.shape:
        raise ValueError(f"key_cache {tuple(key_cache.shape)} and value_cache {tuple(value_cache.shape)} must have "
                         "the same shape (num_blocks, page_size, num_kv_heads, head_dim)")
    num_blocks, page_size, n_kv_heads, head_dim = key_cache.shape
    n_heads = q.shape[-2]
    if head_dim != q.shape[-1]:
        raise ValueError(f"key_cache head_dim {head_dim} does not match q's head_dim {q.shape[-1]}")
    if head_dim == 0 or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise ValueError(f"q heads ({n_heads}) must be a multiple of key_cache's kv heads ({n_kv_heads})")
    if num_blocks == 0 or page_size == 0:
        raise ValueError(f"key_cache has no blocks or a zero page size: shape {tuple(key_cache.shape)}")
    for name, t in (("q", q), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_last_dim_contiguous(name, t)
    return num_blocks, page_size, n_kv_heads


def check_tables(block_tables, seq_lens, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes/dtypes/devices of block_tables (B, max_blocks) and seq_lens (B,) -> both int32 contiguous."""
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES, device=device)
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES, device=device)
    if seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens has {seq_lens.shape[0]} entries, expected the batch size {batch}")
    if block_tables.shape[0] != batch:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows, expected the batch size {batch}")
    return block_tables.to(torch.int32).contiguous(), seq_lens.to(torch.int32).contiguous()


def check_table_values(block_tables: torch.Tensor, seq_lens: torch.Tensor, num_blocks: int, page_size: int,
                       min_len: int = 1) -> int:
    """seq_lens in [min_len, max_blocks * page_size]; the block-table entries a sequence uses
    (its first ceil(seq_len / page_size)) in [0, num_blocks). Returns the longest seq_len.
    The lengths are read on the host once and the used entries reduced by one aminmax: on CPU
    ~10 us at batch 1 where elementwise masks with a host read per test took ~75 us."""
    capacity = block_tables.shape[1] * page_size
    lens = seq_lens.tolist()
    if min(lens) < min_len:
        raise ValueError(f"seq_lens must be >= {min_len}, got {lens}")
    if max(lens) > capacity:
        raise ValueError(f"seq_lens {lens} exceed block_tables' capacity "
                         f"{block_tables.shape[1]} blocks x page_size {page_size} = {capacity}")
    pages = [(n + page_size - 1) // page_size for n in lens]
    width = max(pages)
    if width == 0:
        return 0
    entries = block_tables[:, :width]
    if min(pages) < width:  # rows differ in length: only each row's used entries
        n_used = torch.tensor(pages, device=entries.device)
        entries = entries[torch.arange(width, device=entries.device)[None, :] < n_used[:, None]]
    low, high = (int(x) for x in torch.aminmax(entries))
    if low < 0 or high >= num_blocks:
        entries = entries.long()
        bad = entries[(entries < 0) | (entries >= num_blocks)]
        raise ValueError(f"block_tables has entries outside [0, num_blocks={num_blocks}) in the blocks a sequence "
                         f"uses: {bad[:8].tolist()}")
    return max(lens)


_scratch = threading.local()
_SCRATCH_MAX_BYTES = 32 << 20  # larger gathers allocate (bounds what a thread keeps alive)


def _scratch_buffer(slot: str, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    """A per-thread reusable CPU buffer: a fresh multi-MB allocation on every decode call measured
    ~20% of the torch path (28 layers, L=500). Valid until the next use of `slot` on this thread."""
    numel = math.prod(shape)
    if numel * like.element_size() > _SCRATCH_MAX_BYTES or like.requires_grad:
        return None
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    # An inference tensor cannot be written outside inference mode: one buffer per mode.
    key = (slot, like.dtype, torch.is_inference_mode_enabled())
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def gather_kv(cache: torch.Tensor, table_row: torch.Tensor, length: int, slot: str | None = None) -> torch.Tensor:
    """The first `length` tokens of one sequence from a paged cache -> (length, Hk, D). On CPU a run
    of consecutive physical blocks (what a fresh BlockManager hands a sequence) is a view of the
    cache, no copy; otherwise one index_select (~2x faster than advanced indexing on CPU), into the
    thread's scratch buffer `slot` when given (the result is then valid until the next such gather)."""
    page_size = cache.shape[1]
    n_pages = (length + page_size - 1) // page_size
    pages = table_row[:n_pages]
    if cache.is_cpu and n_pages:
        ids = pages.tolist()  # a host read only on CPU, where it is free
        first = ids[0]
        if ids[-1] - first == n_pages - 1 and ids == list(range(first, first + n_pages)):
            return cache[first:first + n_pages].flatten(0, 1)[:length]
        out = _scratch_buffer(slot, (n_pages,) + tuple(cache.shape[1:]), cache) if slot else None
        if out is not None:
            return torch.index_select(cache, 0, pages, out=out).flatten(0, 1)[:length]
    return cache.index_select(0, pages).flatten(0, 1)[:length]
