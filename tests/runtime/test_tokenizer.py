"""runtime/io/tokenizer.py, io/chat.py and io/placeholders.py, against transformers' tokenizer and
Qwen2_5OmniProcessor on the tiny checkpoint's tokenizer files."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_runtime.io import chat as CH
from omni_runtime.io import placeholders as PH
from omni_runtime.io.tokenizer import QWEN_SPECIAL_TOKENS, Tokenizer

SAMPLES = [
    "Hello world, how are you?",
    "user\nsystem assistant",
    "héllo wörld — ça va? 你好，世界 🎵🎶 naïve café 日本語",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "numbers 12345 and symbols !@#$%^&*()",
    "<|im_start|>user\nhi<|im_end|>\n<|audio_bos|><|AUDIO|><|audio_eos|>",
]


@pytest.fixture(scope="module")
def tok(tiny_ckpt):
    return Tokenizer.from_file(tiny_ckpt / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_tok(hf, tiny_ckpt):
    return hf.AutoTokenizer.from_pretrained(str(tiny_ckpt))


def test_encode_decode(tok, hf_tok):
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert ids == hf_tok(text, add_special_tokens=False)["input_ids"], text  # transformers reads our files alike
        assert hf_tok.decode(ids) == text
    for special in QWEN_SPECIAL_TOKENS:
        assert tok.encode(special) == [tok.special_token_id(special)]
    assert tok.special_ids == {tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    assert tok.decode(tok.encode("<|im_start|>hi<|im_end|>"), skip_special_tokens=True) == "hi"
    assert len(tok.encode("assistant")) == 1 and tok.id_to_token(tok.encode("user")[0]) == "user"


def test_ids_are_always_accepted_and_checked(tok, tmp_path):
    assert tok.to_ids([1, 2, np.int64(3), torch.tensor(4)]) == [1, 2, 3, 4]
    assert tok.to_ids("hi") == tok.encode("hi")
    with pytest.raises(ValueError, match=r"out of range \[0, 337\): \[999\]"):
        tok.to_ids([1, 999])
    with pytest.raises(ValueError, match=r"prompt ids\[1\] must be an int, got float"):
        tok.to_ids([1, 2.5])
    with pytest.raises(ValueError, match="prompt ids are empty"):
        tok.to_ids([])
    with pytest.raises(ValueError, match="encode needs a str"):
        tok.encode(b"bytes")
    # no tokenizer.json: ids work, text gives a clear error
    ids_only = Tokenizer.from_dir(tmp_path, vocab_size=512)
    assert not ids_only.has_text
    assert ids_only.to_ids([5, 511]) == [5, 511]
    with pytest.raises(ValueError, match=r"out of range \[0, 512\)"):
        ids_only.to_ids([512])
    with pytest.raises(ValueError, match="no tokenizer.json, so text cannot be encoded; pass token ids instead"):
        ids_only.to_ids("hello")
    with pytest.raises(ValueError, match="cannot be decoded"):
        ids_only.decode([1])
    with pytest.raises(ValueError, match="cannot be streamed"):
        ids_only.stream()
    (tmp_path / "tokenizer.json").write_text("{bad json")
    with pytest.raises(ValueError, match="is not a valid tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="tokenizer file not found"):
        Tokenizer.from_file(tmp_path / "none.json")


def _stream_pieces(tok, ids, skip=False):
    s = tok.stream(skip_special_tokens=skip)
    pieces = [s.push(i) for i in ids]
    pieces.append(s.finish())
    return pieces, s


def test_streaming_never_splits_a_character(tok):
    for text in SAMPLES:
        ids = tok.encode(text)
        pieces, s = _stream_pieces(tok, ids)
        assert "".join(pieces) == text == s.text
        assert not any("\ufffd" in p for p in pieces)
    # a 4-byte emoji is 4 byte-level tokens: nothing comes out until the last one
    ids = tok.encode("🎵")
    assert len(ids) == 4
    pieces, _ = _stream_pieces(tok, ids)
    assert pieces == ["", "", "", "🎵", ""]
    # special tokens can be skipped in the stream; numpy / torch ids and batches are accepted
    pieces, _ = _stream_pieces(tok, tok.encode("<|im_start|>héllo<|im_end|>"), skip=True)
    assert "".join(pieces) == "héllo"
    s = tok.stream()
    assert s.push(torch.tensor(tok.encode("a")[0])) + s.push(np.array(tok.encode("bc"))) == "abc"


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_streaming_property(tok, text):
    ids = tok.encode(text)
    pieces, _ = _stream_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces[:-1]) or "\ufffd" in text


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 336), max_size=30))
def test_streaming_arbitrary_ids(tok, ids):
    # Random ids may form invalid UTF-8; held text is flushed by finish(), and nothing emitted
    # before it ends in the middle of a character.
    pieces, _ = _stream_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])


# ---- chat template ----------------------------------------------------------------------------

MESSAGES = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    [
        {"role": "system", "content": [{"type": "text", "text": CH.OMNI_SYSTEM_PROMPT}]},
        {"role": "user", "content": [
            {"type": "audio", "audio": "a.wav"}, {"type": "image", "image": "x.png"}, {"type": "video", "video": "v.mp4"},
            {"type": "text", "text": "What is happening? 你好"}, {"image_url": "http://x"}, {"audio_url": "http://y"},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "video", "video": "w.mp4"}, {"type": "text", "text": "And here?"}]},
    ],
]


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("ids_flags", [False, True])
@pytest.mark.parametrize("generation", [False, True])
def test_render_matches_the_jinja_template(hf_tok, messages, ids_flags, generation):
    theirs = hf_tok.apply_chat_template(
        messages, chat_template=CH.CHAT_TEMPLATE, tokenize=False, add_generation_prompt=generation,
        add_vision_id=ids_flags, add_audio_id=ids_flags,
    )
    ours = CH.render_prompt(messages, add_generation_prompt=generation, system_prompt=None,
                            add_vision_id=ids_flags, add_audio_id=ids_flags)
    assert ours == theirs


def test_default_system_prompt():
    text = CH.render_prompt([{"role": "user", "content": "hi"}])
    assert text == f"<|im_start|>system\n{CH.OMNI_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert CH.render_prompt([{"role": "user", "content": "hi"}], system_prompt=None).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    own = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert CH.render_prompt(own).startswith("<|im_start|>system\nS<|im_end|>")


# ---- placeholder expansion against Qwen2_5OmniProcessor -----------------------------------------


@pytest.fixture(scope="module")
def processor(hf, hf_tok):
    """The real Qwen2_5OmniProcessor over our tokenizer, with a stand-in video processor
    (transformers' needs torchvision) that reports chosen patch grids; all placeholder
    expansion (images, audio, videos, audio-in-video interleaving) is transformers' own code."""
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class GridVideoProcessor:
        merge_size = 2
        temporal_patch_size = 2
        model_input_names = ["pixel_values_videos", "video_grid_thw"]
        grids = []

        def __call__(self, videos, **kwargs):
            return BatchFeature({"video_grid_thw": torch.tensor(self.grids), "pixel_values_videos": torch.zeros(1)})

    class Processor(hf.Qwen2_5OmniProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

    return Processor(
        image_processor=Qwen2VLImageProcessorPil(),
        video_processor=GridVideoProcessor(),
        feature_extractor=hf.WhisperFeatureExtractor(feature_size=128),
        tokenizer=hf_tok,
        chat_template=CH.CHAT_TEMPLATE,
    )


def _run_processor(processor, messages, audio_seconds, image_shapes, video_grids, fps=None, audio_in_video=False):
    rng = np.random.default_rng(0)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    audio = [rng.standard_normal(int(s * 16000)).astype(np.float32) for s in audio_seconds] or None
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in image_shapes] or None
    processor.video_processor.grids = video_grids
    videos = [np.zeros((4, 28, 28, 3), np.uint8) for _ in video_grids] or None
    kwargs = {}
    if audio_in_video:
        # audio slots in message order: None = standalone audio item, i = the track of videos[i]
        slots, v = [], 0
        for m in messages:
            for item in m["content"] if isinstance(m["content"], list) else []:
                if item.get("type") == "audio":
                    slots.append(None)
                elif item.get("type") == "video":
                    slots.append(v)
                    v += 1
        kwargs = dict(audio_from_video_indices=slots, load_audio_from_video=True)
    if fps is not None:
        kwargs["fps"] = fps
    out = processor(text=[text], audio=audio, images=images, videos=videos, return_tensors="pt", **kwargs)
    lengths = out["feature_attention_mask"].sum(-1).tolist() if audio else []
    grids = out["image_grid_thw"].tolist() if images else []
    spg = out["video_second_per_grid"].tolist() if video_grids else None
    return out["input_ids"][0].tolist(), lengths, grids, spg


CASES = {
    "audio+image+video": dict(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": [
            {"type": "audio", "audio": "a"}, {"type": "image", "image": "i"}, {"type": "text", "text": "and"},
            {"type": "video", "video": "v"}, {"type": "image", "image": "j"}, {"type": "text", "text": "?"}]}],
        audio_seconds=[3.3], image_shapes=[(56, 84), (112, 56)], video_grids=[[4, 4, 6]]),
    "audio-in-video": dict(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": [
            {"type": "audio", "audio": "a"}, {"type": "video", "video": "v"}, {"type": "video", "video": "w"},
            {"type": "text", "text": "what?"}]}],
        audio_seconds=[2.0, 5.005, 1.0], image_shapes=[], video_grids=[[3, 4, 6], [40, 2, 2]], audio_in_video=True),
    "audio-in-video-slow-fps": dict(  # 4 s per grid: windows are jumped over (empty chunks)
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": [
            {"type": "video", "video": "v"}, {"type": "text", "text": "what?"}]}],
        audio_seconds=[9.0], image_shapes=[], video_grids=[[5, 2, 4]], audio_in_video=True, fps=0.5),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notice inside transformers
