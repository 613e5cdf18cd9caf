"""What `--shapes` runs: the embedded tiny checkpoint, or a RANDOM checkpoint with the real
Qwen2.5-Omni 7B / 3B dimensions (for GPU latency runs: the compute of the real model, meaningless
words and sounds).

The real dimensions (see /work/shared/NOTES.md): Thinker 7B 28 layers x 3584 (FFN 18944, 28 / 4
heads of 128, vocabulary 152064), 3B 36 layers x 2048 (FFN 11008, 16 / 2 heads, vocabulary
151936); audio encoder 32 layers x 1280 (20 heads, FFN 5120), ViT 32 blocks x 1280 (16 heads, FFN
3420, full attention in blocks 7/15/23/31), both projecting to the Thinker's width; Talker 24 layers
x 896 (12 / 4 heads of 128, FFN 18944, codec vocabulary 8448); the DiT (22 layers x 1024) and
BigVGAN at their published sizes (the config defaults). NOTES.md lists only the 3B's Thinker: its
encoders and Token2Wav are taken as the 7B's (projecting to its width), and its Talker as a
Qwen2.5-0.5B-like decoder (24 layers x 896, FFN 4864, 14 / 2 heads of 64, mrope [8, 12, 12]),
which gives the published ~5.5 B parameters in all -- an inference, not a copied config. Token ids
are the tiny tokenizer's (its special tokens and speakers), so the same tokenizer files serve.

The checkpoint is written once into $OMNI_RUNTIME_CACHE/random-<shape>-seed<seed>-<dtype> (default
root ~/.cache/omni_runtime), in the official layout (shards of at most 4 GB, index,
config.json, spk_dict.pt, tokenizer files), Thinker / Talker in the run's dtype, Token2Wav in fp32.
Values follow the tiny checkpoint's rules (norms ~1, linears N(0, 0.02), convolutions
0.9 / sqrt(fan_in)), drawn on the run's device (a GPU draws 10 B numbers in seconds).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch

from ..config import BigVGANConfig, DiTConfig, OmniConfig
from ..io import layout, tiny_cache
from ..io import tiny_checkpoint as tiny

__all__ = ["real_config", "num_parameters", "random_checkpoint_dir", "is_complete", "write_random_checkpoint",
           "random_checkpoint"]

_FORMAT = 1
_STAMP = ".omni_bench_random_version"
_SHARD_BYTES = 4 * 10**9

_THINKER = {
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2),
}
_TALKER = {
    "7b": dict(hidden_size=896, intermediate_size=18944, num_hidden_layers=24, num_attention_heads=12,
               num_key_value_heads=4, head_dim=128),
    "3b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2, head_dim=64),
}
_MROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "type": "default"}


def real_config(shape: str) -> OmniConfig:
    """The OmniConfig of "7b" or "3b": real dimensions, the tiny tokenizer's token ids."""
    if shape not in _THINKER:
        raise ValueError(f"unknown shape {shape!r}; choose 7b or 3b")
    d = tiny.tiny_config("tiny").to_dict("2025")
    th = d["thinker_config"]
    text = th["text_config"]
    text.update(_THINKER[shape], rope_scaling=dict(_MROPE))
    text.pop("layer_types", None)  # per-layer list of the tiny depth; recomputed from the new one
    hidden = text["hidden_size"]
    th["audio_config"].update(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                              output_dim=hidden)
    th["vision_config"].update(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420,
                               fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=hidden)
    talker = d["talker_config"]
    talker.update(vocab_size=8448, embedding_size=hidden, **_TALKER[shape], tts_codec_pad_token_id=8292,
                  tts_codec_start_token_id=8293, tts_codec_end_token_id=8294, tts_codec_mask_token_id=8296,
                  rope_scaling={**_MROPE, "mrope_section": [16, 24, 24] if shape == "7b" else [8, 12, 12]})
    talker.pop("layer_types", None)
    d["token2wav_config"]["dit_config"] = DiTConfig().to_dict("2025")
    d["token2wav_config"]["bigvgan_config"] = BigVGANConfig().to_dict("2025")
    d["_omni_runtime_preset"] = f"random-{shape}"
    cfg = OmniConfig.from_dict(d)
    cfg.check_token_ids()
    return cfg


