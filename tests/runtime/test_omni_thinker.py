"""omni_runtime.thinker.thinker.Thinker (audio encoder + vision encoder + LLM from one checkpoint)
against transformers' Qwen2_5OmniThinkerForConditionalGeneration on the same checkpoint.

The checkpoints are `write_tiny_checkpoint` presets ("tiny" and "7b-ratios": GQA 7:1, head_dim 128,
mrope [16, 24, 24]) in the official layout, with the thinker's weights re-drawn at unit scale
(`helpers.sharpen_checkpoint`: the default 0.02 init gives nearly flat logits where greedy ties would make id
comparisons meaningless) and the stop ids made unreachable, so 32 tokens are always generated.
transformers loads the very same directory (`Qwen2_5OmniForConditionalGeneration.from_pretrained(...)
.thinker`) and gets the input_features / feature_attention_mask, pixel_values / image_grid_thw,
pixel_values_videos / video_grid_thw / video_second_per_grid that our preprocessing produced (that
preprocessing is proven equal to transformers' processors in test_audio.py / test_vision.py).
The proof for every prompt kind: fp32 logits within 1e-4 relative error at every prefill position
(each row against that row's largest logit) and greedy ids identical for 32 new tokens.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import sharpen_checkpoint
from omni_runtime.thinker.thinker import Thinker
from omni_runtime.engine.sampling import SamplingParams
from omni_runtime.io.tiny_checkpoint import NOTE

transformers = pytest.importorskip("transformers")

RTOL = 1e-4
NEW = 32
ENGINE = dict(max_model_len=1024, num_blocks=160, block_size=16)


class Pair:
    """Our Thinker and transformers' thinker on one sharpened checkpoint, with memoized references."""

    def __init__(self, src, tmp):
        self.path, self.stops = sharpen_checkpoint(src, tmp / "sharp")
        # small videos: the processor's 128*28*28 minimum would upscale every test frame
        self.ours = Thinker.from_checkpoint(self.path, dtype="fp32", engine_kwargs=ENGINE,
                                            media_options=dict(video_min_pixels=28 * 28 * 4,
                                                               video_max_pixels=28 * 28 * 16))
        self.hf = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(self.path), dtype=torch.float32, attn_implementation="sdpa").thinker.eval()
        self._refs = {}

    def hf_inputs(self, prep):
        kw = {}
        if prep.mels:  # the processor's padded batch + mask (padding values never reach the model)
            n, length = len(prep.mels), max(prep.audio_lengths)
            feats, mask = torch.zeros(n, 128, length), torch.zeros(n, length, dtype=torch.long)
            for i, m in enumerate(prep.mels):
                feats[i, :, :m.shape[1]], mask[i, :m.shape[1]] = m.cpu(), 1
            kw.update(input_features=feats, feature_attention_mask=mask)
        if prep.pixel_values is not None:
            kw.update(pixel_values=prep.pixel_values, image_grid_thw=prep.image_grid_thw)
        if prep.pixel_values_videos is not None:
            kw.update(pixel_values_videos=prep.pixel_values_videos, video_grid_thw=prep.video_grid_thw,
                      video_second_per_grid=prep.video_second_per_grid)
        if prep.use_audio_in_video:
            kw["use_audio_in_video"] = True
        return kw

    @torch.no_grad()
    def reference(self, prep):
        key = (tuple(prep.ids), tuple(prep.audio_lengths), prep.use_audio_in_video)
        if key not in self._refs:
            ids = torch.tensor([prep.ids])
            mask = torch.ones_like(ids)
            kw = self.hf_inputs(prep)
            logits = self.hf(input_ids=ids, attention_mask=mask, **kw).logits[0]
            out = self.hf.generate(input_ids=ids, attention_mask=mask, **kw, do_sample=False, max_new_tokens=NEW,
                                   eos_token_id=self.stops, pad_token_id=self.stops[0])
            self._refs[key] = logits, out[0, len(prep.ids):].tolist()
        return self._refs[key]

    def params(self):
        return SamplingParams(max_new_tokens=NEW, stop_token_ids=tuple(self.stops))

    def run(self, prep):
        seq = None
        for ev in self.ours.generate(prepared=prep, params=self.params(), return_logits=True):
            seq = ev.seq
        return seq


def row_err(ours, ref):
    """Largest per-position error, each row against that row's largest |logit|."""
    return ((ours.float() - ref).abs().amax(1) / ref.abs().amax(1)).max().item()


def check(pair, prep, seq):
    ref_logits, ref_ids = pair.reference(prep)
    assert len(ref_ids) == NEW
    assert seq.prompt_ids == prep.ids
    assert seq.prompt_logits.shape == ref_logits.shape
    err = row_err(seq.prompt_logits, ref_logits)
    assert err < RTOL, err
    assert seq.output_ids == ref_ids
    return err


