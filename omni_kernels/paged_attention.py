"""What the two paged-KV-cache ops (`paged_decode_attention`, `paged_prefill_attention`) share:
the cache layout's checks and the torch-path gather. Not an op of its own.

Cache layout (fixed by the cache extension): per layer key_cache and value_cache, each
`[num_blocks, page_size, num_kv_heads, head_dim]` (any strides, contiguous last dim), keys already
rotated; block_tables int32 `[B, max_blocks]`: logical page p of sequence b is physical block
`block_tables[b, p]`; entries past a sequence's length are never read and may hold anything;
seq_lens int32 `[B]`: cached tokens per sequence, the new ones included.

Value checks (block-table entries in range, lengths within the table, cu_seqlens consistent) read
tensor contents, which on a GPU is a host sync: they run when the tensors are on the CPU, or on
any device when `OMNI_KERNELS_DEBUG=1`; never while torch.compile traces.
"""
import functools
import os

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
                       min_len: int = 1) -> None:
    """seq_lens in [min_len, max_blocks * page_size]; the block-table entries a sequence uses
    (its first ceil(seq_len / page_size)) in [0, num_blocks)."""
    capacity = block_tables.shape[1] * page_size
    lens = seq_lens.long()
    if bool((lens < min_len).any()):
        raise ValueError(f"seq_lens must be >= {min_len}, got {lens.tolist()}")
    if bool((lens > capacity).any()):
        raise ValueError(f"seq_lens {lens.tolist()} exceed block_tables' capacity "
                         f"{block_tables.shape[1]} blocks x page_size {page_size} = {capacity}")
    pages = (lens + page_size - 1) // page_size
    used = torch.arange(block_tables.shape[1], device=lens.device)[None, :] < pages[:, None]
    entries = block_tables[used].long()
    bad = (entries < 0) | (entries >= num_blocks)
    if bool(bad.any()):
        raise ValueError(f"block_tables has entries outside [0, num_blocks={num_blocks}) in the blocks a sequence "
                         f"uses: {entries[bad][:8].tolist()}")


def gather_kv(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence from a paged cache -> (length, Hk, D)."""
    page_size = cache.shape[1]
    pages = table_row[: (length + page_size - 1) // page_size].long()
    return cache[pages].flatten(0, 1)[:length]
