"""BlockManager: allocation, prefix caching, copy-on-write, eviction, errors, and the block-table /
slot-mapping tensors. The stateful test simulates the KV memory: every slot holds the prefix of
tokens whose KV it would store, so any sharing, copy or eviction bug shows up as a wrong read."""
import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from omni_kernels import block_manager as bm_module
from omni_kernels.block_manager import BlockManager, OutOfBlocksError


def state_of(bm: BlockManager):
    return copy.deepcopy(bm.__dict__)


def ref_block_tables(bm, seq_ids, width=None, pad=0):
    tables = [bm.block_table(s) for s in seq_ids]
    width = max((len(t) for t in tables), default=0) if width is None else width
    return [t + [pad] * (width - len(t)) for t in tables]


def ref_slot_mapping(bm, seq_ids, counts):
    bs = bm.block_size
    out = []
    for s, n in zip(seq_ids, counts):
        table, length = bm.block_table(s), bm.seq_len(s)
        out += [table[i // bs] * bs + i % bs for i in range(length - n, length)]
    return out


# ---------------------------------------------------------------------------------------- basics
def test_allocate_append_free_counts():
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    assert bm.allocate(0, [1, 2, 3, 4, 5]) == 0
    assert len(bm.block_table(0)) == 2 and bm.seq_len(0) == 5 and bm.num_free_blocks == 4
    bm.append(0, 6)
    bm.append(0, [7, 8])
    assert len(bm.block_table(0)) == 2 and bm.seq_len(0) == 8
    bm.append(0, 9)  # last block full -> a new one
    assert len(bm.block_table(0)) == 3 and bm.num_free_blocks == 3
    bm.append(0, list(range(10, 19)))  # several blocks at once
    assert bm.seq_len(0) == 18 and len(bm.block_table(0)) == 5
    assert bm.token_ids(0) == list(range(1, 19))
    assert bm.pop_pending_copies() == []
    bm.free(0)
    assert bm.num_free_blocks == 6 and bm.num_cached_free_blocks == 0 and bm.seq_ids == []


def test_accepts_tensor_tokens():
    bm = BlockManager(4, 4)
    bm.allocate(0, torch.tensor([3, 4, 5], dtype=torch.int32))
    bm.append(0, torch.tensor(7))
    assert bm.token_ids(0) == [3, 4, 5, 7]


def test_can_allocate_and_can_append():
    bm = BlockManager(3, 4)
    assert bm.can_allocate(12) and not bm.can_allocate(13)
    bm.allocate(0, [1] * 8)
    assert bm.can_append(0, 4) and not bm.can_append(0, 5)
    bm.fork(0, 1)
    bm.free(0)
    bm.allocate(2, [2] * 3)
    bm.fork(2, 3)
    assert bm.num_free_blocks == 0
    assert not bm.can_append(2)  # copy-on-write needs a block
    assert bm.can_append(1) is False  # last block full -> needs a new one


# ---------------------------------------------------------------------------------------- fork / CoW
def test_fork_shares_and_copy_on_write():
    bm = BlockManager(8, 4)
    bm.allocate(0, list(range(6)))  # blocks: full + partial (2 tokens)
    bm.fork(0, 1)
    t0 = bm.block_table(0)
    assert bm.block_table(1) == t0 and all(bm.ref_count(b) == 2 for b in t0)
    bm.append(1, 100)
    t1 = bm.block_table(1)
    assert t1[0] == t0[0] and t1[1] != t0[1]
    assert bm.ref_count(t0[0]) == 2 and bm.ref_count(t0[1]) == 1 and bm.ref_count(t1[1]) == 1
    assert bm.pop_pending_copies() == [(t0[1], t1[1])]
    assert bm.pop_pending_copies() == []
    bm.append(0, 200)  # sole holder now: no copy
    assert bm.block_table(0) == t0 and bm.pop_pending_copies() == []


def test_fork_of_full_last_block_needs_no_copy():
    bm = BlockManager(8, 4)
    bm.allocate(0, list(range(8)))
    bm.fork(0, 1)
    bm.append(1, 5)
    assert bm.pop_pending_copies() == [] and bm.block_table(1)[:2] == bm.block_table(0)


def test_pending_copy_blocks_not_reused_before_pop():
    # CoW then free of the other holder: the copy's src must not be handed out (and written, or
    # made another copy's dst) before the copy has run.
    bm = BlockManager(4, 4, enable_prefix_caching=False)
    bm.allocate(0, [1, 2])
    bm.fork(0, 1)
    src = bm.block_table(0)[0]
    bm.append(0, 3)
    dst = bm.block_table(0)[0]
    bm.free(1)
    bm.free(0)
    assert bm.num_free_blocks == 2
    bm.allocate(2, list(range(8)))
    assert not {src, dst} & set(bm.block_table(2))
    assert bm.pop_pending_copies() == [(src, dst)]
    assert bm.num_free_blocks == 2


def test_append_to_child_forked_after_unexecuted_cow_is_refused():
    bm = BlockManager(8, 4)
    bm.allocate(0, [1, 2])
    bm.fork(0, 1)
    bm.append(0, 3)  # copy-on-write: (src, dst) pending, token 3 not yet written into dst
    bm.fork(0, 2)  # shares dst
    before = state_of(bm)
    with pytest.raises(ValueError, match="destination of a pending copy"):
        bm.append(2, 4)
    assert bm.__dict__ == before
    assert bm.pending_copies == bm.pop_pending_copies() and len(bm.pending_copies) == 0
    bm.append(2, 4)  # after the step: an ordinary copy-on-write
    assert bm.pop_pending_copies() == [(bm.block_table(0)[0], bm.block_table(2)[0])]


# ---------------------------------------------------------------------------------------- prefix caching
def test_prefix_cache_hit_shares_blocks():
    bm = BlockManager(16, 4)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    assert bm.allocate(0, prompt) == 0
    assert bm.allocate(1, prompt[:8] + [7, 7, 7]) == 8
    assert bm.block_table(1)[:2] == bm.block_table(0)[:2]
    assert bm.block_table(1)[2] != bm.block_table(0)[2]
    assert [bm.ref_count(b) for b in bm.block_table(0)] == [2, 2, 1]
    assert bm.allocate(2, prompt[:4] + [0, 0, 0, 0, 1]) == 4  # diverges in block 1
    assert bm.allocate(3, [5] + prompt[1:]) == 0  # diverges in block 0: chain breaks


def test_prefix_cache_never_covers_the_last_token():
    bm = BlockManager(16, 4)
    prompt = list(range(8))
    bm.allocate(0, prompt)
    # Fully cached prompt: the last block is recomputed so prefill yields logits.
    assert bm.allocate(1, prompt) == 4
    assert bm.block_table(1)[0] == bm.block_table(0)[0]
    assert bm.block_table(1)[1] != bm.block_table(0)[1]
    assert bm.allocate(2, prompt + [9]) == 8


def test_blocks_filled_by_decode_are_cached():
    bm = BlockManager(16, 4)
    bm.allocate(0, [1, 2, 3])
    bm.append(0, [4, 5, 6, 7, 8, 9])
    assert bm.allocate(1, [1, 2, 3, 4, 5, 6, 7, 8, 0]) == 8


def test_freed_blocks_stay_cached_then_lru_eviction():
    bm = BlockManager(6, 2)
    a, b = [1, 1, 2, 2, 3], [4, 4, 5, 5, 6]
    bm.allocate(0, a)
    bm.allocate(1, b)
    bm.free(0)
    bm.free(1)
    assert bm.num_free_blocks == 6 and bm.num_cached_free_blocks == 4  # 2 full blocks each
    # Hit on cached-free blocks revives them.
    assert bm.allocate(2, a) == 4
    assert bm.num_cached_free_blocks == 2
    bm.free(2)
    # Plain free blocks go first, then the LRU cached one: b's tail block (freed before b's head).
    bm.allocate(3, [9, 9, 9, 9, 9])  # 3 blocks: 2 free + 1 evicted
    assert bm.num_cached_free_blocks == 3
    assert bm.allocate(4, b) == 2  # b's first block survived, its second was evicted
    assert bm.num_free_blocks == 0 and bm.num_cached_free_blocks == 0


def test_lru_order_across_sequences():
    bm = BlockManager(4, 2)
    bm.allocate(0, [1, 1, 0])
    bm.allocate(1, [2, 2, 0])
    bm.free(1)  # freed first: least recently used
    bm.free(0)
    bm.allocate(2, [7, 7, 7, 7, 7])  # 3 blocks: the 2 plain free ones, then evicts seq 1's block
    bm.free(2)
    assert bm.allocate(3, [1, 1, 5]) == 2
    assert bm.allocate(4, [2, 2, 5]) == 0


def test_prefix_caching_disabled():
    bm = BlockManager(8, 2, enable_prefix_caching=False)
    bm.allocate(0, [1, 2, 3, 4, 5])
    assert bm.allocate(1, [1, 2, 3, 4, 5]) == 0
    bm.free(0)
    assert bm.num_cached_free_blocks == 0


def test_cache_salt_separates_multimodal_prompts():
    bm = BlockManager(16, 2)
    image = [151655] * 4 + [1]
    bm.allocate(0, image, cache_salt=b"image-a")
    assert bm.allocate(1, image, cache_salt=b"image-b") == 0
    assert bm.allocate(2, image) == 0
    assert bm.allocate(3, image, cache_salt="image-a".encode()) == 4
    bm.fork(3, 4)
    bm.append(4, [1, 1])  # the salt carries through fork and decode-filled blocks
    assert bm.allocate(5, image + [1, 1, 9], cache_salt=b"image-a") == 6
    with pytest.raises(ValueError, match="cache_salt"):
        bm.allocate(6, image, cache_salt=3)


def test_hash_collision_is_verified(monkeypatch):
    monkeypatch.setattr(bm_module, "_block_digest", lambda parent, tokens: b"\0" * 16)
    bm = BlockManager(8, 2)
    bm.allocate(0, [1, 2, 3])
    assert bm.allocate(1, [4, 5, 6]) == 0  # same digest, different tokens: no hit
    assert bm.allocate(2, [1, 2, 6]) == 2


def test_digest_is_deterministic():
    # Deterministic across processes (no PYTHONHASHSEED dependence): a fixed value.
    d = bm_module._block_digest(b"", [1, 2, 3])
    assert d == bm_module._block_digest(b"", [1, 2, 3]) and len(d) == 16
    assert d != bm_module._block_digest(b"", [1, 2, 4]) != bm_module._block_digest(d, [1, 2, 3])


# ---------------------------------------------------------------------------------------- out of blocks
def test_out_of_blocks_allocate_leaves_state_unchanged():
    bm = BlockManager(4, 4)
    bm.allocate(0, list(range(9)))
    before = state_of(bm)
    with pytest.raises(OutOfBlocksError, match=r"needs 2 free block\(s\), only 1 free") as info:
        bm.allocate(1, list(range(50, 58)))
    assert isinstance(info.value, RuntimeError) and (info.value.needed, info.value.free) == (2, 1)
    assert bm.__dict__ == before
    # With a prefix hit the same length fits.
    assert bm.allocate(1, list(range(4)) + [50, 51, 52, 53]) == 4


def test_out_of_blocks_append_and_cow_leave_state_unchanged():
    bm = BlockManager(4, 2)
    bm.allocate(0, [1, 2, 3])
    bm.fork(0, 1)
    bm.allocate(2, [4])
    before = state_of(bm)
    with pytest.raises(OutOfBlocksError, match="needs 2"):
        bm.append(0, [5, 6])  # CoW block + one more
    assert bm.__dict__ == before
    bm.append(0, 5)  # CoW fits exactly
    before = state_of(bm)
    with pytest.raises(OutOfBlocksError):
        bm.append(2, [1, 1])
    assert bm.__dict__ == before


def test_out_of_blocks_does_not_evict_hit_blocks():
    bm = BlockManager(4, 2)
    bm.allocate(0, [1, 1, 2, 2])
    bm.allocate(5, [8, 8, 9])
    table0 = bm.block_table(0)
    bm.free(0)  # LRU order: [2, 2], [1, 1]
    bm.free(5)  # then [8, 8]; its partial block goes to the plain free pool
    bm.allocate(6, [3])  # takes the plain free block
    # Hits [1, 1] and [2, 2] (the LRU-first cached block); the fresh block must evict [8, 8].
    assert bm.allocate(1, [1, 1, 2, 2, 3]) == 4
    assert bm.block_table(1)[:2] == table0 and bm.num_free_blocks == 0
    with pytest.raises(OutOfBlocksError, match="needs 1 free block"):
        bm.allocate(7, [8])


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_blocks=0, block_size=4), "num_blocks"),
    (dict(num_blocks=4, block_size=0), "block_size"),
    (dict(num_blocks=4.0, block_size=4), "num_blocks"),
    (dict(num_blocks=True, block_size=4), "num_blocks"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockManager(**kwargs)


def test_value_errors():
    bm = BlockManager(8, 4)
    bm.allocate(0, [1, 2, 3])
    with pytest.raises(ValueError, match="already allocated"):
        bm.allocate(0, [1])
    for bad in ([], [1, -2], [1, 2.0], [True], "abc", 5, torch.tensor([1.0]), [2**63]):
        with pytest.raises(ValueError, match="token_ids"):
            bm.allocate(1, bad)
    with pytest.raises(ValueError, match="token_id_or_ids"):
        bm.append(0, [])
    with pytest.raises(ValueError, match="token_id_or_ids"):
        bm.append(0, -1)
    for call in (lambda: bm.append(9, 1), lambda: bm.free(9), lambda: bm.block_table(9),
                 lambda: bm.seq_len(9), lambda: bm.can_append(9), lambda: bm.fork(9, 10),
                 lambda: bm.build_block_tables([0, 9], "cpu"), lambda: bm.slot_mapping([9], [1], "cpu")):
        with pytest.raises(ValueError, match="9 is not allocated"):
            call()
    with pytest.raises(ValueError, match="seq_id must be an int"):
        bm.allocate("a", [1])
    with pytest.raises(ValueError, match="child_id 0 is already allocated"):
        bm.fork(0, 0)
    with pytest.raises(ValueError, match="num_tokens"):
        bm.can_allocate(0)
    with pytest.raises(ValueError, match="block must be"):
        bm.ref_count(8)
    bm.free(0)
    with pytest.raises(ValueError, match="0 is not allocated"):
        bm.free(0)  # no double free
    assert bm.num_free_blocks == 8


def test_tensor_argument_errors():
    bm = BlockManager(8, 4)
    bm.allocate(0, list(range(9)))
    bm.allocate(1, [1])
    with pytest.raises(ValueError, match="max_blocks=2"):
        bm.build_block_tables([0, 1], "cpu", max_blocks=2)
    with pytest.raises(ValueError, match="duplicates"):
        bm.build_block_tables([0, 0], "cpu")
    with pytest.raises(ValueError, match="num_new_tokens has 1 entries"):
        bm.slot_mapping([0, 1], [1], "cpu")
    with pytest.raises(ValueError, match="num_new_tokens for seq 1"):
        bm.slot_mapping([0, 1], [1, 2], "cpu")
    with pytest.raises(ValueError, match="num_new_tokens for seq 0"):
        bm.slot_mapping([0, 1], [-1, 1], "cpu")


# ---------------------------------------------------------------------------------------- tensors
def test_tables_and_slot_mapping_match_reference():
    bm = BlockManager(64, 4)
    lengths = [1, 4, 5, 17, 9]
    for s, n in enumerate(lengths):
        bm.allocate(s, [s] * n)
    ids = [3, 0, 4, 1, 2]
    t = bm.build_block_tables(ids, "cpu")
    assert t.dtype == torch.int32 and t.tolist() == ref_block_tables(bm, ids)
    t = bm.build_block_tables(ids, torch.device("cpu"), max_blocks=8, pad_value=-1)
    assert t.shape == (5, 8) and t.tolist() == ref_block_tables(bm, ids, 8, -1)
    counts = [17, 1, 3, 0, 5]  # prefill chunks, a decode token, an idle sequence
    sm = bm.slot_mapping(ids, counts, "cpu")
    assert sm.dtype == torch.int64 and sm.tolist() == ref_slot_mapping(bm, ids, counts)
    assert bm.slot_mapping(ids, 1, "cpu").tolist() == ref_slot_mapping(bm, ids, [1] * 5)
    assert bm.slot_mapping(ids, torch.tensor(counts), "cpu").tolist() == ref_slot_mapping(bm, ids, counts)
    assert bm.slot_mapping(ids, 0, "cpu").shape == (0,)
    assert bm.slot_mapping(torch.tensor(ids), counts, "cpu").tolist() == ref_slot_mapping(bm, ids, counts)
    assert bm.seq_lens_tensor(ids, "cpu").tolist() == [lengths[i] for i in ids]
    assert bm.build_block_tables([], "cpu").shape == (0, 0)
    assert bm.slot_mapping([], [], "cpu").shape == (0,)


# ---------------------------------------------------------------------------------------- stateful
BASES = [[], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 9, 9, 9], [5] * 7]
tokens_st = st.lists(st.integers(0, 3), min_size=0, max_size=7)


