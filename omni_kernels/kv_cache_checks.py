"""Validation for the paged KV-cache ops (`kv_cache_ops`): host-only metadata checks (safe under
torch.compile and CUDA-graph capture) and index-value checks (a host read; on CUDA only in debug
mode). Every failure is a ValueError naming the argument."""
import os

import torch

from .checks import FLOAT_DTYPES, check_tensor

INDEX_DTYPE = torch.int64
HOST_CHECK_MAX = 256  # slot mappings up to this size are value-checked as a host list


def debug_enabled(debug: bool | None = None) -> bool:
    """The debug flag: `debug` when given, else env OMNI_KERNELS_DEBUG (anything but ''/'0' = on)."""
    if debug is not None:
        return bool(debug)
    return os.environ.get("OMNI_KERNELS_DEBUG", "0") not in ("", "0")


def values_checkable(device: torch.device, debug: bool | None) -> bool:
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


def block_elems(t: torch.Tensor) -> int:
    return t.shape[1] * t.shape[2] * t.shape[3]


def _check_blocks_contiguous(name: str, t: torch.Tensor) -> None:
    """copy_blocks / swap_blocks move a block as one contiguous chunk; the block stride is free."""
    _, block_size, heads, head_dim = t.shape
    expected = (heads * head_dim, head_dim, 1)
    for size, stride, want in zip(t.shape[1:], t.stride()[1:], expected):
        if size > 1 and stride != want:
            raise ValueError(f"{name}: each block must be contiguous [block_size, num_kv_heads, head_dim] "
                             f"(strides (*, {expected[0]}, {expected[1]}, 1)), got strides {t.stride()}")
    if t.shape[0] > 1 and t.stride(0) < block_elems(t):
        raise ValueError(f"{name}: block stride {t.stride(0)} is smaller than a block ({block_elems(t)} elements): "
                         "blocks overlap")


def block_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else block_elems(t)


def check_block_mapping(block_mapping, device: torch.device) -> None:
    check_tensor("block_mapping", block_mapping, ndim=2, dtypes=(INDEX_DTYPE,), device=device)
    if block_mapping.shape[1] != 2:
        raise ValueError(f"block_mapping must be (M, 2) rows of (src, dst), got shape {tuple(block_mapping.shape)}")


def check_store_kv(key, value, key_cache, value_cache, slot_mapping) -> None:
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
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(INDEX_DTYPE,), device=device)
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries but key has {key.shape[0]} tokens")


def check_cache_lists(key_caches, value_caches) -> None:
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


def check_swap(src_cache, dst_cache, block_mapping) -> None:
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
    check_block_mapping(block_mapping, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# value checks (read the indices: a host sync on CUDA)
# ------------------------------------------------------------------------------------------------
def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def check_slot_values(slot_mapping: torch.Tensor, num_slots: int) -> None:
    if slot_mapping.numel() <= HOST_CHECK_MAX:  # decode-sized: a host list is ~5x cheaper than tensor ops
        slots = slot_mapping.tolist()
        bad = [i for i, s in enumerate(slots) if s < -1 or s >= num_slots]
        used = [s for s in slots if s >= 0]
        duplicate = len(used) != len(set(used))
    else:
        mask = (slot_mapping < -1) | (slot_mapping >= num_slots)
        bad = [_first(mask)] if bool(mask.any()) else []
        used = slot_mapping[slot_mapping >= 0]
        duplicate = used.numel() != torch.unique(used).numel()
    if bad:
        raise ValueError(f"slot_mapping[{bad[0]}] = {int(slot_mapping[bad[0]])} is out of range: slots are -1 (skip) "
                         f"or in [0, num_blocks * block_size = {num_slots})")
    if duplicate:
        raise ValueError("slot_mapping writes one slot twice (duplicate non-negative slots): the result would "
                         "depend on the write order")


def check_mapping_values(block_mapping: torch.Tensor, src_blocks: int, dst_blocks: int, *,
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
