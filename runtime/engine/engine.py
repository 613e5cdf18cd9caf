"""Thinker generation: the per-step state, a small scheduler, and the streamed generate loop.

    model = ThinkerLM.from_checkpoint(ckpt, device="cuda", dtype=torch.bfloat16)
    engine = ThinkerEngine(model, max_num_seqs=8, max_model_len=8192)
    for ev in engine.generate([prompt_ids], SamplingParams(max_new_tokens=64, stop_token_ids=(eos,)),
                              detokenizer=tokenizer):
        print(ev.text, end="", flush=True)

One object owns each kind of state:
- `StepState`: what one forward step needs besides the weights -- token ids, TMRoPE positions (3, N),
  slot mapping, block tables, sequence lengths, cu_seqlens, logits rows -- on the device, in
  persistent buffers allocated once at their maximum sizes (CUDA-graph capture can reuse them).
- `Sequence`: one request -- prompt (ids, positions, optional multimodal embeddings, possibly still
  growing: streaming input), rope delta, sampling params and generator, outputs, optional per-position
  hidden states / input embeddings (what the Talker consumes) and logits.
- `ThinkerEngine`: the model, the `PagedKVCache` and its block manager, the scheduler. `step()` runs
  one forward -- a (chunked) prefill of pending prompt tokens, or a decode of every running sequence
  -- and returns the new tokens; `generate()` loops `step()` and streams them.

Positions: prompt positions come from `omni_kernels.rope_index` (text-only prompts get them
computed here; multimodal prompts pass theirs). A prompt token appended without positions continues
from (max position so far) + 1 on all three axes, which is exactly TMRoPE's rule for text and audio
tokens (streaming audio chunks need no positions). Decode token at cache index i sits at
i + rope_delta on all axes, rope_delta = max(prompt positions) + 1 - prompt_len.

Memory: a sequence is admitted only when the blocks for its whole budget (prompt + max_new_tokens,
capped at max_model_len) fit next to the budgets of the running ones, so decoding never runs out
of blocks; a prompt that can never fit raises ValueError when it is added. Only a streamed prompt
that keeps growing can exhaust the cache mid-way: that raises `KVCacheFullError`.

Prefix caching (when the cache's block manager has it on): a block manager learns about a
sequence's tokens only in the step that writes their KV, so a hit always reads written KV.
Prompts with caller-supplied embeddings/positions, streamed prompts, and requests that keep hidden
states or logits never share blocks unless the caller gives a `cache_salt` identifying the content.
"""
from __future__ import annotations

import itertools
import operator
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence as Seq, Union

import torch

from omni_kernels import rope_index
from omni_kernels.block_manager import OutOfBlocksError
from omni_kernels.paged_kv_cache import PagedKVCache, bytes_per_block

from .sampling import SamplingParams, make_generator, sample, seen_mask
from ..models.thinker_lm import CHUNKED_PREFILL, DECODE, PREFILL, ThinkerLM

__all__ = ["StepState", "Sequence", "TokenEvent", "ThinkerEngine", "KVCacheFullError",
           "WAITING", "RUNNING", "FINISHED"]

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


class KVCacheFullError(RuntimeError):
    """The paged KV cache has no free block for tokens that must be written now."""


