"""The engine as a server uses it: many requests on one engine, consumed from threads and asyncio
tasks in any order, added while others decode, preempted when the cache runs out, aborted, and
a second, different decoder with caller-supplied inputs sharing the memory plan. With greedy
decoding every stream's ids equal its solo run."""
import asyncio
import os
import random
import threading

import pytest
import torch

from omni_runtime.config import RopeParameters, TextConfig
from omni_runtime.engine import Engine, SamplingParams, plan_kv_caches
from omni_runtime.engine.cuda_graphs import capture_sizes
from omni_runtime.io.checkpoint import open_checkpoint
from omni_runtime.layers import PREFILL, DecoderModel, RMSNorm
from omni_runtime.models.thinker_lm import ThinkerLM

NEW = 12


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    torch.manual_seed(0)
    model = ThinkerLM.from_checkpoint(open_checkpoint(tiny_ckpt), dtype=torch.float32)
    with torch.no_grad():  # unit-scale logits: greedy ids are not decided by ties
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def _prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(1, 250) for _ in range(rng.randrange(3, 40))] for _ in range(n)]


def _params(**kw):
    return SamplingParams(max_new_tokens=NEW, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def solo(lm):
    cache = {}

    def run(prompt):
        key = tuple(prompt)
        if key not in cache:
            cache[key] = Engine(lm, max_num_seqs=1, num_blocks=64).generate_ids(prompt, _params())
        return cache[key]
    return run


def _drain(engine, seq, out):
    out[seq.seq_id] = [ev.token_id for ev in engine.stream(seq)]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_streams_from_threads_equal_solo_runs(lm, solo, n, one_thread):
    prompts = _prompts(n, seed=n)
    engine = Engine(lm, max_num_seqs=8, num_blocks=128, max_num_batched_tokens=64)
    seqs = [engine.add_request(p, _params()) for p in prompts]
    out = {}
    threads = [threading.Thread(target=_drain, args=(engine, s, out)) for s in reversed(seqs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not t.is_alive() for t in threads)
    for s, p in zip(seqs, prompts):
        assert out[s.seq_id] == s.output_ids == solo(p)
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks


def test_streams_from_asyncio_tasks_equal_solo_runs(lm, solo, one_thread):
    prompts = _prompts(5, seed=11)
    engine = Engine(lm, max_num_seqs=8, num_blocks=128)

    async def consume(seq):
        return [ev.token_id async for ev in engine.astream(seq)]

    async def main():
        seqs = [engine.add_request(p, _params()) for p in prompts]
        return seqs, await asyncio.gather(*(consume(s) for s in seqs))

    seqs, outs = asyncio.run(main())
    for p, ids in zip(prompts, outs):
        assert ids == solo(p)
    assert not engine.has_unfinished


def test_interleaved_consumers_in_one_thread_lose_nothing(lm, solo, one_thread):
    """Two generate() streams driven alternately (the defect: each dropped the other's tokens)."""
    prompts = _prompts(2, seed=3)
    engine = Engine(lm, max_num_seqs=4, num_blocks=64)
    a, b = engine.generate(prompts[0], _params()), engine.generate(prompts[1], _params())
    got = {0: [], 1: []}
    for _ in range(NEW):
        got[0].append(next(a).token_id)
        got[1].append(next(b).token_id)
    assert got[0] == solo(prompts[0]) and got[1] == solo(prompts[1])


def test_requests_added_while_others_decode(lm, solo, one_thread):
    prompts = _prompts(4, seed=5)
    engine = Engine(lm, max_num_seqs=4, num_blocks=128)
    first = engine.add_request(prompts[0], _params())
    stream = engine.stream(first)
    ids = [next(stream).token_id for _ in range(4)]
    later = [engine.add_request(p, _params()) for p in prompts[1:]]
    ids += [ev.token_id for ev in stream]
    assert ids == solo(prompts[0])
    for s, p in zip(later, prompts[1:]):
        assert [ev.token_id for ev in engine.stream(s)] == solo(p)


def test_preemption_keeps_outputs_identical(lm, solo, one_thread):
    """A cache with room for about two of six requests: the newest are preempted, recomputed
    later, and every output still equals its solo run; no block is left held."""
    prompts = _prompts(6, seed=7)
    engine = Engine(lm, max_num_seqs=6, num_blocks=8, block_size=8, max_num_batched_tokens=32)
    seqs = [engine.add_request(p, _params()) for p in prompts]
    out = {}
    threads = [threading.Thread(target=_drain, args=(engine, s, out)) for s in seqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert engine.scheduler.num_preemptions > 0
    for s, p in zip(seqs, prompts):
        assert out[s.seq_id] == solo(p)
    assert engine.block_manager.num_free_blocks == 8


def test_abort_mid_stream_frees_everything(lm, one_thread):
    engine = Engine(lm, max_num_seqs=4, num_blocks=64)
    seqs = [engine.add_request(p, _params()) for p in _prompts(3, seed=9)]
    stream = engine.stream(seqs[0])
    next(stream)
    engine.abort(seqs[1])
    stream.close()  # leaving a stream aborts its request
    assert seqs[0].finish_reason == seqs[1].finish_reason == "abort"
    assert len(list(engine.stream(seqs[2]))) == NEW
    assert not engine.has_unfinished and engine.block_manager.num_free_blocks == 64


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_thousand_sequential_requests_leave_blocks_and_memory_flat(lm, one_thread):
    engine = Engine(lm, max_num_seqs=2, num_blocks=32)
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)
    prompts = _prompts(50, seed=13)
    for i in range(100):  # warm-up: allocator pools, caches
        engine.generate_ids(prompts[i % 50], params)
    before = _rss_bytes()
    for i in range(1000):
        engine.generate_ids(prompts[i % 50], params)
        assert engine.block_manager.num_free_blocks == 32
    growth = _rss_bytes() - before
    print(f"RSS growth over 1000 requests: {growth / 2**20:.2f} MiB")
    assert growth < 8 * 2**20, f"process memory grew by {growth / 2**20:.1f} MiB over 1000 requests"
    assert not engine.has_unfinished


@pytest.mark.parametrize("batch", capture_sizes(16))
def test_padded_static_buffer_path_equals_eager(lm, batch, one_thread):
    """Every capture size: decode padded to its bucket through the persistent buffers (what a CUDA
    graph replays) gives the logits of the plain eager path, and the pad rows write no cache slot
    (both engines allocate the same blocks, so their caches must be equal)."""
    prompts = _prompts(max(1, batch - 1), seed=batch)  # one short of the bucket: a pad row
    results, engines = [], []
    for pad in (False, True):
        engine = Engine(lm, max_num_seqs=16, num_blocks=256, pad_decode=pad)
        seqs = [engine.add_request(p, _params(), return_logits=True) for p in prompts]
        while engine.has_unfinished:
            engine.step()
        results.append(seqs)
        engines.append(engine)
    for a, b in zip(*results):
        assert a.output_ids == b.output_ids
        assert torch.allclose(a.output_logits, b.output_logits, rtol=1e-5, atol=1e-5)
    for ka, kb in zip(engines[0].kv_cache.key_caches + engines[0].kv_cache.value_caches,
                      engines[1].kv_cache.key_caches + engines[1].kv_cache.value_caches):
        # a pad row writing a slot would differ by O(1); the rest is matmul rounding, which depends
        # on the batch shape (measured up to 3e-6 on O(1) values)
        assert torch.allclose(ka, kb, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# a second, different decoder: caller-supplied embeddings, another width, waiting for input
# ------------------------------------------------------------------------------------------------
class ToyLM(torch.nn.Module):
    """A 1-layer Qwen2 decoder of width 24 whose every input is an embedding given from outside
    (as the Talker's are): it implements the engine's DecoderLM protocol and nothing more."""

    def __init__(self):
        super().__init__()
        cfg = TextConfig(vocab_size=40, hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=3, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                         rope_parameters=RopeParameters("default", 10000.0, [1, 1, 2]))
        cfg.validate()
        self.model = DecoderModel(cfg)
        self.head = torch.nn.Linear(24, 40, bias=False)
        self.hidden_size, self.vocab_size, self.num_layers = 24, 40, 1
        self.num_kv_heads, self.head_dim, self.max_position_embeddings = 1, 8, 128
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def embed(self, ids):
        return self.model.embed_tokens(ids)

    def forward_embeds(self, x, state, kv_caches):
        return self.model(x, state, kv_caches)

    def compute_logits(self, h):
        return self.head(h)


def _toy_reference(toy, prompt_embeds, next_input, steps):
    """Greedy by recomputing the whole sequence each step (no cache, no paging)."""
    from omni_runtime.engine.step_state import StepState

    x, ids = prompt_embeds, []
    for _ in range(steps):
        n = x.shape[0]
        st = StepState(n, 1, 1, "cpu")
        st.prepare(PREFILL, [0] * n, torch.arange(n).expand(3, n), [-1] * n, torch.zeros(1, 1, dtype=torch.int32),
                   [n], [n])
        with torch.no_grad():
            h = toy.forward_embeds(x, st, [(None, None)])
            tok = int(toy.compute_logits(h[-1:]).argmax())
        ids.append(tok)
        x = torch.cat([x, next_input(tok)[None]])
    return ids


def test_second_decoder_with_outside_inputs_next_to_the_thinker(lm, solo, one_thread):
    torch.manual_seed(3)
    toy = ToyLM().eval().requires_grad_(False)
    caches = plan_kv_caches({"thinker": (lm, 4, 256), "toy": (toy, 2, 128)}, "cpu", memory_budget_bytes=4 << 20,
                            block_size=8)
    thinker = Engine(lm, caches["thinker"], max_num_seqs=4, max_model_len=256)
    toy_engine = Engine(toy, caches["toy"], max_num_seqs=2, max_model_len=128)
    table = torch.randn(40, 24)
    rows = []  # "outside input": rows arrive from another thread, slower than the decoder wants them
    ready = threading.Event()

    def provider(seq, token):
        i = len(seq._fed)
        if i >= len(rows):
            return None  # not ready: the engine waits without blocking others
        return table[token] + rows[i]

    prompt = torch.randn(5, 24)
    steps = 10
    seq = toy_engine.add_request([0] * 5, SamplingParams(max_new_tokens=steps, ignore_eos=True),
                                 inputs_embeds=prompt, external_inputs=True, input_provider=provider)
    outside = torch.randn(steps, 24)

    def supplier():
        for r in outside:
            rows.append(r)
            toy_engine._wake()
            ready.wait(0.002)

    t = threading.Thread(target=supplier)
    t.start()
    thinker_prompts = _prompts(2, seed=21)
    got = {}
    th = [threading.Thread(target=_drain, args=(thinker, s, got))
          for s in [thinker.add_request(p, _params()) for p in thinker_prompts]]
    for x in th:
        x.start()
    toy_ids = [ev.token_id for ev in toy_engine.stream(seq, timeout=120)]
    t.join()
    for x in th:
        x.join(timeout=120)
    expect = _toy_reference(toy, prompt, lambda tok, it=iter(outside): table[tok] + next(it), steps)
    assert toy_ids == expect
    assert sorted(got.values()) == sorted(solo(p) for p in thinker_prompts)
    assert caches["toy"].num_blocks > 0 and caches["thinker"].num_blocks > 0


def test_feed_and_protocol_errors(lm):
    toy = ToyLM()
    engine = Engine(toy, num_blocks=16, max_model_len=64)
    seq = engine.add_request([0, 0], SamplingParams(max_new_tokens=3), inputs_embeds=torch.randn(2, 24),
                             external_inputs=True)
    with pytest.raises(ValueError, match="one input per generated token"):
        engine.feed(seq, torch.randn(24))
    engine.step()  # prefill -> first token; now it waits for its input
    assert engine.step() == [] and seq.waiting_for_input
    with pytest.raises(ValueError, match=r"\(1, 24\)"):
        engine.feed(seq, torch.randn(7))
    engine.feed(seq, torch.randn(24))
    (r,) = engine.step()
    assert r.mode == "decode" and r.event is not None
    with pytest.raises(ValueError, match="external_inputs"):
        plain = Engine(lm, num_blocks=16, max_model_len=64)
        plain.feed(plain.add_request([1], SamplingParams(max_new_tokens=4)), torch.randn(lm.hidden_size))
    with pytest.raises(ValueError, match="DecoderLM protocol"):
        Engine(RMSNorm(4, 1e-6))
    with pytest.raises(ValueError, match="input_provider needs external_inputs"):
        engine.add_request([1], input_provider=lambda s, t: None)


def test_a_failing_callback_ends_only_its_own_request(lm, solo, one_thread):
    engine = Engine(lm, max_num_seqs=4, num_blocks=64)
    good = engine.add_request(_prompts(1, seed=31)[0], _params())

    def sink(rows):
        raise KeyError("boom")

    bad = engine.add_request(_prompts(1, seed=32)[0], _params(), sink=sink)
    toy = ToyLM()
    toy_engine = Engine(toy, num_blocks=16, max_model_len=64)
    fed_badly = toy_engine.add_request([0, 0], _params(), inputs_embeds=torch.randn(2, 24), external_inputs=True,
                                       input_provider=lambda seq, token: torch.randn(5))  # wrong width
    with pytest.raises(RuntimeError, match="sink .* raised KeyError"):
        list(engine.stream(bad))
    assert bad.finish_reason == "error" and [ev.token_id for ev in engine.stream(good)] == solo(good.prompt_ids)
    with pytest.raises(RuntimeError, match=r"input_provider .* raised ValueError.*\(1, 24\)"):
        list(toy_engine.stream(fed_badly, timeout=60))
    assert not engine.has_unfinished and not toy_engine.has_unfinished
    assert engine.block_manager.num_free_blocks == 64