def num_parameters(config: OmniConfig) -> int:
    return sum(math.prod(s) for s in layout.expected_tensors(config).values())


def _random(name: str, shape, seed: int, device: torch.device) -> torch.Tensor:
    """tiny_checkpoint's value rules, drawn on `device` from a generator per tensor name."""
    g = torch.Generator(device=device).manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63))
    x = torch.randn(tuple(shape), generator=g, device=device)
    module, _, leaf = name.rpartition(".")
    is_norm = ("norm" in module.rsplit(".", 1)[-1] or module.endswith(("ln_q", "ln_post"))) and len(shape) == 1
    if is_norm and leaf == "weight":
        return x.mul_(0.05).add_(1.0)
    if leaf in ("alpha", "beta"):
        return x.mul_(0.05)
    if len(shape) == 1:
        return x.mul_(0.02)
    if len(shape) in (3, 5):
        fan_in = math.prod(shape[1:]) if "ups." not in name else shape[0] * shape[2]
        return x.mul_(0.9 / math.sqrt(fan_in))
    return x.mul_(0.02)


def random_checkpoint_dir(shape: str, seed: int, dtype: torch.dtype) -> Path:
    root = tiny_cache.default_checkpoint_dir(create=False).parent
    return root / f"random-{shape}-seed{seed}-{str(dtype).replace('torch.', '')}"


def is_complete(path: Path) -> bool:
    try:
        return (path / _STAMP).read_text().strip() == str(_FORMAT)
    except OSError:
        return False


def write_random_checkpoint(path, config: OmniConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                            device="cpu", shard_bytes: int = _SHARD_BYTES) -> Path:
    """Write a random checkpoint of `config` into `path` (created): the official layout, Thinker /
    Talker tensors in `dtype`, Token2Wav in fp32, one shard file per `shard_bytes`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    stored = lambda name: torch.float32 if name.startswith("token2wav.") else dtype  # noqa: E731
    groups: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shp in sorted(layout.expected_tensors(config).items()):
        nbytes = math.prod(shp) * torch.empty(0, dtype=stored(name)).element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shp))
        size += nbytes
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: _random(name, shp, seed, device).to(dtype=stored(name), device="cpu") for name, shp in group}
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    cfg = config.to_dict("2025")
    cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tok, special = tiny.build_tiny_tokenizer()
    gen = {"bos_token_id": special["<|im_start|>"], "eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]],
           "pad_token_id": special["<|endoftext|>"]}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    buf = io.BytesIO()
    torch.save(tiny._speakers(config, seed), buf)  # noqa: SLF001 -- the tiny checkpoint's speakers
    (path / "spk_dict.pt").write_bytes(buf.getvalue())
    for fname, text in tiny._tokenizer_files(tok, special).items():  # noqa: SLF001 -- and its tokenizer
        (path / fname).write_text(text)
    (path / "README.txt").write_text(
        f"omni-bench random checkpoint -- RANDOM WEIGHTS\n{tiny.NOTE}; {num_parameters(config):,} parameters; "
        f"seed {seed}.\n")
    (path / _STAMP).write_text(f"{_FORMAT}\n")  # last: marks the directory complete
    return path


def random_checkpoint(shape: str, seed: int, dtype: torch.dtype, device) -> Path:
    """The cached random checkpoint of `shape`, written on first use into a private directory and
    renamed into place when complete (a concurrent writer's complete copy is kept)."""
    target = random_checkpoint_dir(shape, seed, dtype)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp.", dir=target.parent))
    try:
        write_random_checkpoint(tmp, real_config(shape), seed, dtype, device)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # a stale, incomplete copy: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