@pytest.fixture(scope="module")
def tiny(tiny_ckpt, tmp_path_factory):
    return Pair(tiny_ckpt, tmp_path_factory.mktemp("omni_tiny"))


@pytest.fixture(scope="module")
def big(tiny_7b_ckpt, tmp_path_factory):
    return Pair(tiny_7b_ckpt, tmp_path_factory.mktemp("omni_7b"))


RNG = np.random.default_rng(0)


def _speech_like(seconds, seed=0, decay=None):
    """A 16 kHz test signal: tones + noise (optionally decaying, loudest at the start)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t) + 0.05 * rng.standard_normal(t.size)
    if decay:
        x *= np.exp(-t / decay)
    return x.astype(np.float32)


WAV = _speech_like(3.4)
IMAGES = [RNG.integers(0, 256, (56, 84, 3), dtype=np.uint8), RNG.integers(0, 256, (90, 60, 3), dtype=np.uint8)]
VIDEO = (RNG.integers(0, 256, (6, 56, 84, 3), dtype=np.uint8), 2.0)
# 8 frames at 2 fps (4 s, temporal grid 4) with a 4 s soundtrack: two interleaved 2-second chunks
AV_VIDEO = (RNG.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8), 2.0, _speech_like(4.0, seed=3))

CASES = {
    "text": dict(conversation="Hello world, are you a helpful assistant?"),
    "audio": dict(conversation="What is this sound?", audios=[WAV]),
    "image": dict(conversation="Describe both.", images=IMAGES),
    "video": dict(conversation="Describe the video.", videos=[VIDEO]),
    "audio_in_video": dict(conversation="Describe.", videos=[AV_VIDEO], use_audio_in_video=True),
    # messages: media in content order, values in the items or taken from the lists
    "mixed_messages": dict(conversation=[
        {"role": "system", "content": "You are Qwen."},
        {"role": "user", "content": [{"type": "image", "image": IMAGES[0]}, {"type": "audio"},
                                     {"type": "text", "text": "and"}, {"type": "video"}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "audio", "audio": (_speech_like(1.3, seed=5), 8000)},
                                     {"type": "text", "text": "again?"}]},
    ], audios=[WAV], videos=[VIDEO]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(tiny, case):
    prep = tiny.ours.prepare(**CASES[case])
    check(tiny, prep, tiny.run(prep))


def test_prepared_prompt_layout(tiny):
    th = tiny.ours.thinker_config
    prep = tiny.ours.prepare(**CASES["mixed_messages"])
    ids = torch.tensor(prep.ids)
    # audio lengths in order of appearance (3.4 s at 16 kHz, then 20800 samples at 8 kHz = 2.6 s)
    assert prep.audio_lengths == [340, 260]
    assert int((ids == th.audio_token_index).sum()) == 85 + 65
    assert prep.image_grid_thw.tolist() == [[1, 4, 6]] and int((ids == th.image_token_index).sum()) == 6
    assert int((ids == th.video_token_index).sum()) == prep.video_grid_thw.prod().item() // 4
    # the placeholder rows hold encoder features, the others the token embeddings
    token_embeds = tiny.ours.lm.embed(ids)
    media = (ids == th.audio_token_index) | (ids == th.image_token_index) | (ids == th.video_token_index)
    assert torch.equal(prep.inputs_embeds[~media], token_embeds[~media])
    assert not torch.allclose(prep.inputs_embeds[media], token_embeds[media])
    # the rendered template: system turn given, so no default system prompt
    text = tiny.ours.tokenizer.decode([t for t in prep.ids if t not in (th.audio_token_index,
                                       th.image_token_index, th.video_token_index)])
    assert text.startswith("<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n<|vision_bos|><|vision_eos|>")
    assert text.endswith("again?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_ids_with_media_placeholders(tiny):
    """Token ids are taken as they are (no template); each single <|AUDIO|>/<|IMAGE|> id takes the
    next media entry and is expanded: the rendered template's ids give the same prompt."""
    from omni_runtime.io.chat import render_prompt

    th = tiny.ours
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "Hm?"}]}]
    raw = th.tokenizer.encode(render_prompt(messages))
    by_ids = th.prepare(raw, audios=[WAV], images=IMAGES[:1])
    by_text = th.prepare("Hm?", audios=[WAV], images=IMAGES[:1])
    assert by_ids.ids == by_text.ids and by_ids.rope_delta == by_text.rope_delta
    assert torch.equal(by_ids.inputs_embeds, by_text.inputs_embeds) and torch.equal(by_ids.positions,
                                                                                   by_text.positions)
    plain = th.prepare([1, 2, 3])
    assert plain.ids == [1, 2, 3] and not plain.has_media and plain.request() == {"prompt_ids": [1, 2, 3]}
    # streamed: the first <|AUDIO|> id is the streamed one
    wav = _speech_like(2.5, seed=8, decay=1.0)
    session = th.stream_audio(raw, images=IMAGES[:1], params=tiny.params(), return_logits=True)
    session.push(wav)
    list(session.finish())
    check(tiny, th.prepare(raw, audios=[wav], images=IMAGES[:1]), session.seq)


