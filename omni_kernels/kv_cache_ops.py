"""Public ops: the paged KV cache (issue #3).

    store_kv(key, value, key_cache, value_cache, slot_mapping)
    copy_blocks(key_caches, value_caches, block_mapping)
    swap_blocks(src_cache, dst_cache, block_mapping)

Cache layout, per layer: `key_cache` and `value_cache` are each
`[num_blocks, block_size, num_kv_heads, head_dim]` (vLLM's flash layout; why: csrc/README.md).
A token's place is its *slot* = block * block_size + offset; slot -1 means "skip" (padding).
Dtypes fp32 / fp16 / bf16: the ops only move elements, so K/V must already have the cache's dtype.

- `store_kv`: key/value (N, Hk, D) with any token / head strides and a contiguous last dim (views
  into a fused qkv output are fine); slot_mapping (N,) int64 on the caches' device.
- `copy_blocks`: block_mapping (M, 2) int64 rows (src, dst) on the caches' device; copies whole
  blocks in every layer's K and V cache (copy-on-write of a shared prefix). Destinations must be
  distinct and must not also be sources (so the result does not depend on the copy order); one
  source may feed several destinations.
- `swap_blocks`: block_mapping (M, 2) int64 on the **CPU**; copies blocks src_cache[src] ->
  dst_cache[dst] between a CUDA cache and a CPU cache (either direction), two caches on one GPU, or
  two CPU caches. On CUDA it is a `cudaMemcpyAsync` per block on the current stream: the CPU cache
  should be pinned (`pin_memory()`), otherwise the copy is staged and synchronous; after a GPU->CPU
  swap, synchronize the stream before reading the CPU cache on the host.

Dispatch: CPU tensors run the C++ CPU twin (`omni_kernels._C`), CUDA tensors the CUDA module
(`omni_kernels._cuda`) on `torch.cuda.current_stream()` -- no host sync, no allocation in the CUDA
functions, so store_kv and copy_blocks can be captured in CUDA graphs. Each op is a
`torch.library.custom_op` (`torch.ops.omni_kernels.store_kv` etc.) that declares the caches it
mutates.

Validation: wrong type / dtype / device / shape / layout, K/V vs cache dtype mismatches and
out-of-range indices raise ValueError naming the argument. Index *values* (slot_mapping,
copy_blocks' block_mapping) live on the device: they are checked for CPU tensors always, and for
CUDA tensors only in debug mode (`debug=True` or env `OMNI_KERNELS_DEBUG=1`), since reading them
needs a host sync (skipped while a CUDA graph is being captured). Without the check the CUDA kernels
still never write out of bounds: they skip out-of-range entries. swap_blocks' mapping is on the CPU
and is always checked. The CPU twin also checks every index itself before it writes anything.
"""
import os

import torch

from . import extension
from .checks import FLOAT_DTYPES, check_tensor

__all__ = ["store_kv", "copy_blocks", "swap_blocks", "debug_enabled"]

_INDEX_DTYPE = torch.int64


def debug_enabled(debug: bool | None = None) -> bool:
    """The debug flag: `debug` when given, else env OMNI_KERNELS_DEBUG (anything but ''/'0' = on)."""
    if debug is not None:
        return bool(debug)
    return os.environ.get("OMNI_KERNELS_DEBUG", "0") not in ("", "0")


def _check_values(device: torch.device, debug: bool | None) -> bool:
    """Whether to check index values held on `device` (a host read on CUDA)."""
    if torch.compiler.is_compiling():
        return False  # the CPU twin still checks at run time; CUDA kernels skip bad entries
    if device.type == "cpu":
        return True
    if not debug_enabled(debug):
        return False
    return not torch.cuda.is_current_stream_capturing()


# ------------------------------------------------------------------------------------------------
# metadata checks (host-only: safe under torch.compile and CUDA graph capture)
# ------------------------------------------------------------------------------------------------
def _check_device_type(name: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}; the KV-cache ops run on CPU or CUDA tensors")


