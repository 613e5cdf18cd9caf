"""runtime/tiny_checkpoint.py: transformers loads it cleanly, it is deterministic, it round-trips."""
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from omni_runtime.io import checkpoint as CK
from omni_runtime.io import layout as L
from omni_runtime.io import tiny_checkpoint as T


def _load_with_info(hf, directory):
    """from_pretrained with output_loading_info. Qwen2_5OmniForConditionalGeneration's own
    from_pretrained cannot return the info (it calls load_speakers on the returned tuple), so
    this calls PreTrainedModel's and then load_speakers, which is all the class's own adds."""
    cls = hf.Qwen2_5OmniForConditionalGeneration
    model, info = hf.PreTrainedModel.from_pretrained.__func__(cls, directory, output_loading_info=True)
    model.load_speakers(str(directory / "spk_dict.pt"))
    return model, info


def test_transformers_loads_the_tiny_checkpoint_cleanly(hf, tiny_ckpt, one_thread):
    model, info = _load_with_info(hf, tiny_ckpt)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and not info["error_msgs"]
    assert set(model.speaker_map) == {"Chelsie", "Ethan"}
    # transformers holds exactly the values in our files
    files = {}
    for f in tiny_ckpt.glob("model-*.safetensors"):
        files.update(load_file(str(f)))
    params = dict(model.thinker.named_parameters(prefix="thinker"))
    assert torch.equal(params["thinker.lm_head.weight"], files["thinker.lm_head.weight"])
    talker = dict(model.talker.named_parameters(prefix="talker"))
    assert torch.equal(talker["talker.codec_head.weight"], files["talker.codec_head.weight"])
    # The rope settings came through the published (rope_scaling + rope_theta) config.json.
    rp = model.config.thinker_config.text_config.rope_parameters
    assert rp["mrope_section"] == [8, 12, 12] and rp["rope_theta"] == 1e6

    # The real compute path runs and stays finite: thinker logits, token2wav audio.
    with torch.no_grad():
        logits = model.thinker(input_ids=torch.tensor([[1, 2, 3, 300, 301]])).logits
        assert torch.isfinite(logits).all() and logits.std() > 1e-3
        torch.manual_seed(0)
        spk = model.speaker_map["Chelsie"]
        wav = model.token2wav(torch.randint(0, 100, (1, 8)), conditioning=spk["cond"], reference_mel=spk["ref_mel"])
    assert wav.shape == (8 * 480,) and torch.isfinite(wav).all() and 0.005 < wav.std() < 0.9


def test_7b_ratios_preset(hf, tiny_7b_ckpt, one_thread):
    ckpt = CK.open_checkpoint(tiny_7b_ckpt)
    text = ckpt.config.thinker_config.text_config
    assert (text.num_attention_heads, text.num_key_value_heads, text.dim_per_head, text.mrope_section) == (7, 1, 128, [16, 24, 24])
    assert ckpt.config.talker_config.dim_per_head == 128 and ckpt.config.talker_config.mrope_section == [16, 24, 24]
    tensors = CK.load_tensors(ckpt, "thinker.model.layers.0.self_attn.")
    assert tensors["thinker.model.layers.0.self_attn.k_proj.weight"].shape == (128, 896)
    _, info = hf.PreTrainedModel.from_pretrained.__func__(
        hf.Qwen2_5OmniForConditionalGeneration, tiny_7b_ckpt, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_same_seed_same_bytes(tmp_path, tiny_ckpt):
    t0 = time.perf_counter()
    again = T.write_tiny_checkpoint(tmp_path / "again", seed=0, preset="tiny")
    elapsed = time.perf_counter() - t0
    files = sorted(p.name for p in tiny_ckpt.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (tiny_ckpt / name).read_bytes() == (again / name).read_bytes(), name
    assert elapsed < 5  # ~0.05 s on an idle core
    other = T.write_tiny_checkpoint(tmp_path / "other", seed=1, preset="tiny")
    a = load_file(str(tiny_ckpt / "model-00001-of-00003.safetensors"))
    b = load_file(str(other / "model-00001-of-00003.safetensors"))
    assert a.keys() == b.keys() and not torch.equal(a["thinker.model.norm.weight"], b["thinker.model.norm.weight"])


def test_layout_files_and_labels(tiny_ckpt):
    ckpt = CK.open_checkpoint(tiny_ckpt)
    # config.json is in the published 2025 style
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    text = raw["thinker_config"]["text_config"]
    assert "rope_scaling" in text and "rope_theta" in text and "rope_parameters" not in text
    assert raw["_omni_runtime_note"] == T.NOTE == ckpt.note
    assert "RANDOM WEIGHTS" in (tiny_ckpt / "README.txt").read_text()
    # every component, in at least two shards, and exactly the official layout
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert set(index["weight_map"]) == set(L.expected_tensors(ckpt.config))
    for prefix in L.COMPONENT_PREFIXES.values():
        assert ckpt.names(prefix), prefix
    assert index["metadata"]["total_size"] == ckpt.nbytes()
    # tokenizer and config agree on every special id
    tok = ckpt.tokenizer()
    th = ckpt.config.thinker_config
    assert tok.token_to_id("<|AUDIO|>") == th.audio_token_index
    assert tok.token_to_id("<|IMAGE|>") == th.image_token_index
    assert tok.token_to_id("<|VIDEO|>") == th.video_token_index
    assert tok.token_to_id("<|audio_bos|>") == th.audio_start_token_id
    assert tok.token_to_id("<|audio_eos|>") == th.audio_end_token_id
    assert tok.token_to_id("<|vision_bos|>") == th.vision_start_token_id
    assert tok.token_to_id("<|vision_eos|>") == th.vision_end_token_id
    assert tok.encode("user") == [th.user_token_id]
    assert tok.vocab_size <= th.text_config.vocab_size
    ckpt.config.check_token_ids()
    # speakers' bos tokens are Thinker ids; the norms are ~1 and the weights finite
    assert all(0 <= s.bos_token < th.text_config.vocab_size for s in ckpt.speakers.values())
    tensors = CK.load_tensors(ckpt)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert abs(tensors["thinker.model.norm.weight"].mean().item() - 1) < 0.05


def test_default_checkpoint_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(tmp_path / "cache"))
    d = T.default_checkpoint_dir("tiny", seed=3)
    assert d == tmp_path / "cache" / "tiny-tiny-seed3"
    assert CK.open_checkpoint(d).note == T.NOTE
    stamp = d / "config.json"
    mtime = stamp.stat().st_mtime_ns
    assert T.default_checkpoint_dir("tiny", seed=3) == d and stamp.stat().st_mtime_ns == mtime  # reused
    # A stale (older format) directory is rewritten; no temporary directories are left behind.
    (d / ".omni_runtime_tiny_version").write_text("0\n")
    (d / "leftover").write_text("x")
    assert T.default_checkpoint_dir("tiny", seed=3) == d
    assert not (d / "leftover").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny-tiny-seed3"]
    with pytest.raises(ValueError, match="unknown preset"):
        T.default_checkpoint_dir("huge")
    with pytest.raises(ValueError, match="seed must be"):
        T.write_tiny_checkpoint(tmp_path / "x", seed=-1)


def test_command_line(tmp_path, capsys):
    assert T.main(["--out", str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert CK.open_checkpoint(tmp_path / "cli").note == T.NOTE
