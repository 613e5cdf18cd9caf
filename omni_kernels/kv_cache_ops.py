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

`validate=False` (all three ops) skips every Python check -- types, shapes, strides, dtypes and the
index values (duplicates included) -- for engine-internal calls whose tensors the engine built
itself: on CPU eager only the CPU twin's own index bounds check runs, and inputs that do not match
the caches (shape, dtype, layout) corrupt memory. Through the custom op (CUDA, tracing) the op's
shape checks still run. On CPU eager the wrappers call the CPU twin directly, not through
`torch.ops` (`backend.direct_cpu_call`): no dispatcher cost, no torch._dynamo import. The checks
live in `kv_cache_checks`.
"""
import torch

from . import backend, extension
from .checks import check_tensor
from .kv_cache_checks import (INDEX_DTYPE, block_elems, block_stride, check_block_mapping, check_cache_lists,
                              check_mapping_values, check_slot_values, check_store_kv, check_swap, debug_enabled,
                              values_checkable)

__all__ = ["store_kv", "copy_blocks", "swap_blocks", "debug_enabled"]


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


def _store_kv_impl(key, value, key_cache, value_cache, slot_mapping) -> None:
    slot_mapping = slot_mapping.contiguous()
    num_tokens, heads, head_dim = key.shape
    args = (key.data_ptr(), value.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(), slot_mapping.data_ptr(),
            num_tokens, heads, head_dim, key.element_size(), key.stride()[:2], value.stride()[:2],
            key_cache.shape[0], key_cache.shape[1], key_cache.stride()[:3], value_cache.stride()[:3])
    _run("store_kv", key_cache.device, args)


def _copy_blocks_impl(key_caches, value_caches, block_mapping) -> None:
    if not key_caches:
        return
    ref = key_caches[0]
    block_mapping = block_mapping.contiguous()
    args = ([t.data_ptr() for t in key_caches], [t.data_ptr() for t in value_caches], block_mapping.data_ptr(),
            block_mapping.shape[0], ref.shape[0], block_stride(ref), block_elems(ref), ref.element_size())
    _run("copy_blocks", ref.device, args)


def _swap_blocks_impl(src_cache, dst_cache, block_mapping) -> None:
    block_mapping = block_mapping.contiguous()
    args = (src_cache.data_ptr(), dst_cache.data_ptr(), block_mapping.data_ptr(), block_mapping.shape[0],
            src_cache.shape[0], dst_cache.shape[0], block_stride(src_cache), block_stride(dst_cache),
            block_elems(src_cache), src_cache.element_size())
    if src_cache.device.type == dst_cache.device.type == "cpu":
        _run("swap_blocks", src_cache.device, args)
        return
    device = src_cache.device if src_cache.device.type == "cuda" else dst_cache.device
    _run("swap_blocks", device, args + (src_cache.device.type == "cuda", dst_cache.device.type == "cuda"))


# The custom ops re-check shapes/strides (cheap, host-only) because they hand raw pointers to C++/CUDA
# and `torch.ops.omni_kernels.*` can be called without the wrappers.
@torch.library.custom_op("omni_kernels::store_kv", mutates_args=("key_cache", "value_cache"))
def _store_kv_op(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    check_store_kv(key, value, key_cache, value_cache, slot_mapping)
    _store_kv_impl(key, value, key_cache, value_cache, slot_mapping)


@_store_kv_op.register_fake
def _(key, value, key_cache, value_cache, slot_mapping):
    return None


@torch.library.custom_op("omni_kernels::copy_blocks", mutates_args=("key_caches", "value_caches"))
def _copy_blocks_op(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
                    block_mapping: torch.Tensor) -> None:
    check_cache_lists(key_caches, value_caches)
    if key_caches:
        check_block_mapping(block_mapping, key_caches[0].device)
    _copy_blocks_impl(key_caches, value_caches, block_mapping)


@_copy_blocks_op.register_fake
def _(key_caches, value_caches, block_mapping):
    return None


@torch.library.custom_op("omni_kernels::swap_blocks", mutates_args=("dst_cache",))
def _swap_blocks_op(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor) -> None:
    check_swap(src_cache, dst_cache, block_mapping)
    _swap_blocks_impl(src_cache, dst_cache, block_mapping)


@_swap_blocks_op.register_fake
def _(src_cache, dst_cache, block_mapping):
    return None


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor, *, debug: bool | None = None, validate: bool = True) -> None:
    """Write token i's key/value rows (N, Hk, D) into slot slot_mapping[i] of the caches (-1 = skip).
    `validate=False` skips every Python check (see the module docstring)."""
    if validate:
        check_store_kv(key, value, key_cache, value_cache, slot_mapping)
        if values_checkable(key_cache.device, debug):
            check_slot_values(slot_mapping, key_cache.shape[0] * key_cache.shape[1])
    if backend.direct_cpu_call(key, value, key_cache, value_cache, slot_mapping):
        _store_kv_impl(key, value, key_cache, value_cache, slot_mapping)
    else:
        _store_kv_op(key, value, key_cache, value_cache, slot_mapping)


def copy_blocks(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor], block_mapping: torch.Tensor, *,
                debug: bool | None = None, validate: bool = True) -> None:
    """For every (src, dst) row of block_mapping, copy block src to block dst in every layer's caches.
    `validate=False` skips every Python check (see the module docstring)."""
    if validate:
        check_cache_lists(key_caches, value_caches)
        if not key_caches:
            check_tensor("block_mapping", block_mapping, ndim=2, dtypes=(INDEX_DTYPE,))
            return
        device = key_caches[0].device
        check_block_mapping(block_mapping, device)
        if values_checkable(device, debug):
            num_blocks = key_caches[0].shape[0]
            check_mapping_values(block_mapping, num_blocks, num_blocks, same_cache=True)
    if backend.direct_cpu_call(*key_caches, *value_caches, block_mapping):
        _copy_blocks_impl(key_caches, value_caches, block_mapping)
    else:
        _copy_blocks_op(list(key_caches), list(value_caches), block_mapping)


def swap_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor, *,
                validate: bool = True) -> None:
    """For every (src, dst) row of the CPU block_mapping, copy src_cache[src] to dst_cache[dst]
    (GPU <-> pinned CPU, within one GPU, or CPU <-> CPU). Call it for the key and the value cache.
    `validate=False` skips every Python check (see the module docstring)."""
    if validate:
        check_swap(src_cache, dst_cache, block_mapping)
        if not torch.compiler.is_compiling():  # the mapping is on the CPU: checking it needs no sync
            same_memory = (src_cache.device == dst_cache.device and src_cache.numel() and dst_cache.numel()
                           and src_cache.untyped_storage().data_ptr() == dst_cache.untyped_storage().data_ptr())
            if same_memory:
                raise ValueError("src_cache and dst_cache share memory: use copy_blocks to copy within one cache")
            check_mapping_values(block_mapping, src_cache.shape[0], dst_cache.shape[0], same_cache=False)
    if backend.direct_cpu_call(src_cache, dst_cache, block_mapping):
        _swap_blocks_impl(src_cache, dst_cache, block_mapping)
    else:
        _swap_blocks_op(src_cache, dst_cache, block_mapping)
