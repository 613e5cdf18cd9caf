"""Token sampling on the device, with transformers' semantics.

    params = SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8,
                            repetition_penalty=1.05, seed=0, max_new_tokens=128, stop_token_ids=(eos,))
    ids = sample(logits, [params, ...], generators=[...], seen=seen_mask)

The logits processors run in transformers' order (`GenerationMixin._get_logits_processor`):
repetition penalty (also under greedy decoding), then -- only when sampling -- temperature, top-k,
top-p; then softmax and `torch.multinomial`, or argmax for greedy rows. Each processor is the same
arithmetic as transformers' `RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`,
`TopKLogitsWarper` and `TopPLogitsWarper` (filtered entries become -inf); a row whose value is the
default (penalty 1, temperature 1, top_k 0, top_p 1) skips that processor, as transformers does.
When every row of a batch shares a value the op takes it as a Python scalar, exactly like
transformers; mixed batches use a per-row tensor (same math, the scalar rounded to fp32 first).

Differences from transformers' defaults: `top_k=0` means "off" (transformers' GenerationConfig
defaults to 50), and `do_sample=False` (greedy) is the default.

Randomness: a request with a `seed` samples from its own `torch.Generator`, so its tokens do not
depend on what else is in the batch; rows without a seed draw from torch's global generator.
Everything stays on the logits' device; the only host read is the caller's (token ids).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

__all__ = ["SamplingParams", "process_logits", "sample", "make_generator", "seen_mask"]


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _id_tuple(name: str, ids) -> tuple[int, ...]:
    if isinstance(ids, (int, torch.Tensor)) and not isinstance(ids, bool):
        ids = [ids] if isinstance(ids, int) else ids.reshape(-1).tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{name} must be a sequence of int token ids")
    out = tuple(_as_int(f"{name}[]", t) for t in ids)
    if any(t < 0 for t in out):
        raise ValueError(f"{name} must be non-negative token ids, got {list(out)}")
    return out


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    do_sample: False = greedy (argmax after the repetition penalty); True = multinomial sampling.
    temperature (> 0 when sampling; 0 means greedy, as in vLLM and OpenAI's API), top_k (0 = off, else keep the k largest), top_p (in (0, 1];
    1 = off), repetition_penalty (> 0; 1 = off; tokens of the prompt and of the output so far).
    seed: int seeds a per-request generator; None uses torch's global generator.
    max_new_tokens: at most this many generated tokens (>= 1). stop_token_ids: generation ends
    after emitting one of these (the stop token is part of the output, as in transformers).
    ignore_eos: never stop on a stop id (exactly max_new_tokens tokens; benchmarks need fixed lengths).
    suppress_token_ids: ids that are never generated (their logits -inf before any processor; the
    Talker suppresses its codec bos).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    suppress_token_ids: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {type(self.do_sample).__name__}")
        max_new = _as_int("max_new_tokens", self.max_new_tokens)
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
        temperature = _as_float("temperature", self.temperature)
        do_sample = self.do_sample
        if do_sample and temperature == 0.0:  # as in vLLM and OpenAI's API: temperature 0 is greedy
            do_sample, temperature = False, 1.0
        if do_sample and not (0.0 < temperature < math.inf):
            raise ValueError(f"temperature must be a positive finite number when sampling (do_sample=True), got "
                             f"{temperature}; use do_sample=False for greedy decoding")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        top_k = _as_int("top_k", self.top_k)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        top_p = _as_float("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
        penalty = _as_float("repetition_penalty", self.repetition_penalty)
        if not 0.0 < penalty < math.inf:
            raise ValueError(f"repetition_penalty must be a positive finite number (1 = off), got {penalty}")
        seed = self.seed
        if seed is not None:
            seed = _as_int("seed", seed)
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {type(self.ignore_eos).__name__}")
        stops = _id_tuple("stop_token_ids", self.stop_token_ids)
        suppress = _id_tuple("suppress_token_ids", self.suppress_token_ids)
        for name, value in (("do_sample", do_sample), ("max_new_tokens", max_new), ("temperature", temperature), ("top_k", top_k),
                            ("top_p", top_p), ("repetition_penalty", penalty), ("seed", seed),
                            ("stop_token_ids", stops), ("suppress_token_ids", suppress)):
            object.__setattr__(self, name, value)

    @property
    def greedy(self) -> bool:
        return not self.do_sample


def make_generator(params: SamplingParams, device) -> Optional[torch.Generator]:
    """The request's own generator (None when it has no seed)."""
    if params.seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(params.seed)
    return g


