"""Sampling against transformers' logits processors: same filtered distributions, same order
(repetition penalty, temperature, top-k, top-p), greedy = argmax, seeded determinism, bad params."""
import logging

import pytest
import torch

from omni_runtime.engine.sampling import SamplingParams, make_generator, process_logits, sample, seen_mask

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
    TopPLogitsWarper)

V = 1000


def hf_process(logits, context, p: SamplingParams):
    """transformers' processor list for these params, in `_get_logits_processor`'s order."""
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.do_sample:
        if p.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(p.temperature))
        if p.top_k != 0:
            procs.append(TopKLogitsWarper(p.top_k))
        if p.top_p < 1.0:
            procs.append(TopPLogitsWarper(p.top_p))
    return procs(context, logits.float().clone())


def _inputs(batch=4, seed=0, ctx=40):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, V, generator=g) * 3
    context = torch.randint(0, V, (batch, ctx), generator=g)
    # make the penalty matter: context tokens include some of the largest logits
    context[:, :3] = logits.topk(3).indices
    seen = torch.stack([seen_mask(row, V, "cpu") for row in context])
    return logits, context, seen


def _same_distribution(ours, ref):
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = ~torch.isinf(ref)
    torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


CASES = [
    dict(do_sample=True),
    dict(do_sample=True, temperature=0.7),
    dict(do_sample=True, top_k=50),
    dict(do_sample=True, top_p=0.8),
    dict(do_sample=True, repetition_penalty=1.3),
    dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05),  # the Talker's defaults
    dict(do_sample=True, temperature=1.7, top_k=5, top_p=0.3, repetition_penalty=0.8),
    dict(do_sample=True, top_k=V + 10, top_p=1.0),
    dict(do_sample=False, repetition_penalty=1.5, temperature=0.5, top_k=3),  # greedy: only the penalty applies
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_processors_match_transformers(case):
    logits, context, seen = _inputs()
    p = SamplingParams(**case)
    ours = process_logits(logits, [p] * logits.shape[0], seen)
    ref = hf_process(logits, context, p)
    # uniform batch: the same scalar ops as transformers, bit for bit
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.equal(ours[~torch.isinf(ref)], ref[~torch.isinf(ref)])


def test_mixed_batch_matches_per_row_transformers():
    logits, context, seen = _inputs(batch=len(CASES), seed=1)
    params = [SamplingParams(**c) for c in CASES]
    ours = process_logits(logits, params, seen)
    for i, p in enumerate(params):
        _same_distribution(ours[i:i + 1], hf_process(logits[i:i + 1], context[i:i + 1], p))
    assert torch.equal(logits, _inputs(batch=len(CASES), seed=1)[0])  # input not modified


def test_greedy_is_argmax_after_the_penalty():
    logits, context, seen = _inputs()
    assert torch.equal(sample(logits, [SamplingParams()] * 4), logits.argmax(-1))
    p = SamplingParams(repetition_penalty=2.0)
    ref = hf_process(logits, context, p).argmax(-1)
    assert torch.equal(sample(logits, [p] * 4, seen=seen), ref)
    assert not torch.equal(ref, logits.argmax(-1))  # the penalty changed something


def test_seeded_sampling_is_deterministic_and_per_request():
    logits, _, seen = _inputs(batch=3)
    p = SamplingParams(do_sample=True, temperature=0.8, top_p=0.95, seed=123)
    q = SamplingParams(do_sample=True, temperature=1.3)

    def draw(params, rows):
        gens = [make_generator(x, "cpu") for x in params]
        return torch.stack([sample(logits[rows], params, gens, seen[rows]) for _ in range(20)])

    a = draw([p, q, p], [0, 1, 2])
    b = draw([p, q, p], [0, 1, 2])
    assert torch.equal(a[:, 0], b[:, 0]) and torch.equal(a[:, 2], b[:, 2])
    # the seeded row gives the same tokens alone as in a batch
    alone = draw([p], [0])
    assert torch.equal(alone[:, 0], a[:, 0])
    other = draw([SamplingParams(do_sample=True, temperature=0.8, top_p=0.95, seed=124)], [0])
    assert not torch.equal(other[:, 0], a[:, 0])


def test_seeded_draw_equals_transformers_multinomial():
    """transformers samples with torch.multinomial(softmax(scores)) on the global generator: the
    same seed on a request generator gives the same token."""
    logits, context, seen = _inputs(batch=1, seed=3)
    p = SamplingParams(do_sample=True, temperature=0.7, top_k=100, top_p=0.9, repetition_penalty=1.2, seed=99)
    gen = make_generator(p, "cpu")
    ours = [int(sample(logits, [p], [gen], seen)[0]) for _ in range(10)]
    torch.manual_seed(99)
    probs = hf_process(logits, context, p).softmax(-1)
    ref = [int(torch.multinomial(probs, num_samples=1)[0, 0]) for _ in range(10)]
    assert ours == ref


def test_samples_follow_the_filtered_distribution():
    logits, context, seen = _inputs(batch=1, seed=4)
    p = SamplingParams(do_sample=True, temperature=2.0, top_k=30, top_p=0.7, seed=5)
    probs = process_logits(logits, [p], seen).softmax(-1)[0]
    gen = make_generator(p, "cpu")
    many = logits.expand(4000, V)
    draws = sample(many, [p] * 4000, [gen] * 4000)
    kept = probs > 0
    assert kept[draws].all()
    freq = torch.bincount(draws, minlength=V).float() / 4000
    assert (freq - probs).abs().max() < 0.04


def test_batched_rows_without_seed_use_the_global_generator():
    logits, _, _ = _inputs(batch=4)
    p = SamplingParams(do_sample=True, temperature=1.0)
    torch.manual_seed(0)
    a = sample(logits, [p] * 4)
    torch.manual_seed(0)
    b = sample(logits, [p] * 4)
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (4,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(top_k=1.5), "top_k"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(do_sample=True, temperature=float("inf")), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
    (dict(stop_token_ids=(-2,)), "stop_token_ids"), (dict(stop_token_ids="abc"), "stop_token_ids"),
    (dict(do_sample=1), "do_sample"),
])
def test_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_param_normalisation_and_shape_errors():
    assert SamplingParams(temperature=0.0).greedy  # temperature is ignored by greedy decoding
    assert SamplingParams(stop_token_ids=7).stop_token_ids == (7,)
    assert SamplingParams(stop_token_ids=[1, 2]).stop_token_ids == (1, 2)
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="SamplingParams"):
        process_logits(logits, [SamplingParams()])
    with pytest.raises(ValueError, match="seen"):
        process_logits(logits, [SamplingParams(repetition_penalty=1.2)] * 2)
    with pytest.raises(ValueError, match="generators"):
        sample(logits, [SamplingParams()] * 2, [None])


def test_temperature_zero_means_greedy():
    p = SamplingParams(do_sample=True, temperature=0.0, top_k=5)
    assert p.greedy and not p.do_sample


def test_ignore_eos_and_suppressed_ids_are_checked():
    assert SamplingParams(ignore_eos=True).ignore_eos
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(ignore_eos=1)
    with pytest.raises(ValueError, match="suppress_token_ids"):
        SamplingParams(suppress_token_ids=[-1])


def test_suppressed_ids_are_never_sampled():
    logits = torch.zeros(2, 8)
    logits[:, 3] = 10.0
    params = [SamplingParams(suppress_token_ids=(3,)), SamplingParams(do_sample=True, seed=1, suppress_token_ids=(3, 99))]
    ids = sample(logits, params, [None, make_generator(params[1], "cpu")])
    assert 3 not in ids.tolist()
