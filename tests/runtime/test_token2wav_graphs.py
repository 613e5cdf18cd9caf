"""The static-buffer path of the streamed Token2Wav (token2wav/graphs.py) on the CPU: what a CUDA
graph replays, run eagerly over the same persistent buffers (capture itself:
tests/test_gpu_token2wav.py).

Proved here: the default plan's chunk shapes are 48, 120, 216, 360 DiT frames (chunks of 1, 3, 6,
then 12 blocks: the steady state) and 48, 120, 202, 346 vocoder frames; a SolveRunner's replay equals
`FlowSampler.sample` bit for bit for those windows and a final partial one, with CFG (batch 2) and
without (batch 1), and for several streams at once in a batch bucket (padded rows); a
VocoderRunner's equals `BigVGAN.forward`; replays with other inputs in between
give the same output again and leave earlier outputs and the inputs alone; a streamed decode
through the static path equals the plain one packet for packet, and went through the runners (all
chunks but a last one of another shape); the switch is off on the CPU, `graphs=True` is refused
there; bad inputs raise ValueError."""
import pytest
import torch

from omni_runtime.token2wav import Schedule, StreamPlan, Token2Wav, initial_noise
from omni_runtime.token2wav import graphs as graphs_mod
from omni_runtime.token2wav.graphs import BATCH_SIZES, SolveRunner, Token2WavGraphs, VocoderRunner

CFG, NO_CFG = Schedule(), Schedule(guidance_scale=0.0)
SOLVE_FRAMES = [48, 120, 216, 360]  # the default plan's DiT windows (chunks of 1, 3, 6, then 12 blocks)
VOCODER_FRAMES = [48, 120, 202, 346]  # and its vocoder windows


@pytest.fixture(scope="module")
def t2w(tiny_ckpt):
    return Token2Wav.from_checkpoint(tiny_ckpt)


