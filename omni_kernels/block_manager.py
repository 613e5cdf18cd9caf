"""Bookkeeping for the paged KV cache: which physical blocks each sequence owns.

    bm = BlockManager(num_blocks=1024, block_size=16)
    cached = bm.allocate(seq_id, prompt_ids)      # prefill only prompt_ids[cached:]
    bm.append(seq_id, next_id)                    # one decode token (or a list of them)
    bm.fork(seq_id, child_id)                     # parallel sampling / beam search
    bm.free(seq_id)

A slot is `block * block_size + offset`; the KV of token i of a sequence lives in slot
`table[i // block_size] * block_size + i % block_size`.

Prefix caching: a full block is identified by a chained hash (its parent block's hash + its own
token ids, rooted in an optional `cache_salt`), and a prompt reuses the longest run of cached full
blocks from its start. Blocks whose last holder is freed stay findable ("cached-free") and are
evicted least recently used first, only once the plain free pool is empty.
Token ids alone do not identify multimodal content (every image placeholder is token 151655): pass
a `cache_salt` derived from the image/audio/video inputs, or prompts with different media would
share KV.

Step protocol (what the manager assumes of its caller, as in vLLM):
  1. scheduling: allocate / append / fork / free for this step;
  2. `pop_pending_copies()` and execute them (copy_blocks) before any KV write of the step;
  3. `slot_mapping` -> store_kv, then attention, layer by layer.
Blocks are findable by prefix caching from the step that writes them: in one forward pass every
layer stores all new KV before its attention reads, so a prompt that hits blocks being prefilled
in the same step reads them correctly. A caller that prefills one prompt in chunks over several
steps must not let other prompts hit its not-yet-written blocks (disable prefix caching or
allocate the followers after the prefill finished). Fork a sequence only after the KV of all its
tokens has been written (not between append and the step that writes it).
"""
import hashlib
import operator
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

_MAX_TOKEN_ID = 2**63 - 1  # token ids are hashed as int64


class OutOfBlocksError(RuntimeError):
    """Not enough free KV-cache blocks; the manager's state is unchanged, so the caller can
    preempt or wait and retry."""

    def __init__(self, needed: int, free: int, what: str):
        self.needed = needed
        self.free = free
        super().__init__(f"out of KV-cache blocks: {what} needs {needed} free block(s), only {free} free")


def _block_digest(parent: bytes, token_ids: Sequence[int]) -> bytes:
    # 128-bit blake2b: deterministic across processes (unlike hash()) and fast; hits are still
    # verified against the stored token ids and parent digest.
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


def _root_digest(cache_salt) -> bytes:
    if cache_salt is None:
        return b""
    if isinstance(cache_salt, str):
        cache_salt = cache_salt.encode()
    if not isinstance(cache_salt, (bytes, bytearray)):
        raise ValueError(f"cache_salt must be bytes, str or None, got {type(cache_salt).__name__}")
    return hashlib.blake2b(b"salt:" + bytes(cache_salt), digest_size=16).digest()


def _token_list(name: str, tokens) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() > 1 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {tokens.dtype} of shape {tuple(tokens.shape)}")
        tokens = tokens.reshape(-1).tolist()
    elif isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise ValueError(f"{name} must be a sequence of int token ids, got {type(tokens).__name__}")
    out = []
    for t in tokens:
        if isinstance(t, bool):
            raise ValueError(f"{name} must contain int token ids, not bools")
        try:
            out.append(operator.index(t))
        except TypeError:
            raise ValueError(f"{name} must contain only int token ids, got a {type(t).__name__}") from None
    if not out:
        raise ValueError(f"{name} is empty: need at least one token id")
    if min(out) < 0 or max(out) > _MAX_TOKEN_ID:
        raise ValueError(f"{name} has a token id outside [0, 2**63): min {min(out)}, max {max(out)}")
    return out


def _seq_id(name: str, seq_id) -> int:
    if isinstance(seq_id, bool) or not isinstance(seq_id, int):
        raise ValueError(f"{name} must be an int, got {type(seq_id).__name__}")
    return seq_id


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(slots=True)
class _Seq:
    tokens: list[int]     # every token id (hashing blocks as they fill needs them)
    blocks: list[int]     # the block table
    digests: list[bytes]  # chained digest of each full block (only with prefix caching)
    root: bytes           # digest the chain starts from (cache_salt)


