"""PagedKVCache: sizing from a memory budget, the vLLM flash layout, copy-on-write copies across
layers, and the debug check that catches block tables pointing at freed blocks."""
import pytest
import torch

from omni_kernels.block_manager import BlockManager
from omni_kernels.kv_cache_ops import store_kv
from omni_kernels.paged_kv_cache import PagedKVCache, bytes_per_block

SHAPE = dict(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4)


def make(**kw):
    args = dict(SHAPE, dtype=torch.float32, device="cpu", num_blocks=6)
    args.update(kw)
    return PagedKVCache(**args)


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
def test_num_blocks_from_memory_budget(dtype, size):
    per_block = 2 * 3 * 4 * 2 * 8 * size
    assert bytes_per_block(3, 2, 8, 4, dtype) == per_block
    cache = make(dtype=dtype, num_blocks=None, memory_budget_bytes=10 * per_block + per_block - 1)
    assert cache.num_blocks == 10 and cache.bytes_per_block == per_block
    assert cache.nbytes == 10 * per_block <= 11 * per_block - 1
    assert cache.block_manager.num_blocks == 10 and cache.block_manager.block_size == 4
    assert make(dtype=dtype, num_blocks=None, memory_budget_bytes=per_block).num_blocks == 1


def test_budget_too_small_for_one_block():
    with pytest.raises(ValueError, match=r"memory_budget_bytes=1535 is less than one block \(1536 bytes"):
        make(num_blocks=None, memory_budget_bytes=1535)


def test_layout():
    cache = make(dtype=torch.float16)
    caches = [cache.key_cache(layer) for layer in range(3)] + [cache.value_cache(layer) for layer in range(3)]
    for c in caches:
        assert c.shape == (6, 4, 2, 8) and c.dtype == torch.float16 and c.device.type == "cpu"
        assert c.is_contiguous() and not c.any()
    assert all(a is b for a, b in zip(cache.key_caches + cache.value_caches, caches))
    # Every cache is its own memory: a write to one shows up nowhere else.
    for i, c in enumerate(caches):
        c.fill_(i + 1)
    for i, c in enumerate(caches):
        assert bool((c == i + 1).all())
    assert cache.nbytes == 6 * cache.bytes_per_block
    assert "num_blocks=6" in repr(cache)


