"""Which sequences run in the next step, and how many of their tokens.

One step mixes decode rows and prefill chunks under a token budget (chunked prefill): running
sequences first, oldest first -- each decode row costs one token --, then pending prompt chunks of
running sequences, then new admissions (FCFS: a waiting request that does not fit stops later
ones from jumping it). So a long new prompt is prefilled over several steps while the running
streams keep decoding every step.

Sequences waiting for outside input (a streamed prompt between chunks, an external input not yet
fed) lend their blocks: when a queued request cannot be admitted, the newest idle one is parked
(preempted, readmitted once its input arrives, then recomputed).

Memory: blocks are taken as tokens are written (the block manager grows a sequence chunk by chunk),
not reserved for prompt + max_new_tokens. When a running sequence needs a block and none is free,
the newest running sequence not yet in this step is preempted: its blocks are freed, it goes back
to the front of the waiting queue and is recomputed from its kept inputs when blocks free up (its
generated tokens are kept, not resampled). Nothing crashes and nothing is lost; with greedy
decoding the outputs are identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omni_kernels.block_manager import OutOfBlocksError

from .sequence import RUNNING, WAITING, Sequence

__all__ = ["Scheduler", "ScheduledBatch", "KVCacheFullError"]


class KVCacheFullError(RuntimeError):
    """The paged KV cache cannot hold what must be written now and nothing can be preempted."""


@dataclass
class ScheduledBatch:
    """(sequence, number of new tokens) per scheduled sequence, in step order; the sequences
    preempted to make room."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)


class Scheduler:
    def __init__(self, block_manager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 prefill_chunk_size: Optional[int] = None):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_size = prefill_chunk_size
        self.waiting: list[Sequence] = []   # by arrival (seq_id), preempted ones included
        self.running: list[Sequence] = []   # by arrival
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted), freeing its blocks at once."""
        if seq.status == RUNNING:
            self.block_manager.free(seq.seq_id)
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        chunk = self.prefill_chunk_size or budget
        in_step: set[int] = set()
        # running: decode rows (1 token) before prompt chunks, oldest first within each
        order = sorted((s for s in self.running if s.num_schedulable > 0),
                       key=lambda s: (s.num_computed < s.num_prompt_tokens, s.seq_id))
        for seq in order:
            if budget == 0 or len(batch.items) == self.max_num_seqs:
                break
            if seq.status != RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_schedulable, budget, chunk)
            if self._grow_running(seq, n, in_step, batch):
                batch.items.append((seq, n))
                in_step.add(seq.seq_id)
                budget -= n
        for seq in sorted(self.waiting, key=lambda s: s.seq_id):
            if budget == 0 or len(batch.items) == self.max_num_seqs or len(self.running) >= self.max_num_seqs:
                break
            if seq.num_schedulable == 0 or seq.parked:
                continue  # waiting for outside input: it does not hold the line
            n = min(seq.num_schedulable, budget, chunk)
            cached = None if seq in batch.preempted else self._admit(seq, n)
            while cached is None and seq not in batch.preempted:
                # blocks held by sequences that wait for outside input are lent to the queue
                idle = [s for s in self.running if s.waiting_for_input and s.seq_id not in in_step]
                if not idle:
                    break
                self.park(max(idle, key=lambda s: s.seq_id))
                cached = self._admit(seq, n)
            if cached is None:
                break
            batch.items.append((seq, n - cached))
            in_step.add(seq.seq_id)
            budget -= n
        return batch

    def _admit(self, seq: Sequence, n: int) -> Optional[int]:
        """Give a waiting sequence blocks for its first n tokens; returns the prefix-cache hit
        (tokens whose KV is already cached: at most n - 1), or None when the blocks are not free."""
        try:
            cached = self.block_manager.allocate(seq.seq_id, seq.token_ids[:n], cache_salt=seq.cache_salt)
        except OutOfBlocksError:
            return None
        self.waiting.remove(seq)
        self.running.append(seq)
        self.running.sort(key=lambda s: s.seq_id)
        seq.status = RUNNING
        seq.num_computed = cached
        return cached

    def _grow_running(self, seq: Sequence, n: int, in_step: set, batch: ScheduledBatch) -> bool:
        bm = self.block_manager
        start = bm.seq_len(seq.seq_id)
        ids = seq.token_ids[start:seq.num_computed + n]
        while True:
            try:
                if ids:
                    bm.append(seq.seq_id, ids)
                return True
            except OutOfBlocksError as e:
                if len(self.running) == 1:  # alone and still short: someone else holds the blocks
                    raise KVCacheFullError(
                        f"KV cache full while writing {len(ids)} token(s) of {seq!r}: {e}; nothing else holds "
                        "blocks that could be freed (is the cache shared with another user?)") from e
                # the newest running sequence not yet in this step -- possibly this one itself
                victim = max((s for s in self.running if s.seq_id not in in_step), key=lambda s: s.seq_id)
                self.preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    return False

    def park(self, seq: Sequence) -> None:
        """Preempt a sequence that waits for outside input; it is not readmitted until some
        arrives (so two idle sequences cannot keep trading places)."""
        self.preempt(seq)
        seq.parked = True

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks; it is recomputed from its inputs when readmitted."""
        self.block_manager.free(seq.seq_id)
        self.running.remove(seq)
        seq.status = WAITING
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(seq)
