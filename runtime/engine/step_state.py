"""The per-step context: everything one forward needs besides the weights, in persistent device
buffers allocated once at their maximum sizes (a captured CUDA graph reads the same memory on
every replay).

After `prepare(...)` these attributes are views of the buffers, sized for the step:
  mode            "prefill" | "chunked_prefill" | "decode"
  input_ids       (N,) int64 token ids
  positions       (3, N) int64 TMRoPE positions (a view of one flat buffer, contiguous)
  slot_mapping    (N,) int64 cache slot of each token (-1: write nowhere, for pad rows)
  block_tables    (B, max_blocks_per_seq) int32 (full width: rows stay contiguous)
  seq_lens        (B,) int32 cached tokens per sequence, this step's included
  cu_seqlens_q    (B + 1,) int32 boundaries of each sequence's tokens
  logits_indices  (M,) int64 rows that get logits, or None for all N rows
and host ints num_tokens, num_seqs, max_seqlen_q, max_seq_len (so no op reads the device on the
host). `pad_to` pads a decode step to a capture size with rows that write nowhere: slot -1,
seq_len 1, block table row 0, position 0.
"""
from __future__ import annotations

from typing import Optional, Sequence as Seq

import torch

from ..layers import CHUNKED_PREFILL, DECODE, PREFILL
from .requests import positive_int

__all__ = ["StepState"]


class StepState:
    def __init__(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int, device,
                 max_seq_len: Optional[int] = None):
        self.max_num_tokens = positive_int("max_num_tokens", max_num_tokens)
        self.max_num_seqs = positive_int("max_num_seqs", max_num_seqs)
        self.max_blocks_per_seq = positive_int("max_blocks_per_seq", max_blocks_per_seq)
        self.device = torch.device(device)
        # Steers the split-KV factor of decode; a constant (the model's longest length) so a graph
        # captured once fits every later replay.
        self.fixed_max_seq_len = max_seq_len
        dev = dict(device=self.device)
        self._input_ids = torch.zeros(max_num_tokens, dtype=torch.int64, **dev)
        self._positions = torch.zeros(3 * max_num_tokens, dtype=torch.int64, **dev)
        self._slot_mapping = torch.full((max_num_tokens,), -1, dtype=torch.int64, **dev)
        self._block_tables = torch.zeros((max_num_seqs, max_blocks_per_seq), dtype=torch.int32, **dev)
        self._seq_lens = torch.ones(max_num_seqs, dtype=torch.int32, **dev)
        self._cu_seqlens_q = torch.zeros(max_num_seqs + 1, dtype=torch.int32, **dev)
        self._logits_indices = torch.zeros(max_num_tokens, dtype=torch.int64, **dev)
        self.mode: Optional[str] = None
        self.num_tokens = self.num_seqs = self.num_real_seqs = self.max_seqlen_q = self.max_seq_len = 0
        self.input_ids = self.positions = self.slot_mapping = self.block_tables = None
        self.seq_lens = self.cu_seqlens_q = self.logits_indices = None

    def prepare(self, mode: str, input_ids, positions: torch.Tensor, slot_mapping, block_tables: torch.Tensor,
                seq_lens: Seq[int], query_lens: Seq[int], logits_indices: Optional[Seq[int]] = None,
                pad_to: Optional[int] = None) -> "StepState":
        """Copy one step's host metadata into the buffers. positions (3, N); block_tables (B, w);
        query_lens: new tokens per sequence (sums to N); pad_to: decode batch size to pad to."""
        n, b = int(positions.shape[1]), len(seq_lens)
        if mode not in (PREFILL, CHUNKED_PREFILL, DECODE):
            raise ValueError(f"unknown mode {mode!r}")
        padded = b if pad_to is None else pad_to
        if pad_to is not None and (mode != DECODE or pad_to < b):
            raise ValueError(f"pad_to={pad_to} needs a decode step of at most that many sequences")
        if not 1 <= n <= self.max_num_tokens or not 1 <= padded <= self.max_num_seqs:
            raise ValueError(f"a step of {n} tokens in {padded} sequences exceeds the StepState's "
                             f"{self.max_num_tokens} tokens / {self.max_num_seqs} sequences")
        if sum(query_lens) != n or len(query_lens) != b or len(input_ids) != n:
            raise ValueError(f"query_lens {list(query_lens)} / input_ids ({len(input_ids)}) do not match N={n}")
        width = block_tables.shape[1]
        if width > self.max_blocks_per_seq:
            raise ValueError(f"block table width {width} exceeds max_blocks_per_seq {self.max_blocks_per_seq}")
        total = n + padded - b  # tokens after padding
        nb = dict(non_blocking=True)
        as_long = lambda x: x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)  # noqa: E731
        self._input_ids[:n].copy_(as_long(input_ids), **nb)
        self._positions[:3 * total].view(3, total)[:, :n].copy_(positions, **nb)
        self._slot_mapping[:n].copy_(as_long(slot_mapping), **nb)
        self._block_tables[:b, :width].copy_(block_tables, **nb)
        self._seq_lens[:b].copy_(torch.tensor(list(seq_lens), dtype=torch.int32), **nb)
        cu = torch.zeros(padded + 1, dtype=torch.int32)
        cu[1:b + 1] = torch.tensor(list(query_lens), dtype=torch.int32).cumsum(0)
        if padded > b:  # pad rows: one token each that writes nowhere and reads block 0
            cu[b + 1:] = n + torch.arange(1, padded - b + 1, dtype=torch.int32)
            self._input_ids[n:total].zero_()
            self._positions[:3 * total].view(3, total)[:, n:].zero_()
            self._slot_mapping[n:total].fill_(-1)
            self._block_tables[b:padded].zero_()
            self._seq_lens[b:padded].fill_(1)
            n = total
        self._cu_seqlens_q[:padded + 1].copy_(cu, **nb)
        self.mode, self.num_tokens, self.num_seqs, self.num_real_seqs = mode, n, padded, b
        self.max_seqlen_q = max(query_lens)
        self.max_seq_len = self.fixed_max_seq_len or max(seq_lens)
        self._views(n, padded)
        if logits_indices is None or len(logits_indices) == n and list(logits_indices) == list(range(n)):
            self.logits_indices = None
        else:
            m = len(logits_indices)
            self._logits_indices[:m].copy_(torch.tensor(list(logits_indices), dtype=torch.int64), **nb)
            self.logits_indices = self._logits_indices[:m]
        return self

    def _views(self, n: int, b: int) -> None:
        self.input_ids = self._input_ids[:n]
        self.positions = self._positions[:3 * n].view(3, n)
        self.slot_mapping = self._slot_mapping[:n]
        self.block_tables = self._block_tables[:b]
        self.seq_lens = self._seq_lens[:b]
        self.cu_seqlens_q = self._cu_seqlens_q[:b + 1]

    def decode_views(self, batch: int) -> "StepState":
        """Point the views at the first `batch` rows as a decode step (CUDA-graph capture)."""
        self.mode, self.num_tokens, self.num_seqs, self.num_real_seqs = DECODE, batch, batch, batch
        self.max_seqlen_q, self.max_seq_len = 1, self.fixed_max_seq_len or 1
        self._views(batch, batch)
        self.logits_indices = None
        return self
