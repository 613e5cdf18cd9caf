"""runtime/io/layout.py against transformers' save_pretrained, and loading with runtime/io/checkpoint.py
(+ shards, speakers, dtypes, progress)."""
import io
import json
import os
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omni_runtime.io import checkpoint as CK
from omni_runtime.io.dtypes import parse_dtype, recommended_dtypes
from omni_runtime.io.progress import ProgressLine
from omni_runtime import config as C
from omni_runtime.io import layout as L


def _saved_shapes(directory) -> dict:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as s:
            for k in s.keys():
                out[k] = tuple(s.get_slice(k).get_shape())
    return out


def _compare(expected: dict, saved: dict):
    missing = sorted(set(saved) - set(expected))
    extra = sorted(set(expected) - set(saved))
    shapes = [(k, expected[k], saved[k]) for k in expected if k in saved and tuple(expected[k]) != saved[k]]
    assert not missing and not extra and not shapes, (missing[:10], extra[:10], shapes[:10])


@pytest.mark.parametrize("variant", ["small", "7b-ratios", "tied-text-only"])
def test_layout_equals_transformers_save_pretrained(hf, tmp_path, variant, hf_tiny_config_kwargs, one_thread):
    kwargs = hf_tiny_config_kwargs("small" if variant == "tied-text-only" else variant)
    if variant == "tied-text-only":
        # Tied lm_head (not written) and no talker / token2wav (not built).
        kwargs["thinker_config"]["tie_word_embeddings"] = True
        kwargs["enable_audio_output"] = False
    cfg = hf.Qwen2_5OmniConfig(**kwargs)
    model = hf.Qwen2_5OmniForConditionalGeneration(cfg)
    model.save_pretrained(tmp_path)
    saved = _saved_shapes(tmp_path)
    ours = C.load(tmp_path)
    expected = L.expected_tensors(ours)
    _compare(expected, saved)
    if variant == "7b-ratios":
        text = ours.thinker_config.text_config
        assert (text.num_attention_heads // text.num_key_value_heads, text.dim_per_head, text.mrope_section) == (7, 128, [16, 24, 24])
        assert expected["thinker.model.layers.0.self_attn.k_proj.weight"] == (128, 896)
    if variant == "tied-text-only":
        assert "thinker.lm_head.weight" not in expected
        assert not any(k.startswith(("talker.", "token2wav.")) for k in expected)
    # Loading the transformers-written single-file checkpoint (no spk_dict.pt) round-trips.
    ckpt = CK.open_checkpoint(tmp_path)
    assert ckpt.shards == ["model.safetensors"] and ckpt.index_file is None and ckpt.speakers == {}
    tensors = CK.load_tensors(ckpt)
    reference = load_file(str(tmp_path / "model.safetensors"))
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)


def test_layout_of_the_7b_config():
    shapes = L.expected_tensors(C.OmniConfig.from_dict({"thinker_config": {"vision_config": {"hidden_size": 1280}},
                                                        "talker_config": {"hidden_size": 896, "num_hidden_layers": 24,
                                                                          "num_attention_heads": 12}}))
    n = sum(torch.Size(s).numel() for s in shapes.values())
    assert 10.5e9 < n < 11.0e9  # "7B = about 10.7 B parameters" with talker and token2wav
    assert shapes["thinker.model.embed_tokens.weight"] == (152064, 3584)
    assert shapes["talker.model.layers.0.self_attn.q_proj.weight"] == (1536, 896)
    assert shapes["thinker.visual.merger.mlp.0.weight"] == (5120, 5120)
    assert shapes["token2wav.code2wav_dit_model.input_embed.proj.weight"] == (1024, 80 + 128 + 192 + 512)
    assert L.is_computed_buffer("token2wav.code2wav_bigvgan_model.resblocks.0.activations.0.upsample.filter")
    assert not L.is_computed_buffer("thinker.model.norm.weight")
    with pytest.raises(ValueError, match="needs an OmniConfig"):
        L.expected_tensors({"thinker_config": {}})