def test_audio_features_change_the_answer(tiny):
    """The audio really flows into the LLM: another clip gives other logits."""
    a = tiny.run(tiny.ours.prepare("What is this sound?", audios=[WAV]))
    b = tiny.run(tiny.ours.prepare("What is this sound?", audios=[_speech_like(3.4, seed=9)[::-1].copy()]))
    assert a.prompt_ids == b.prompt_ids
    assert row_err(a.prompt_logits[-1:], b.prompt_logits[-1:].float()) > 1e-2


@pytest.mark.parametrize("case", ["audio", "image", "video", "audio_in_video"])
def test_parity_7b_ratios(big, case):
    prep = big.ours.prepare(**CASES[case])
    check(big, prep, big.run(prep))


# ------------------------------------------------------------------------------------------------
# streaming audio input
# ------------------------------------------------------------------------------------------------
def _stream(pair, wav, piece_seconds, conversation="What is this sound?", **kw):
    session = pair.ours.stream_audio(conversation, params=pair.params(), return_logits=True, **kw)
    step = int(16000 * piece_seconds)
    pushed = []
    for i in range(0, len(wav), step):
        pushed.append(session.push(wav[i:i + step]))
        if pushed[-1]:  # prefilled onto the cached prefix by this push
            assert session.seq.num_computed == session.seq.num_prompt_tokens
    events = list(session.finish())
    return session, pushed, events


@pytest.mark.parametrize("piece_seconds", [2.0, 0.7])
def test_streaming_audio_equals_all_at_once(tiny, piece_seconds):
    """5.3 s decaying (loudest first) audio in pieces: chunks are prefilled as they complete, and
    the streamed prompt is exactly the offline one (mel_max_deviation == 0: the global max is in the
    first emitted frames, so the running-max floor equals the final one), so logits and ids match
    transformers on the all-at-once inputs."""
    wav = _speech_like(5.3, seed=1, decay=1.5)
    session, pushed, events = _stream(tiny, wav, piece_seconds)
    assert session.mel_max_deviation == 0.0
    # two full 2-second chunks (50 tokens each) went in during push(); the 1.3 s rest at finish()
    assert sum(pushed) == 100 and [c["tokens"] for c in session.chunk_timings] == [50, 50, 32]
    if piece_seconds == 2.0:  # a chunk's last frame needs 2.5 ms of the next piece
        assert pushed == [0, 50, 50]
    offline = tiny.ours.prepare("What is this sound?", audios=[wav])
    seq = session.seq
    assert seq.prompt_ids == offline.ids and seq.rope_delta == offline.rope_delta
    check(tiny, offline, seq)
    assert [ev.token_id for ev in events] == seq.output_ids and events[-1].finished


def test_streaming_audio_with_media_after_it(tiny):
    """Messages with an image before and a video after the streamed audio (positions of the rest
    of the prompt depend on the audio's length: computed at finish())."""
    wav = _speech_like(2.6, seed=2, decay=2.0)
    messages = [{"role": "user", "content": [{"type": "image", "image": IMAGES[1]}, {"type": "audio", "stream": True},
                                             {"type": "video", "video": VIDEO}, {"type": "text", "text": "So?"}]}]
    session, _, _ = _stream(tiny, wav, 1.0, conversation=messages)
    assert session.mel_max_deviation == 0.0
    offline_messages = [{"role": "user", "content": [{"type": "image", "image": IMAGES[1]},
                                                     {"type": "audio", "audio": wav},
                                                     {"type": "video", "video": VIDEO},
                                                     {"type": "text", "text": "So?"}]}]
    offline = tiny.ours.prepare(offline_messages)
    assert offline.rope_delta != 0 and session.seq.rope_delta == offline.rope_delta
    check(tiny, offline, session.seq)


def test_streaming_audio_7b_ratios(big):
    wav = _speech_like(4.5, seed=4, decay=1.5)
    session, pushed, _ = _stream(big, wav, 2.0)
    assert session.mel_max_deviation == 0.0 and sum(pushed) == 100
    check(big, big.ours.prepare("What is this sound?", audios=[wav]), session.seq)