def solve_inputs(t2w, schedule, frames, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, t2w.num_codes, (1, frames // t2w.repeats), generator=g)
    ref_mel, cond = t2w.speaker_tensors(("Chelsie", "Ethan")[seed % 2])
    with torch.inference_mode():
        speaker = t2w.sampler.speaker_condition(ref_mel, cond, schedule)
    return codes, speaker, initial_noise(seed, 24 * seed, frames, t2w.mel_dim)


def plain_solve(t2w, schedule, inputs):
    codes, speaker, noise = inputs
    with torch.inference_mode():
        return t2w.sampler.sample(codes, speaker, noise, schedule)


def mel_window(t2w, frames, seed):
    """A log-mel as a stream hands it to the vocoder: (1, frames, mel_dim) memory, read transposed."""
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(1, frames, t2w.mel_dim, generator=g) - 5).transpose(1, 2)


def plain_vocode(t2w, mel):
    with torch.inference_mode():
        return t2w.vocoder(mel)


def test_chunk_shapes(t2w):
    assert t2w.stream("Chelsie").regular_shapes() == (SOLVE_FRAMES, VOCODER_FRAMES)
    plan = StreamPlan(first_chunk_blocks=2, chunk_blocks=1, max_chunk_blocks=1, left_blocks=0, right_blocks=0,
                      vocoder_left=0, crossfade=0)
    assert t2w.stream("Chelsie", plan=plan).regular_shapes() == ([24, 48], [24, 48])
    assert t2w.stream("Chelsie", plan=StreamPlan(max_chunk_blocks=3)).regular_shapes() == ([48, 120, 144],
                                                                                          [48, 120, 130])


@pytest.mark.parametrize("schedule", [CFG, NO_CFG], ids=["cfg-batch2", "no-cfg-batch1"])
@pytest.mark.parametrize("frames", SOLVE_FRAMES + [86], ids=["first", "second", "third", "steady", "final-partial"])
def test_solve_replay_equals_plain(one_thread, t2w, schedule, frames):
    runner = SolveRunner(t2w.sampler, schedule, frames)
    assert runner.rows == (2 if schedule.cfg else 1)
    inputs = solve_inputs(t2w, schedule, frames, seed=frames)
    out = runner.replay(*inputs)
    assert out.shape == (1, frames, t2w.mel_dim)
    assert torch.equal(out, plain_solve(t2w, schedule, inputs))


@pytest.mark.parametrize("frames", VOCODER_FRAMES + [94], ids=["first", "second", "third", "steady", "final-partial"])
def test_vocoder_replay_equals_plain(one_thread, t2w, frames):
    runner = VocoderRunner(t2w.vocoder, frames)
    mel = mel_window(t2w, frames, seed=frames)
    out = runner.replay(mel)
    assert out.shape == (1, frames * t2w.hop_length)
    assert torch.equal(out, plain_vocode(t2w, mel))
    assert torch.equal(runner.replay(mel.contiguous()), out)  # any layout of the same mel


def test_replays_do_not_leak(one_thread, t2w):
    schedule = Schedule(num_steps=3)
    solver = SolveRunner(t2w.sampler, schedule, 48)
    a, b = solve_inputs(t2w, schedule, 48, seed=1), solve_inputs(t2w, schedule, 48, seed=2)
    a_kept = tuple(x.clone() for x in (a[0], *a[1], a[2]))
    first = solver.replay(*a)
    first_kept = first.clone()
    other = solver.replay(*b)
    assert not torch.equal(first, other)
    assert torch.equal(other, plain_solve(t2w, schedule, b))
    assert torch.equal(first, first_kept)  # an output is a copy, not the runner's memory
    assert torch.equal(solver.replay(*a), first)
    assert all(torch.equal(x, y) for x, y in zip(a_kept, (a[0], *a[1], a[2])))

    vocoder = VocoderRunner(t2w.vocoder, 48)
    m1, m2 = mel_window(t2w, 48, seed=1), mel_window(t2w, 48, seed=2)
    w1 = vocoder.replay(m1)
    w1_kept = w1.clone()
    w2 = vocoder.replay(m2)
    assert not torch.equal(w1, w2) and torch.equal(w2, plain_vocode(t2w, m2))
    assert torch.equal(w1, w1_kept) and torch.equal(vocoder.replay(m1), w1)


def batch_inputs(t2w, schedule, frames, n):
    """n streams' solve inputs stacked as `Token2WavGraphs.solve` takes them."""
    parts = [solve_inputs(t2w, schedule, frames, seed=i) for i in range(n)]
    return (torch.cat([p[0] for p in parts]), tuple(torch.cat([p[1][j] for p in parts]) for j in range(2)),
            torch.cat([p[2] for p in parts])), parts


@pytest.mark.parametrize("n", [1, 3, 4])
def test_batched_solve_replay(one_thread, t2w, n):
    """A bucket-4 runner: n streams (the rest of the bucket padded) give exactly the plain call on
    the padded batch, and each stream what it gets alone up to fp32 rounding (the matmuls' batch
    differs)."""
    schedule = Schedule(num_steps=3)
    runner = SolveRunner(t2w.sampler, schedule, 48, batch=4)
    stacked, parts = batch_inputs(t2w, schedule, 48, n)
    out = runner.replay(*stacked)
    assert out.shape == (n, 48, t2w.mel_dim)
    padded, _ = batch_inputs(t2w, schedule, 48, n)
    pad = graphs_mod._pad
    padded = (pad(padded[0], 4), tuple(pad(x, 4 * runner.rows) for x in padded[1]), pad(padded[2], 4))
    assert torch.equal(out, plain_solve(t2w, schedule, padded)[:n])
    for i, p in enumerate(parts):
        torch.testing.assert_close(out[i:i + 1], plain_solve(t2w, schedule, p), rtol=1e-5, atol=1e-5)


def test_batched_vocoder_replay(one_thread, t2w):
    runner = VocoderRunner(t2w.vocoder, 48, batch=4)
    mels = [mel_window(t2w, 48, seed=i) for i in range(3)]
    out = runner.replay(torch.cat(mels))
    assert out.shape == (3, 48 * t2w.hop_length)
    padded = torch.cat(mels + [torch.zeros_like(mels[0])])
    assert torch.equal(out, plain_vocode(t2w, padded)[:3])
    for i, m in enumerate(mels):
        torch.testing.assert_close(out[i:i + 1], plain_vocode(t2w, m), rtol=1e-5, atol=1e-5)


def test_runners_pick_the_smallest_bucket(one_thread, t2w, monkeypatch):
    runners = Token2WavGraphs(t2w.sampler, t2w.vocoder, capture=False, batch_sizes=(1, 2, 4))
    schedule = Schedule(num_steps=2)
    runners.prepare(schedule, [48], [48])
    spy = Spy(monkeypatch)
    for n in (1, 2, 3, 4):
        stacked, _ = batch_inputs(t2w, schedule, 48, n)
        assert runners.solve(*stacked, schedule).shape[0] == n
        assert runners.vocode(torch.cat([mel_window(t2w, 48, seed=i) for i in range(n)])).shape[0] == n
    assert spy.calls == {"solve": [48, (48, 2), (48, 4), (48, 4)], "vocoder": [48, (48, 2), (48, 4), (48, 4)]}
    with pytest.raises(ValueError, match="batch_sizes"):
        Token2WavGraphs(t2w.sampler, t2w.vocoder, capture=False, batch_sizes=(0,))


class Spy:
    """Counts the replays of SolveRunner / VocoderRunner while keeping what they do."""

    def __init__(self, monkeypatch):
        self.calls = {"solve": [], "vocoder": []}
        for name, cls in (("solve", SolveRunner), ("vocoder", VocoderRunner)):
            monkeypatch.setattr(cls, "replay", self._wrap(cls.replay, self.calls[name]))

    @staticmethod
    def _wrap(replay, calls):
        def spy(runner, *args):
            calls.append(runner.frames if runner.batch == 1 else (runner.frames, runner.batch))
            return replay(runner, *args)
        return spy


def stream_all(t2w, codes, pieces, **kw):
    s = t2w.stream("Chelsie", seed=3, **kw)
    packets, i = [], 0
    for size in pieces:
        packets += s.push(codes[i:i + size])
        i += size
    return packets + s.finish()


@pytest.mark.parametrize("n,pieces,schedule,solves,vocodes", [
    # 300 frames: chunks 0-2 (windows 48, 120, 216), then the last one [240, 300): window 108, mel 94 (plain calls)
    (150, [30, 1, 50, 69], {}, [48, 120, 216], [48, 120, 202]),
    (150, [150], dict(num_steps=3, guidance_scale=0.0), [48, 120, 216], [48, 120, 202]),
    # 48 frames: chunk 0, then the last one [24, 48), whose window (0..48) and mel (24 + 24) have runners
    (24, [24], dict(num_steps=3), [48, 48], [48, 48]),
], ids=["cfg", "no-cfg", "last-chunk-regular"])
def test_stream_static_equals_plain(one_thread, t2w, monkeypatch, n, pieces, schedule, solves, vocodes):
    codes = torch.randint(0, t2w.num_codes, (n,), generator=torch.Generator().manual_seed(n))
    spy = Spy(monkeypatch)
    plain = stream_all(t2w, codes, pieces, **schedule)
    assert spy.calls == {"solve": [], "vocoder": []}  # graphs are off on the CPU: the plain calls
    static = stream_all(t2w, codes, pieces, static=True, **schedule)
    assert spy.calls == {"solve": solves, "vocoder": vocodes}
    assert len(plain) == len(static)
    for p, q in zip(plain, static):
        assert (p.index, p.start_sample, p.codes, p.depends_on) == (q.index, q.start_sample, q.codes, q.depends_on)
        assert torch.equal(p.samples, q.samples), p.index
    runners = t2w.runners(capture=False)
    assert {(f, b) for (s, f, b) in runners.solvers if s == Schedule(**schedule)} == {
        (f, b) for f in SOLVE_FRAMES for b in BATCH_SIZES}
    assert set(runners.vocoders) == {(f, b) for f in VOCODER_FRAMES for b in BATCH_SIZES}
    assert all(r.graph is None for r in (*runners.solvers.values(), *runners.vocoders.values()))


def test_switch(tiny_ckpt, t2w):
    assert t2w.graphs is False
    for graphs in (True, "on", 1):
        with pytest.raises(ValueError, match="graphs"):
            Token2Wav.from_checkpoint(tiny_ckpt, graphs=graphs)
        with pytest.raises(ValueError, match="graphs"):
            t2w.stream("Chelsie", graphs=graphs)
    with pytest.raises(ValueError, match="CUDA device"):
        t2w.stream("Chelsie", graphs=True)
    with pytest.raises(ValueError, match="static"):
        t2w.stream("Chelsie", static="yes")
    with pytest.raises(ValueError, match="CUDA device"):
        Token2WavGraphs(t2w.sampler, t2w.vocoder, capture=True)
    assert graphs_mod.graphs_enabled(None, torch.device("cuda")) is True
    assert graphs_mod.graphs_enabled(False, torch.device("cuda")) is False


def test_bad_runner_inputs(t2w):
    for frames in (47, 0, 48.0, True):
        with pytest.raises(ValueError, match="frames"):
            SolveRunner(t2w.sampler, CFG, frames)
    with pytest.raises(ValueError, match="frames"):
        VocoderRunner(t2w.vocoder, 0)
    runner = SolveRunner(t2w.sampler, Schedule(num_steps=2), 48)
    codes, speaker, noise = solve_inputs(t2w, Schedule(num_steps=2), 48, seed=0)
    for bad, match in (((codes[:, :10], speaker, noise), "codes"), ((codes.int(), speaker, noise), "codes"),
                       ((codes, speaker, noise[:, :24]), "noise"), ((codes, speaker, None), "noise"),
                       ((codes, (speaker[0][:1], speaker[1]), noise), "speaker")):
        with pytest.raises(ValueError, match=match):
            runner.replay(*bad)
    vocoder = VocoderRunner(t2w.vocoder, 48)
    for bad in (mel_window(t2w, 47, 0), torch.zeros(2, t2w.mel_dim, 48), "mel"):
        with pytest.raises(ValueError, match="mel"):
            vocoder.replay(bad)
