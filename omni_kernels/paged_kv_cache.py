"""The paged KV cache's memory: per-layer key and value caches plus the BlockManager that hands
out their blocks.

    cache = PagedKVCache(num_layers=28, num_kv_heads=4, head_dim=128, block_size=16,
                         dtype=torch.bfloat16, device="cuda", memory_budget_bytes=20 << 30)
    k_cache, v_cache = cache.key_cache(layer), cache.value_cache(layer)  # [num_blocks, block_size, Hk, D]

Layout is vLLM's flash layout: slot s = block * block_size + offset is row s of
`k_cache.view(-1, Hk, D)`. All layers live in one allocation [num_layers, 2, num_blocks,
block_size, Hk, D] (one allocation, no fragmentation); each layer's K and V are contiguous views.

Debug mode (`debug=True` or OMNI_KERNELS_DEBUG=1): `check_block_table` verifies that a block table
points only at blocks some live sequence holds, which catches use-after-free of a sequence's blocks
before a kernel silently reads another sequence's KV.
"""
import os

import torch

from .block_manager import BlockManager
from .checks import FLOAT_DTYPES, check_tensor


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
    """K and V of one block across all layers."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                 device, num_blocks: int | None = None, memory_budget_bytes: int | None = None,
                 enable_prefix_caching: bool = True, debug: bool | None = None):
        _positive_int("num_layers", num_layers)
        _positive_int("num_kv_heads", num_kv_heads)
        _positive_int("head_dim", head_dim)
        _positive_int("block_size", block_size)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported; supported: {', '.join(str(d) for d in FLOAT_DTYPES)}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r} is not a torch device") from None
        per_block = bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype)
        if (num_blocks is None) == (memory_budget_bytes is None):
            raise ValueError("give exactly one of num_blocks and memory_budget_bytes")
        if num_blocks is None:
            _positive_int("memory_budget_bytes", memory_budget_bytes)
            num_blocks = memory_budget_bytes // per_block
            if num_blocks < 1:
                itemsize = per_block // (2 * num_layers * block_size * num_kv_heads * head_dim)
                raise ValueError(f"memory_budget_bytes={memory_budget_bytes} is less than one block "
                                 f"({per_block} bytes = 2 (K, V) * {num_layers} layers * {block_size} tokens * "
                                 f"{num_kv_heads} kv heads * head_dim {head_dim} * {itemsize} bytes of {dtype})")
        else:
            _positive_int("num_blocks", num_blocks)

        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        self.num_blocks = num_blocks
        self.bytes_per_block = per_block
        self.debug = os.environ.get("OMNI_KERNELS_DEBUG", "0") not in ("", "0") if debug is None else bool(debug)
        # Zeroed, not empty: a padded block-table entry may be read (and masked) by a kernel, and
        # uninitialised NaNs can leak through a mask done by multiplication.
        self._kv = torch.zeros((num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim),
                               dtype=dtype, device=device)
        self._key_caches = [self._kv[layer, 0] for layer in range(num_layers)]
        self._value_caches = [self._kv[layer, 1] for layer in range(num_layers)]
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching)

    def __repr__(self) -> str:
        return (f"PagedKVCache(num_layers={self.num_layers}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, block_size={self.block_size}, dtype={self.dtype}, "
                f"device={self.device}, num_blocks={self.num_blocks}, nbytes={self.nbytes})")

    @property
    def nbytes(self) -> int:
        return self._kv.numel() * self._kv.element_size()

    def _layer(self, layer) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        return layer

    def key_cache(self, layer: int) -> torch.Tensor:
        """[num_blocks, block_size, num_kv_heads, head_dim], contiguous."""
        return self._key_caches[self._layer(layer)]

    def value_cache(self, layer: int) -> torch.Tensor:
        return self._value_caches[self._layer(layer)]

    @property
    def key_caches(self) -> list[torch.Tensor]:
        return list(self._key_caches)

    @property
    def value_caches(self) -> list[torch.Tensor]:
        return list(self._value_caches)

    def apply_pending_copies(self) -> int:
        """Execute the block manager's queued copy-on-write copies on every layer's K and V (call
        once per step, before the step's KV writes). Returns how many blocks were copied."""
        pending = self.block_manager.pending_copies
        if not pending:
            return 0
        from .kv_cache_ops import copy_blocks  # lazy: loads the compiled extension

        # Pinned pending blocks make destinations distinct and never sources, as copy_blocks requires.
        copy_blocks(self._key_caches, self._value_caches,
                    torch.tensor(pending, dtype=torch.int64, device=self.device))
        # Popped only once copied: if the copy raised, the blocks stay pinned and queued.
        self.block_manager.pop_pending_copies()
        return len(pending)

    def check_block_table(self, block_table: torch.Tensor, seq_lens: torch.Tensor) -> None:
        """Debug mode only (a no-op otherwise, so it can sit on the hot path): raise ValueError if
        an entry a kernel would read -- the first ceil(seq_len / block_size) of each row -- is out
        of range or names a block no live sequence holds. Reads the tensors on the host."""
        if not self.debug:
            return
        check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32, torch.int64))
        check_tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32, torch.int64))
        if seq_lens.shape[0] != block_table.shape[0]:
            raise ValueError(f"seq_lens has {seq_lens.shape[0]} entries but block_table has {block_table.shape[0]} rows")
        table = block_table.cpu().tolist()
        bs = self.block_size
        bm = self.block_manager
        for row, (blocks, seq_len) in enumerate(zip(table, seq_lens.cpu().tolist())):
            used = -(-seq_len // bs)
            if seq_len < 0 or used > len(blocks):
                raise ValueError(f"seq_lens[{row}]={seq_len} needs {used} blocks, but block_table rows "
                                 f"have {len(blocks)} entries")
            for col, block in enumerate(blocks[:used]):
                if not 0 <= block < self.num_blocks:
                    raise ValueError(f"block_table[{row}, {col}] = {block} is not a block index in [0, {self.num_blocks})")
                if bm.ref_count(block) == 0:
                    raise ValueError(f"block_table[{row}, {col}] points at block {block}, which is freed "
                                     f"(ref count 0): the table is stale")