# ---- loading the sharded tiny checkpoint ------------------------------------------------------


def _all_reference(directory) -> dict:
    out = {}
    for f in sorted(directory.glob("model-*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_open_and_load_sharded(tiny_ckpt):
    ckpt = CK.open_checkpoint(tiny_ckpt)
    assert len(ckpt.shards) == 3 and ckpt.index_file.name == "model.safetensors.index.json"
    assert set(ckpt.speakers) == {"Chelsie", "Ethan"}
    spk = ckpt.speaker("Ethan")
    dit = ckpt.config.token2wav_config.dit_config
    assert spk.cond.shape == (1, dit.enc_emb_dim) and spk.ref_mel.shape[0] == 1 and spk.ref_mel.shape[2] == dit.mel_dim
    with pytest.raises(ValueError, match="speaker 'Nobody' is not in .*available: Chelsie, Ethan"):
        ckpt.speaker("Nobody")
    assert ckpt.tokenizer().has_text and ckpt.stop_token_ids() == [
        ckpt.tokenizer().token_to_id("<|im_end|>"), ckpt.tokenizer().token_to_id("<|endoftext|>")]

    reference = _all_reference(tiny_ckpt)
    calls = []
    tensors = CK.load_tensors(ckpt, progress=lambda done, total: calls.append((done, total)))
    assert tensors.keys() == reference.keys() == set(L.expected_tensors(ckpt.config))
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)
    # progress: starts at 0, one call per tensor, monotonic, ends at the total byte count
    total = ckpt.nbytes()
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) == len(tensors) + 1
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))

    # a prefix, stripped names, per-prefix dtypes (token2wav stays fp32)
    talker = CK.load_tensors(ckpt, "talker.", dtype=torch.bfloat16, strip_prefix=True)
    assert "model.norm.weight" in talker and all(t.dtype == torch.bfloat16 for t in talker.values())
    mixed = CK.load_tensors(ckpt, dtype=recommended_dtypes("fp16"))
    assert {t.dtype for k, t in mixed.items() if k.startswith("token2wav.")} == {torch.float32}
    assert {t.dtype for k, t in mixed.items() if not k.startswith("token2wav.")} == {torch.float16}
    assert torch.equal(mixed["thinker.model.norm.weight"], reference["thinker.model.norm.weight"].half())