def test_slot_mapping_addresses_the_flash_layout():
    cache = make(num_blocks=8)
    bm = cache.block_manager
    bm.allocate(0, list(range(6)))
    bm.allocate(1, list(range(100, 109)))
    ids, lens = [0, 1], [6, 9]
    k, v = torch.randn(2, 15, 2, 8).unbind(0)
    slots = bm.slot_mapping(ids, lens, cache.device)
    key_cache, value_cache = cache.key_cache(1), cache.value_cache(1)
    store_kv(k, v, key_cache, value_cache, slots)
    assert torch.equal(key_cache.view(-1, 2, 8)[slots], k) and torch.equal(value_cache.view(-1, 2, 8)[slots], v)
    assert not cache.key_cache(0).any() and not cache.value_cache(2).any()
    # Read back through the block table as a paged-attention kernel does.
    tables = bm.build_block_tables(ids, cache.device)
    got = []
    for row, n in enumerate(lens):
        for i in range(n):
            got.append(key_cache[tables[row, i // 4], i % 4])
    assert torch.equal(torch.stack(got), k)
    cache.check_block_table(tables, bm.seq_lens_tensor(ids, cache.device))


def test_apply_pending_copies_copies_every_layer():
    cache = make()
    bm = cache.block_manager
    bm.allocate(0, [1, 2, 3, 4, 5, 6])
    for layer in range(3):
        cache.key_cache(layer).normal_()
        cache.value_cache(layer).normal_()
    bm.fork(0, 1)
    bm.append(1, 7)
    src, dst = bm.block_table(0)[1], bm.block_table(1)[1]
    before = [(cache.key_cache(layer).clone(), cache.value_cache(layer).clone()) for layer in range(3)]
    assert cache.apply_pending_copies() == 1
    assert cache.apply_pending_copies() == 0 and bm.pending_copies == []
    for layer, (k, v) in enumerate(before):
        k[dst], v[dst] = k[src], v[src]
        assert torch.equal(cache.key_cache(layer), k) and torch.equal(cache.value_cache(layer), v)


def test_apply_pending_copies_keeps_queue_if_copy_fails(monkeypatch):
    import omni_kernels.kv_cache_ops as ops

    cache = make()
    bm = cache.block_manager
    bm.allocate(0, [1, 2])
    bm.fork(0, 1)
    bm.append(1, 3)
    pending = bm.pending_copies

    def boom(*args, **kwargs):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(ops, "copy_blocks", boom)
    with pytest.raises(RuntimeError, match="copy failed"):
        cache.apply_pending_copies()
    assert bm.pending_copies == pending


def test_debug_check_catches_freed_block():
    cache = make(debug=True)
    bm = cache.block_manager
    bm.allocate(0, list(range(9)))
    bm.allocate(1, [50, 51])
    tables = bm.build_block_tables([0, 1], "cpu")
    lens = bm.seq_lens_tensor([0, 1], "cpu")
    cache.check_block_table(tables, lens)  # live: passes, and the padding of row 1 is not checked
    freed = bm.block_table(1)[0]
    bm.free(1)
    with pytest.raises(ValueError, match=rf"block_table\[1, 0\] points at block {freed}, which is freed"):
        cache.check_block_table(tables, lens)
    cache.check_block_table(tables[:1], lens[:1])
    # A freed block that stays findable by prefix caching is still freed.
    bm.free(0)
    assert bm.num_cached_free_blocks == 2
    with pytest.raises(ValueError, match="block_table\\[0, 0\\] points at block"):
        cache.check_block_table(tables[:1], lens[:1])


def test_debug_check_shapes_and_ranges():
    cache = make(debug=True)
    cache.block_manager.allocate(0, [1, 2, 3])
    with pytest.raises(ValueError, match="not a block index"):
        cache.check_block_table(torch.tensor([[6]], dtype=torch.int32), torch.tensor([1]))
    with pytest.raises(ValueError, match="seq_lens\\[0\\]=5 needs 2 blocks"):
        cache.check_block_table(torch.tensor([[0]], dtype=torch.int32), torch.tensor([5]))
    with pytest.raises(ValueError, match="seq_lens has 2 entries"):
        cache.check_block_table(torch.tensor([[0]], dtype=torch.int32), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="block_table has dtype"):
        cache.check_block_table(torch.tensor([[0.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="seq_lens must have 1 dims"):
        cache.check_block_table(torch.tensor([[0]]), torch.tensor(1))


def test_debug_mode_from_env(monkeypatch):
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "1")
    assert make().debug
    assert not make(debug=False).debug
    monkeypatch.setenv("OMNI_KERNELS_DEBUG", "0")
    cache = make()
    assert not cache.debug
    # Off: a no-op, even on a table of freed blocks.
    cache.check_block_table(torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([8]))


def test_prefix_caching_flag_reaches_block_manager():
    assert make().block_manager.enable_prefix_caching
    assert not make(enable_prefix_caching=False).block_manager.enable_prefix_caching
    assert isinstance(make().block_manager, BlockManager)


@pytest.mark.parametrize("kw, match", [
    (dict(num_layers=0), "num_layers"),
    (dict(num_kv_heads=-1), "num_kv_heads"),
    (dict(head_dim=2.0), "head_dim"),
    (dict(block_size=0), "block_size"),
    (dict(dtype=torch.int32), "dtype"),
    (dict(device="nope"), "device"),
    (dict(num_blocks=0), "num_blocks"),
    (dict(num_blocks=None), "exactly one of num_blocks and memory_budget_bytes"),
    (dict(num_blocks=4, memory_budget_bytes=1 << 20), "exactly one"),
    (dict(num_blocks=None, memory_budget_bytes=-5), "memory_budget_bytes"),
])
def test_constructor_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_layer_errors():
    cache = make()
    for bad in (3, -1, "0", True):
        with pytest.raises(ValueError, match="layer must be an int in \\[0, 3\\)"):
            cache.key_cache(bad)
    with pytest.raises(ValueError, match="layer"):
        cache.value_cache(3)
