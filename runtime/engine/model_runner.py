"""Between the scheduler and the model: prepare -> forward (eager, or a captured CUDA graph) ->
logits.

`prepare` turns the scheduled (sequence, n tokens) items into one packed step: host metadata is
built here (slots from each sequence's block table, positions from its kept inputs) and copied
once into the StepState's persistent buffers. A decode step is padded to a capture size when CUDA
graphs are on (or `pad_decode=True`, which runs the same static-buffer path eagerly -- on the CPU
that is how the discipline is tested); its input embeddings then go to a persistent buffer too
(other steps use them where they are: no copy of a long prefill's embeddings). Nothing
inside the forward reads the device on the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..layers import CHUNKED_PREFILL, DECODE, PREFILL
from .cuda_graphs import DecodeGraphs, bucket_for, capture_sizes
from .step_state import StepState

__all__ = ["ModelRunner", "StepOutputs"]


@dataclass
class StepOutputs:
    """hidden_states / inputs_embeds (N, H) of the step's real rows (views: consume before the
    next step); logits (M, V) of the requested rows; spans: (start row, count) per item."""

    hidden_states: torch.Tensor
    inputs_embeds: torch.Tensor
    logits: Optional[torch.Tensor]
    spans: list[tuple[int, int]]
    mode: str


class ModelRunner:
    def __init__(self, model, kv_cache, *, max_num_seqs: int, max_num_tokens: int, max_model_len: int,
                 cuda_graphs: bool = False, pad_decode: bool = False):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.device, self.dtype = model.device, model.dtype
        self.kv_caches = list(zip(kv_cache.key_caches, kv_cache.value_caches))
        self.sizes = capture_sizes(max_num_seqs)
        self.max_num_tokens = max(max_num_tokens, self.sizes[-1])
        self.pad_decode = bool(pad_decode or cuda_graphs)
        max_blocks = -(-max_model_len // self.block_size)
        # With graphs the split-KV factor must not depend on the step: fix it from the model length.
        self.state = StepState(self.max_num_tokens, self.sizes[-1], max_blocks, self.device,
                               max_seq_len=max_model_len if self.pad_decode else None)
        # input embeddings of a padded decode step (only decode replays a graph)
        self.embeds = torch.zeros(self.sizes[-1], model.hidden_size, dtype=self.dtype, device=self.device)
        self.graphs: Optional[DecodeGraphs] = None
        if cuda_graphs:
            self.graphs = DecodeGraphs(model, self.state, self.kv_caches, self.embeds, self.sizes)
            self.graphs.capture()

    # ------------------------------------------------------------------ prepare
    def _slots(self, table: list[int], start: int, n: int) -> list[int]:
        bs = self.block_size
        return [table[i // bs] * bs + i % bs for i in range(start, start + n)]

    def _decode_inputs(self, items):
        """The common case, without per-sequence tensors: one generated token per sequence."""
        bm, bs = self.kv_cache.block_manager, self.block_size
        ids, pos, slots, tables, seq_lens, fed = [], [], [], [], [], []
        for seq, _ in items:
            i = seq.num_computed
            table = bm.block_table(seq.seq_id)
            ids.append(seq.token_ids[i])
            pos.append(i + seq.rope_delta)
            slots.append(table[i // bs] * bs + i % bs)
            tables.append(table)
            seq_lens.append(i + 1)
            fed.append(seq._fed[i - seq.num_prompt_tokens] if seq.external_inputs else None)
        b = len(items)
        if any(e is not None for e in fed):
            segments = [([t], None if e is None else e[None]) for t, e in zip(ids, fed)]
        else:
            segments = [(ids, None)]
        positions = torch.tensor(pos, dtype=torch.int64).expand(3, b)
        return (DECODE, ids, positions, segments, slots, self._table_tensor(tables), seq_lens, [1] * b,
                [(i, 1) for i in range(b)])

    @staticmethod
    def _table_tensor(tables) -> torch.Tensor:
        width = max(len(t) for t in tables)
        return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)

    def _inputs(self, items):
        if all(n == 1 and s.num_computed >= s.num_prompt_tokens > 0 for s, n in items):
            return self._decode_inputs(items)
        ids, positions, segments, slots, spans = [], [], [], [], []
        tables, seq_lens, qlens = [], [], []
        bm = self.kv_cache.block_manager
        for seq, n in items:
            start = seq.num_computed
            spans.append((len(ids), n))
            for seg_ids, seg_pos, seg_embeds in seq.inputs(start, n):
                ids.extend(seg_ids)
                positions.append(seg_pos)
                segments.append((seg_ids, seg_embeds))
            table = bm.block_table(seq.seq_id)
            slots.extend(self._slots(table, start, n))
            tables.append(table)
            seq_lens.append(start + n)
            qlens.append(n)
        if all(s.num_computed == 0 for s, _ in items):
            mode = PREFILL
        elif all(n == 1 for _, n in items):
            mode = DECODE
        else:
            mode = CHUNKED_PREFILL
        return mode, ids, torch.cat(positions, 1), segments, slots, self._table_tensor(tables), seq_lens, qlens, spans

    def _embed(self, segments, n: int) -> torch.Tensor:
        """The step's input embeddings: token embeddings, with caller-given rows where given."""
        if all(e is None for _, e in segments):
            return self.model.embed(self.state.input_ids[:n])
        parts, row = [], 0
        for seg_ids, seg_embeds in segments:
            k = len(seg_ids)
            parts.append(self.model.embed(self.state.input_ids[row:row + k]) if seg_embeds is None else seg_embeds)
            row += k
        return torch.cat(parts)

    # ------------------------------------------------------------------ run
    @torch.inference_mode()
    def execute(self, items, logit_rows: list[int]) -> StepOutputs:
        """items: [(sequence, n new tokens)] (their blocks already allocated); logit_rows: the
        packed rows that need logits."""
        mode, ids, positions, segments, slots, tables, seq_lens, qlens, spans = self._inputs(items)
        n = len(ids)
        pad_to = bucket_for(len(items), self.sizes) if mode == DECODE and self.pad_decode else None
        self.kv_cache.apply_pending_copies()
        state = self.state.prepare(mode, ids, positions, slots, tables, seq_lens, qlens, pad_to=pad_to)
        x = self._embed(segments, n)
        if pad_to is not None:  # the static-buffer path (what a graph replays): pad rows are zeros
            self.embeds[:n].copy_(x)
            self.embeds[n:pad_to].zero_()
            x = self.embeds[:n]
        if self.graphs is not None and mode == DECODE:
            hidden = self.graphs.replay(pad_to)
        else:
            hidden = self.model.forward_embeds(x if pad_to is None else self.embeds[:pad_to], state, self.kv_caches)
        hidden = hidden[:n]
        logits = None
        if logit_rows:
            rows = hidden if logit_rows == list(range(n)) else hidden[torch.tensor(logit_rows, device=self.device)]
            logits = self.model.compute_logits(rows)
        return StepOutputs(hidden, x, logits, spans, mode)