@pytest.mark.parametrize("case", sorted(CASES))
def test_build_prompt_ids_matches_the_processor(processor, tok, case):
    c = dict(CASES[case])
    audio_in_video = c.pop("audio_in_video", False)
    fps = c.pop("fps", None)
    theirs, lengths, grids, spg = _run_processor(processor, **c, fps=fps, audio_in_video=audio_in_video)
    if fps is not None:
        assert spg == [2 / fps] * len(c["video_grids"])  # the processor honoured the fps
    ours = CH.build_prompt_ids(c["messages"], tok, audio_lengths=lengths, image_grids=grids, video_grids=c["video_grids"],
                               second_per_grids=spg, use_audio_in_video=audio_in_video)
    assert ours == theirs


def test_build_prompt_ids_with_the_config(tiny_ckpt, tok):
    from omni_runtime.io.checkpoint import open_checkpoint

    cfg = open_checkpoint(tiny_ckpt).config
    msgs = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "hi"}]}]
    ids = CH.build_prompt_ids(msgs, tok, audio_lengths=[300], config=cfg)
    a = cfg.thinker_config.audio_token_index
    assert ids.count(a) == PH.audio_token_count(300) == 75
    i = ids.index(a)
    assert ids[i - 1] == cfg.thinker_config.audio_start_token_id and ids[i + 75] == cfg.thinker_config.audio_end_token_id
    cfg.thinker_config.audio_token_index = 1
    with pytest.raises(ValueError, match="do not match the config"):
        CH.build_prompt_ids(msgs, tok, audio_lengths=[300], config=cfg)