def seen_mask(token_ids, vocab_size: int, device) -> torch.Tensor:
    """(vocab_size,) bool: which ids occur in `token_ids` (the repetition-penalty context).
    Ids outside the vocabulary (e.g. the 7B's multimodal ids in a tiny test vocabulary) are ignored,
    as transformers' scatter would fail on them."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    ids = ids[(ids >= 0) & (ids < vocab_size)]
    if ids.numel():
        mask[ids.to(device)] = True
    return mask


def _uniform(values: list[float]) -> bool:
    return all(v == values[0] for v in values)


def _column(values: list[float], logits: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=logits.dtype, device=logits.device)[:, None]


def _repetition_penalty(scores, rows, penalties, seen):
    # transformers: score = gather(ids); where(score < 0, score * p, score / p); scatter back.
    sub = scores[rows]
    s = seen[rows]
    if _uniform(penalties):
        p = penalties[0]
        penalized = torch.where(sub < 0, sub * p, sub / p)
    else:
        p = _column(penalties, sub)
        penalized = torch.where(sub < 0, sub * p, sub / p)
    scores[rows] = torch.where(s, penalized, sub)


def _temperature(scores, rows, temps):
    if _uniform(temps):
        scores[rows] = scores[rows] / temps[0]
    else:
        scores[rows] = scores[rows] / _column(temps, scores)


def _top_k(scores, rows, ks):
    sub = scores[rows]
    vocab = sub.shape[-1]
    ks = [min(k, vocab) for k in ks]
    kmax = max(ks)
    top = torch.topk(sub, kmax)[0]
    if _uniform(ks):
        threshold = top[..., -1, None]
    else:
        threshold = top.gather(1, torch.tensor(ks, device=sub.device)[:, None] - 1)
    scores[rows] = sub.masked_fill(sub < threshold, -math.inf)


def _top_p(scores, rows, ps):
    sub = scores[rows]
    sorted_logits, sorted_indices = torch.sort(sub, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    cut = [1.0 - p for p in ps]  # in float64, as transformers' `1 - self.top_p`
    if _uniform(cut):
        remove = cumulative <= cut[0]
    else:
        remove = cumulative <= _column(cut, cumulative)
    remove[..., -1:] = False  # min_tokens_to_keep = 1
    remove = remove.scatter(1, sorted_indices, remove)
    scores[rows] = sub.masked_fill(remove, -math.inf)


def process_logits(logits: torch.Tensor, params: Sequence[SamplingParams],
                   seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The processed scores (B, V) fp32 that `sample` draws from: repetition penalty on every row
    whose penalty != 1 (needs `seen`, (B, V) bool of the ids in each row's context), then for
    sampling rows temperature, top-k and top-p (filtered entries -inf). Greedy rows get only the
    penalty. `logits` is not modified."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a (batch, vocab) tensor, got {getattr(logits, 'shape', type(logits))}")
    if len(params) != logits.shape[0]:
        raise ValueError(f"got {len(params)} SamplingParams for {logits.shape[0]} rows of logits")
    scores = logits.to(dtype=torch.float32, copy=True)
    for i, p in enumerate(params):
        if p.suppress_token_ids:  # transformers' SuppressTokensLogitsProcessor; ids past the vocab ignored
            ids = [t for t in p.suppress_token_ids if t < scores.shape[-1]]
            scores[i, ids] = -math.inf
    pen_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if pen_rows:
        if seen is None or seen.shape != scores.shape or seen.dtype != torch.bool:
            raise ValueError(f"repetition_penalty needs seen: a {tuple(scores.shape)} bool mask of context ids")
        _repetition_penalty(scores, pen_rows, [params[i].repetition_penalty for i in pen_rows], seen)
    sampling = [i for i, p in enumerate(params) if p.do_sample]
    rows = [i for i in sampling if params[i].temperature != 1.0]
    if rows:
        _temperature(scores, rows, [params[i].temperature for i in rows])
    rows = [i for i in sampling if params[i].top_k != 0]
    if rows:
        _top_k(scores, rows, [params[i].top_k for i in rows])
    rows = [i for i in sampling if params[i].top_p < 1.0]
    if rows:
        _top_p(scores, rows, [params[i].top_p for i in rows])
    return scores


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Optional[Sequence[Optional[torch.Generator]]] = None,
           seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next token of every row: (B,) int64 on the logits' device.

    logits (B, V) raw model logits (any float dtype; processed in fp32 as transformers does);
    params one SamplingParams per row; generators one torch.Generator or None per row (seeded
    rows); seen (B, V) bool context mask, needed only for rows with a repetition penalty."""
    batch = logits.shape[0] if isinstance(logits, torch.Tensor) and logits.dim() == 2 else None
    if generators is None:
        generators = [None] * len(params)
    if batch is not None and len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for {batch} rows of logits")
    if all(p.greedy and p.repetition_penalty == 1.0 and not p.suppress_token_ids for p in params) and \
            batch == len(params):
        return logits.argmax(dim=-1)
    scores = process_logits(logits, params, seen)
    out = scores.argmax(dim=-1)
    sampling = [i for i, p in enumerate(params) if p.do_sample]
    if not sampling:
        return out
    probs = scores[sampling].softmax(dim=-1)
    shared = [j for j, i in enumerate(sampling) if generators[i] is None]
    if shared:
        picked = torch.multinomial(probs[shared], num_samples=1).squeeze(1)
        out[torch.tensor([sampling[j] for j in shared], device=out.device)] = picked
    for j, i in enumerate(sampling):
        if generators[i] is not None:
            out[i] = torch.multinomial(probs[j:j + 1], num_samples=1, generator=generators[i])[0, 0]
    return out
