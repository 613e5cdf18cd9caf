"""Qwen2.5-Omni audio encoder (Whisper-large-v3-like), equal to transformers'
`Qwen2_5OmniAudioEncoder`, with attention through `omni_kernels.block_sparse_attention`.

    enc = AudioEncoder.from_state_dict(omni_config.thinker_config.audio_config,
                                       {k: v for k, v in tensors.items() if k.startswith("thinker.audio_tower.")})
    tokens, counts = enc([mel_a, mel_b])        # mels (128, L_i) -> (sum counts, output_dim)

The config is `omni_runtime.config.AudioEncoderConfig` (config.json's `thinker_config.audio_config`,
one source of truth for every component); the constructor validates it and rejects an
`activation_function` this module does not implement.

Submodule and parameter names are transformers' (conv1, conv2, layers.N.self_attn.{q,k,v,out}_proj,
layers.N.{self_attn_layer_norm, fc1, fc2, final_layer_norm}, ln_post, proj, audio_bos_eos_token;
the sinusoidal table `positional_embedding.positional_embedding` is a non-persistent buffer), so
the checkpoint's `thinker.audio_tower.*` tensors load with strict=True once the prefix is cut.

The forward pass (transformers 5.24):

1. each audio's L mel frames are cut into chunks of 2 * n_window frames (200 = 2 s), the last
   chunk holding the remainder;
2. per chunk: conv1 (k3, pad 1) + GELU, zeroed past the chunk's length, conv2 (k3, stride 2,
   pad 1) + GELU -> (c - 1) // 2 + 1 tokens; sinusoidal positions 0, 1, ... restarting in every
   chunk;
3. the encoder layers (pre-LN, GELU MLP) with attention restricted to the tokens of the same chunk
   (block-diagonal, `omni_kernels.audio_chunk_block_mask` through `block_sparse_attention`, which
   runs its Triton kernel on CUDA and SDPA on CPU; a head_dim the kernel lacks -- not 64/80/128,
   only tiny test configs -- uses SDPA with the same mask, dense);
4. per audio, the tokens of all its chunks in order are averaged in pairs (2i, 2i + 1) (an odd last
   token is dropped), then ln_post and proj -> ((L - 1) // 2 + 1) // 2 tokens (25 per second).

Because of 2-4, a chunk's tokens depend on that chunk's frames only -- except that with an odd
n_window a pooled pair can straddle two chunks (never with the real n_window = 100: a 200-frame
chunk gives 100 tokens, 50 pooled). `AudioEncoderStream` (audio_encoder_stream.py) encodes chunk by chunk (carrying an
unpaired token across chunks if needed) and gives the same tokens as encoding the whole audio.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni_kernels import audio_chunk_block_mask, block_sparse_attention
from omni_kernels.block_mask import audio_chunk_lengths
from omni_kernels.block_sparse_attention import HEAD_DIMS

from ..config import AudioEncoderConfig
from ..layers import Embedding, build_and_adopt

__all__ = ["AudioEncoder", "feat_extract_output_lengths"]


def feat_extract_output_lengths(input_lengths):
    """(lengths after the stride-2 conv, audio tokens) for mel lengths (ints or a tensor) -- the
    encoder's / processor's `_get_feat_extract_output_lengths`."""
    after_cnn = (input_lengths - 1) // 2 + 1
    return after_cnn, (after_cnn - 2) // 2 + 1


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": _quick_gelu,
}


class AudioAttention(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.embed_dim = config.d_model
        self.num_heads = config.encoder_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=True)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=True)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=True)

    def forward(self, hidden_states: torch.Tensor, mask) -> torch.Tensor:
        """mask: a BlockSparseMask (block_sparse_attention, head_dim 64/80/128 -- every published
        model) or, for other head dims (tiny test configs), a dense bool (L, L) mask for SDPA."""
        seq_len = hidden_states.shape[0]

        def heads(x):  # (L, H * D) -> (1, H, L, D), a view with stride 1 in D
            return x.view(seq_len, self.num_heads, self.head_dim).transpose(0, 1).unsqueeze(0)

        q = heads(self.q_proj(hidden_states))
        k = heads(self.k_proj(hidden_states))
        v = heads(self.v_proj(hidden_states))
        if isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        else:
            out = block_sparse_attention(q, k, v, mask, scale=self.scaling)
        return self.out_proj(out[0].transpose(0, 1).reshape(seq_len, self.embed_dim))


class AudioEncoderLayer(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.embed_dim = config.d_model
        self.self_attn = AudioAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.activation_fn = _ACTIVATIONS[config.activation_function]
        self.fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, block_mask) -> torch.Tensor:
        residual = hidden_states
        hidden_states = residual + self.self_attn(self.self_attn_layer_norm(hidden_states), block_mask)
        residual = hidden_states
        hidden_states = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(hidden_states))))
        hidden_states = residual + hidden_states
        if hidden_states.dtype == torch.float16:
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states


class SinusoidsPositionEmbedding(nn.Module):
    def __init__(self, length: int, channels: int, max_timescale: float = 10000):
        super().__init__()
        self.length, self.channels, self.max_timescale = length, channels, max_timescale
        self.register_buffer("positional_embedding", self.compute(), persistent=False)

    def compute(self) -> torch.Tensor:
        # same op sequence as transformers (float64 increment, float32 exp) for identical values;
        # always on the CPU: under a meta-device build, exp on meta would import torch._dynamo
        log_timescale_increment = math.log(self.max_timescale) / (self.channels // 2 - 1)
        inv_timescales = torch.exp(-log_timescale_increment * torch.arange(self.channels // 2, device="cpu").float())
        scaled_time = torch.arange(self.length, device="cpu")[:, None] * inv_timescales[None, :]
        return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)

    def forward(self, seqlen: int) -> torch.Tensor:
        return self.positional_embedding[:seqlen, :]


class AudioEncoder(nn.Module):
    """See the module docstring. `forward` returns (tokens (N, output_dim), counts (num_audios,))."""

    def __init__(self, config: AudioEncoderConfig | None = None):
        super().__init__()
        config = config if config is not None else AudioEncoderConfig()
        if not isinstance(config, AudioEncoderConfig):
            raise ValueError(f"config must be an omni_runtime.config.AudioEncoderConfig, got {type(config).__name__}")
        config.validate("audio_config")
        if config.activation_function not in _ACTIVATIONS:
            raise ValueError(f"audio_config.activation_function {config.activation_function!r} is not supported "
                             f"({', '.join(_ACTIVATIONS)})")
        self.config = config
        embed_dim = config.d_model
        self.num_mel_bins = config.num_mel_bins
        self.n_window = config.n_window
        self.conv1 = nn.Conv1d(self.num_mel_bins, embed_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(embed_dim, embed_dim, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = SinusoidsPositionEmbedding(config.max_source_positions, embed_dim)
        self.audio_bos_eos_token = Embedding(2, config.output_dim)  # in the checkpoint; unused here
        self.layers = nn.ModuleList([AudioEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.ln_post = nn.LayerNorm(embed_dim)
        self.avg_pooler = nn.AvgPool1d(2, stride=2)  # no parameters; pooling is done with indices
        self.proj = nn.Linear(embed_dim, config.output_dim)

    @classmethod
    def from_state_dict(cls, config: AudioEncoderConfig, tensors: Mapping[str, torch.Tensor],
                        prefix: str = "thinker.audio_tower.") -> "AudioEncoder":
        """Build around the given tensors (names with or without `prefix`), adopting them as they
        are (built on the meta device: the weights are never held twice). The sinusoidal position
        table is computed on the weights' device. Missing / unexpected / mis-shaped tensors raise
        ValueError listing them."""
        own = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
        model = build_and_adopt(lambda: cls(config), own, "audio encoder")
        device = model.conv1.weight.device
        model.positional_embedding.positional_embedding = model.positional_embedding.compute().to(device)
        return model

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window

    @staticmethod
    def output_lengths(feature_lens):
        """Audio tokens for mel lengths (ints or a tensor)."""
        return feat_extract_output_lengths(feature_lens)[1]

    # -- inputs -----------------------------------------------------------------------------
    def _inputs(self, input_features, feature_lens, feature_attention_mask):
        """-> (features (num_mel_bins, total) in the weights' dtype, feature_lens int64 (B,))."""
        device = self.conv1.weight.device
        if isinstance(input_features, (list, tuple)):
            if feature_lens is not None or feature_attention_mask is not None:
                raise ValueError("with a list of per-audio mels, do not pass feature_lens / feature_attention_mask")
            if len(input_features) == 0:
                raise ValueError("input_features is an empty list")
            for i, mel in enumerate(input_features):
                self._check_mel(mel, f"input_features[{i}]")
            lens = torch.tensor([int(m.shape[1]) for m in input_features], dtype=torch.int64, device=device)
            feats = torch.cat([m.to(device) for m in input_features], dim=1)
        elif isinstance(input_features, torch.Tensor) and input_features.dim() == 3:
            if feature_attention_mask is None:
                raise ValueError("3-D input_features (B, mel, T) need feature_attention_mask (B, T)")
            mask = torch.as_tensor(feature_attention_mask, device=input_features.device)
            if mask.shape != (input_features.shape[0], input_features.shape[2]):
                raise ValueError(f"feature_attention_mask {tuple(mask.shape)} must be (B, T) = "
                                 f"{(input_features.shape[0], input_features.shape[2])}")
            self._check_mel(input_features[0], "input_features[0]")
            lens = mask.sum(-1).to(device, torch.int64)
            feats = input_features.permute(0, 2, 1)[mask.bool()].permute(1, 0).to(device)
        elif isinstance(input_features, torch.Tensor) and input_features.dim() == 2:
            self._check_mel(input_features, "input_features")
            if feature_attention_mask is not None:
                raise ValueError("feature_attention_mask goes with 3-D (B, mel, T) input_features")
            total = input_features.shape[1]
            if feature_lens is None:
                feature_lens = [total]
            lens = torch.as_tensor(feature_lens, device=device).to(torch.int64).reshape(-1)
            if int(lens.sum()) != total:
                raise ValueError(f"feature_lens {lens.tolist()} must sum to the number of frames ({total})")
            feats = input_features.to(device)
        else:
            raise ValueError("input_features must be a (mel, frames) tensor, a list of them, or (B, mel, T) with "
                             f"feature_attention_mask; got {type(input_features).__name__}"
                             + (f" of shape {tuple(input_features.shape)}" if isinstance(input_features, torch.Tensor)
                                else ""))
        if lens.numel() == 0 or bool((lens <= 0).any()):
            raise ValueError(f"every audio needs at least one mel frame, got lengths {lens.tolist()}")
        return feats.to(self.conv1.weight.dtype), lens

    def _check_mel(self, mel, name):
        if not isinstance(mel, torch.Tensor) or mel.dim() != 2:
            raise ValueError(f"{name} must be a (num_mel_bins, frames) tensor, got "
                             f"{tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__}")
        if mel.shape[0] != self.num_mel_bins:
            raise ValueError(f"{name} has {mel.shape[0]} mel bins, the encoder expects {self.num_mel_bins}")
        if mel.shape[1] == 0:
            raise ValueError(f"{name} has no frames")
        if not mel.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got {mel.dtype}")

    # -- compute ----------------------------------------------------------------------------
    def _embed(self, feats: torch.Tensor, chunk_lengths: torch.Tensor) -> torch.Tensor:
        """conv1/conv2 + GELU per chunk, positions restarting per chunk -> (tokens, d_model)."""
        chunks = feats.T.split(chunk_lengths.tolist(), dim=0)
        if len(chunks) == 1:
            padded = chunks[0].T[None]
        else:
            padded = nn.utils.rnn.pad_sequence(chunks, batch_first=True).transpose(1, 2)  # (C, mel, T)
        steps = torch.arange(padded.shape[2], device=padded.device)
        padded_mask = (steps < chunk_lengths[:, None]).unsqueeze(1).to(padded.dtype)
        x = F.gelu(self.conv1(padded)) * padded_mask
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (C, T', d)
        x = x + self.positional_embedding.positional_embedding[:x.shape[1], :].unsqueeze(0).to(x.dtype)
        after = (chunk_lengths - 1) // 2 + 1
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < after[:, None]
        return x[valid]  # chunk-major, as transformers' index_select over the padded grid

    def _hidden(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Token states after the encoder layers, (sum of per-chunk tokens, d_model)."""
        chunk_lengths = audio_chunk_lengths(lens, self.n_window)
        hidden = self._embed(feats, chunk_lengths)
        block_mask, cu_seqlens = audio_chunk_block_mask(lens, self.n_window)
        if self.config.head_dim not in HEAD_DIMS:  # the kernel's head dims; the same mask, dense
            seg = torch.repeat_interleave(torch.arange(cu_seqlens.numel() - 1, device=lens.device),
                                          cu_seqlens.diff().long())
            block_mask = seg[:, None] == seg[None, :]
        for layer in self.layers:
            hidden = layer(hidden, block_mask)
        return hidden

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln_post(pooled))

    def forward(self, input_features, feature_lens=None, *, feature_attention_mask=None):
        """input_features: (num_mel_bins, total_frames) with feature_lens (per-audio frames;
        default: one audio), or a list of (num_mel_bins, L_i) mels, or (B, num_mel_bins, T) with
        feature_attention_mask (B, T) as the processor returns them.
        Returns (tokens (sum counts, output_dim), counts int64 (num_audios,))."""
        feats, lens = self._inputs(input_features, feature_lens, feature_attention_mask)
        hidden = self._hidden(feats, lens)
        after, counts = feat_extract_output_lengths(lens)
        offsets = F.pad(after[:-1].cumsum(0), (1, 0))
        starts = torch.repeat_interleave(offsets, counts)
        local = torch.arange(int(counts.sum()), device=lens.device) \
            - torch.repeat_interleave(F.pad(counts[:-1].cumsum(0), (1, 0)), counts)
        first = starts + 2 * local
        pooled = (hidden[first] + hidden[first + 1]) / 2
        return self._project(pooled), counts

    # -- streaming --------------------------------------------------------------------------
    def encode_chunk(self, mel_chunk: torch.Tensor) -> torch.Tensor:
        """Tokens of one chunk of at most 2 * n_window frames: a full chunk, or the last, shorter
        chunk of an audio. Equal to the matching slice of `forward` on the whole audio when
        n_window is even (the real models: 200 frames -> 50 tokens; a last chunk of c frames ->
        ((c - 1) // 2 + 1) // 2 tokens). With an odd n_window pooled pairs straddle chunks: use
        `stream()`. Returns (tokens, output_dim)."""
        self._check_mel(mel_chunk, "mel_chunk")
        if mel_chunk.shape[1] > self.chunk_frames:
            raise ValueError(f"mel_chunk has {mel_chunk.shape[1]} frames, a chunk holds at most {self.chunk_frames}")
        if self.n_window % 2:
            raise ValueError(f"encode_chunk needs an even n_window (got {self.n_window}): pooled token pairs "
                             f"straddle chunks; use AudioEncoder.stream()")
        tokens, _ = self.forward(mel_chunk)
        return tokens

    def stream(self):
        """An `AudioEncoderStream` over this encoder (chunks encoded as they complete)."""
        from .audio_encoder_stream import AudioEncoderStream

        return AudioEncoderStream(self)
