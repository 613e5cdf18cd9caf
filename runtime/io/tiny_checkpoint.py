"""A small RANDOM Qwen2.5-Omni checkpoint with the real architecture, in the official layout.

`write_tiny_checkpoint(path, seed, preset)` writes everything a published checkpoint directory
has: config.json (published 2025 style, `rope_scaling` + `rope_theta`), sharded safetensors with
`model.safetensors.index.json` (one shard per component group), `spk_dict.pt` with the speakers
"Chelsie" and "Ethan", a real byte-level BPE `tokenizer.json` (+ tokenizer_config.json,
chat_template.json, preprocessor_config.json, generation_config.json) and a README.txt. Every
component is there (Thinker text + audio + vision, Talker, Token2Wav DiT + BigVGAN), so the
whole compute path runs on a fresh machine with no download. The weights are random: the words
and sounds it produces are meaningless. The same seed gives byte-identical files.

Presets:
- "tiny": widths of 64-128, head_dim 64 everywhere, 2 layers; runs every component in well
  under a second on CPU.
- "7b-ratios": the 7B's shape ratios at small width: GQA 7:1 with head_dim 128 and mrope
  [16, 24, 24] in the Thinker, head_dim 128 in the Talker (wider than its hidden size, as in
  the 7B), head_dim 64 in the audio encoder and DiT, head_dim 80 in the ViT.

`tiny_cache.default_checkpoint_dir(preset, seed)` returns (writing it on first use) a cache directory:
$OMNI_RUNTIME_CACHE/tiny-<preset>-seed<seed>, default root ~/.cache/omni_runtime. Concurrent first
uses are safe (private copy + atomic rename; a complete checkpoint is never moved), and an unusable
cache location raises ValueError naming OMNI_RUNTIME_CACHE and the path.
Command line: `python -m omni_runtime.tiny_checkpoint [--preset tiny] [--seed 0] [--out DIR]`.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import zlib
from pathlib import Path

import torch

from . import layout
from .chat import CHAT_TEMPLATE
from ..config import OmniConfig
from .tokenizer import QWEN_SPECIAL_TOKENS

__all__ = [
    "PRESETS",
    "NOTE",
    "write_tiny_checkpoint",
    "tiny_config",
    "build_tiny_tokenizer",
    "random_tensors",
]

PRESETS = ("tiny", "7b-ratios")
NOTE = "random weights: meaningless words and sounds, real compute path"
# Bump when the written files change, so cached directories from older versions are rewritten.
FORMAT_VERSION = 2
_STAMP = ".omni_runtime_tiny_version"

# Ids above the tokenizer's tokens in the embedding table, mirroring the 7B where the tts_text_*
# ids (151859-151861) and the speakers' bos tokens are embedding rows without tokenizer entries.
_VOCAB = 512
_TTS_TEXT_PAD, _TTS_TEXT_START, _TTS_TEXT_END = 500, 501, 502
_SPEAKER_BOS = {"Chelsie": 510, "Ethan": 511}
# Codec ids. "tiny" (the embedded checkpoint of the main job): the DiT's table (num_embeds + 1
# rows) covers the whole talker vocabulary, so every code a random talker emits is one the codec
# takes. "7b-ratios": the 7B's numbers -- a codec vocabulary of 8448 over a DiT table of 8193 rows,
# pad/bos/eos/mask at 8292/8293/8294/8296 -- so codes the codec cannot take do occur.
_CODEC = {
    "tiny": {"num_embeds": 128, "vocab": 128, "pad": 112, "bos": 113, "eos": 114, "mask": 116},
    "7b-ratios": {"num_embeds": 8192, "vocab": 8448, "pad": 8292, "bos": 8293, "eos": 8294, "mask": 8296},
}

# Words merged into single tokens, so role names are one id each as in Qwen's vocabulary.
_MERGE_WORDS = (
    "user", "system", "assistant", "You", "Qwen", "Ġthe", "Ġa", "Ġand", "Ġis", "Ġare", "Ġyou",
    "Ġto", "Ġof", "Ġhelpful", "Ġvirtual", "Ġhuman", "ing", "ĠHello", "Ġworld",
)
# Qwen2's pre-tokenization regex (split before byte-level mapping).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ---- tokenizer --------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, in GPT-2's token order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any UTF-8 text encodes) with a few merges and the Qwen
    special tokens right after the regular vocabulary. Returns (tokenizers.Tokenizer,
    {special token: id})."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: dict[str, int] = {ch: i for i, ch in enumerate(_bytes_to_unicode())}
    merges: list[tuple[str, str]] = []
    for word in _MERGE_WORDS:
        # Chain merges left to right: w0+w1, (w0w1)+w2, ... so each word ends as one token.
        current = word[0]
        for ch in word[1:]:
            merged = current + ch
            if merged not in vocab:
                merges.append((current, ch))
                vocab[merged] = len(vocab)
            current = merged
    model = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    for word in ("user", "system", "assistant"):
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    assert max(ids.values()) < _TTS_TEXT_PAD
    return tok, ids


# ---- config -----------------------------------------------------------------------------------


def tiny_config(preset: str = "tiny", tokenizer=None) -> OmniConfig:
    """The OmniConfig of a preset; its token ids are those of `tokenizer` (default: the tiny
    tokenizer of `build_tiny_tokenizer`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if tokenizer is None:
        tokenizer, _ = build_tiny_tokenizer()
    s = {t: tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    user_id = tokenizer.token_to_id("user")
    if preset == "tiny":
        # Every attention has head_dim 64, a size the GPU kernels take, so the main job runs them too.
        text = dict(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, mrope=[8, 12, 12])
        audio = dict(d_model=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128)
        vision = dict(depth=2, hidden_size=128, num_heads=2, intermediate_size=128, fullatt_block_indexes=[1])
        talker = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=64, mrope=[8, 12, 12])
        dit = dict(hidden_size=128, num_attention_heads=2, head_dim=64, num_hidden_layers=4, emb_dim=16,
                   enc_emb_dim=16, enc_dim=16, enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16,
                   enc_se_channels=16)
    else:
        text = dict(hidden_size=896, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=7,
                    num_key_value_heads=1, mrope=[16, 24, 24])
        audio = dict(d_model=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=512)
        vision = dict(depth=4, hidden_size=160, num_heads=2, intermediate_size=432, fullatt_block_indexes=[1, 3])
        # The 7B talker's ratios at its real width: 12 query / 4 KV heads of head_dim 128 over hidden
        # 896 (q_proj widens 896 -> 1536).
        talker = dict(hidden_size=896, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=12,
                      num_key_value_heads=4, head_dim=128, mrope=[16, 24, 24])
        dit = dict(hidden_size=128, num_attention_heads=2, head_dim=64, num_hidden_layers=4, emb_dim=64,
                   enc_emb_dim=48, enc_dim=32, enc_channels=[64, 64, 64, 64, 192], enc_attention_channels=16,
                   enc_se_channels=16)
    hidden = text["hidden_size"]
    codec = _CODEC[preset]
    rope = lambda m: {"mrope_section": m, "rope_type": "default", "type": "default"}  # noqa: E731
    d = {
        "architectures": ["Qwen2_5OmniForConditionalGeneration"],
        "model_type": "qwen2_5_omni",
        "enable_audio_output": True,
        "thinker_config": {
            "model_type": "qwen2_5_omni_thinker",
            "audio_token_index": s["<|AUDIO|>"],
            "image_token_index": s["<|IMAGE|>"],
            "video_token_index": s["<|VIDEO|>"],
            "audio_start_token_id": s["<|audio_bos|>"],
            "audio_end_token_id": s["<|audio_eos|>"],
            "vision_start_token_id": s["<|vision_bos|>"],
            "vision_end_token_id": s["<|vision_eos|>"],
            "vision_token_id": s["<|vision_pad|>"],
            "bos_token_id": s["<|im_start|>"],
            "eos_token_id": s["<|im_end|>"],
            "pad_token_id": s["<|endoftext|>"],
            "user_token_id": user_id,
            "position_id_per_seconds": 25,
            "seconds_per_chunk": 2,
            "tie_word_embeddings": False,
            "text_config": {
                "model_type": "qwen2_5_omni_text",
                "vocab_size": _VOCAB,
                "hidden_size": hidden,
                "intermediate_size": text["intermediate_size"],
                "num_hidden_layers": text["num_hidden_layers"],
                "num_attention_heads": text["num_attention_heads"],
                "num_key_value_heads": text["num_key_value_heads"],
                "hidden_act": "silu",
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6,
                "rope_scaling": rope(text["mrope"]),
                "rope_theta": 1000000.0,
                "use_sliding_window": False,
                "sliding_window": 32768,
                "max_window_layers": 28,
                "tie_word_embeddings": False,
            },
            "audio_config": {
                "model_type": "qwen2_5_omni_audio_encoder",
                "num_mel_bins": 128,
                "max_source_positions": 1500,
                "n_window": 100,
                "output_dim": hidden,
                **audio,
            },
            "vision_config": {
                "model_type": "qwen2_5_omni_vision_encoder",
                "in_channels": 3,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "spatial_merge_size": 2,
                "window_size": 112,
                "hidden_act": "silu",
                "out_hidden_size": hidden,
                **vision,
            },
        },
        "talker_config": {
            "model_type": "qwen2_5_omni_talker",
            "vocab_size": codec["vocab"],
            "embedding_size": hidden,
            "hidden_size": talker["hidden_size"],
            "intermediate_size": talker["intermediate_size"],
            "num_hidden_layers": talker["num_hidden_layers"],
            "num_attention_heads": talker["num_attention_heads"],
            "num_key_value_heads": talker["num_key_value_heads"],
            "head_dim": talker["head_dim"],
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_scaling": rope(talker["mrope"]),
            "rope_theta": 1000000.0,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 28,
            "tts_codec_pad_token_id": codec["pad"],
            "tts_codec_start_token_id": codec["bos"],
            "tts_codec_end_token_id": codec["eos"],
            "tts_codec_mask_token_id": codec["mask"],
            "tts_text_pad_token_id": _TTS_TEXT_PAD,
            "tts_text_start_token_id": _TTS_TEXT_START,
            "tts_text_end_token_id": _TTS_TEXT_END,
            "audio_token_index": s["<|AUDIO|>"],
            "image_token_index": s["<|IMAGE|>"],
            "video_token_index": s["<|VIDEO|>"],
            "audio_start_token_id": s["<|audio_bos|>"],
            "audio_end_token_id": s["<|audio_eos|>"],
            "vision_start_token_id": s["<|vision_bos|>"],
            "vision_end_token_id": s["<|vision_eos|>"],
            "position_id_per_seconds": 25,
            "seconds_per_chunk": 2,
            "spatial_merge_size": 2,
        },
        "token2wav_config": {
            "model_type": "qwen2_5_omni_token2wav",
            "dit_config": {
                "model_type": "qwen2_5_omni_dit",
                "ff_mult": 2,
                "mel_dim": 80,
                "num_embeds": codec["num_embeds"],
                "repeats": 2,
                "block_size": 24,
                "look_ahead_layers": [2],
                "look_backward_layers": [0, 3],
                "enc_kernel_sizes": [5, 3, 3, 3, 1],
                "enc_dilations": [1, 2, 3, 4, 1],
                "enc_res2net_scale": 2,
                "max_position_embeddings": 32768,
                "dropout": 0.1,
                **dit,
            },
            "bigvgan_config": {
                "model_type": "qwen2_5_omni_bigvgan",
                "mel_dim": 80,
                "upsample_initial_channel": 64,  # transformers' BigVGAN needs >= 64 (6 halvings)
                "upsample_rates": [5, 3, 2, 2, 2, 2],
                "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
                "resblock_kernel_sizes": [3, 7, 11],
                "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            },
        },
        "torch_dtype": "float32",
        "_omni_runtime_note": NOTE,
        "_omni_runtime_preset": preset,
    }
    cfg = OmniConfig.from_dict(d)
    cfg.check_token_ids()
    return cfg


# ---- weights ----------------------------------------------------------------------------------


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per tensor name: a tensor's values do not depend on which other tensors exist.
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63))


