"""token2wav.batching: chunks of several streams decoded in one batch (`decode_chunks`) and the
decode thread that batches every stream of a Token2Wav (`StreamBatcher`).

Proved here: N streams decoded together give each stream's solo packets (same indices, sample
ranges, dependencies; samples equal up to fp32 rounding), in batches (packets say how many streams
shared their DiT run), plain and through the static-buffer runners; streams of different shapes
(a first chunk beside a steady one) go in separate groups; the batcher's packets equal the solo
ones whatever the push pattern; a stream with bad codes or a cancelled one does not disturb the
others; `call` runs on the batcher's thread; bad use raises ValueError."""
import threading

import pytest
import torch

from omni_runtime.token2wav import Token2Wav
from omni_runtime.token2wav.batching import StreamBatcher, decode_chunks


@pytest.fixture(scope="module")
def t2w(tiny_ckpt):
    return Token2Wav.from_checkpoint(tiny_ckpt)


SPEAKERS = ("Chelsie", "Ethan")


def codes_for(t2w, n, seed):
    return torch.randint(0, t2w.num_codes, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def solo(t2w, codes, seed, **kw):
    s = t2w.stream(SPEAKERS[seed % 2], seed=seed, num_steps=3, **kw)
    return s.push(codes) + s.finish()


def assert_same_packets(got, want):
    assert [(p.index, p.start_sample, p.codes, p.depends_on) for p in got] == \
        [(p.index, p.start_sample, p.codes, p.depends_on) for p in want]
    for p, q in zip(got, want):
        torch.testing.assert_close(p.samples, q.samples, rtol=0, atol=1e-5)


def decode_together(streams, finishing=False):
    """Every stream's chunks, one round (one chunk per stream) at a time, through decode_chunks."""
    out = {id(s): [] for s in streams}
    while True:
        chunks = [c for c in (s.next_chunk(finishing) for s in streams) if c is not None]
        if not chunks:
            return out
        for group in decode_chunks(chunks):
            for chunk, packet in group:
                assert not isinstance(packet, BaseException), packet
                out[id(chunk.stream)].append(packet)


@pytest.mark.parametrize("static", [False, True], ids=["plain", "static-runners"])
def test_decode_chunks_equals_solo(one_thread, t2w, static):
    all_codes = [codes_for(t2w, n, seed) for seed, n in enumerate((80, 80, 61))]
    streams = [t2w.stream(SPEAKERS[i % 2], seed=i, num_steps=3, static=static) for i in range(3)]
    for s, codes in zip(streams, all_codes):
        s.add_codes(codes)
    regular = decode_together(streams)
    last = decode_together(streams, finishing=True)
    for i, s in enumerate(streams):
        got = regular[id(s)] + last[id(s)]
        assert_same_packets(got, solo(t2w, all_codes[i], i))
        assert s.finished and not s.pending
    batches = [p.batch for p in regular[id(streams[0])]]
    assert batches[0] == 3  # all three first chunks in one DiT batch


def test_groups_by_window_shape(one_thread, t2w):
    ahead, fresh = t2w.stream("Chelsie", seed=0, num_steps=3), t2w.stream("Ethan", seed=1, num_steps=3)
    ahead.push(codes_for(t2w, 30, 0))  # its first chunk done: its next is a 120-frame window
    ahead.add_codes(codes_for(t2w, 40, 1))
    fresh.add_codes(codes_for(t2w, 40, 2))  # its first chunk: a 48-frame window
    groups = list(decode_chunks([ahead.next_chunk(), fresh.next_chunk()]))
    assert [[(c.stream is fresh, p.batch) for c, p in g] for g in groups] == [[(True, 1)], [(False, 1)]]
    other = t2w.stream("Ethan", seed=2, num_steps=3)
    other.add_codes(codes_for(t2w, 40, 3))
    chunk = other.next_chunk()
    assert other.next_chunk() is None  # one chunk at a time: the next waits for this one's packet
    with pytest.raises(ValueError, match="one chunk per stream"):
        list(decode_chunks([chunk, chunk]))


def run_batched(batcher, t2w, pushes, seed):
    """Push codes in the given pieces (from this thread), finish, collect every packet."""
    h = batcher.open(SPEAKERS[seed % 2], seed=seed, num_steps=3)
    got = []
    for piece in pushes:
        h.push(piece)
        got += h.ready()
    h.finish()
    while not (h.done and not h.has_packets):
        h.wait(1.0)
        got += h.ready()
    return got


def test_stream_batcher_equals_solo(one_thread, t2w):
    batcher = StreamBatcher(t2w)
    all_codes = [codes_for(t2w, n, 10 + i) for i, n in enumerate((100, 73, 36, 12))]
    results = [None] * 4

    def work(i):
        codes = all_codes[i]
        pieces = [codes[j:j + 7 + i] for j in range(0, len(codes), 7 + i)]
        results[i] = run_batched(batcher, t2w, pieces, 10 + i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i in range(4):
        assert_same_packets(results[i], solo(t2w, all_codes[i], 10 + i))
    assert max(p.batch for r in results for p in r) > 1  # some chunks shared a DiT batch
    assert batcher.call(lambda: threading.current_thread().name).result(timeout=60) == "omni-token2wav"
    assert batcher.num_streams == 0  # finished streams are dropped


def test_a_failing_or_cancelled_stream_does_not_disturb_the_others(one_thread, t2w):
    batcher = StreamBatcher(t2w)
    bad = batcher.open("Chelsie", seed=0, num_steps=3)
    cancelled = batcher.open("Ethan", seed=1, num_steps=3)
    cancelled.push(codes_for(t2w, 40, 1))
    cancelled.cancel()
    bad.push([0, 1, t2w.num_codes + 5])  # outside the DiT's table
    good_codes = codes_for(t2w, 50, 2)
    assert_same_packets(run_batched(batcher, t2w, [good_codes], 2), solo(t2w, good_codes, 2))
    bad.wait(30)
    with pytest.raises(ValueError, match="code"):
        bad.ready()
    with pytest.raises(ValueError, match="closed"):
        cancelled.push([1])
    assert batcher.num_streams == 0
    with pytest.raises(ZeroDivisionError):
        batcher.call(lambda: 1 / 0).result(timeout=60)
    # the thread lives on
    assert_same_packets(run_batched(batcher, t2w, [good_codes[:30]], 3), solo(t2w, good_codes[:30], 3))
