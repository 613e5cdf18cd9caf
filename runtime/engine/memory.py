"""One memory plan for the KV caches of every decoder on a device.

    plan = MemoryPlan(device, dtype_for={"thinker": torch.bfloat16, ...})
    caches = plan_kv_caches({"thinker": (thinker_lm, 8, 8192), "talker": (talker_lm, 8, 4096)}, device)

Each model asks for room for `max_num_seqs` sequences of `max_model_len` tokens; the budget
(on CUDA: `gpu_memory_utilization` of the free memory, less a reserve for activations and the
codec; on CPU: 2 GiB unless given) is split in proportion to those asks, and no cache gets more
than it asked. So the Thinker and the Talker never each take half the GPU on their own.
"""
from __future__ import annotations

from typing import Optional

import torch

from omni_kernels.paged_kv_cache import PagedKVCache, bytes_per_block

__all__ = ["plan_kv_caches", "kv_budget_bytes", "default_num_blocks"]

CPU_DEFAULT_BUDGET = 2 << 30


def kv_budget_bytes(device, gpu_memory_utilization: float = 0.9, reserve_bytes: int = 2 << 30) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(0, int(free * gpu_memory_utilization) - reserve_bytes)
    return CPU_DEFAULT_BUDGET


def plan_kv_caches(requests: dict, device, *, memory_budget_bytes: Optional[int] = None, block_size: int = 16,
                   enable_prefix_caching: bool = False, gpu_memory_utilization: float = 0.9) -> dict:
    """requests: name -> (model, max_num_seqs, max_model_len) for DecoderLM models. Returns
    name -> PagedKVCache, all from one budget (ValueError when a model cannot get even one
    sequence of its max_model_len)."""
    if not requests:
        raise ValueError("no models to plan KV caches for")
    budget = kv_budget_bytes(device, gpu_memory_utilization) if memory_budget_bytes is None else memory_budget_bytes
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"memory_budget_bytes must be a positive int, got {budget!r}")
    per_block, want = {}, {}
    for name, (model, seqs, max_len) in requests.items():
        per_block[name], want[name] = _ask(model, block_size, seqs, max_len)
    asked = sum(want[n] * per_block[n] for n in requests)
    scale = min(1.0, budget / asked)
    caches = {}
    for name, (model, seqs, max_len) in requests.items():
        blocks = int(want[name] * scale)
        need_one = -(-max_len // block_size)
        if blocks < need_one:
            raise ValueError(f"the KV-cache budget ({budget} bytes for {', '.join(requests)}) gives {name} "
                             f"{blocks} blocks, fewer than one sequence of max_model_len {max_len} needs "
                             f"({need_one}); lower max_model_len / max_num_seqs or give more memory")
        caches[name] = PagedKVCache(model.num_layers, model.num_kv_heads, model.head_dim, block_size, model.dtype,
                                    device, num_blocks=blocks, enable_prefix_caching=enable_prefix_caching)
    return caches


def _ask(model, block_size: int, max_num_seqs: int, max_model_len: int) -> tuple[int, int]:
    """(bytes per block, blocks for max_num_seqs sequences of max_model_len tokens)."""
    per_block = bytes_per_block(model.num_layers, model.num_kv_heads, model.head_dim, block_size, model.dtype)
    return per_block, max_num_seqs * -(-max_model_len // block_size)


def default_num_blocks(model, block_size, max_num_seqs, max_model_len):
    """Blocks for max_num_seqs sequences of max_model_len tokens, within the device's budget."""
    per_block, want = _ask(model, block_size, max_num_seqs, max_model_len)
    return max(1, min(want, kv_budget_bytes(model.device) // per_block))
