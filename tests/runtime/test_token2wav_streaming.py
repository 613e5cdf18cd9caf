"""Streaming Token2Wav (`Token2Wav.stream`, default `StreamPlan`: first chunk 1 DiT block, then 3,
left context 2 blocks, right 1, vocoder context = its receptive field, 2-frame cross-fade).

Proved here: packets tile the non-streamed length exactly; a fixed seed gives bit-identical packets
across runs and for any way of pushing the codes; a packet is bit-identical whatever happens to a
code outside its `depends_on` range (so nothing emitted depends on codes not yet pushed); the SNR of
the streamed against the non-streamed waveform is above a floor; empty streams, bad codes and bad
plans are handled.

SNR floors, from measurements (150 codes, seeds 0-2, streamed vs `Token2Wav.__call__` with the same
seed, this file's two models): the tiny checkpoint 111.8 dB mean (min 111.2); its DiT re-drawn with
O(1) mixing (`strong_t2w`, where context matters: a code's influence falls ~40 dB per block)
60.9 dB mean (min 60.6; mel 74.6 dB), the error sitting at the packet boundaries (55.2 dB within
+-10 frames of them), where the vocoder's newest samples read provisional mel. Floors, ~6-10 dB
under the minima: 100 dB and 55 dB."""
import math

import pytest
import torch

from omni_runtime.io.checkpoint import load_tensors, open_checkpoint
from omni_runtime.token2wav import StreamPlan, Token2Wav

CHECKPOINT_FLOOR_DB = 100.0
STRONG_MIXING_FLOOR_DB = 55.0


@pytest.fixture(scope="module")
def t2w(tiny_ckpt):
    return Token2Wav.from_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def strong_t2w(tiny_ckpt):
    """The tiny checkpoint with its DiT linears ~ N(0, 1/fan_in) and codec table ~ N(0, 1)."""
    ckpt = open_checkpoint(tiny_ckpt)
    tensors = load_tensors(ckpt, prefix="token2wav.")
    g = torch.Generator().manual_seed(0)
    for name in sorted(tensors):
        t = tensors[name]
        if "code2wav_dit_model" not in name or "spk_encoder" in name:
            continue
        if name.endswith("codec_embed.weight"):
            tensors[name] = torch.randn(t.shape, generator=g)
        elif t.dim() == 2:
            tensors[name] = torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1])
    return Token2Wav.from_state_dict(ckpt.config.token2wav_config, tensors, ckpt.speakers)


def codes_for(t2w, n, seed=0):
    return torch.randint(0, t2w.num_codes, (n,), generator=torch.Generator().manual_seed(seed))


FAST = dict(num_steps=3)  # the properties below hold for any schedule; fewer DiT evaluations keep them quick


def stream_all(t2w, codes, pieces=None, seed=0, **kw):
    s = t2w.stream("Chelsie", seed=seed, **kw)
    packets = []
    if pieces is None:
        packets += s.push(codes)
    else:
        i = 0
        for size in pieces:
            packets += s.push(codes[i:i + size])
            i += size
        assert i == len(codes)
    return packets + s.finish()


def snr_db(x, ref):
    return 10 * math.log10(float((ref ** 2).sum() / ((x - ref) ** 2).sum()))


