"""The official Qwen2.5-Omni checkpoint layout, computed from the config alone.

`expected_tensors(config)` lists every tensor name and shape that a published checkpoint (and
transformers 5.24's `save_pretrained`, which writes the same layout) contains:
`thinker.audio_tower.*`, `thinker.visual.*`, `thinker.model.*`, `thinker.lm_head.weight`,
`talker.*`, `token2wav.code2wav_dit_model.*`, `token2wav.code2wav_bigvgan_model.*`.

Buffers that the model recomputes (rotary `inv_freq`, the audio tower's sinusoidal
`positional_embedding`, BigVGAN's anti-aliasing `filter`s) are not saved by transformers and are
not listed; `is_computed_buffer(name)` recognises them so a loader can skip them if a checkpoint
carries them anyway.
"""
from __future__ import annotations

import re

from ..config import (
    AudioEncoderConfig,
    BigVGANConfig,
    DiTConfig,
    OmniConfig,
    TalkerConfig,
    TextConfig,
    VisionEncoderConfig,
)

__all__ = [
    "expected_tensors",
    "thinker_text_tensors",
    "audio_tower_tensors",
    "visual_tensors",
    "talker_tensors",
    "dit_tensors",
    "bigvgan_tensors",
    "is_computed_buffer",
    "COMPONENT_PREFIXES",
]

Shapes = dict[str, tuple[int, ...]]

COMPONENT_PREFIXES = {
    "audio_tower": "thinker.audio_tower.",
    "visual": "thinker.visual.",
    "thinker_text": "thinker.model.",
    "lm_head": "thinker.lm_head.",
    "talker": "talker.",
    "dit": "token2wav.code2wav_dit_model.",
    "bigvgan": "token2wav.code2wav_bigvgan_model.",
}

_COMPUTED_BUFFER = re.compile(
    r"(\.inv_freq|\.original_inv_freq|\.(upsample|downsample)\.filter|audio_tower\.positional_embedding\.positional_embedding)$"
)


def is_computed_buffer(name: str) -> bool:
    """True for buffers the model derives from the config (never needed from a checkpoint)."""
    return bool(_COMPUTED_BUFFER.search(name))


