"""omni_kernels: Triton attention kernels (and a CUDA paged KV-cache extension) for Qwen2.5-Omni.

Every op runs its Triton kernel on CUDA tensors and a torch path on CPU tensors; see
`omni_kernels.backend` for the switch that forces the Triton path under the interpreter.
"""
from .backend import use_backend
from .block_manager import BlockManager, OutOfBlocksError
from .block_mask import (BlockSparseMask, audio_chunk_block_mask, chunked_prefill_block_mask, segment_block_mask,
                         vision_full_block_mask, vision_window_block_mask, vision_window_index)
from .block_sparse_attention import block_sparse_attention
from .dit_window_attention import dit_window_attention
from .kv_cache_ops import copy_blocks, store_kv, swap_blocks
from .paged_decode_attention import paged_decode_attention
from .paged_kv_cache import PagedKVCache
from .paged_prefill_attention import paged_prefill_attention
from .rope_index import rope_index
from .tmrope_attention import tmrope_attention

__all__ = [
    "use_backend", "rope_index", "tmrope_attention", "block_sparse_attention", "dit_window_attention",
    "BlockSparseMask", "segment_block_mask", "audio_chunk_block_mask", "chunked_prefill_block_mask",
    "vision_window_block_mask", "vision_full_block_mask", "vision_window_index",
    "store_kv", "copy_blocks", "swap_blocks", "paged_decode_attention", "paged_prefill_attention",
    "BlockManager", "OutOfBlocksError", "PagedKVCache",
]