def test_formulas_match_transformers(processor):
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    for n in list(range(1, 400)) + [2999, 3000, 30000]:
        assert PH.audio_token_count(n) == int(_get_feat_extract_output_lengths(np.array(n)))
    rng = np.random.default_rng(1)
    for _ in range(200):
        idx = np.sort(rng.choice(300, size=rng.integers(1, 60)))
        if rng.random() < 0.5:
            idx = idx * rng.choice([0.5, 1.0, 2.5, 4.0])
        tpc = int(rng.integers(1, 60))
        assert PH.chunked_index(idx.tolist(), tpc) == processor.get_chunked_index(idx, tpc)
    assert PH.vision_token_count([2, 8, 12]) == 48 and PH.vision_token_count([1, 4, 4], merge_size=1) == 16


def test_chat_errors(tok):
    user = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "image", "image": "b"},
                                         {"type": "video", "video": "c"}]}]
    ok = dict(audio_lengths=[100], image_grids=[[1, 2, 2]], video_grids=[[2, 2, 2]])
    assert CH.build_prompt_ids(user, tok, **ok)
    bad = [
        (dict(ok, audio_lengths=[]), r"needs 1 audio lengths \(1 <\|AUDIO\|> placeholders\), got 0"),
        (dict(ok, audio_lengths=[100, 5]), "needs 1 audio lengths"),
        (dict(ok, use_audio_in_video=True), r"needs 2 audio lengths \(with use_audio_in_video each video takes one too\)"),
        (dict(ok, image_grids=[]), r"1 <\|IMAGE\|> placeholders but 0 image grids"),
        (dict(ok, video_grids=[[2, 2, 2], [2, 2, 2]]), r"1 <\|VIDEO\|> placeholders but 2 video grids"),
        (dict(ok, audio_lengths=[0]), "audio length is 0 mel frames"),
        (dict(ok, audio_lengths=[-3]), "must be a non-negative int"),
        (dict(ok, image_grids=[[1, 0, 2]]), "has a zero size"),
        (dict(ok, image_grids=[[1, 3, 2]]), "multiples of the spatial merge size 2"),
        (dict(ok, image_grids=[[1, 2]]), r"must be a \(t, h, w\) patch grid"),
        (dict(ok, second_per_grids=[1.0, 2.0]), "second_per_grids has 2 entries for 1 video grids"),
        (dict(ok, audio_lengths=[100, 100], use_audio_in_video=True, second_per_grids=[0.0]), "second_per_grid must be a positive"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            CH.build_prompt_ids(user, tok, **kwargs)
    for messages, match in [
        ("hello", "messages must be a list"),
        ([], "messages is empty"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        ([{"role": "user", "content": 5}], "content must be a str or a list"),
        ([{"role": "user", "content": [{"type": "smell"}]}], "is not text, image, audio or video"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\]\.text must be a str"),
    ]:
        with pytest.raises(ValueError, match=match):
            CH.render_prompt(messages)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        CH.build_prompt_ids([{"role": "user", "content": "hi"}], Tokenizer.ids_only())
    with pytest.raises(ValueError, match="must be an omni_runtime Tokenizer"):
        CH.build_prompt_ids([{"role": "user", "content": "hi"}], object())
