"""Plain-torch references of the paged KV-cache ops (`omni_kernels.kv_cache_ops`).

Caches are [num_blocks, block_size, num_kv_heads, head_dim]; slot = block * block_size + offset,
slot -1 = skip. These take already-validated inputs (no range checks) and mutate like the ops.
"""
import torch


def store_kv_reference(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """key_cache[slot // block_size, slot % block_size] = key[i] for every token i with slot >= 0."""
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache.index_put_((blocks, offsets), key[keep])
    value_cache.index_put_((blocks, offsets), value[keep])


def copy_blocks_reference(key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
                          block_mapping: torch.Tensor) -> None:
    """cache[dst] = cache[src] for every (src, dst) row of block_mapping, in every layer's K and V cache."""
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for cache in [*key_caches, *value_caches]:
        cache.index_copy_(0, dst.to(cache.device), cache.index_select(0, src.to(cache.device)))


def swap_blocks_reference(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """dst_cache[dst] = src_cache[src] for every (src, dst) row of block_mapping (any two devices)."""
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    blocks = src_cache.index_select(0, src.to(src_cache.device)).to(dst_cache.device)
    dst_cache.index_copy_(0, dst.to(dst_cache.device), blocks)