def _linear(out: Shapes, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def _qwen2_decoder_layers(out: Shapes, prefix: str, cfg, head_dim: int) -> None:
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        _linear(out, p + "self_attn.q_proj", q, h)
        _linear(out, p + "self_attn.k_proj", kv, h)
        _linear(out, p + "self_attn.v_proj", kv, h)
        _linear(out, p + "self_attn.o_proj", h, q, bias=False)
        out[p + "post_attention_layernorm.weight"] = (h,)
        _linear(out, p + "mlp.gate_proj", cfg.intermediate_size, h, bias=False)
        _linear(out, p + "mlp.up_proj", cfg.intermediate_size, h, bias=False)
        _linear(out, p + "mlp.down_proj", h, cfg.intermediate_size, bias=False)


def thinker_text_tensors(cfg: TextConfig, tie_word_embeddings: bool = False, prefix: str = "thinker.") -> Shapes:
    """The Thinker LLM (`thinker.model.*`) and its `thinker.lm_head.weight` (absent when tied)."""
    out: Shapes = {}
    out[f"{prefix}model.embed_tokens.weight"] = (cfg.vocab_size, cfg.hidden_size)
    _qwen2_decoder_layers(out, f"{prefix}model.", cfg, cfg.dim_per_head)
    out[f"{prefix}model.norm.weight"] = (cfg.hidden_size,)
    if not tie_word_embeddings:
        out[f"{prefix}lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return out


def audio_tower_tensors(cfg: AudioEncoderConfig, prefix: str = "thinker.audio_tower.") -> Shapes:
    d, f = cfg.d_model, cfg.encoder_ffn_dim
    out: Shapes = {
        f"{prefix}conv1.weight": (d, cfg.num_mel_bins, 3),
        f"{prefix}conv1.bias": (d,),
        f"{prefix}conv2.weight": (d, d, 3),
        f"{prefix}conv2.bias": (d,),
        f"{prefix}audio_bos_eos_token.weight": (2, cfg.output_dim),
    }
    for i in range(cfg.encoder_layers):
        p = f"{prefix}layers.{i}."
        _linear(out, p + "self_attn.q_proj", d, d)
        _linear(out, p + "self_attn.k_proj", d, d, bias=False)  # Whisper: no key bias
        _linear(out, p + "self_attn.v_proj", d, d)
        _linear(out, p + "self_attn.out_proj", d, d)
        out[p + "self_attn_layer_norm.weight"] = (d,)
        out[p + "self_attn_layer_norm.bias"] = (d,)
        _linear(out, p + "fc1", f, d)
        _linear(out, p + "fc2", d, f)
        out[p + "final_layer_norm.weight"] = (d,)
        out[p + "final_layer_norm.bias"] = (d,)
    out[f"{prefix}ln_post.weight"] = (d,)
    out[f"{prefix}ln_post.bias"] = (d,)
    _linear(out, f"{prefix}proj", cfg.output_dim, d)
    return out


def visual_tensors(cfg: VisionEncoderConfig, prefix: str = "thinker.visual.") -> Shapes:
    h, f = cfg.hidden_size, cfg.intermediate_size
    out: Shapes = {
        f"{prefix}patch_embed.proj.weight": (h, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
    }
    for i in range(cfg.depth):
        p = f"{prefix}blocks.{i}."
        out[p + "norm1.weight"] = (h,)
        out[p + "norm2.weight"] = (h,)
        for name in ("q", "k", "v", "proj"):
            _linear(out, p + f"attn.{name}", h, h)
        _linear(out, p + "mlp.gate_proj", f, h)
        _linear(out, p + "mlp.up_proj", f, h)
        _linear(out, p + "mlp.down_proj", h, f)
    merged = h * cfg.spatial_merge_size**2
    out[f"{prefix}merger.ln_q.weight"] = (h,)
    _linear(out, f"{prefix}merger.mlp.0", merged, merged)
    _linear(out, f"{prefix}merger.mlp.2", cfg.out_hidden_size, merged)
    return out


def talker_tensors(cfg: TalkerConfig, prefix: str = "talker.") -> Shapes:
    out: Shapes = {}
    _linear(out, f"{prefix}thinker_to_talker_proj", cfg.hidden_size, cfg.embedding_size)
    out[f"{prefix}model.embed_tokens.weight"] = (cfg.vocab_size, cfg.embedding_size)
    _qwen2_decoder_layers(out, f"{prefix}model.", cfg, cfg.dim_per_head)
    out[f"{prefix}model.norm.weight"] = (cfg.hidden_size,)
    _linear(out, f"{prefix}codec_head", cfg.vocab_size, cfg.hidden_size, bias=False)
    return out


def dit_tensors(cfg: DiTConfig, prefix: str = "token2wav.code2wav_dit_model.") -> Shapes:
    h, inner = cfg.hidden_size, cfg.inner_dim
    out: Shapes = {}
    _linear(out, f"{prefix}time_embed.time_mlp.0", h, 256)  # 256 = sinusoidal timestep features
    _linear(out, f"{prefix}time_embed.time_mlp.2", h, h)
    out[f"{prefix}text_embed.codec_embed.weight"] = (cfg.num_embeds + 1, cfg.emb_dim)
    _linear(out, f"{prefix}input_embed.proj", h, cfg.mel_dim + cfg.enc_dim + cfg.enc_emb_dim + cfg.emb_dim)

    # ECAPA-TDNN speaker encoder over the reference mel.
    spk = f"{prefix}input_embed.spk_encoder."
    ch, ks = cfg.enc_channels, cfg.enc_kernel_sizes

    def conv(name, c_out, c_in, k):
        out[f"{name}.weight"] = (c_out, c_in, k)
        out[f"{name}.bias"] = (c_out,)

    conv(f"{spk}blocks.0.conv", ch[0], cfg.mel_dim, ks[0])
    scale = cfg.enc_res2net_scale
    for i in range(1, len(ch) - 1):
        b = f"{spk}blocks.{i}."
        conv(b + "tdnn1.conv", ch[i], ch[i - 1], 1)
        for j in range(scale - 1):
            conv(b + f"res2net_block.blocks.{j}.conv", ch[i] // scale, ch[i] // scale, ks[i])
        conv(b + "tdnn2.conv", ch[i], ch[i], 1)
        conv(b + "se_block.conv1", cfg.enc_se_channels, ch[i], 1)
        conv(b + "se_block.conv2", ch[i], cfg.enc_se_channels, 1)
    conv(f"{spk}mfa.conv", ch[-1], ch[-1], ks[-1])
    conv(f"{spk}asp.tdnn.conv", cfg.enc_attention_channels, ch[-1] * 3, 1)
    conv(f"{spk}asp.conv", ch[-1], cfg.enc_attention_channels, 1)
    conv(f"{spk}fc", cfg.enc_dim, ch[-1] * 2, 1)

    ff = int(h * cfg.ff_mult)
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}transformer_blocks.{i}."
        _linear(out, p + "attn_norm.linear", 6 * h, h)
        _linear(out, p + "attn.to_q", inner, h)
        _linear(out, p + "attn.to_k", inner, h)
        _linear(out, p + "attn.to_v", inner, h)
        _linear(out, p + "attn.to_out.0", h, inner)
        _linear(out, p + "ff.ff.0", ff, h)
        _linear(out, p + "ff.ff.3", h, ff)
    _linear(out, f"{prefix}norm_out.linear", 2 * h, h)
    _linear(out, f"{prefix}proj_out", cfg.mel_dim, h)
    return out


def bigvgan_tensors(cfg: BigVGANConfig, prefix: str = "token2wav.code2wav_bigvgan_model.") -> Shapes:
    c0 = cfg.upsample_initial_channel
    out: Shapes = {f"{prefix}conv_pre.weight": (c0, cfg.mel_dim, 7), f"{prefix}conv_pre.bias": (c0,)}
    for i, k in enumerate(cfg.upsample_kernel_sizes):
        # ConvTranspose1d weights are (in, out, k).
        out[f"{prefix}ups.{i}.0.weight"] = (c0 // 2**i, c0 // 2 ** (i + 1), k)
        out[f"{prefix}ups.{i}.0.bias"] = (c0 // 2 ** (i + 1),)
    n_res = len(cfg.resblock_kernel_sizes)
    for i in range(len(cfg.upsample_rates)):
        c = c0 // 2 ** (i + 1)
        for j, k in enumerate(cfg.resblock_kernel_sizes):
            p = f"{prefix}resblocks.{i * n_res + j}."
            for conv in ("convs1", "convs2"):
                for m in range(3):
                    out[f"{p}{conv}.{m}.weight"] = (c, c, k)
                    out[f"{p}{conv}.{m}.bias"] = (c,)
            for a in range(6):  # one SnakeBeta per conv
                out[f"{p}activations.{a}.act.alpha"] = (c,)
                out[f"{p}activations.{a}.act.beta"] = (c,)
    c_last = c0 // 2 ** len(cfg.upsample_rates)
    out[f"{prefix}activation_post.act.alpha"] = (c_last,)
    out[f"{prefix}activation_post.act.beta"] = (c_last,)
    out[f"{prefix}conv_post.weight"] = (1, c_last, 7)  # no bias
    return out


def expected_tensors(config: OmniConfig) -> Shapes:
    """Every tensor of the official checkpoint layout: name -> shape. Talker and Token2Wav are
    included only when `enable_audio_output` is set (transformers builds them only then)."""
    if not isinstance(config, OmniConfig):
        raise ValueError(f"expected_tensors needs an OmniConfig, got {type(config).__name__}")
    th = config.thinker_config
    out: Shapes = {}
    out.update(audio_tower_tensors(th.audio_config))
    out.update(visual_tensors(th.vision_config))
    out.update(thinker_text_tensors(th.text_config, tie_word_embeddings=th.tie_word_embeddings))
    if config.enable_audio_output:
        out.update(talker_tensors(config.talker_config))
        out.update(dit_tensors(config.token2wav_config.dit_config))
        out.update(bigvgan_tensors(config.token2wav_config.bigvgan_config))
    return out


def select(shapes: Shapes, prefix: str) -> Shapes:
    """The entries of `shapes` under `prefix`."""
    return {k: v for k, v in shapes.items() if k.startswith(prefix)}