def assert_same_packets(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert (p.index, p.start_sample, p.codes, p.depends_on) == (q.index, q.start_sample, q.codes, q.depends_on)
        assert torch.equal(p.samples, q.samples), p.index


def test_packets_tile_the_waveform(one_thread, t2w):
    hop = t2w.hop_length
    for n in (1, 11, 12, 24, 25, 75):
        packets = stream_all(t2w, codes_for(t2w, n), **FAST)
        whole = t2w(codes_for(t2w, n), "Chelsie", **FAST)
        assert sum(p.samples.numel() for p in packets) == 2 * n * hop == whole.numel()
        at, code = 0, 0
        for i, p in enumerate(packets):
            assert p.index == i and p.start_sample == at and p.codes[0] == code and p.samples.dtype == torch.float32
            assert p.samples.numel() == 2 * (p.codes[1] - p.codes[0]) * hop and p.samples.device.type == "cpu"
            assert p.depends_on[0] <= p.codes[0] and p.codes[1] <= p.depends_on[1] <= n
            assert p.dit_ms >= 0 and p.vocoder_ms >= 0
            at, code = at + p.samples.numel(), p.codes[1]
        assert code == n


def test_first_packet_latency_in_codes(one_thread, t2w):
    s = t2w.stream("Chelsie")
    assert s.codes_needed() == 24  # 1 block of 12 codes + 1 block of look-ahead
    codes = codes_for(t2w, 24)
    assert s.push(codes[:23]) == []
    first = s.push(codes[23:])
    assert len(first) == 1 and first[0].codes == (0, 12) and s.codes_needed() == 60


def test_deterministic_and_independent_of_pushing(one_thread, t2w):
    codes = codes_for(t2w, 75, seed=1)
    whole = stream_all(t2w, codes, seed=5, **FAST)
    assert len(whole) == 3
    assert_same_packets(whole, stream_all(t2w, codes, seed=5, **FAST))
    assert_same_packets(whole, stream_all(t2w, codes, pieces=[1] * 75, seed=5, **FAST))
    assert_same_packets(whole, stream_all(t2w, codes.tolist(), pieces=[7, 0, 30, 2, 36], seed=5, **FAST))
    other = stream_all(t2w, codes, seed=6, **FAST)
    assert not torch.equal(whole[0].samples, other[0].samples)


def test_packets_depend_only_on_their_window(one_thread, strong_t2w):
    """Change one code: every packet whose depends_on range misses it is bit-identical, the packet
    holding it is not; and no packet was emitted before all of its depends_on codes were pushed."""
    t2w = strong_t2w
    codes = codes_for(t2w, 150, seed=2)
    # constant 3-block chunks: enough packets that some miss each changed code
    fast = dict(FAST, plan=StreamPlan(max_chunk_blocks=3))
    s = t2w.stream("Chelsie", **fast)
    base = []
    for i in range(150):
        for p in s.push(codes[i:i + 1]):
            assert p.depends_on[1] <= i + 1
            base.append(p)
    base += s.finish()
    assert len(base) == 5
    for changed in (3, 140):
        other = codes.clone()
        other[changed] = (other[changed] + 1) % t2w.num_codes
        packets = stream_all(t2w, other, **fast)
        untouched = [p.index for p in base if not p.depends_on[0] <= changed < p.depends_on[1]]
        assert untouched, changed  # both sides are exercised: the last packet misses code 3, the first ones 140
        for p, q in zip(base, packets):
            if p.index in untouched:
                assert torch.equal(p.samples, q.samples), (changed, p.index)
            if p.codes[0] <= changed < p.codes[1]:
                assert not torch.equal(p.samples, q.samples)


@pytest.mark.parametrize("which,floor", [("checkpoint", CHECKPOINT_FLOOR_DB),
                                         ("strong mixing", STRONG_MIXING_FLOOR_DB)])
def test_streamed_vs_whole_snr(one_thread, t2w, strong_t2w, which, floor):
    model = t2w if which == "checkpoint" else strong_t2w
    codes = codes_for(model, 150, seed=0)
    whole = model(codes, "Chelsie", seed=0)
    streamed = torch.cat([p.samples for p in stream_all(model, codes, seed=0)])
    snr = snr_db(streamed, whole)
    print(f"\nstreamed vs whole, {which} DiT: waveform SNR {snr:.1f} dB (floor {floor} dB)")
    assert snr > floor


def test_empty_stream_and_closed_stream(t2w):
    s = t2w.stream("Chelsie")
    assert s.push([]) == [] and s.finish() == [] and s.finish() == []
    with pytest.raises(ValueError, match="push after finish"):
        s.push([1])


def test_bad_codes_leave_the_stream_intact(one_thread, t2w):
    codes = codes_for(t2w, 40, seed=3)
    s = t2w.stream("Chelsie", **FAST)
    packets = s.push(codes[:10])
    for bad, match in (([1, t2w.num_codes], "outside the valid range"), ([0.5], "must be ints"),
                       (torch.tensor([[1]]), "1-D integer tensor")):
        with pytest.raises(ValueError, match=match):
            s.push(bad)
    assert s.codes_pushed == 10
    packets += s.push(codes[10:]) + s.finish()
    assert_same_packets(packets, stream_all(t2w, codes, **FAST))


def test_bad_stream_settings(t2w):
    for kwargs, match in ((dict(plan=StreamPlan(crossfade=30)), "crossfade"), (dict(plan="big"), "StreamPlan"),
                          (dict(seed=1.5), "seed"), (dict(num_steps=1), "num_steps")):
        with pytest.raises(ValueError, match=match):
            t2w.stream("Chelsie", **kwargs)
    with pytest.raises(ValueError, match="unknown speaker"):
        t2w.stream("Nobody")
    for field, value in (("chunk_blocks", 0), ("left_blocks", -1), ("vocoder_left", 1.5), ("first_chunk_blocks", True)):
        with pytest.raises(ValueError, match=field):
            StreamPlan(**{field: value})


def test_other_plans_keep_the_properties(one_thread, t2w):
    codes = codes_for(t2w, 61, seed=4)
    plan = StreamPlan(first_chunk_blocks=2, chunk_blocks=1, left_blocks=0, right_blocks=0, vocoder_left=0, crossfade=0)
    a = stream_all(t2w, codes, plan=plan, **FAST)
    assert sum(p.samples.numel() for p in a) == 2 * 61 * t2w.hop_length
    assert_same_packets(a, stream_all(t2w, codes, pieces=[5] * 12 + [1], plan=plan, **FAST))
    no_cfg = stream_all(t2w, codes, guidance_scale=0.0, **FAST)  # batch 1 through the DiT
    assert sum(p.samples.numel() for p in no_cfg) == 2 * 61 * t2w.hop_length
    assert not torch.equal(no_cfg[0].samples, stream_all(t2w, codes, **FAST)[0].samples)