def _check_cache(name: str, t, device: torch.device | None = None) -> None:
    check_tensor(name, t, ndim=4, dtypes=FLOAT_DTYPES, device=device)
    _check_device_type(name, t)
    num_blocks, block_size, heads, head_dim = t.shape
    if block_size == 0 or heads == 0 or head_dim == 0:
        raise ValueError(f"{name} (num_blocks, block_size, num_kv_heads, head_dim) = {tuple(t.shape)} has an empty dim")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dim (got strides {t.stride()})")


def _block_elems(t: torch.Tensor) -> int:
    return t.shape[1] * t.shape[2] * t.shape[3]


def _check_blocks_contiguous(name: str, t: torch.Tensor) -> None:
    """copy_blocks / swap_blocks move a block as one contiguous chunk; the block stride is free."""
    _, block_size, heads, head_dim = t.shape
    expected = (heads * head_dim, head_dim, 1)
    for size, stride, want in zip(t.shape[1:], t.stride()[1:], expected):
        if size > 1 and stride != want:
            raise ValueError(f"{name}: each block must be contiguous [block_size, num_kv_heads, head_dim] "
                             f"(strides (*, {expected[0]}, {expected[1]}, 1)), got strides {t.stride()}")
    if t.shape[0] > 1 and t.stride(0) < _block_elems(t):
        raise ValueError(f"{name}: block stride {t.stride(0)} is smaller than a block ({_block_elems(t)} elements): "
                         "blocks overlap")


def _block_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else _block_elems(t)


def _check_block_mapping(block_mapping, device: torch.device) -> None:
    check_tensor("block_mapping", block_mapping, ndim=2, dtypes=(_INDEX_DTYPE,), device=device)
    if block_mapping.shape[1] != 2:
        raise ValueError(f"block_mapping must be (M, 2) rows of (src, dst), got shape {tuple(block_mapping.shape)}")


def _check_store_kv(key, value, key_cache, value_cache, slot_mapping) -> None:
    _check_cache("key_cache", key_cache)
    device = key_cache.device
    _check_cache("value_cache", value_cache, device)
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache shape {tuple(value_cache.shape)} != key_cache shape {tuple(key_cache.shape)}")
    if value_cache.dtype != key_cache.dtype:
        raise ValueError(f"value_cache has dtype {value_cache.dtype} but key_cache has dtype {key_cache.dtype}")
    for name, t, cache_name in (("key", key, "key_cache"), ("value", value, "value_cache")):
        check_tensor(name, t, ndim=3, dtypes=FLOAT_DTYPES, device=device)
        if t.dtype != key_cache.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {cache_name} has dtype {key_cache.dtype} "
                             "(the cache stores elements as they are: convert first)")
        if t.shape[0] and t.stride(-1) != 1:
            raise ValueError(f"{name} must have stride 1 in its last dim (got strides {t.stride()}); call .contiguous()")
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if key.shape[1:] != key_cache.shape[2:]:
        raise ValueError(f"key (N, num_kv_heads, head_dim) = {tuple(key.shape)} does not match key_cache "
                         f"(num_blocks, block_size, num_kv_heads, head_dim) = {tuple(key_cache.shape)}")
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(_INDEX_DTYPE,), device=device)
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries but key has {key.shape[0]} tokens")


def _check_cache_lists(key_caches, value_caches) -> None:
    for name, caches in (("key_caches", key_caches), ("value_caches", value_caches)):
        if not isinstance(caches, (list, tuple)):
            raise ValueError(f"{name} must be a list of tensors (one per layer), got {type(caches).__name__}")
    if len(key_caches) != len(value_caches):
        raise ValueError(f"key_caches has {len(key_caches)} layers but value_caches has {len(value_caches)}")
    if not key_caches:
        return
    _check_cache("key_caches[0]", key_caches[0])
    ref = key_caches[0]
    _check_blocks_contiguous("key_caches[0]", ref)
    for prefix, caches in (("key_caches", key_caches), ("value_caches", value_caches)):
        for i, t in enumerate(caches):
            name = f"{prefix}[{i}]"
            _check_cache(name, t, ref.device)
            if t.dtype != ref.dtype:
                raise ValueError(f"{name} has dtype {t.dtype} but key_caches[0] has dtype {ref.dtype}")
            if t.shape != ref.shape or t.stride() != ref.stride():
                raise ValueError(f"{name} (shape {tuple(t.shape)}, strides {t.stride()}) must have the shape and "
                                 f"strides of key_caches[0] ({tuple(ref.shape)}, {ref.stride()})")