class BlockManagerMachine(RuleBasedStateMachine):

    @initialize(num_blocks=st.integers(3, 20), block_size=st.sampled_from([1, 2, 3, 4]), caching=st.booleans())
    def setup(self, num_blocks, block_size, caching):
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
        self.tokens = {}  # model: seq id -> token ids
        # Simulated KV memory: the KV at slot s is a function of the whole prefix up to its token.
        self.mem = [None] * (num_blocks * block_size)
        self.next_id = 0
        self.seen_prompts = []

    # A step as the engine runs it: queued copies first, then the new tokens' KV writes.
    def execute(self, writes):
        copies = self.bm.pop_pending_copies()
        # copy_blocks' contract: distinct destinations, none of them also a source.
        dsts = [d for _, d in copies]
        assert len(set(dsts)) == len(dsts) and not set(dsts) & {src for src, _ in copies}
        for src, dst in copies:
            bs = self.bm.block_size
            self.mem[dst * bs:(dst + 1) * bs] = self.mem[src * bs:(src + 1) * bs]
        writes = [(s, n) for s, n in writes if s in self.tokens and n > 0]
        if not writes:
            return
        ids = [s for s, _ in writes]
        counts = [n for _, n in writes]
        slots = self.bm.slot_mapping(ids, counts, "cpu")
        assert slots.tolist() == ref_slot_mapping(self.bm, ids, counts)
        values = [tuple(self.tokens[s][:i + 1]) for s, n in writes
                  for i in range(len(self.tokens[s]) - n, len(self.tokens[s]))]
        assert len(set(slots.tolist())) == len(values)  # no two writes to one slot
        for slot, v in zip(slots.tolist(), values):
            self.mem[slot] = v

    def try_allocate(self, prompt):
        sid = self.next_id
        before = state_of(self.bm)
        try:
            cached = self.bm.allocate(sid, prompt)
        except OutOfBlocksError as e:
            assert self.bm.__dict__ == before
            assert e.needed > e.free == self.bm.num_free_blocks
            assert math.ceil(len(prompt) / self.bm.block_size) > self.bm.num_free_blocks
            return None, None
        self.next_id += 1
        self.tokens[sid] = list(prompt)
        bs = self.bm.block_size
        assert cached % bs == 0 and 0 <= cached < len(prompt)
        if not self.bm.enable_prefix_caching:
            assert cached == 0
        # A hit is a prefix of full blocks some earlier prompt or sequence produced.
        best = max((self.common(prompt, p) for p in self.seen_prompts), default=0)
        assert cached <= best
        self.seen_prompts.append(list(prompt))
        return sid, cached

    @staticmethod
    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    def pick(self, data):
        # With no live sequence a rule does nothing (cheaper than preconditions that make
        # hypothesis reject whole examples).
        return data.draw(st.sampled_from(sorted(self.tokens))) if self.tokens else None

    @rule(base=st.sampled_from(BASES), suffix=tokens_st)
    def allocate(self, base, suffix):
        prompt = base + suffix or [0]
        sid, cached = self.try_allocate(prompt)
        if sid is not None:
            self.execute([(sid, len(prompt) - cached)])

    @rule(data=st.data(), new=st.lists(st.integers(0, 3), min_size=1, max_size=5))
    def append(self, data, new):
        sid = self.pick(data)
        if sid is None:
            return
        before = state_of(self.bm)
        try:
            self.bm.append(sid, new if len(new) > 1 else new[0])
        except OutOfBlocksError as e:
            assert self.bm.__dict__ == before and e.needed > e.free
            assert not self.bm.can_append(sid, len(new))
            return
        self.tokens[sid] += new
        self.seen_prompts.append(list(self.tokens[sid]))
        # Every slot being written is in a block this sequence alone holds.
        bs = self.bm.block_size
        table, length = self.bm.block_table(sid), self.bm.seq_len(sid)
        for i in range(length - len(new), length):
            assert self.bm.ref_count(table[i // bs]) == 1
        self.execute([(sid, len(new))])

    @rule(data=st.data())
    def fork(self, data):
        parent = self.pick(data)
        if parent is None:
            return
        child = self.next_id
        self.next_id += 1
        self.bm.fork(parent, child)
        self.tokens[child] = list(self.tokens[parent])

    @rule(data=st.data())
    def free(self, data):
        sid = self.pick(data)
        if sid is None:
            return
        self.bm.free(sid)
        del self.tokens[sid]
        with pytest.raises(ValueError):
            self.bm.free(sid)

    @rule(data=st.data())
    def batched_step(self, data):
        """Several sequences decode one token, some others finish and a prompt arrives, all
        scheduled before the step runs: pending copies must survive the frees."""
        live = sorted(self.tokens)
        if not live:
            return
        decoding = data.draw(st.lists(st.sampled_from(live), unique=True, max_size=4))
        finishing = data.draw(st.lists(st.sampled_from([s for s in live if s not in decoding] or [-1]),
                                       unique=True, max_size=2))
        writes = []
        for sid in decoding:
            tok = data.draw(st.integers(0, 3))
            if self.bm.can_append(sid):
                self.bm.append(sid, tok)
                self.tokens[sid].append(tok)
                self.seen_prompts.append(list(self.tokens[sid]))
                writes.append((sid, 1))
            else:
                with pytest.raises(OutOfBlocksError):
                    self.bm.append(sid, tok)
        for sid in finishing:
            if sid in self.tokens:
                self.bm.free(sid)
                del self.tokens[sid]
        prompt = data.draw(st.sampled_from(BASES)) + data.draw(tokens_st)
        if prompt:
            sid, cached = self.try_allocate(prompt)
            if sid is not None:
                writes.append((sid, len(prompt) - cached))
        self.execute(writes)

    @rule(data=st.data())
    def tensors_match_reference(self, data):
        if not self.tokens:
            return
        ids = data.draw(st.permutations(sorted(self.tokens)))
        width = max(len(self.bm.block_table(s)) for s in ids) + data.draw(st.integers(0, 2))
        t = self.bm.build_block_tables(ids, "cpu", max_blocks=width)
        assert t.dtype == torch.int32 and t.tolist() == ref_block_tables(self.bm, ids, width)
        counts = [data.draw(st.integers(0, len(self.tokens[s]))) for s in ids]
        assert self.bm.slot_mapping(ids, counts, "cpu").tolist() == ref_slot_mapping(self.bm, ids, counts)

    @invariant()
    def consistent(self):
        bm = self.bm
        bs = bm.block_size
        holders = {}
        assert sorted(bm.seq_ids) == sorted(self.tokens)
        for sid, toks in self.tokens.items():
            table = bm.block_table(sid)
            assert bm.seq_len(sid) == len(toks) and bm.token_ids(sid) == toks
            assert len(table) == math.ceil(len(toks) / bs)
            assert len(set(table)) == len(table)
            for b in table:
                holders.setdefault(b, []).append(sid)
            # The KV every live sequence would read is the KV of its own prefix.
            for i in range(len(toks)):
                assert self.mem[table[i // bs] * bs + i % bs] == tuple(toks[:i + 1]), (sid, i)
        # Ref counts = number of live holders; no leak; no double free.
        for b in range(bm.num_blocks):
            assert bm.ref_count(b) == len(holders.get(b, []))
        assert bm.num_free_blocks == bm.num_blocks - len(holders)
        free, cached = bm._free, list(bm._cached_free)
        assert len(set(free)) == len(free) and not set(free) & set(cached)
        assert not (set(free) | set(cached)) & set(holders)
        assert len(free) + len(cached) + len(holders) == bm.num_blocks
        if not bm.enable_prefix_caching:
            assert not cached
        # Writable slots: two live sequences may share the slot their next token goes to only
        # while the block is shared (ref > 1), so the first write copies it.
        next_slot = {}
        for sid, toks in self.tokens.items():
            if len(toks) % bs:
                b = bm.block_table(sid)[-1]
                slot = b * bs + len(toks) % bs
                if slot in next_slot:
                    assert bm.ref_count(b) > 1
                next_slot[slot] = sid
        # Shared blocks hold the same tokens for every holder.
        for b, sids in holders.items():
            views = set()
            for sid in sids:
                i = bm.block_table(sid).index(b)
                views.add(tuple(self.tokens[sid][i * bs:(i + 1) * bs]))
            assert len(views) == 1, (b, views)


BlockManagerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestBlockManagerMachine = BlockManagerMachine.TestCase
