"""One request's state: its inputs (kept for recompute after preemption), what was generated,
and its own event stream.

Inputs by index i of the sequence: i < num_prompt_tokens comes from the prompt pieces (ids, TMRoPE
positions (3, n), optional caller embeddings); i >= num_prompt_tokens is a generated token fed back,
at position i + rope_delta on all three axes, as its token embedding -- or, for a sequence with
`external_inputs`, as the embedding its owner supplies for it (the Talker's codec embedding plus
the Thinker's row). A sequence is not ready while the input it needs next is missing (a streamed
prompt waiting for its next chunk, an external embedding not supplied yet); it then simply is
not scheduled, and blocks nobody.
"""
from __future__ import annotations

import bisect
import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .sampling import SamplingParams

__all__ = ["WAITING", "RUNNING", "FINISHED", "Piece", "Sequence", "TokenEvent", "StepRows", "StepResult"]

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass
class Piece:
    """Prompt tokens: ids, positions (3, n) int64 on the CPU, embeddings (n, H) on the device or None."""

    ids: list[int]
    positions: torch.Tensor
    embeds: Optional[torch.Tensor]


@dataclass
class TokenEvent:
    """One generated token: its sequence, id, the newly stable text ("" without a detokenizer or
    while a multi-byte character is incomplete), whether it ended the sequence, and when
    (time.perf_counter())."""

    seq: "Sequence"
    token_id: int
    text: str = ""
    finished: bool = False
    finish_reason: Optional[str] = None
    t: float = field(default_factory=time.perf_counter)
    order: int = 0  # engine-wide event order (interleaving several streams)


@dataclass
class StepRows:
    """What one step computed for one sequence: rows [start, start + n) of the sequence, their
    final-norm hidden states and input embeddings (n, H) -- views valid until the next step: copy
    what you keep. (The token sampled after them arrives as the sequence's next event.)"""

    seq: "Sequence"
    start: int
    hidden_states: torch.Tensor
    inputs_embeds: torch.Tensor


@dataclass
class StepResult:
    """What one step did for one sequence: num_tokens computed, in which mode ("prefill",
    "chunked_prefill", "decode"), and the token sampled after them as a TokenEvent (None for a
    prefill chunk that does not end the known inputs)."""

    seq: "Sequence"
    num_tokens: int
    mode: str
    event: Optional[TokenEvent] = None


class Sequence:
    """One request; read-only for callers (change it through the engine).

    token_ids: prompt then generated ids; output_ids / text: what was generated; finish_reason:
    "stop" (a stop id), "length" (max_new_tokens or max_model_len), "abort", "error" (its sink or
    input provider raised: `error`, re-raised by its stream). With
    keep_hidden_states: `hidden_states` / `input_embeds` (T, H) of every computed position; with
    return_logits: `prompt_logits` (P, V) and `output_logits` (generated, V), fp32. Timings
    (perf_counter): t_added, t_first_token, t_finished. Events: `Engine.stream(seq)`.
    """

    def __init__(self, seq_id: int, params: SamplingParams, vocab_size: int):
        self.seq_id = seq_id
        self.params = params
        self.vocab_size = vocab_size
        self.status = WAITING
        self.token_ids: list[int] = []
        self.num_prompt_tokens = 0
        self.num_computed = 0          # tokens whose KV is in the cache
        self.num_rows_handed_out = 0   # rows given to sinks (recompute after preemption repeats none)
        self.prompt_complete = False
        self.rope_delta: Optional[int] = None
        self.max_position = -1
        self.output_ids: list[int] = []
        self.text = ""
        self.finish_reason: Optional[str] = None
        self.error: Optional[Exception] = None  # why it ended with finish_reason "error"
        self.generator: Optional[torch.Generator] = None
        self.cache_salt = None
        self.detokenizer = None
        self.external_inputs = False
        self.input_provider: Optional[Callable] = None
        self.sink: Optional[Callable[[StepRows], None]] = None
        self.keep_hidden_states = False
        self.return_logits = False
        self.num_preemptions = 0
        self.parked = False            # preempted while idle: readmitted when new input arrives
        self._pieces: list[Piece] = []
        self._piece_starts: list[int] = []
        self._fed: list[torch.Tensor] = []   # external input embedding of each generated token
        self._seen: Optional[torch.Tensor] = None
        self._hidden: list[torch.Tensor] = []
        self._embeds: list[torch.Tensor] = []
        self._prompt_logits: list[torch.Tensor] = []
        self._output_logits: list[torch.Tensor] = []
        self.events: collections.deque[TokenEvent] = collections.deque()
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
    def prompt_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def num_available(self) -> int:
        """Inputs known so far: the prompt, then each generated token whose input exists."""
        if not self.prompt_complete:
            return self.num_prompt_tokens
        fed = len(self._fed) if self.external_inputs else len(self.output_ids)
        return self.num_prompt_tokens + fed

    @property
    def num_schedulable(self) -> int:
        return 0 if self.finished else self.num_available - self.num_computed

    @property
    def waiting_for_input(self) -> bool:
        return not self.finished and self.num_schedulable == 0

    # ------------------------------------------------------------------ inputs
    def add_piece(self, piece: Piece) -> None:
        self.parked = False
        self._piece_starts.append(self.num_prompt_tokens)
        self._pieces.append(piece)
        self.token_ids.extend(piece.ids)
        self.num_prompt_tokens += len(piece.ids)
        self.max_position = max(self.max_position, int(piece.positions.max()))

    def feed(self, embeds: torch.Tensor) -> None:
        self.parked = False
        self._fed.append(embeds)

    def inputs(self, start: int, n: int) -> list[tuple[list[int], torch.Tensor, Optional[torch.Tensor]]]:
        """Segments (ids, positions (3, k), embeds (k, H) or None) covering inputs [start, start+n)."""
        out, end, p = [], start + n, self.num_prompt_tokens
        i = start
        if i < p:
            k = bisect.bisect_right(self._piece_starts, i) - 1
            while i < min(end, p):
                piece, s = self._pieces[k], self._piece_starts[k]
                a, b = i - s, min(end, s + len(piece.ids)) - s
                e = piece.embeds
                out.append((piece.ids[a:b], piece.positions[:, a:b], None if e is None else e[a:b]))
                i, k = s + b, k + 1
        if i < end:  # generated tokens fed back: position = index + rope_delta on all axes
            ids = self.token_ids[i:end]
            pos = (torch.arange(i, end, dtype=torch.long) + self.rope_delta).expand(3, end - i)
            embeds = torch.stack(self._fed[i - p:end - p]) if self.external_inputs else None
            out.append((ids, pos, embeds))
        return out

    # ------------------------------------------------------------------ outputs
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

    def release_inputs(self) -> None:
        """Drop what only an unfinished sequence needs."""
        self._pieces, self._piece_starts, self._fed, self._seen = [], [], [], None
        self.input_provider = self.sink = None