# ====================================================================================================
# StepState
# ====================================================================================================
class StepState:
    """Per-step attention metadata in persistent device buffers.

    After `prepare(...)` these attributes are views of the buffers, sized for the step:
      mode            "prefill" | "chunked_prefill" | "decode"
      input_ids       (N,) int64 token ids of the step
      positions       (3, N) int64 TMRoPE positions (contiguous: a view of a flat buffer)
      slot_mapping    (N,) int64 cache slot of each token
      block_tables    (B, max_blocks_per_seq) int32 (full width: rows stay contiguous)
      seq_lens        (B,) int32 cached tokens per sequence, this step's included
      cu_seqlens_q    (B + 1,) int32 boundaries of each sequence's tokens in the step
      logits_indices  (M,) int64 rows that get logits, or None for all N rows
    and host ints num_tokens, num_seqs, max_seqlen_q (longest chunk), max_seq_len (longest seq_len),
    so no op has to read device memory on the host.
    """

    def __init__(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int, device):
        for name, v in (("max_num_tokens", max_num_tokens), ("max_num_seqs", max_num_seqs),
                        ("max_blocks_per_seq", max_blocks_per_seq)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.device = torch.device(device)
        self.max_num_tokens = max_num_tokens
        self.max_num_seqs = max_num_seqs
        self.max_blocks_per_seq = max_blocks_per_seq
        dev = dict(device=self.device)
        self._input_ids = torch.zeros(max_num_tokens, dtype=torch.int64, **dev)
        self._positions = torch.zeros(3 * max_num_tokens, dtype=torch.int64, **dev)
        self._slot_mapping = torch.full((max_num_tokens,), -1, dtype=torch.int64, **dev)
        self._block_tables = torch.zeros((max_num_seqs, max_blocks_per_seq), dtype=torch.int32, **dev)
        self._seq_lens = torch.zeros(max_num_seqs, dtype=torch.int32, **dev)
        self._cu_seqlens_q = torch.zeros(max_num_seqs + 1, dtype=torch.int32, **dev)
        self._logits_indices = torch.zeros(max_num_tokens, dtype=torch.int64, **dev)
        self.mode: Optional[str] = None
        self.num_tokens = self.num_seqs = self.max_seqlen_q = self.max_seq_len = 0
        self.input_ids = self.positions = self.slot_mapping = self.block_tables = None
        self.seq_lens = self.cu_seqlens_q = self.logits_indices = None

    def prepare(self, mode: str, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                block_tables: torch.Tensor, seq_lens: Seq[int], query_lens: Seq[int],
                logits_indices: Optional[Seq[int]] = None) -> "StepState":
        """Copy one step's host-side metadata into the device buffers. positions (3, N), block
        tables (B, w <= max_blocks_per_seq); query_lens: new tokens per sequence (sums to N)."""
        n, b = int(positions.shape[1]), len(seq_lens)
        if mode not in (PREFILL, CHUNKED_PREFILL, DECODE):
            raise ValueError(f"unknown mode {mode!r}")
        if not 1 <= n <= self.max_num_tokens or not 1 <= b <= self.max_num_seqs:
            raise ValueError(f"a step of {n} tokens in {b} sequences exceeds the StepState's "
                             f"{self.max_num_tokens} tokens / {self.max_num_seqs} sequences")
        if sum(query_lens) != n or len(query_lens) != b or input_ids.shape[0] != n:
            raise ValueError(f"query_lens {list(query_lens)} / input_ids ({input_ids.shape[0]}) do not match N={n}")
        width = block_tables.shape[1]
        if width > self.max_blocks_per_seq:
            raise ValueError(f"block table width {width} exceeds max_blocks_per_seq {self.max_blocks_per_seq}")
        nb = dict(non_blocking=True)
        self._input_ids[:n].copy_(input_ids, **nb)
        self._positions[:3 * n].view(3, n).copy_(positions, **nb)
        self._slot_mapping[:n].copy_(slot_mapping, **nb)
        self._block_tables[:b, :width].copy_(block_tables, **nb)
        self._seq_lens[:b].copy_(torch.tensor(list(seq_lens), dtype=torch.int32), **nb)
        cu = torch.zeros(b + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(list(query_lens), dtype=torch.int32).cumsum(0)
        self._cu_seqlens_q[:b + 1].copy_(cu, **nb)
        self.mode, self.num_tokens, self.num_seqs = mode, n, b
        self.max_seqlen_q, self.max_seq_len = max(query_lens), max(seq_lens)
        self.input_ids = self._input_ids[:n]
        self.positions = self._positions[:3 * n].view(3, n)
        self.slot_mapping = self._slot_mapping[:n]
        self.block_tables = self._block_tables[:b]
        self.seq_lens = self._seq_lens[:b]
        self.cu_seqlens_q = self._cu_seqlens_q[:b + 1]
        if logits_indices is None or len(logits_indices) == n and list(logits_indices) == list(range(n)):
            self.logits_indices = None
        else:
            m = len(logits_indices)
            self._logits_indices[:m].copy_(torch.tensor(list(logits_indices), dtype=torch.int64), **nb)
            self.logits_indices = self._logits_indices[:m]
        return self


# ====================================================================================================
# Sequence
# ====================================================================================================
@dataclass
class _Piece:
    """Prompt tokens not yet prefilled: ids, positions (3, n) on the CPU, embeddings (n, H) or None."""

    ids: list[int]
    positions: torch.Tensor
    embeds: Optional[torch.Tensor]

    def split(self, n: int) -> tuple["_Piece", "_Piece"]:
        e = self.embeds
        return (_Piece(self.ids[:n], self.positions[:, :n], None if e is None else e[:n]),
                _Piece(self.ids[n:], self.positions[:, n:], None if e is None else e[n:]))


class Sequence:
    """One request. Read-only for callers, except through the engine's methods.

    token_ids: prompt then generated ids. output_ids / text: what was generated. finish_reason:
    "stop" (a stop id), "length" (max_new_tokens or max_model_len), "abort".
    With keep_hidden_states: `hidden_states` and `input_embeds` ((T, hidden), one row per position
    whose KV is cached -- the prompt, then every generated token that was fed back; the last
    generated token is never fed). With return_logits: `prompt_logits` (prompt_len, V) and
    `output_logits` (num_generated, V), fp32, the raw logits each generated token was sampled from.
    Timings (perf_counter seconds): t_added, t_first_token, t_finished.
    """

    def __init__(self, seq_id: int, params: SamplingParams, vocab_size: int):
        self.seq_id = seq_id
        self.params = params
        self.vocab_size = vocab_size
        self.status = WAITING
        self.token_ids: list[int] = []
        self.num_prompt_tokens = 0
        self.num_computed = 0        # tokens whose KV is in the cache
        self.prompt_complete = False
        self.rope_delta: Optional[int] = None
        self.max_position = -1       # over the prompt's positions so far
        self.output_ids: list[int] = []
        self.text = ""
        self.finish_reason: Optional[str] = None
        self.generator: Optional[torch.Generator] = None
        self.cache_salt = None
        self.keep_hidden_states = False
        self.return_logits = False
        self.detokenizer = None
        self.reserved_blocks = 0
        self._pending: list[_Piece] = []
        self._seen: Optional[torch.Tensor] = None
        self._hidden: list[torch.Tensor] = []
        self._embeds: list[torch.Tensor] = []
        self._prompt_logits: list[torch.Tensor] = []
        self._output_logits: list[torch.Tensor] = []
        self.t_added = time.perf_counter()
        self.t_first_token: Optional[float] = None
        self.t_finished: Optional[float] = None

    def __repr__(self):
        return (f"Sequence(id={self.seq_id}, status={self.status}, prompt={self.num_prompt_tokens}, "
                f"computed={self.num_computed}, out={len(self.output_ids)}, finish={self.finish_reason})")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def num_pending(self) -> int:
        return sum(len(p.ids) for p in self._pending)

    @property
    def ready_to_decode(self) -> bool:
        return (self.status == RUNNING and self.prompt_complete and not self._pending
                and len(self.output_ids) > 0 and self.num_computed < len(self.token_ids))

    @property
    def prompt_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @staticmethod
    def _cat(chunks):
        return torch.cat(chunks, 0) if chunks else None

    @property
    def hidden_states(self) -> Optional[torch.Tensor]:
        return self._cat(self._hidden)

    @property
    def input_embeds(self) -> Optional[torch.Tensor]:
        return self._cat(self._embeds)

    @property
    def prompt_logits(self) -> Optional[torch.Tensor]:
        return self._cat(self._prompt_logits)

    @property
    def output_logits(self) -> Optional[torch.Tensor]:
        return torch.stack(self._output_logits) if self._output_logits else None

    def _take(self, n: int) -> list[_Piece]:
        """Pop the first n pending prompt tokens."""
        out = []
        while n > 0:
            piece = self._pending[0]
            if len(piece.ids) <= n:
                out.append(self._pending.pop(0))
                n -= len(piece.ids)
            else:
                head, self._pending[0] = piece.split(n)
                out.append(head)
                n = 0
        return out


@dataclass
class TokenEvent:
    """One generated token: the sequence it belongs to, its id, the newly stable text ("" without a
    detokenizer, or while a multi-byte character is incomplete), and whether it ended the sequence."""

    seq: Sequence
    token_id: int
    text: str = ""
    finished: bool = False
    finish_reason: Optional[str] = None


# ====================================================================================================
# Engine
# ====================================================================================================
def _as_id_list(name: str, ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() > 2 or (
                ids.dim() == 2 and ids.shape[0] != 1):
            raise ValueError(f"{name} must be a 1-D integer tensor (or a list of ints), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        ids = ids.reshape(-1).tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"{name} must be a sequence of int token ids, got {type(ids).__name__}")
    out = []
    for t in ids:
        if isinstance(t, bool):
            raise ValueError(f"{name} must contain int token ids, not bools")
        try:
            t = operator.index(t)
        except TypeError:
            raise ValueError(f"{name} must contain only int token ids, got a {type(t).__name__}") from None
        if t < 0:
            raise ValueError(f"{name} has a negative token id {t}")
        out.append(t)
    return out


def _drop_front(pieces: list[_Piece], k: int) -> list[_Piece]:
    """pieces without their first k tokens."""
    out = []
    for p in pieces:
        if k >= len(p.ids):
            k -= len(p.ids)
            continue
        out.append(p.split(k)[1] if k else p)
        k = 0
    return out


class ThinkerEngine:
    """Runs a `ThinkerLM` over a paged KV cache: admission, chunked prefill, batched decode, sampling.

    kv_cache: a `PagedKVCache` matching the model (layers, kv heads, head_dim, dtype, device), or
    None to allocate one of `num_blocks` blocks / `memory_budget_bytes` bytes (default: room for
    max_num_seqs sequences of max_model_len tokens, at most half the free GPU memory / 2 GiB on CPU).
    max_num_seqs: sequences in flight (a decode batch). max_num_batched_tokens: tokens per prefill
    step; longer prompts are prefilled in chunks. prefill_chunk_size: at most this many tokens of one
    sequence per step (None = no limit but the batch budget). max_model_len: prompt + output limit
    (default and maximum: the config's max_position_embeddings).
    """

    def __init__(self, model: ThinkerLM, kv_cache: Optional[PagedKVCache] = None, *, block_size: int = 16,
                 num_blocks: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
                 enable_prefix_caching: bool = False, max_num_seqs: int = 8, max_num_batched_tokens: int = 4096,
                 prefill_chunk_size: Optional[int] = None, max_model_len: Optional[int] = None):
        if not isinstance(model, ThinkerLM):
            raise ValueError(f"model must be a ThinkerLM, got {type(model).__name__}")
        cfg = model.config
        self.model, self.config = model, cfg
        self.device, self.dtype = model.device, model.dtype
        for name, v in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if prefill_chunk_size is not None and (isinstance(prefill_chunk_size, bool) or
                                               not isinstance(prefill_chunk_size, int) or prefill_chunk_size < 1):
            raise ValueError(f"prefill_chunk_size must be a positive int or None, got {prefill_chunk_size!r}")
        limit = cfg.max_position_embeddings
        if max_model_len is None:
            max_model_len = limit
        elif isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or not 1 <= max_model_len <= limit:
            raise ValueError(f"max_model_len must be an int in [1, max_position_embeddings={limit}], "
                             f"got {max_model_len!r}")
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_size = prefill_chunk_size

        head_dim, kv_heads, layers = cfg.dim_per_head, cfg.num_key_value_heads, cfg.num_hidden_layers
        if kv_cache is None:
            if num_blocks is None and memory_budget_bytes is None:
                per_block = bytes_per_block(layers, kv_heads, head_dim, block_size, self.dtype)
                want = max_num_seqs * -(-max_model_len // block_size)
                if self.device.type == "cuda":  # leave room for the encoders, the Talker and activations
                    cap = int(0.5 * torch.cuda.mem_get_info(self.device)[0]) // per_block
                else:
                    cap = (2 << 30) // per_block
                num_blocks = max(1, min(want, cap))
            kv_cache = PagedKVCache(layers, kv_heads, head_dim, block_size, self.dtype, self.device,
                                    num_blocks=num_blocks, memory_budget_bytes=memory_budget_bytes,
                                    enable_prefix_caching=enable_prefix_caching)
        else:
            if not isinstance(kv_cache, PagedKVCache):
                raise ValueError(f"kv_cache must be a PagedKVCache, got {type(kv_cache).__name__}")
            got = (kv_cache.num_layers, kv_cache.num_kv_heads, kv_cache.head_dim, kv_cache.dtype,
                   torch.device(kv_cache.device))
            want = (layers, kv_heads, head_dim, self.dtype, self.device)
            if got[:4] != want[:4] or got[4].type != want[4].type:
                raise ValueError(f"kv_cache (layers, kv heads, head_dim, dtype, device) = {got} does not match "
                                 f"the model's {want}")
        self.kv_cache = kv_cache
        self.block_manager = kv_cache.block_manager
        self.block_size = kv_cache.block_size
        self.state = StepState(max(max_num_batched_tokens, max_num_seqs), max_num_seqs,
                               -(-max_model_len // self.block_size), self.device)
        self._ids = itertools.count()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.last_step: Optional[str] = None

    # ------------------------------------------------------------------ requests
    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _budget_tokens(self, seq: Sequence) -> int:
        """Tokens the sequence may come to hold: its prompt so far plus its whole output budget."""
        return min(seq.num_prompt_tokens + seq.params.max_new_tokens, self.max_model_len)

    def _make_positions(self, seq: Sequence, ids: list[int], positions) -> torch.Tensor:
        n = len(ids)
        if positions is None:
            if seq.max_position < 0:
                # Text-only TMRoPE: rope_index's text branch (0..n-1 on all axes, delta 0).
                pos, _ = rope_index(torch.tensor([ids], dtype=torch.long))
                return pos[:, 0, :]
            return (seq.max_position + 1 + torch.arange(n, dtype=torch.long)).expand(3, n).clone()
        if not isinstance(positions, torch.Tensor):
            raise ValueError(f"positions must be a tensor of shape (3, {n}), got {type(positions).__name__}")
        if positions.dim() == 3 and positions.shape[1] == 1:
            positions = positions[:, 0]
        if tuple(positions.shape) != (3, n):
            raise ValueError(f"positions must have shape (3, {n}) (t, h, w per token), got {tuple(positions.shape)}")
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"positions must hold integers, got {positions.dtype}")
        positions = positions.detach().to("cpu", torch.long)
        if n and int(positions.min()) < 0:
            raise ValueError("positions must be non-negative")
        return positions

    def _check_embeds(self, embeds, n: int) -> Optional[torch.Tensor]:
        if embeds is None:
            return None
        h = self.config.hidden_size
        if not isinstance(embeds, torch.Tensor) or embeds.dim() not in (2, 3):
            raise ValueError(f"inputs_embeds must be a ({n}, {h}) tensor")
        if embeds.dim() == 3:
            if embeds.shape[0] != 1:
                raise ValueError(f"inputs_embeds must be ({n}, {h}) for one sequence, got {tuple(embeds.shape)}")
            embeds = embeds[0]
        if tuple(embeds.shape) != (n, h):
            raise ValueError(f"inputs_embeds must have shape ({n}, {h}) to match the ids, got {tuple(embeds.shape)}")
        if not embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be floating point, got {embeds.dtype}")
        return embeds.detach().to(self.device, self.dtype)

    def _append_prompt(self, seq: Sequence, ids, inputs_embeds, positions, complete: bool, rope_delta) -> None:
        """Validate a prompt chunk, then append it (nothing changes when a check fails)."""
        ids = _as_id_list("prompt ids", ids)
        embeds = self._check_embeds(inputs_embeds, len(ids))
        if embeds is None and ids and max(ids) >= self.config.vocab_size:
            raise ValueError(f"token id {max(ids)} is outside the vocabulary (vocab_size {self.config.vocab_size}); "
                             "placeholder ids need inputs_embeds")
        if not ids and (positions is not None or inputs_embeds is not None):
            raise ValueError("positions / inputs_embeds given without prompt ids")
        pos = self._make_positions(seq, ids, positions) if ids else None
        total = seq.num_prompt_tokens + len(ids)
        if total > self.max_model_len:
            raise ValueError(f"the prompt has {total} tokens, more than the model's context "
                             f"(max_model_len {self.max_model_len})")
        if complete and total == 0:
            raise ValueError("the prompt is empty: need at least one token")
        if not complete and rope_delta is not None:
            raise ValueError("rope_delta belongs to the final prompt chunk (prompt_complete=True)")
        need = self.block_manager.blocks_needed(max(1, min(total + seq.params.max_new_tokens, self.max_model_len)))
        if need > self.kv_cache.num_blocks:
            raise ValueError(
                f"the request needs {need} KV-cache blocks (prompt {total} + up to {seq.params.max_new_tokens} new "
                f"tokens, capped at max_model_len {self.max_model_len}, in blocks of {self.block_size}) but the cache "
                f"has only {self.kv_cache.num_blocks}: lower max_new_tokens or give the cache more memory")
        if ids:
            seq._pending.append(_Piece(ids, pos, embeds))
            seq.max_position = max(seq.max_position, int(pos.max()))
            seq.token_ids.extend(ids)
            seq.num_prompt_tokens = total
        if complete:
            seq.prompt_complete = True
            if rope_delta is None:
                rope_delta = seq.max_position + 1 - seq.num_prompt_tokens
            elif isinstance(rope_delta, torch.Tensor):
                rope_delta = int(rope_delta.reshape(-1)[0])
            seq.rope_delta = int(rope_delta)

    def add_request(self, prompt_ids, params: Optional[SamplingParams] = None, *, inputs_embeds=None,
                    positions=None, rope_delta=None, prompt_complete: bool = True, keep_hidden_states: bool = False,
                    return_logits: bool = False, cache_salt=None, detokenizer=None) -> Sequence:
        """Queue a request. prompt_ids: token ids (placeholders where inputs_embeds carries audio/image
        features). inputs_embeds (L, hidden): the merged embeddings (default: the token embeddings).
        positions (3, L) and rope_delta: from `rope_index` (default: text-only positions, delta from
        them). prompt_complete=False starts a streamed prompt: add chunks with `extend_prompt`.
        detokenizer: a factory of incremental decoders (`push(ids) -> str`, `finish() -> str`), or an
        object with `.stream()` (omni_runtime.tokenizer.Tokenizer)."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        seq = Sequence(next(self._ids), params, self.config.vocab_size)
        seq.keep_hidden_states, seq.return_logits = bool(keep_hidden_states), bool(return_logits)
        self._append_prompt(seq, prompt_ids, inputs_embeds, positions, prompt_complete, rope_delta)
        explicit = inputs_embeds is not None or positions is not None or not prompt_complete
        if cache_salt is None and (explicit or seq.keep_hidden_states or seq.return_logits):
            cache_salt = f"private-{uuid.uuid4()}"  # content not identified by ids alone: never share
        seq.cache_salt = cache_salt
        seq.generator = make_generator(params, self.device)
        if detokenizer is not None:
            seq.detokenizer = detokenizer.stream() if hasattr(detokenizer, "stream") else detokenizer()
        self.waiting.append(seq)
        return seq

    def extend_prompt(self, seq: Sequence, prompt_ids, *, inputs_embeds=None, positions=None,
                      prompt_complete: bool = False, rope_delta=None) -> None:
        """Append tokens to a streamed prompt (e.g. the next 2-second audio chunk's embeddings).
        They are prefilled by the next steps, on top of the cached prefix (chunked prefill)."""
        if seq not in self.waiting and seq not in self.running:
            raise ValueError(f"{seq!r} is not in this engine (finished or never added)")
        if seq.prompt_complete:
            raise ValueError(f"{seq!r}: its prompt is already complete")
        self._append_prompt(seq, prompt_ids, inputs_embeds, positions, prompt_complete, rope_delta)
        if seq.status == RUNNING:
            seq.reserved_blocks = max(seq.reserved_blocks, self.block_manager.blocks_needed(self._budget_tokens(seq)))

    def abort(self, seq: Sequence) -> None:
        if not seq.finished:
            self._finish(seq, "abort")

    # ------------------------------------------------------------------ scheduling
    def _free_budget(self) -> int:
        """Free blocks not promised to the running sequences' remaining budgets."""
        promised = sum(max(0, s.reserved_blocks - len(self.block_manager.block_table(s.seq_id)))
                       for s in self.running)
        return self.block_manager.num_free_blocks - promised

    def _schedule_prefill(self):
        budget = self.max_num_batched_tokens
        chunk = self.prefill_chunk_size or budget
        batch = []
        admitted = []
        for seq in self.running + self.waiting:
            if budget == 0 or len(batch) == self.max_num_seqs:
                break
            if not seq._pending:
                continue
            if seq.status == WAITING:
                if len(self.running) + len(admitted) >= self.max_num_seqs:
                    continue
                need = self.block_manager.blocks_needed(self._budget_tokens(seq))
                if need > self._free_budget() - sum(s.reserved_blocks for s in admitted):
                    continue
                seq.reserved_blocks = need
                admitted.append(seq)
            n = min(seq.num_pending, budget, chunk)
            batch.append((seq, n))
            budget -= n
        return batch

    @torch.no_grad()
    def step(self) -> list[TokenEvent]:
        """One forward step: prefill pending prompt tokens if any can be scheduled, else decode every
        running sequence. Returns the tokens it generated (possibly none: a prefill chunk that does
        not finish a prompt). `last_step` says what ran: "prefill", "chunked_prefill", "decode" or
        None (nothing to do: every unfinished prompt is waiting for more streamed input)."""
        self.last_step = None
        batch = self._schedule_prefill()
        if batch:
            return self._run_prefill(batch)
        decode = [s for s in self.running if s.ready_to_decode][:self.max_num_seqs]
        if decode:
            return self._run_decode(decode)
        stuck = [s for s in self.waiting if s._pending]
        if stuck and not self.running:
            seq = stuck[0]
            raise KVCacheFullError(
                f"{seq!r} cannot be admitted: it needs {self.block_manager.blocks_needed(self._budget_tokens(seq))} "
                f"KV-cache blocks but only {self.block_manager.num_free_blocks} are free (is the cache shared?)")
        return []

    def _grow(self, seq: Sequence, ids: list[int]) -> int:
        """Tell the block manager about tokens written this step; returns the prefix-cache hit."""
        try:
            if seq.status == WAITING:
                cached = self.block_manager.allocate(seq.seq_id, ids, cache_salt=seq.cache_salt)
                self.waiting.remove(seq)
                self.running.append(seq)
                seq.status = RUNNING
                return cached
            self.block_manager.append(seq.seq_id, ids)
            return 0
        except OutOfBlocksError as e:
            raise KVCacheFullError(
                f"KV cache full while writing {len(ids)} token(s) of {seq!r}: {e}. A streamed prompt grew past "
                f"its reservation, or another user shares the cache; give the cache more memory "
                f"(num_blocks / memory_budget_bytes) or run fewer sequences at once") from e

    def _run_prefill(self, batch) -> list[TokenEvent]:
        ids, positions, embeds, qlens, seq_lens, logit_rows, has_embeds = [], [], [], [], [], [], False
        row_spans = []
        self.kv_cache.apply_pending_copies()
        for seq, n in batch:
            pieces = seq._take(n)
            chunk_ids = [t for p in pieces for t in p.ids]
            cached = self._grow(seq, chunk_ids)
            if cached:  # prefix-cache hit: those tokens' KV is already in the cache
                seq.num_computed += cached
                pieces = _drop_front(pieces, cached)
            start = len(ids)
            for p in pieces:
                ids.extend(p.ids)
                positions.append(p.positions)
                if p.embeds is not None:
                    has_embeds = True
                embeds.append(p)
            count = len(ids) - start
            qlens.append(count)
            seq_lens.append(seq.num_computed + count)
            row_spans.append((start, count))
            done = seq.prompt_complete and not seq._pending
            if seq.return_logits:
                logit_rows.extend(range(start, start + count))
            elif done:
                logit_rows.append(start + count - 1)
        seq_ids = [s.seq_id for s, _ in batch]
        bm = self.block_manager
        mode = PREFILL if all(s.num_computed == 0 for s, _ in batch) else CHUNKED_PREFILL
        ids_t = torch.tensor(ids, dtype=torch.long)
        self.last_step = mode
        self.state.prepare(mode, ids_t, torch.cat(positions, 1), bm.slot_mapping(seq_ids, qlens, "cpu"),
                           bm.build_block_tables(seq_ids, "cpu"), seq_lens, qlens, logit_rows)
        if has_embeds:
            inputs_embeds = torch.cat([p.embeds if p.embeds is not None else
                                       self.model.embed(torch.tensor(p.ids, dtype=torch.long).to(self.device))
                                       for p in embeds])
            out = self.model(self.state, self.kv_cache, inputs_embeds=inputs_embeds)
        else:
            out = self.model(self.state, self.kv_cache, input_ids=self.state.input_ids)

        logit_pos = {r: i for i, r in enumerate(logit_rows)}
        to_sample = []
        for (seq, _), (start, count) in zip(batch, row_spans):
            if seq.keep_hidden_states:
                seq._hidden.append(out.hidden_states[start:start + count].clone())
                seq._embeds.append(out.inputs_embeds[start:start + count].clone())
            if seq.return_logits:
                a = logit_pos[start]
                seq._prompt_logits.append(out.logits[a:a + count].float())
            seq.num_computed += count
            if seq.prompt_complete and not seq._pending:
                to_sample.append((seq, logit_pos[start + count - 1]))
        if not to_sample:
            return []
        rows = torch.tensor([r for _, r in to_sample], device=out.logits.device)
        return self._sample([s for s, _ in to_sample], out.logits.index_select(0, rows))

    def _run_decode(self, seqs: list[Sequence]) -> list[TokenEvent]:
        bm = self.block_manager
        self.kv_cache.apply_pending_copies()
        ids, pos = [], []
        for seq in seqs:
            token = seq.token_ids[seq.num_computed]
            self._grow(seq, [token])
            ids.append(token)
            pos.append(seq.num_computed + seq.rope_delta)
        seq_ids = [s.seq_id for s in seqs]
        n = len(seqs)
        positions = torch.tensor(pos, dtype=torch.long).expand(3, n)
        self.last_step = DECODE
        self.state.prepare(DECODE, torch.tensor(ids, dtype=torch.long), positions, bm.slot_mapping(seq_ids, 1, "cpu"),
                           bm.build_block_tables(seq_ids, "cpu"), [s.num_computed + 1 for s in seqs], [1] * n)
        out = self.model(self.state, self.kv_cache, input_ids=self.state.input_ids)
        for i, seq in enumerate(seqs):
            seq.num_computed += 1
            if seq.keep_hidden_states:
                seq._hidden.append(out.hidden_states[i:i + 1].clone())
                seq._embeds.append(out.inputs_embeds[i:i + 1].clone())
        return self._sample(seqs, out.logits)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[TokenEvent]:
        params = [s.params for s in seqs]
        seen = None
        if any(p.repetition_penalty != 1.0 for p in params):
            for s in seqs:
                if s._seen is None:
                    s._seen = seen_mask(s.token_ids, s.vocab_size, logits.device)
            seen = torch.stack([s._seen for s in seqs])
        tokens = sample(logits, params, [s.generator for s in seqs], seen).tolist()
        now = time.perf_counter()
        events = []
        for seq, token, row in zip(seqs, tokens, logits):
            if seq.return_logits:
                seq._output_logits.append(row.float())
            if seq._seen is not None and 0 <= token < seq.vocab_size:
                seq._seen[token] = True
            seq.token_ids.append(token)
            seq.output_ids.append(token)
            if seq.t_first_token is None:
                seq.t_first_token = now
            text = seq.detokenizer.push([token]) if seq.detokenizer is not None else ""
            reason = None
            if token in seq.params.stop_token_ids:
                reason = "stop"
            elif len(seq.output_ids) >= seq.params.max_new_tokens or len(seq.token_ids) >= self.max_model_len:
                reason = "length"
            if reason is not None:
                self._finish(seq, reason)
                if seq.detokenizer is not None:
                    tail = seq.detokenizer.finish()
                    text += tail
            seq.text += text
            events.append(TokenEvent(seq, token, text, reason is not None, reason))
        return events

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status == RUNNING:
            self.block_manager.free(seq.seq_id)
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = FINISHED
        seq.finish_reason = reason
        seq._pending = []
        seq._seen = None
        seq.t_finished = time.perf_counter()

    # ------------------------------------------------------------------ generate
    def generate(self, prompts, params: Union[SamplingParams, Seq[SamplingParams], None] = None, *,
                 detokenizer=None, **request_kwargs) -> Iterator[TokenEvent]:
        """Stream the tokens of one or several prompts as they are generated.

        prompts: token ids (a list of ints / 1-D tensor) or a list of them, or dicts of
        `add_request` keyword arguments ({"prompt_ids": ..., "inputs_embeds": ..., "positions": ...}).
        params: one SamplingParams for all, or one per prompt. request_kwargs go to every
        `add_request` (keep_hidden_states=True, return_logits=True, ...). The finished `Sequence`
        objects are reachable as `event.seq`. Breaking out of the loop aborts the unfinished ones."""
        single = isinstance(prompts, dict) or isinstance(prompts, torch.Tensor) and prompts.dim() == 1 or (
            isinstance(prompts, (list, tuple)) and (not prompts or isinstance(prompts[0], int)))
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        elif len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        seqs = []
        try:
            for prompt, p in zip(prompts, params):
                kwargs = dict(request_kwargs)
                if isinstance(prompt, dict):
                    kwargs.update(prompt)
                else:
                    kwargs["prompt_ids"] = prompt
                seqs.append(self.add_request(params=p, detokenizer=detokenizer, **kwargs))
            mine = {s.seq_id for s in seqs}
            while any(not s.finished for s in seqs):
                events = self.step()
                if self.last_step is None:
                    raise RuntimeError("generate() cannot make progress: a prompt is incomplete (prompt_complete="
                                       "False); drive streamed prompts with extend_prompt() and step()")
                for ev in events:
                    if ev.seq.seq_id in mine:
                        yield ev
        finally:
            for s in seqs:
                if not s.finished:
                    self.abort(s)

    def generate_ids(self, prompts, params=None, **kwargs) -> list[list[int]]:
        """Non-streaming convenience: the generated ids of each prompt."""
        single = isinstance(prompts, torch.Tensor) and prompts.dim() == 1 or (
            isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int))
        seqs = {}
        for ev in self.generate(prompts, params, **kwargs):
            seqs[ev.seq.seq_id] = ev.seq
        out = [seqs[k].output_ids for k in sorted(seqs)]
        return out[0] if single else out