def test_streaming_mel_deviation_is_reported(tiny):
    """A quiet start then a loud burst: early frames were floored with a lower running max. The
    session says by how much (exactly), the prompt still runs."""
    wav = np.concatenate([1e-5 * _speech_like(2.2, seed=6), _speech_like(1.0, seed=7)])
    session, _, events = _stream(tiny, wav, 2.0)
    assert session.mel_max_deviation > 0 and events[-1].finished


# ------------------------------------------------------------------------------------------------
# loading and errors
# ------------------------------------------------------------------------------------------------
def test_from_checkpoint_default_is_the_embedded_tiny_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(tmp_path / "cache"))
    seen = []
    th = Thinker.from_checkpoint(progress=lambda done, total: seen.append((done, total)),
                                 engine_kwargs=dict(max_model_len=256, num_blocks=32))
    assert th.note == NOTE and th.path == tmp_path / "cache" / "tiny-tiny-seed0"
    from omni_runtime.io.checkpoint import open_checkpoint

    total = open_checkpoint(th.path).nbytes("thinker.")
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)  # one pass over thinker.*
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in th.lm.parameters())
    ids = [ev.token_id for ev in th.generate("Hello", max_new_tokens=4)]
    assert len(ids) == 4


def test_load_dtype_and_device(tiny_ckpt):
    th = Thinker.from_checkpoint(tiny_ckpt, dtype="bf16", engine_kwargs=dict(max_model_len=512, num_blocks=64))
    assert {p.dtype for m in (th.audio_tower, th.visual, th.lm) for p in m.parameters()} == {torch.bfloat16}
    events = list(th.generate("Hi", audios=[WAV[:16000]], images=IMAGES[:1], max_new_tokens=3))
    assert len(events) == 3
    with pytest.raises(ValueError, match="unsupported dtype"):
        Thinker.from_checkpoint(tiny_ckpt, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Thinker.from_checkpoint(tiny_ckpt, device="cuda")


def test_checkpoint_errors_list_the_tensors(tiny_ckpt, tmp_path):
    bad = shutil.copytree(tiny_ckpt, tmp_path / "bad")
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["thinker.visual.blocks.0.attn.q.weight"]
    tensors = load_file(str(bad / shard))
    del tensors["thinker.visual.blocks.0.attn.q.weight"]
    tensors["thinker.audio_tower.layers.0.fc1.weight"] = torch.zeros(3, 3)
    tensors["thinker.model.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(bad / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard}
    index["weight_map"]["thinker.model.extra.weight"] = shard
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        Thinker.from_checkpoint(bad)
    msg = str(e.value)
    assert "missing" in msg and "thinker.visual.blocks.0.attn.q.weight" in msg
    assert "unexpected" in msg and "thinker.model.extra.weight" in msg
    assert "wrong shape" in msg and "thinker.audio_tower.layers.0.fc1.weight" in msg
    with pytest.raises(ValueError, match="checkpoint directory not found"):
        Thinker.from_checkpoint(tmp_path / "nowhere")


def test_input_errors(tiny, tmp_path):
    th = tiny.ours
    cases = [
        (dict(conversation="x", audios=[np.full(16000, np.nan, dtype=np.float32)]), "NaN"),
        (dict(conversation="x", audios=[np.zeros(0, dtype=np.float32)]), "empty"),
        (dict(conversation="x", images=[np.zeros((0, 32, 3), dtype=np.uint8)]), "empty"),
        (dict(conversation="x", audios=[str(tmp_path / "missing.wav")]), "not found"),
        (dict(conversation="x", images=[str(tmp_path / "missing.png")]), "not found"),
        (dict(conversation="x", videos=[VIDEO], use_audio_in_video=True), "soundtrack"),
        (dict(conversation="x", audios=[WAV, WAV], images=[]), None),  # fine: two audios
        (dict(conversation=[{"role": "user", "content": [{"type": "audio"}]}]), "more audio items"),
        (dict(conversation=[{"role": "user", "content": "hi"}], audios=[WAV]), "places for 0"),
        (dict(conversation=None), "empty"),
        (dict(conversation=[5, 6, 10 ** 6]), "out of range"),
    ]
    for kwargs, match in cases:
        if match is None:
            th.prepare(**kwargs)
            continue
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            th.prepare(**kwargs)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        th.prepare("x", images=[str(tmp_path / "empty.png")])
    small = Thinker.from_checkpoint(tiny.path, engine_kwargs=dict(max_model_len=64, num_blocks=8))
    with pytest.raises(ValueError, match="more than the context"):
        small.prepare("x", audios=[WAV])
    session = th.stream_audio("x", params=tiny.params())
    with pytest.raises(ValueError, match="NaN"):
        session.push(np.full(100, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="empty audio"):
        session.finish()
    assert session.seq.finished and not th.engine.has_unfinished
