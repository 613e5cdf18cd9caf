"""The engine: any `DecoderLM` (omni_runtime.engine.protocol) over a paged KV cache, many
requests at once, each with its own stream.

    engine = Engine(ThinkerLM.from_checkpoint(ckpt), max_num_seqs=8)
    seq = engine.add_request(prompt_ids, SamplingParams(max_new_tokens=64, stop_token_ids=(eos,)))
    for ev in engine.stream(seq):          # any thread or task; each consumer sees only its own
        print(ev.text, end="")

Requests are added, extended (streamed prompts: `extend_prompt`), fed (external inputs: `feed`)
and aborted at any time, from any thread. `step()` runs one forward for everything the scheduler
picked (decode rows and prefill chunks together) and returns a `StepResult` per sequence touched;
each sampled token also goes to its sequence's own event queue. Consumers drive the engine
cooperatively: whoever waits for an event and finds none runs the next step (one at a time, under
a lock), so streams can be consumed in any order, interleaved, and nothing is lost. A step that
finds nothing to do (everything waits for outside input) makes the waiter sleep until an
add / extend / feed / abort wakes it.

Inputs from outside: `external_inputs=True` makes every generated token's next input an embedding
the owner supplies -- by `feed(seq, embedding)`, or by an `input_provider(seq, token_id)` the
engine asks before each step (returning None = not ready yet). `sink(StepRows)` receives each
step's hidden states / input embeddings of that sequence as they are computed (views: copy what
you keep), once per position even after a preemption's recompute.

Positions: prompt positions from `omni_kernels.rope_index` (text-only prompts get them here);
a prompt token appended without positions continues from (max position so far) + 1 on all axes.
Generated token i sits at i + rope_delta on all axes, rope_delta = max(prompt positions) + 1 -
prompt_len unless given.

Prefix caching (when the cache has it on): prompts with caller-supplied embeddings/positions,
streamed prompts, external inputs and requests keeping hidden states or logits never share
blocks unless the caller gives a `cache_salt` identifying the content.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Callable, Optional

import torch

from omni_kernels.paged_kv_cache import PagedKVCache

from .memory import default_num_blocks
from .model_runner import ModelRunner
from .protocol import check_decoder_lm
from .requests import as_id_list, check_embeds, make_positions, positive_int
from .sampling import SamplingParams, make_generator
from .sampler import sample_step
from .scheduler import KVCacheFullError, Scheduler
from .sequence import FINISHED, Piece, Sequence, StepResult, StepRows
from .streams import StreamsMixin

__all__ = ["Engine", "StepResult", "KVCacheFullError"]


class Engine(StreamsMixin):
    """model: a DecoderLM. kv_cache: a matching PagedKVCache (from `plan_kv_caches` when several
    models share a device), or None to allocate `num_blocks` / `memory_budget_bytes` (default:
    room for max_num_seqs x max_model_len within the device budget). max_num_seqs: sequences in
    flight; max_num_batched_tokens: tokens per step (chunked prefill); prefill_chunk_size: at most
    this many tokens of one sequence per step; max_model_len: prompt + output limit (default and
    maximum: the model's max_position_embeddings). cuda_graphs: capture the decode step (default:
    on for CUDA models); pad_decode: run the padded static-buffer path without graphs."""

    def __init__(self, model, kv_cache: Optional[PagedKVCache] = None, *, block_size: int = 16,
                 num_blocks: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
                 enable_prefix_caching: bool = False, max_num_seqs: int = 8, max_num_batched_tokens: int = 4096,
                 prefill_chunk_size: Optional[int] = None, max_model_len: Optional[int] = None,
                 cuda_graphs: Optional[bool] = None, pad_decode: bool = False):
        check_decoder_lm(model)
        self.model = model
        self.device, self.dtype = model.device, model.dtype
        positive_int("max_num_seqs", max_num_seqs)
        positive_int("max_num_batched_tokens", max_num_batched_tokens)
        positive_int("prefill_chunk_size", prefill_chunk_size, allow_none=True)
        limit = model.max_position_embeddings
        if max_model_len is None:
            max_model_len = limit
        elif isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or not 1 <= max_model_len <= limit:
            raise ValueError(f"max_model_len must be an int in [1, max_position_embeddings={limit}], "
                             f"got {max_model_len!r}")
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        if kv_cache is None:
            if num_blocks is None and memory_budget_bytes is None:
                num_blocks = default_num_blocks(model, block_size, max_num_seqs, max_model_len)
            kv_cache = PagedKVCache(model.num_layers, model.num_kv_heads, model.head_dim, block_size, self.dtype,
                                    self.device, num_blocks=num_blocks, memory_budget_bytes=memory_budget_bytes,
                                    enable_prefix_caching=enable_prefix_caching)
        elif not isinstance(kv_cache, PagedKVCache):
            raise ValueError(f"kv_cache must be a PagedKVCache, got {type(kv_cache).__name__}")
        else:
            got = (kv_cache.num_layers, kv_cache.num_kv_heads, kv_cache.head_dim, kv_cache.dtype,
                   torch.device(kv_cache.device).type)
            want = (model.num_layers, model.num_kv_heads, model.head_dim, self.dtype, self.device.type)
            if got != want:
                raise ValueError(f"kv_cache (layers, kv heads, head_dim, dtype, device) = {got} does not match "
                                 f"the model's {want}")
        self.kv_cache, self.block_manager, self.block_size = kv_cache, kv_cache.block_manager, kv_cache.block_size
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a model on a CUDA device")
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens, prefill_chunk_size=prefill_chunk_size)
        self.runner = ModelRunner(model, kv_cache, max_num_seqs=max_num_seqs, max_num_tokens=max_num_batched_tokens,
                                  max_model_len=max_model_len, cuda_graphs=cuda_graphs, pad_decode=pad_decode)
        self._ids = itertools.count()
        self._order = itertools.count()
        self._lock = threading.RLock()
        self._init_streams()

    # ------------------------------------------------------------------ requests
    @property
    def state(self):
        """The runner's StepState (the persistent per-step buffers)."""
        return self.runner.state

    @property
    def waiting(self) -> list[Sequence]:
        return self.scheduler.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def add_request(self, prompt_ids, params: Optional[SamplingParams] = None, *, inputs_embeds=None,
                    positions=None, rope_delta=None, prompt_complete: bool = True, keep_hidden_states: bool = False,
                    return_logits: bool = False, cache_salt=None, detokenizer=None, external_inputs: bool = False,
                    input_provider: Optional[Callable] = None, sink: Optional[Callable] = None) -> Sequence:
        """Queue a request. prompt_ids: token ids (placeholders where inputs_embeds (L, hidden)
        carries features). positions (3, L) and rope_delta: from `rope_index` (default: text
        positions). prompt_complete=False starts a streamed prompt (`extend_prompt`).
        detokenizer: a factory of incremental decoders (`push(ids) -> str`, `finish() -> str`) or
        an object with `.stream()`. external_inputs / input_provider / sink: see the module doc."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        if input_provider is not None and not callable(input_provider) or sink is not None and not callable(sink):
            raise ValueError("input_provider and sink must be callables")
        if input_provider is not None and not external_inputs:
            raise ValueError("input_provider needs external_inputs=True")
        seq = Sequence(next(self._ids), params, self.model.vocab_size)
        seq.keep_hidden_states, seq.return_logits = bool(keep_hidden_states), bool(return_logits)
        seq.external_inputs, seq.input_provider, seq.sink = bool(external_inputs), input_provider, sink
        self._append_prompt(seq, prompt_ids, inputs_embeds, positions, prompt_complete, rope_delta)
        private = (inputs_embeds is not None or positions is not None or not prompt_complete or external_inputs
                   or keep_hidden_states or return_logits)
        seq.cache_salt = f"private-{uuid.uuid4()}" if cache_salt is None and private else cache_salt
        seq.generator = make_generator(params, self.device)
        if detokenizer is not None:
            seq.detokenizer = detokenizer.stream() if hasattr(detokenizer, "stream") else detokenizer()
        with self._lock:
            self.scheduler.add(seq)
        self._wake()
        return seq

    def extend_prompt(self, seq: Sequence, prompt_ids, *, inputs_embeds=None, positions=None,
                      prompt_complete: bool = False, rope_delta=None) -> None:
        """Append tokens to a streamed prompt (e.g. the next audio chunk's embeddings); they are
        prefilled by the next steps on top of the cached prefix."""
        with self._lock:
            if seq.finished or seq not in self.waiting and seq not in self.running:
                raise ValueError(f"{seq!r} is not in this engine (finished or never added)")
            if seq.prompt_complete:
                raise ValueError(f"{seq!r}: its prompt is already complete")
            self._append_prompt(seq, prompt_ids, inputs_embeds, positions, prompt_complete, rope_delta)
        self._wake()

    def feed(self, seq: Sequence, embeds: torch.Tensor) -> None:
        """The input embedding (hidden,) of the sequence's next generated token (external_inputs)."""
        with self._lock:
            if not seq.external_inputs:
                raise ValueError(f"{seq!r} was not added with external_inputs=True")
            if seq.finished:
                return  # it ended (stop id / abort) while its owner was computing the input
            if len(seq._fed) >= len(seq.output_ids):
                raise ValueError(f"{seq!r} has {len(seq.output_ids)} generated tokens and {len(seq._fed)} inputs "
                                 "fed already: feed one input per generated token, after it is generated")
            seq.feed(check_embeds(embeds, 1, self.model.hidden_size, self.device, self.dtype, "embeds",
                                  check_finite=False)[0])
        self._wake()

    def abort(self, seq: Sequence) -> None:
        """End a request now; its blocks are freed at once."""
        with self._lock:
            if not seq.finished:
                self._finish(seq, "abort")
        self._wake()

    def _append_prompt(self, seq, ids, inputs_embeds, positions, complete: bool, rope_delta) -> None:
        """Validate a prompt chunk, then append it (nothing changes when a check fails)."""
        ids = as_id_list("prompt ids", ids)
        embeds = check_embeds(inputs_embeds, len(ids), self.model.hidden_size, self.device, self.dtype)
        if embeds is None and ids and max(ids) >= self.model.vocab_size:
            raise ValueError(f"token id {max(ids)} is outside the vocabulary (vocab_size {self.model.vocab_size}); "
                             "placeholder ids need inputs_embeds")
        if not ids and (positions is not None or inputs_embeds is not None):
            raise ValueError("positions / inputs_embeds given without prompt ids")
        pos = make_positions(ids, positions, seq.max_position) if ids else None
        total = seq.num_prompt_tokens + len(ids)
        if total > self.max_model_len:
            raise ValueError(f"the prompt has {total} tokens, more than the model's context "
                             f"(max_model_len {self.max_model_len})")
        if complete and total == 0:
            raise ValueError("the prompt is empty: need at least one token")
        if not complete and rope_delta is not None:
            raise ValueError("rope_delta belongs to the final prompt chunk (prompt_complete=True)")
        longest = max(1, min(total + seq.params.max_new_tokens, self.max_model_len))
        need = self.block_manager.blocks_needed(longest)
        if need > self.kv_cache.num_blocks:
            raise ValueError(
                f"the request needs {need} KV-cache blocks (prompt {total} + up to {seq.params.max_new_tokens} new "
                f"tokens, capped at max_model_len {self.max_model_len}, in blocks of {self.block_size}) but the cache "
                f"has only {self.kv_cache.num_blocks}: lower max_new_tokens or give the cache more memory")
        if ids:
            seq.add_piece(Piece(ids, pos, embeds))
        if complete:
            seq.prompt_complete, seq.parked = True, False
            if rope_delta is None:
                rope_delta = seq.max_position + 1 - seq.num_prompt_tokens
            elif isinstance(rope_delta, torch.Tensor):
                rope_delta = int(rope_delta.reshape(-1)[0])
            seq.rope_delta = int(rope_delta)

    # ------------------------------------------------------------------ one step
    def _poll_providers(self) -> None:
        for seq in self.running + self.waiting:
            while seq.input_provider is not None and len(seq._fed) < len(seq.output_ids) and not seq.finished:
                try:
                    embeds = seq.input_provider(seq, seq.output_ids[len(seq._fed)])
                    if embeds is None:
                        break
                    seq.feed(check_embeds(embeds, 1, self.model.hidden_size, self.device, self.dtype,
                                          "input_provider()", check_finite=False)[0])
                except Exception as e:  # a failing provider ends its own request only
                    self._fail(seq, e, "input_provider")

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        """One forward over everything scheduled; [] when nothing can run now."""
        with self._lock:
            self._poll_providers()
            batch = self.scheduler.schedule()
            if not batch and not self.running and any(s.num_schedulable and not s.parked for s in self.waiting):
                seq = next(s for s in self.waiting if s.num_schedulable)
                raise KVCacheFullError(f"{seq!r} cannot be admitted: only {self.block_manager.num_free_blocks} "
                                       f"KV-cache blocks are free (is the cache shared with another engine?)")
            if not batch:
                return []
            return self._run(batch.items)

    def _run(self, items) -> list[StepResult]:
        logit_rows, samplers, row = [], [], 0
        for seq, n in items:
            if seq.return_logits:
                logit_rows.extend(range(row, row + n))
            if seq.prompt_complete and seq.num_computed + n == len(seq.token_ids):
                if not seq.return_logits:
                    logit_rows.append(row + n - 1)
                samplers.append((seq, len(logit_rows) - 1))
            row += n
        out = self.runner.execute(items, logit_rows)
        where = {r: i for i, r in enumerate(logit_rows)}
        results = []
        for (seq, n), (start, _) in zip(items, out.spans):
            first = seq.num_computed
            skip = max(0, seq.num_rows_handed_out - first)  # rows a recompute already handed out
            if skip < n:
                a, b = start + skip, start + n
                self._hand_out(seq, StepRows(seq, first + skip, out.hidden_states[a:b], out.inputs_embeds[a:b]),
                               out, where, a, b)
                seq.num_rows_handed_out = first + n
            seq.num_computed += n
            results.append(StepResult(seq, n, out.mode))
        samplers = [(s, i) for s, i in samplers if not s.finished]  # a failed sink ended it
        if samplers:
            logits = out.logits[torch.tensor([i for _, i in samplers], device=out.logits.device)]
            events = sample_step(self, [s for s, _ in samplers], logits)
            by_seq = {id(ev.seq): ev for ev in events}
            for r in results:
                r.event = by_seq.get(id(r.seq))
        return results

    def _hand_out(self, seq, rows: StepRows, out, where, a: int, b: int) -> None:
        if seq.keep_hidden_states:
            seq._hidden.append(rows.hidden_states.clone())
            seq._embeds.append(rows.inputs_embeds.clone())
        if seq.return_logits:
            prompt_end = min(b, a + max(0, seq.num_prompt_tokens - rows.start))
            if prompt_end > a:
                seq._prompt_logits.append(out.logits[where[a]:where[prompt_end - 1] + 1].float())
        if seq.sink is not None:
            try:
                seq.sink(rows)
            except Exception as e:  # the owner's callback failed: end its request, not everyone's step
                self._fail(seq, e, "sink")

    def _fail(self, seq: Sequence, error: Exception, what: str) -> None:
        """End a request whose callback raised; its stream re-raises the error to its consumer."""
        seq.error = RuntimeError(f"{what} of {seq!r} raised {type(error).__name__}: {error}")
        seq.error.__cause__ = error
        self._finish(seq, "error")

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.remove(seq)
        seq.status = FINISHED
        seq.finish_reason = reason
        seq.release_inputs()
        seq.t_finished = time.perf_counter()
