"""token2wav.process: the Token2Wav decoder in a child process (the CPU default of `Omni`).

Proved here: its streams' packets and its whole decodes equal the in-process StreamBatcher's and
Token2Wav's exactly; one stream's bad codes or cancel leave the others alone; a child that dies
fails every open stream and later call with a RuntimeError (never a hang); a checkpoint the child
cannot load fails at start; a whole Omni turn is the same with the decoder in a process or a
thread; `codec_process` is checked."""
import pytest
import torch

from helpers import OMNI_ENGINE
from omni_runtime.omni import Omni
from omni_runtime.token2wav import Token2Wav
from omni_runtime.token2wav.batching import StreamBatcher
from omni_runtime.token2wav.process import CodecProcess


@pytest.fixture(scope="module")
def t2w(tiny_ckpt):
    return Token2Wav.from_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def child(tiny_ckpt):
    proc = CodecProcess(tiny_ckpt)
    proc.wait_ready()
    yield proc
    proc.close()


def codes_for(t2w, n, seed):
    return torch.randint(0, t2w.num_codes, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(codec, speaker, codes, seed, piece=10):
    h = codec.open(speaker, seed=seed, num_steps=3)
    for i in range(0, len(codes), piece):
        h.push(codes[i:i + piece])
    h.finish()
    got = []
    while not (h.done and not h.has_packets):
        assert h.wait(60), "no packet within 60 s"
        got += h.ready()
    return got


def test_packets_equal_the_in_process_batcher(one_thread, t2w, child):
    local = StreamBatcher(t2w)
    for seed, (speaker, n) in enumerate([("Chelsie", 70), (t2w.speaker("Ethan"), 31)]):
        codes = codes_for(t2w, n, seed)
        remote, here = run(child, speaker, codes, seed), run(local, speaker, codes, seed)
        assert [(p.index, p.start_sample, p.codes, p.depends_on) for p in remote] == \
            [(p.index, p.start_sample, p.codes, p.depends_on) for p in here]
        assert all(torch.equal(p.samples, q.samples) for p, q in zip(remote, here))
    codes = codes_for(t2w, 40, 5)
    noise = torch.randn(1, 80, t2w.mel_dim, generator=torch.Generator().manual_seed(1))
    assert torch.equal(child.decode(codes, "Ethan", seed=3).result(timeout=60), t2w(codes, "Ethan", seed=3))
    assert torch.equal(child.decode(codes, "Ethan", noise=noise).result(timeout=60), t2w(codes, "Ethan", noise=noise))
    assert child.num_streams == 0


def test_one_bad_stream_leaves_the_others_alone(one_thread, t2w, child):
    bad, cancelled = child.open("Chelsie", seed=0), child.open("Ethan", seed=1)
    bad.push([0, t2w.num_codes + 3])
    cancelled.push(codes_for(t2w, 30, 1))
    cancelled.cancel()
    with pytest.raises(ValueError, match="closed"):
        cancelled.push([1])
    good = codes_for(t2w, 30, 2)
    assert run(child, "Chelsie", good, 2)  # decodes as usual meanwhile
    assert bad.wait(60)
    with pytest.raises(ValueError, match="code"):
        bad.ready()
    with pytest.raises(ValueError, match="Nobody"):
        child.decode(good, "Nobody").result(timeout=60)
    assert child.num_streams == 0


def test_a_dead_child_fails_its_streams_and_later_calls(t2w, tiny_ckpt):
    proc = CodecProcess(tiny_ckpt)
    proc.wait_ready()
    h = proc.open("Chelsie", seed=0)
    h.push([1, 2, 3])
    proc._proc.kill()
    assert h.wait(30)
    with pytest.raises(RuntimeError, match="exited"):
        h.ready()
    with pytest.raises(RuntimeError, match="exited"):
        proc.open("Chelsie")
    with pytest.raises(RuntimeError, match="exited"):
        proc.decode([1, 2], "Chelsie")
    proc.close()


def test_a_checkpoint_the_child_cannot_load(tmp_path):
    proc = CodecProcess(tmp_path / "nothing-here")
    with pytest.raises(RuntimeError, match="could not start: .*nothing-here"):
        proc.wait_ready(timeout=120)
    proc.close()


def test_a_turn_is_the_same_in_a_process_or_a_thread(sharp, one_thread):
    path, stops = sharp
    from omni_runtime.engine.sampling import SamplingParams

    turns = []
    for codec_process in (True, False):
        omni = Omni.from_checkpoint(path, engine_kwargs=OMNI_ENGINE, talker_engine_kwargs=OMNI_ENGINE,
                                    codec_process=codec_process)
        assert isinstance(omni.codec(), CodecProcess if codec_process else StreamBatcher)
        kw = dict(params=SamplingParams(max_new_tokens=8, stop_token_ids=tuple(stops)), seed=4,
                  talker_params=omni.talker.sampling_params(seed=4, max_new_tokens=40))
        turns.append((list(omni.generate("Hello there", **kw))[-1], omni.generate("Hello there", stream=False, **kw)))
        omni.close()
    for a, b in zip(*turns):
        assert a.codes == b.codes and torch.equal(a.waveform, b.waveform)
    with pytest.raises(ValueError, match="codec_process"):
        Omni.from_checkpoint(path, codec_process="yes")


@pytest.mark.parametrize("codec_process", [True, False], ids=["child-process", "thread"])
def test_a_dropped_or_closed_omni_ends_its_decoder(sharp, codec_process):
    import gc

    omni = Omni.from_checkpoint(sharp[0], engine_kwargs=OMNI_ENGINE, talker_engine_kwargs=OMNI_ENGINE,
                                codec_process=codec_process)
    codec = omni.codec()
    if not codec_process:
        codec.call(lambda: None).result(timeout=60)  # its thread runs
    del omni
    gc.collect()
    if codec_process:
        assert codec._proc.wait(timeout=60) == 0
        with pytest.raises(RuntimeError, match="exited"):
            codec.open("Chelsie")
    else:
        codec._thread.join(timeout=60)
        assert not codec._thread.is_alive()
        with pytest.raises(RuntimeError, match="closed"):
            codec.open("Chelsie")
    omni = Omni.from_checkpoint(sharp[0], engine_kwargs=OMNI_ENGINE, talker_engine_kwargs=OMNI_ENGINE,
                                codec_process=codec_process)
    omni.close()
    omni.close()  # twice is fine