class BlockManager:
    """Allocates fixed-size KV blocks to sequences, with ref-counted sharing (fork, prefix
    caching), copy-on-write and LRU eviction of cached blocks. Pure Python; no tensors are held."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = _positive_int("num_blocks", num_blocks)
        self.block_size = _positive_int("block_size", block_size)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        # Number of live sequences holding each block.
        self._ref = [0] * num_blocks
        # Pending copies pin their blocks: a block freed between copy-on-write and the copy being
        # executed must not be handed out again (a parallel copy_blocks would race on it).
        self._pins = [0] * num_blocks
        # Popped from the end, so block 0 is handed out first.
        self._free = list(range(num_blocks - 1, -1, -1))
        # Cached-free: ref 0 but still findable by hash; LRU first, most recently freed last.
        self._cached_free: OrderedDict[int, None] = OrderedDict()
        self._index: dict[bytes, int] = {}                       # digest -> block
        self._block_key: dict[int, tuple[bytes, bytes, tuple]] = {}  # indexed block -> (digest, parent, tokens)
        self._seqs: dict[int, _Seq] = {}
        self._pending: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: the free pool plus evictable cached blocks."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._cached_free)

    @property
    def seq_ids(self) -> list[int]:
        return list(self._seqs)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._seqs

    def ref_count(self, block: int) -> int:
        """Number of live sequences holding `block`."""
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be an int in [0, {self.num_blocks}), got {block!r}")
        return self._ref[block]

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._get(seq_id).blocks)

    def seq_len(self, seq_id: int) -> int:
        return len(self._get(seq_id).tokens)

    def token_ids(self, seq_id: int) -> list[int]:
        return list(self._get(seq_id).tokens)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-_positive_int("num_tokens", num_tokens) // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        """True if a prompt of `num_tokens` fits even with no prefix-cache hit."""
        return self.blocks_needed(num_tokens) <= self.num_free_blocks

    def can_append(self, seq_id: int, num_tokens: int = 1) -> bool:
        return self._append_cost(self._get(seq_id), _positive_int("num_tokens", num_tokens)) <= self.num_free_blocks

    # ------------------------------------------------------------------ mutations
    def allocate(self, seq_id: int, token_ids, cache_salt=None) -> int:
        """Give a new sequence the blocks for its prompt. Returns how many leading prompt tokens
        are already in the cache (a multiple of block_size, at most len - 1 so the last token is
        always computed and yields logits); prefill only token_ids[returned:]."""
        _seq_id("seq_id", seq_id)
        if seq_id in self._seqs:
            raise ValueError(f"seq_id {seq_id} is already allocated (free it first)")
        tokens = _token_list("token_ids", token_ids)
        root = _root_digest(cache_salt)
        bs = self.block_size
        n_full = len(tokens) // bs
        digests = []
        parent = root
        if self.enable_prefix_caching:
            for i in range(n_full):
                parent = _block_digest(parent, tokens[i * bs:(i + 1) * bs])
                digests.append(parent)

        # Longest verified run of cached blocks, capped below the last token.
        hits: list[int] = []
        if self.enable_prefix_caching:
            parent = root
            for i in range((len(tokens) - 1) // bs):
                block = self._lookup(digests[i], parent, tokens[i * bs:(i + 1) * bs])
                if block is None:
                    break
                hits.append(block)
                parent = digests[i]

        total = -(-len(tokens) // bs)
        new = total - len(hits)
        # A hit on a cached-free block uses up one free block; a hit on a live one costs nothing.
        hit_cached_free = sum(1 for b in hits if b in self._cached_free)
        if new + hit_cached_free > self.num_free_blocks:
            raise OutOfBlocksError(new + hit_cached_free, self.num_free_blocks, f"a {len(tokens)}-token prompt")

        # Claim the hits before taking fresh blocks so eviction cannot pick them.
        for b in hits:
            self._cached_free.pop(b, None)
            self._ref[b] += 1
        blocks = hits + [self._take() for _ in range(new)]
        seq = _Seq(tokens, blocks, digests, root)
        self._seqs[seq_id] = seq
        for i in range(len(hits), n_full):
            self._register(seq, i)
        return len(hits) * bs

    def append(self, seq_id: int, token_id_or_ids) -> None:
        """Grow a sequence by one or several tokens, taking new blocks as needed. If its last block
        is partly filled and shared, it is copied first (the copy is queued for
        `pop_pending_copies`)."""
        seq = self._get(seq_id)
        if isinstance(token_id_or_ids, int) and not isinstance(token_id_or_ids, bool):
            new_tokens = _token_list("token_id_or_ids", [token_id_or_ids])
        else:
            new_tokens = _token_list("token_id_or_ids", token_id_or_ids)
        bs = self.block_size
        old_len = len(seq.tokens)
        if old_len % bs and self._ref[seq.blocks[-1]] > 1 and any(d == seq.blocks[-1] for _, d in self._pending):
            # Its content is a copy plus a write that have not run yet; copying it now would copy
            # stale data (and copy_blocks forbids a destination that is also a source).
            raise ValueError(f"seq_id {seq_id}: its last block {seq.blocks[-1]} is the destination of a pending "
                             "copy (it was forked after a copy-on-write in this step); run the step "
                             "(pop_pending_copies + KV writes) before appending to it")
        cost = self._append_cost(seq, len(new_tokens))
        if cost > self.num_free_blocks:
            raise OutOfBlocksError(cost, self.num_free_blocks, f"appending {len(new_tokens)} token(s) to seq {seq_id}")

        if old_len % bs and self._ref[seq.blocks[-1]] > 1:
            src = seq.blocks[-1]
            dst = self._take()
            self._ref[src] -= 1  # still > 0: another sequence holds it
            self._pins[src] += 1
            self._pins[dst] += 1
            self._pending.append((src, dst))
            seq.blocks[-1] = dst
        seq.tokens.extend(new_tokens)
        for _ in range(-(-len(seq.tokens) // bs) - len(seq.blocks)):
            seq.blocks.append(self._take())
        if self.enable_prefix_caching:
            for i in range(old_len // bs, len(seq.tokens) // bs):
                seq.digests.append(_block_digest(seq.digests[i - 1] if i else seq.root, seq.tokens[i * bs:(i + 1) * bs]))
                self._register(seq, i)

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (copy-on-write on the first divergent append)."""
        parent = self._get(parent_id, "parent_id")
        _seq_id("child_id", child_id)
        if child_id in self._seqs:
            raise ValueError(f"child_id {child_id} is already allocated")
        for b in parent.blocks:
            self._ref[b] += 1
        self._seqs[child_id] = _Seq(list(parent.tokens), list(parent.blocks), list(parent.digests), parent.root)

    def free(self, seq_id: int) -> None:
        seq = self._get(seq_id)
        del self._seqs[seq_id]
        # Tail first, so a freed prompt's prefix blocks are the last of it to be evicted.
        for b in reversed(seq.blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0 and self._pins[b] == 0:
                self._release(b)

    @property
    def pending_copies(self) -> list[tuple[int, int]]:
        """The queued (src, dst) copies, without popping them."""
        return list(self._pending)

    def pop_pending_copies(self) -> list[tuple[int, int]]:
        """The (src, dst) block copies queued by copy-on-write since the last call; execute them
        (all layers, K and V) before this step writes any KV."""
        pending, self._pending = self._pending, []
        for src, dst in pending:
            for b in (src, dst):
                self._pins[b] -= 1
                if self._ref[b] == 0 and self._pins[b] == 0:
                    self._release(b)
        return pending

    # ------------------------------------------------------------------ tensors
    def build_block_tables(self, seq_ids: Sequence[int], device, max_blocks: int | None = None,
                           pad_value: int = 0) -> torch.Tensor:
        """int32 [B, max_blocks] block tables, row i for seq_ids[i]. Padding is 0 by default (as in
        vLLM): a valid block index, so a kernel that strays past seq_len still reads in bounds; the
        kernels mask by seq_len. `max_blocks` fixes the width (CUDA graphs); default: the longest."""
        seqs = self._batch(seq_ids)
        lengths = [len(s.blocks) for s in seqs]
        width = max(lengths, default=0)
        if max_blocks is not None:
            _positive_int("max_blocks", max_blocks)
            if max_blocks < width:
                raise ValueError(f"max_blocks={max_blocks} is less than the longest block table ({width} blocks)")
            width = max_blocks
        if isinstance(pad_value, bool) or not isinstance(pad_value, int):
            raise ValueError(f"pad_value must be an int, got {pad_value!r}")
        return self._table_tensor([s.blocks for s in seqs], lengths, width, pad_value).to(device=device, dtype=torch.int32)

    def seq_lens_tensor(self, seq_ids: Sequence[int], device) -> torch.Tensor:
        """int32 [B] current lengths (cached + new tokens), as the attention kernels take them."""
        return torch.tensor([len(s.tokens) for s in self._batch(seq_ids)], dtype=torch.int32, device=device)

    def slot_mapping(self, seq_ids: Sequence[int], num_new_tokens, device) -> torch.Tensor:
        """int64 [sum(num_new_tokens)] slots of the tokens written this step: the last
        num_new_tokens[i] tokens of each sequence (a prefill chunk, or 1 for decode), sequences in
        order. `num_new_tokens` may be one int for all."""
        seq_ids = seq_ids.tolist() if isinstance(seq_ids, torch.Tensor) else list(seq_ids)
        seqs = self._batch(seq_ids)
        if isinstance(num_new_tokens, int) and not isinstance(num_new_tokens, bool):
            num_new_tokens = [num_new_tokens] * len(seqs)
        elif isinstance(num_new_tokens, torch.Tensor):
            num_new_tokens = num_new_tokens.tolist()
        counts = list(num_new_tokens)
        if len(counts) != len(seqs):
            raise ValueError(f"num_new_tokens has {len(counts)} entries for {len(seqs)} seq_ids")
        for sid, s, n in zip(seq_ids, seqs, counts):
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(s.tokens):
                raise ValueError(f"num_new_tokens for seq {sid} must be an int in [0, {len(s.tokens)}], got {n!r}")
        if not seqs:
            return torch.empty(0, dtype=torch.int64, device=device)
        bs = self.block_size
        # Per sequence only the blocks its new tokens fall in (one for a decode token).
        first_block = [(len(s.tokens) - n) // bs for s, n in zip(seqs, counts)]
        spans = [s.blocks[f:-(-len(s.tokens) // bs)] if n else [] for s, n, f in zip(seqs, counts, first_block)]
        table = self._table_tensor(spans, [len(b) for b in spans], max(map(len, spans)), 0)
        n = torch.tensor(counts, dtype=torch.int64)
        # Offset of each new token within its sequence's span (which starts at a block boundary).
        starts = torch.tensor([len(s.tokens) - c - f * bs for s, c, f in zip(seqs, counts, first_block)],
                              dtype=torch.int64)
        total = int(n.sum())
        row = torch.repeat_interleave(torch.arange(len(seqs)), n, output_size=total)
        first = torch.cumsum(n, 0) - n  # index of each sequence's first new token in the output
        pos = torch.arange(total) - first[row] + starts[row]
        slots = table[row, pos // bs] * bs + pos % bs
        return slots.to(device)

    # ------------------------------------------------------------------ internals
    def _get(self, seq_id, name: str = "seq_id") -> _Seq:
        _seq_id(name, seq_id)
        seq = self._seqs.get(seq_id)
        if seq is None:
            raise ValueError(f"{name} {seq_id} is not allocated")
        return seq

    def _batch(self, seq_ids: Sequence[int]) -> list[_Seq]:
        if isinstance(seq_ids, torch.Tensor):
            seq_ids = seq_ids.tolist()
        seq_ids = list(seq_ids)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids has duplicates: {seq_ids}")
        return [self._get(s) for s in seq_ids]

    @staticmethod
    def _table_tensor(rows: list[list[int]], lengths: list[int], width: int, pad_value: int) -> torch.Tensor:
        table = torch.full((len(rows), width), pad_value, dtype=torch.int64)
        flat = [b for r in rows for b in r]
        if flat:
            # Row-major mask order is the order of the concatenated block lists.
            table[torch.arange(width) < torch.tensor(lengths)[:, None]] = torch.tensor(flat, dtype=torch.int64)
        return table

    def _append_cost(self, seq: _Seq, num_new: int) -> int:
        n = len(seq.tokens)
        cost = -(-(n + num_new) // self.block_size) - len(seq.blocks)
        if n % self.block_size and self._ref[seq.blocks[-1]] > 1:
            cost += 1  # copy-on-write of the shared partial block
        return cost

    def _take(self) -> int:
        """A fresh block (ref 1): the free pool first, else evict the LRU cached block.
        Callers check availability first."""
        if self._free:
            b = self._free.pop()
        else:
            b, _ = self._cached_free.popitem(last=False)
            digest = self._block_key.pop(b)[0]
            del self._index[digest]
        self._ref[b] = 1
        return b

    def _release(self, b: int) -> None:
        if b in self._block_key:
            self._cached_free[b] = None  # most recently used end
        else:
            self._free.append(b)

    def _lookup(self, digest: bytes, parent: bytes, tokens: list[int]) -> int | None:
        b = self._index.get(digest)
        if b is None:
            return None
        _, stored_parent, stored_tokens = self._block_key[b]
        if stored_parent != parent or stored_tokens != tuple(tokens):
            return None  # digest collision
        return b

    def _register(self, seq: _Seq, i: int) -> None:
        """Make seq's full block i findable, unless an identical block already is."""
        if not self.enable_prefix_caching:
            return
        digest = seq.digests[i]
        if digest in self._index:
            return
        b = seq.blocks[i]
        bs = self.block_size
        parent = seq.digests[i - 1] if i else seq.root
        self._index[digest] = b
        self._block_key[b] = (digest, parent, tuple(seq.tokens[i * bs:(i + 1) * bs]))