def _check_swap(src_cache, dst_cache, block_mapping) -> None:
    _check_cache("src_cache", src_cache)
    _check_cache("dst_cache", dst_cache)
    _check_blocks_contiguous("src_cache", src_cache)
    _check_blocks_contiguous("dst_cache", dst_cache)
    if dst_cache.dtype != src_cache.dtype:
        raise ValueError(f"dst_cache has dtype {dst_cache.dtype} but src_cache has dtype {src_cache.dtype}")
    if dst_cache.shape[1:] != src_cache.shape[1:]:
        raise ValueError(f"dst_cache blocks {tuple(dst_cache.shape[1:])} differ from src_cache blocks "
                         f"{tuple(src_cache.shape[1:])} (block_size, num_kv_heads, head_dim)")
    if src_cache.device.type == dst_cache.device.type == "cuda" and src_cache.device != dst_cache.device:
        raise ValueError(f"src_cache is on {src_cache.device} and dst_cache on {dst_cache.device}: "
                         "swap_blocks copies between one GPU and the CPU (or within one GPU)")
    _check_block_mapping(block_mapping, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# value checks (read the indices: a host sync on CUDA)
# ------------------------------------------------------------------------------------------------
def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _check_slot_values(slot_mapping: torch.Tensor, num_slots: int) -> None:
    bad = (slot_mapping < -1) | (slot_mapping >= num_slots)
    if bool(bad.any()):
        i = _first(bad)
        raise ValueError(f"slot_mapping[{i}] = {int(slot_mapping[i])} is out of range: slots are -1 (skip) or in "
                         f"[0, num_blocks * block_size = {num_slots})")
    used = slot_mapping[slot_mapping >= 0]
    if used.numel() != torch.unique(used).numel():
        raise ValueError("slot_mapping writes one slot twice (duplicate non-negative slots): the result would "
                         "depend on the write order")


def _check_mapping_values(block_mapping: torch.Tensor, src_blocks: int, dst_blocks: int, *,
                          same_cache: bool) -> None:
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for what, idx, limit in (("source", src, src_blocks), ("destination", dst, dst_blocks)):
        bad = (idx < 0) | (idx >= limit)
        if bool(bad.any()):
            i = _first(bad)
            raise ValueError(f"block_mapping[{i}] = {block_mapping[i].tolist()}: {what} block out of range [0, {limit})")
    if dst.numel() != torch.unique(dst).numel():
        raise ValueError("block_mapping has a destination block twice: destinations must be distinct")
    if same_cache and bool(torch.isin(dst, src).any()):
        raise ValueError("block_mapping: a destination block is also a source; the result would depend on the "
                         "copy order (copy in two calls)")


# ------------------------------------------------------------------------------------------------
# the custom ops
# ------------------------------------------------------------------------------------------------
def _run(op: str, device: torch.device, args: tuple) -> None:
    if device.type == "cpu":
        getattr(extension._C, op)(*args)
        return
    cuda = extension.require_cuda_extension(op)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        getattr(cuda, op)(*args, stream, device.index)


@torch.library.custom_op("omni_kernels::store_kv", mutates_args=("key_cache", "value_cache"))
def _store_kv_op(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    _check_store_kv(key, value, key_cache, value_cache, slot_mapping)  # guards direct torch.ops calls
    slot_mapping = slot_mapping.contiguous()
    num_tokens, heads, head_dim = key.shape
    args = (key.data_ptr(), value.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(), slot_mapping.data_ptr(),
            num_tokens, heads, head_dim, key.element_size(), key.stride()[:2], value.stride()[:2],
            key_cache.shape[0], key_cache.shape[1], key_cache.stride()[:3], value_cache.stride()[:3])
    _run("store_kv", key_cache.device, args)


@_store_kv_op.register_fake
def _(key, value, key_cache, value_cache, slot_mapping):
    return None


@torch.library.custom_op("omni_kernels::copy_blocks", mutates_args=("key_caches", "value_caches"))
def _copy_blocks_op(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
                    block_mapping: torch.Tensor) -> None:
    _check_cache_lists(key_caches, value_caches)
    if not key_caches:
        return
    ref = key_caches[0]
    _check_block_mapping(block_mapping, ref.device)
    block_mapping = block_mapping.contiguous()
    args = ([t.data_ptr() for t in key_caches], [t.data_ptr() for t in value_caches], block_mapping.data_ptr(),
            block_mapping.shape[0], ref.shape[0], _block_stride(ref), _block_elems(ref), ref.element_size())
    _run("copy_blocks", ref.device, args)


@_copy_blocks_op.register_fake
def _(key_caches, value_caches, block_mapping):
    return None


@torch.library.custom_op("omni_kernels::swap_blocks", mutates_args=("dst_cache",))
def _swap_blocks_op(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor) -> None:
    _check_swap(src_cache, dst_cache, block_mapping)
    block_mapping = block_mapping.contiguous()
    args = (src_cache.data_ptr(), dst_cache.data_ptr(), block_mapping.data_ptr(), block_mapping.shape[0],
            src_cache.shape[0], dst_cache.shape[0], _block_stride(src_cache), _block_stride(dst_cache),
            _block_elems(src_cache), src_cache.element_size())
    if src_cache.device.type == dst_cache.device.type == "cpu":
        _run("swap_blocks", src_cache.device, args)
        return
    device = src_cache.device if src_cache.device.type == "cuda" else dst_cache.device
    _run("swap_blocks", device, args + (src_cache.device.type == "cuda", dst_cache.device.type == "cuda"))


@_swap_blocks_op.register_fake
def _(src_cache, dst_cache, block_mapping):
    return None


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor, *, debug: bool | None = None) -> None:
    """Write token i's key/value rows (N, Hk, D) into slot slot_mapping[i] of the caches (-1 = skip)."""
    _check_store_kv(key, value, key_cache, value_cache, slot_mapping)
    if _check_values(key_cache.device, debug):
        _check_slot_values(slot_mapping, key_cache.shape[0] * key_cache.shape[1])
    _store_kv_op(key, value, key_cache, value_cache, slot_mapping)


def copy_blocks(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor], block_mapping: torch.Tensor, *,
                debug: bool | None = None) -> None:
    """For every (src, dst) row of block_mapping, copy block src to block dst in every layer's caches."""
    _check_cache_lists(key_caches, value_caches)
    if not key_caches:
        check_tensor("block_mapping", block_mapping, ndim=2, dtypes=(_INDEX_DTYPE,))
        return
    device = key_caches[0].device
    _check_block_mapping(block_mapping, device)
    if _check_values(device, debug):
        num_blocks = key_caches[0].shape[0]
        _check_mapping_values(block_mapping, num_blocks, num_blocks, same_cache=True)
    _copy_blocks_op(list(key_caches), list(value_caches), block_mapping)


def swap_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """For every (src, dst) row of the CPU block_mapping, copy src_cache[src] to dst_cache[dst]
    (GPU <-> pinned CPU, within one GPU, or CPU <-> CPU). Call it for the key and the value cache."""
    _check_swap(src_cache, dst_cache, block_mapping)
    if not torch.compiler.is_compiling():  # the mapping is on the CPU: checking it needs no sync
        same_memory = (src_cache.device == dst_cache.device and src_cache.numel() and dst_cache.numel()
                       and src_cache.untyped_storage().data_ptr() == dst_cache.untyped_storage().data_ptr())
        if same_memory:
            raise ValueError("src_cache and dst_cache share memory: use copy_blocks to copy within one cache")
        _check_mapping_values(block_mapping, src_cache.shape[0], dst_cache.shape[0], same_cache=False)
    _swap_blocks_op(src_cache, dst_cache, block_mapping)
