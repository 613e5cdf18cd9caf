"""runtime/tiny_checkpoint.py: transformers loads it cleanly, it is deterministic, it round-trips;
the cache directory survives concurrent first uses and reports an unusable location."""
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import unwritable_dir
import torch
from safetensors.torch import load_file

from omni_runtime.io import checkpoint as CK
from omni_runtime.io import layout as L
from omni_runtime.io import tiny_cache as TC
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
    d = TC.default_checkpoint_dir("tiny", seed=3)
    assert d == tmp_path / "cache" / "tiny-tiny-seed3"
    assert CK.open_checkpoint(d).note == T.NOTE
    stamp = d / "config.json"
    mtime = stamp.stat().st_mtime_ns
    assert TC.default_checkpoint_dir("tiny", seed=3) == d and stamp.stat().st_mtime_ns == mtime  # reused
    # A stale (older format) directory is rewritten; no temporary directories are left behind.
    (d / ".omni_runtime_tiny_version").write_text("0\n")
    (d / "leftover").write_text("x")
    assert TC.default_checkpoint_dir("tiny", seed=3) == d
    assert not (d / "leftover").exists()
    # the lock file taken to replace a stale copy stays (deleting lock files races)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".tiny-tiny-seed3.lock", "tiny-tiny-seed3"]
    with pytest.raises(ValueError, match="unknown preset"):
        TC.default_checkpoint_dir("huge")
    with pytest.raises(ValueError, match="seed must be"):
        T.write_tiny_checkpoint(tmp_path / "x", seed=-1)


def test_command_line(tmp_path, capsys):
    assert T.main(["--out", str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert CK.open_checkpoint(tmp_path / "cli").note == T.NOTE


@pytest.mark.parametrize("stale", ["old_version", "no_marker", "a_file"])
def test_outdated_checkpoint_is_replaced(tmp_path, monkeypatch, stale):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(tmp_path))
    target = tmp_path / "tiny-tiny-seed0"
    if stale == "a_file":
        target.write_text("not a checkpoint")
    else:
        T.write_tiny_checkpoint(target)
        marker = target / ".omni_runtime_tiny_version"
        if stale == "old_version":
            marker.write_text("0\n")
        else:
            marker.unlink()
        (target / "model-00001-of-00003.safetensors").write_bytes(b"truncated")
    assert TC.default_checkpoint_dir() == target
    assert (target / ".omni_runtime_tiny_version").read_text() == f"{T.FORMAT_VERSION}\n"
    assert len(CK.load_tensors(CK.open_checkpoint(target), "thinker.model.norm.")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-tiny-seed0.lock", "tiny-tiny-seed0"]


# One first-use process: all start at once (a file barrier); writer i finishes its copy 0.25 * i s
# after the first (a slower first-use writer), then each keeps opening and fully loading the
# checkpoint until the slowest writer is done. Before the fix a slower writer moved the winner's
# finished directory aside (and deleted it) under the loaders: "weight shard ... is missing".
_FIRST_USE = r"""
import os, sys, time
from pathlib import Path
import torch
from omni_runtime.io import checkpoint as CK
from omni_runtime.io import tiny_cache as TC
from omni_runtime.io import tiny_checkpoint as T

i, barrier = int(sys.argv[1]), Path(sys.argv[2])
write = T.write_tiny_checkpoint
def slow_write(*a, **k):
    out = write(*a, **k)
    time.sleep(0.25 * i)
    return out
T.write_tiny_checkpoint = slow_write
(barrier / f"ready{i}").touch()
while not (barrier / "go").exists():
    time.sleep(0.002)
d = TC.default_checkpoint_dir("tiny", seed=0)
end = time.monotonic() + 1.5 - 0.25 * i
loads = 0
while loads == 0 or time.monotonic() < end:
    tensors = CK.load_tensors(CK.open_checkpoint(d))
    assert len(tensors) > 100 and all(torch.isfinite(t).all() for t in tensors.values())
    loads += 1
print(d)
"""


@pytest.mark.parametrize("start", ["fresh", "stale"])
def test_concurrent_first_uses_all_succeed(tmp_path, start):
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    if start == "stale":
        T.write_tiny_checkpoint(cache / "tiny-tiny-seed0")
        (cache / "tiny-tiny-seed0" / ".omni_runtime_tiny_version").write_text("0\n")
    env = dict(os.environ, OMNI_RUNTIME_CACHE=str(cache), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, str(i), str(barrier)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.monotonic() + 240
    while len(list(barrier.glob("ready*"))) < 4 and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    (barrier / "go").touch()
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        assert out.strip() == str(cache / "tiny-tiny-seed0")
    assert (cache / "tiny-tiny-seed0" / ".omni_runtime_tiny_version").read_text() == f"{T.FORMAT_VERSION}\n"
    left = sorted(p.name for p in cache.iterdir())
    assert left in (["tiny-tiny-seed0"], [".tiny-tiny-seed0.lock", "tiny-tiny-seed0"])  # no temporary copies


@pytest.mark.parametrize("kind", ["file", "below_a_file", "unwritable"])
def test_unusable_cache_raises_value_error(tmp_path, monkeypatch, kind):
    (tmp_path / "a_file").write_text("x")
    root = {"file": tmp_path / "a_file", "below_a_file": tmp_path / "a_file" / "sub"}.get(kind)
    if root is None:
        root = unwritable_dir(monkeypatch, tmp_path / "ro")
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(root))
    try:
        with pytest.raises(ValueError) as e:
            TC.default_checkpoint_dir()
    finally:
        if kind == "unwritable":
            (tmp_path / "ro").chmod(0o700)
    msg = str(e.value)
    assert msg.startswith(f"cannot use the cache directory {root} (OMNI_RUNTIME_CACHE={root}): ")
    assert ("is a file" if kind != "unwritable" else "not writable") in msg
    assert TC.default_checkpoint_dir(create=False) == root / "tiny-tiny-seed0"  # create=False never raises
    # without the variable the message says it is the default and how to change it
    monkeypatch.delenv("OMNI_RUNTIME_CACHE")
    monkeypatch.setattr(TC.Path, "home", classmethod(lambda cls: root))
    with pytest.raises(ValueError, match="the default cache directory \\(set OMNI_RUNTIME_CACHE"):
        TC.default_checkpoint_dir()