def test_progress_line():
    out = io.StringIO()
    line = ProgressLine("loading thinker", stream=out)
    for done in range(0, 2_000_000_001, 100_000_000):
        line(done, 2_000_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("loading thinker:   0% 0.00/2.00 GB")
    assert lines[-1].startswith("loading thinker: 100% 2.00/2.00 GB")


# ---- errors ----------------------------------------------------------------------------------


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def _rewrite_shard(directory, shard, edit):
    path = directory / shard
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    index_path.write_text(json.dumps(index))


def test_missing_extra_and_misshaped_are_listed_together(ckpt_copy):
    shard = "model-00001-of-00003.safetensors"

    def edit(t):
        del t["thinker.model.layers.1.mlp.up_proj.weight"]
        t["thinker.model.layers.0.extra.weight"] = torch.zeros(2)
        t["thinker.model.norm.weight"] = torch.zeros(127)

    _rewrite_shard(ckpt_copy, shard, edit)
    ckpt = CK.open_checkpoint(ckpt_copy)
    with pytest.raises(ValueError) as e:
        CK.load_tensors(ckpt, "thinker.")
    msg = str(e.value)
    assert "missing (1, in none of model-00001-of-00003.safetensors, model-00002" in msg
    assert "thinker.model.layers.1.mlp.up_proj.weight" in msg
    assert f"unexpected (1): thinker.model.layers.0.extra.weight [{shard}]" in msg
    assert f"thinker.model.norm.weight [{shard}] is [127], expected [128]" in msg
    # other components are unaffected
    assert CK.load_tensors(ckpt, "talker.")


def test_long_lists_are_cut(ckpt_copy):
    _rewrite_shard(ckpt_copy, "model-00002-of-00003.safetensors", lambda t: [t.pop(k) for k in list(t)[:25]])
    with pytest.raises(ValueError, match=r"missing \(25, .*, \.\.\. and 5 more"):
        CK.load_tensors(CK.open_checkpoint(ckpt_copy), "talker.")


def test_computed_buffers_in_a_checkpoint_are_skipped(ckpt_copy):
    name = "token2wav.code2wav_bigvgan_model.resblocks.0.activations.0.upsample.filter"
    _rewrite_shard(ckpt_copy, "model-00003-of-00003.safetensors", lambda t: t.update({name: torch.ones(1, 1, 12)}))
    loaded = CK.load_tensors(CK.open_checkpoint(ckpt_copy), "token2wav.")
    assert name not in loaded
    with pytest.raises(ValueError, match="unexpected .*upsample.filter"):
        CK.load_tensors(CK.open_checkpoint(ckpt_copy), "token2wav.", skip_computed_buffers=False)


def test_missing_or_corrupt_files_name_the_file(ckpt_copy):
    index = ckpt_copy / "model.safetensors.index.json"
    good_index = index.read_text()

    index.write_text("{broken")
    with pytest.raises(ValueError, match=r"weight index .*model\.safetensors\.index\.json cannot be read as JSON"):
        CK.open_checkpoint(ckpt_copy)
    index.write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ValueError, match="has no weight_map"):
        CK.open_checkpoint(ckpt_copy)
    index.write_text(good_index.replace("model-00002-of-00003", "model-00009-of-00003"))
    with pytest.raises(ValueError, match=r"weight shard .*model-00009-of-00003\.safetensors is missing"):
        CK.open_checkpoint(ckpt_copy)
    index.write_text(json.dumps({"weight_map": {"thinker.model.norm.weight": "../x.safetensors"}}))
    with pytest.raises(ValueError, match="invalid shard files"):
        CK.open_checkpoint(ckpt_copy)
    # an index entry pointing at the wrong shard
    wm = json.loads(good_index)
    wm["weight_map"]["thinker.model.norm.weight"] = "model-00002-of-00003.safetensors"
    index.write_text(json.dumps(wm))
    with pytest.raises(ValueError, match=r"not in the shard it names: thinker\.model\.norm\.weight \(model-00002"):
        CK.open_checkpoint(ckpt_copy)
    index.write_text(good_index)

    shard = ckpt_copy / "model-00003-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"weight shard .*model-00003-of-00003\.safetensors is truncated or corrupt"):
        CK.open_checkpoint(ckpt_copy)
    shard.write_bytes(b"\x00garbage" * 4)
    with pytest.raises(ValueError, match=r"model-00003-of-00003\.safetensors is corrupt or not a safetensors file"):
        CK.open_checkpoint(ckpt_copy)
    shard.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    with pytest.raises(ValueError, match=r"model-00003-of-00003\.safetensors is corrupt"):
        CK.open_checkpoint(ckpt_copy)
    shard.write_bytes(data)

    (ckpt_copy / "spk_dict.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"speaker file .*spk_dict\.pt cannot be read"):
        CK.open_checkpoint(ckpt_copy)
    bad = {"Chelsie": {"bos_token": 3, "cond": torch.zeros(1, 5), "ref_mel": torch.zeros(1, 10, 80)}}
    torch.save(bad, ckpt_copy / "spk_dict.pt")
    with pytest.raises(ValueError, match=r"speaker 'Chelsie' .*cond must hold dit_config\.enc_emb_dim = 16 values"):
        CK.open_checkpoint(ckpt_copy)
    torch.save({"Chelsie": {"cond": torch.zeros(16)}}, ckpt_copy / "spk_dict.pt")
    with pytest.raises(ValueError, match="must be a dict with bos_token, cond and ref_mel"):
        CK.open_checkpoint(ckpt_copy)
    # 1-D cond / 2-D ref_mel are accepted and normalised to transformers' shapes
    torch.save({"A": {"bos_token": torch.tensor(7), "cond": torch.zeros(16), "ref_mel": torch.zeros(9, 80)}},
               ckpt_copy / "spk_dict.pt")
    spk = CK.open_checkpoint(ckpt_copy).speaker("A")
    assert (spk.bos_token, spk.cond.shape, spk.ref_mel.shape) == (7, (1, 16), (1, 9, 80))

    for f in ckpt_copy.glob("model*"):
        f.unlink()
    with pytest.raises(ValueError, match=r"has neither model\.safetensors\.index\.json nor model\.safetensors"):
        CK.open_checkpoint(ckpt_copy)
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config file not found: .*config\.json"):
        CK.open_checkpoint(ckpt_copy)
    with pytest.raises(ValueError, match="checkpoint directory not found"):
        CK.open_checkpoint(ckpt_copy / "nope")


def test_dtype_and_device_errors(tiny_ckpt, ckpt_copy):
    ckpt = CK.open_checkpoint(tiny_ckpt)
    for bad in ("int8", torch.float64, "fp8", 3):
        with pytest.raises(ValueError, match="unsupported dtype|dtype must be"):
            CK.load_tensors(ckpt, "thinker.model.norm", dtype=bad, expected={"thinker.model.norm.weight": (128,)})
    with pytest.raises(ValueError, match="unsupported dtype"):
        CK.load_tensors(ckpt, "talker.", dtype={"talker.model.": "int4"})
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype("torch.float16") is torch.float16
    with pytest.raises(ValueError, match="invalid device"):
        CK.load_tensors(ckpt, "talker.", device="tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            CK.load_tensors(ckpt, "talker.", device="cuda")
    with pytest.raises(ValueError, match="outside the prefix"):
        CK.load_tensors(ckpt, "talker.", expected={"thinker.model.norm.weight": (128,)})
    with pytest.raises(ValueError, match="needs a Checkpoint"):
        CK.load_tensors(str(tiny_ckpt))
    # weights stored as integers are refused, naming the tensor and its shard
    _rewrite_shard(ckpt_copy, "model-00002-of-00003.safetensors",
                   lambda t: t.update({"talker.model.norm.weight": torch.ones(64, dtype=torch.int32)}))
    with pytest.raises(ValueError, match=r"talker\.model\.norm\.weight in model-00002-of-00003\.safetensors is stored as I32"):
        CK.load_tensors(CK.open_checkpoint(ckpt_copy), "talker.")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_load_straight_to_gpu(tiny_ckpt):
    ckpt = CK.open_checkpoint(tiny_ckpt)
    tensors = CK.load_tensors(ckpt, "thinker.", device="cuda", dtype="bf16")
    reference = _all_reference(tiny_ckpt)
    for k, t in tensors.items():
        assert t.is_cuda and t.dtype == torch.bfloat16
        assert torch.equal(t.cpu(), reference[k].bfloat16())


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc/self/status")
def test_host_memory_stays_near_the_result(tiny_7b_ckpt):
    # Loading converts tensor by tensor: anonymous memory never exceeds the result by more
    # than about one tensor (the file itself is only mmapped, copy-on-write).
    ckpt = CK.open_checkpoint(tiny_7b_ckpt)
    base, peak = _rss_anon(), [0]
    tensors = CK.load_tensors(ckpt, dtype="bf16", progress=lambda d, t: peak.__setitem__(0, max(peak[0], _rss_anon() - base)))
    result = sum(t.numel() * t.element_size() for t in tensors.values())
    largest = max(info.nbytes for info in ckpt.tensors.values())
    assert peak[0] <= result + 2 * largest + 8_000_000, (peak[0], result, largest)
