"""Token2Wav's CUDA graphs on a GPU (omni_runtime/token2wav/graphs.py): streamed packets with graphs on
(the default on CUDA) equal graphs off (the plain eager calls) and the static-buffer path without
capture, bit for bit, with CFG and without; every chunk shape is captured once, largest first,
into one pool (a second stream captures nothing, another schedule only its DiT solves); replays do
no host synchronisation (`torch.cuda.set_sync_debug_mode("error")`), equal the eager calls, and a
replay with other inputs leaves an earlier output alone. The CPU twin of these checks:
tests/runtime/test_token2wav_graphs.py. Skipped without CUDA; benchmarks/run_gpu.sh runs it with
TRITON_INTERPRET=0."""
import pytest
import torch

from omni_kernels import backend
from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint
from omni_runtime.token2wav import Schedule, Token2Wav, initial_noise
from omni_runtime.token2wav import graphs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(backend.interpreter_active(), reason="TRITON_INTERPRET=1: run with TRITON_INTERPRET=0"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("t2w") / "ckpt", seed=0, preset="tiny")


def codes_for(t2w, n, seed=0):
    return torch.randint(0, t2w.num_codes, (n,), generator=torch.Generator().manual_seed(seed))


def stream_all(t2w, codes, **kw):
    s = t2w.stream("Chelsie", seed=1, **kw)
    return s.push(codes[:40]) + s.push(codes[40:]) + s.finish()


def same_samples(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(p.samples, q.samples) for p, q in zip(a, b))


@pytest.mark.parametrize("schedule", [{}, dict(guidance_scale=0.0)], ids=["cfg-batch2", "no-cfg-batch1"])
def test_graphs_equal_eager(ckpt, schedule):
    t2w = Token2Wav.from_checkpoint(ckpt, device="cuda")
    assert t2w.graphs is True
    codes = codes_for(t2w, 150)  # chunks 0-2 replay graphs, the last (window 108) runs eagerly
    off = stream_all(t2w, codes, graphs=False, **schedule)
    assert len(off) == 4
    assert same_samples(off, stream_all(t2w, codes, graphs=False, **schedule)), \
        "the eager decode itself is not deterministic on this GPU: graphs cannot be compared bit for bit"
    on = stream_all(t2w, codes, **schedule)
    assert same_samples(on, off)
    assert same_samples(stream_all(t2w, codes, graphs=False, static=True, **schedule), off)
    runners = t2w.runners(capture=True)
    assert all(r.graph is not None for r in (*runners.solvers.values(), *runners.vocoders.values()))


def test_captured_once_per_shape(ckpt, monkeypatch):
    captured, pools = [], set()
    capture = graphs._StaticRunner.capture

    def spy(runner, pool):
        captured.append((type(runner).__name__, runner.frames, runner.batch))
        pools.add(id(pool))
        capture(runner, pool)

    monkeypatch.setattr(graphs._StaticRunner, "capture", spy)
    t2w = Token2Wav.from_checkpoint(ckpt, device="cuda")
    stream_all(t2w, codes_for(t2w, 80))
    buckets = sorted(graphs.BATCH_SIZES, reverse=True)
    solves = [("SolveRunner", f, b) for f in (360, 216, 120, 48) for b in buckets]
    assert captured == solves + [("VocoderRunner", f, b) for f in (346, 202, 120, 48) for b in buckets]
    stream_all(t2w, codes_for(t2w, 60, seed=1))
    assert len(captured) == 8 * len(buckets)
    t2w.stream("Chelsie", num_steps=4)  # another schedule: new DiT solves, the same vocoder windows
    assert captured[8 * len(buckets):] == solves
    assert len(pools) == 1


def test_replays_do_not_sync(ckpt):
    t2w = Token2Wav.from_checkpoint(ckpt, device="cuda")
    schedule = Schedule()
    runners = t2w.runners(capture=True)
    runners.prepare(schedule, [144], [130])

    def inputs(seed):
        g = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, t2w.num_codes, (72,), generator=g).cuda()
        with torch.inference_mode():
            speaker = t2w.sampler.speaker_condition(*t2w.speaker_tensors("Ethan"), schedule)
        return codes, speaker, initial_noise(seed, 0, 144, t2w.mel_dim).cuda()

    a, b = inputs(1), inputs(2)
    mel = (2 * torch.randn(1, 130, t2w.mel_dim, generator=torch.Generator().manual_seed(3)) - 5).cuda().transpose(1, 2)
    with torch.inference_mode():
        eager_a, eager_b = (t2w.sampler.sample(*x, schedule) for x in (a, b))
        eager_wave = t2w.vocoder(mel)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out_a = runners.solve(*a, schedule)
        out_b = runners.solve(*b, schedule)
        again_a = runners.solve(*a, schedule)
        wave = runners.vocode(mel)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(out_a, eager_a) and torch.equal(out_b, eager_b) and torch.equal(again_a, eager_a)
    assert not torch.equal(out_a, out_b)
    assert torch.equal(wave, eager_wave)


def test_batched_graphs_equal_eager(ckpt):
    """3 streams' windows in the bucket-4 graphs == the eager call on the same padded batch."""
    t2w = Token2Wav.from_checkpoint(ckpt, device="cuda")
    schedule = Schedule(num_steps=3)
    runners = t2w.runners(capture=True)
    runners.prepare(schedule, [48], [48])
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, t2w.num_codes, (3, 24), generator=g).cuda()
    with torch.inference_mode():
        rows = [t2w.sampler.speaker_condition(*t2w.speaker_tensors(n), schedule) for n in ("Chelsie", "Ethan", "Chelsie")]
    speaker = tuple(torch.cat([r[i] for r in rows]) for i in range(2))
    noise = torch.cat([initial_noise(i, 0, 48, t2w.mel_dim) for i in range(3)]).cuda()
    mel = (2 * torch.randn(3, 48, t2w.mel_dim, generator=g) - 5).cuda().transpose(1, 2)
    out, wave = runners.solve(codes, speaker, noise, schedule), runners.vocode(mel)
    pad = graphs._pad
    with torch.inference_mode():
        eager = t2w.sampler.sample(pad(codes, 4), tuple(pad(x, 8) for x in speaker), pad(noise, 4), schedule)[:3]
        eager_wave = t2w.vocoder(pad(mel, 4))[:3]
    assert torch.equal(out, eager) and torch.equal(wave, eager_wave)