def _init_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = _generator(seed, name)
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    module, _, leaf = name.rpartition(".")
    is_norm = ("norm" in module.rsplit(".", 1)[-1] or module.endswith(("ln_q", "ln_post"))) and len(shape) == 1
    if is_norm and leaf == "weight":
        # Around 1 rather than exactly 1, so parity tests notice a norm weight that is ignored.
        return 1.0 + 0.05 * noise
    if leaf in ("alpha", "beta"):
        return 0.05 * noise  # SnakeBeta keeps log-scale parameters: exp(~0) ~ 1
    if len(shape) == 1:
        # Small non-zero biases for the same reason (a dropped bias must show in parity tests).
        return 0.02 * noise
    if len(shape) in (3, 5):
        # Convolutions: ~1/sqrt(fan_in) keeps activations O(1) through the deep vocoder stacks;
        # the 0.9 was tuned so the tiny vocoder's output is audible (std ~0.1) without clipping.
        fan_in = math.prod(shape[1:]) if "ups." not in name else shape[0] * shape[2]
        return 0.9 * noise / math.sqrt(fan_in)
    return 0.02 * noise  # linears and embeddings, transformers' initializer_range


def random_tensors(config: OmniConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random fp32 tensor for every name of the official layout."""
    return {name: _init_tensor(name, shape, seed) for name, shape in sorted(layout.expected_tensors(config).items())}


def _shard_groups(names) -> list[tuple[str, list[str]]]:
    groups = {"thinker": [], "talker": [], "token2wav": []}
    for n in names:
        groups[n.split(".", 1)[0]].append(n)
    return [(k, sorted(v)) for k, v in groups.items() if v]


def _speakers(config: OmniConfig, seed: int) -> dict:
    dit = config.token2wav_config.dit_config
    out = {}
    for i, (name, bos) in enumerate(_SPEAKER_BOS.items()):
        g = _generator(seed, f"speaker.{name}")
        cond = torch.randn(1, dit.enc_emb_dim, generator=g)
        # A log-mel-like reference: values in the range of natural-log mel amplitudes.
        ref_mel = -4.0 + 1.5 * torch.randn(1, 64 + 8 * i, dit.mel_dim, generator=g)
        out[name] = {"bos_token": bos, "cond": cond, "ref_mel": ref_mel}
    return out


def _tokenizer_files(tok, special_ids: dict) -> dict[str, str]:
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for t, i in sorted(special_ids.items(), key=lambda kv: kv[1])
    }
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>",)],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "processor_class": "Qwen2_5OmniProcessor",
        "chat_template": CHAT_TEMPLATE,
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    preprocessor = {
        # The published values: WhisperFeatureExtractor (128 mel bins, 16 kHz, hop 160, up to
        # 300 s) and the Qwen2-VL image processor (14-px patches, 2x2 merge, CLIP mean/std).
        "processor_class": "Qwen2_5OmniProcessor",
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": 128,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 300,
        "n_samples": 4800000,
        "nb_max_frames": 30000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "dither": 0.0,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    dump = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False) + "\n"  # noqa: E731
    return {
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": dump(tokenizer_config),
        "chat_template.json": dump({"chat_template": CHAT_TEMPLATE}),
        "preprocessor_config.json": dump(preprocessor),
    }


def _readme(preset: str, seed: int, config: OmniConfig, n_params: int) -> str:
    t = config.thinker_config.text_config
    return (
        "omni_runtime tiny checkpoint -- RANDOM WEIGHTS\n"
        "==============================================\n\n"
        f"{NOTE}.\n\n"
        "This directory has the file layout and tensor names of a published Qwen2.5-Omni\n"
        "checkpoint (thinker.*, talker.*, token2wav.*), so every component of the model runs,\n"
        "but the weights are random numbers: the text it writes is gibberish and the speech is\n"
        "noise. Use it to test the compute path; point the runtime at a real checkpoint\n"
        "(e.g. Qwen/Qwen2.5-Omni-7B) for real answers.\n\n"
        f"preset: {preset}   seed: {seed}   parameters: {n_params:,}\n"
        f"thinker LLM: {t.num_hidden_layers} layers, hidden {t.hidden_size}, {t.num_attention_heads} heads / "
        f"{t.num_key_value_heads} kv heads, head_dim {t.dim_per_head}, mrope {t.mrope_section}, vocab {t.vocab_size}\n"
        f"written by omni_runtime.tiny_checkpoint (format {FORMAT_VERSION}); the same seed gives identical files.\n"
    )


def write_tiny_checkpoint(path, seed: int = 0, preset: str = "tiny") -> Path:
    """Write the checkpoint into `path` (created; existing files of the same names are replaced)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok, special_ids = build_tiny_tokenizer()
    config = tiny_config(preset, tok)
    tensors = random_tensors(config, seed)

    groups = _shard_groups(tensors)
    weight_map, total = {}, 0
    for i, (_, names) in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(path / fname), metadata={"format": "pt"})
        for n in names:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save(path / "config.json", style="2025")

    gen = {"bos_token_id": special_ids["<|im_start|>"], "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
           "pad_token_id": special_ids["<|endoftext|>"]}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    # torch.save writes a zip; an in-memory buffer keeps the bytes independent of the file name
    # (the archive's top folder is named after the file otherwise).
    buf = io.BytesIO()
    torch.save(_speakers(config, seed), buf)
    (path / "spk_dict.pt").write_bytes(buf.getvalue())

    for fname, text in _tokenizer_files(tok, special_ids).items():
        (path / fname).write_text(text)
    n_params = sum(t.numel() for t in tensors.values())
    (path / "README.txt").write_text(_readme(preset, seed, config, n_params))
    (path / _STAMP).write_text(f"{FORMAT_VERSION}\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=f"Write a tiny Qwen2.5-Omni checkpoint ({NOTE}).")
    p.add_argument("--preset", default="tiny", choices=PRESETS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory (default: the cache directory)")
    args = p.parse_args(argv)
    if args.out:
        out = write_tiny_checkpoint(args.out, seed=args.seed, preset=args.preset)
    else:
        from .tiny_cache import default_checkpoint_dir

        out = default_checkpoint_dir(args.preset, args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
