"""omni_runtime.models.audio_encoder.AudioEncoder vs transformers' Qwen2_5OmniAudioEncoder on random tiny
weights (fp32, within 1e-5 relative error), through the torch path and the Triton kernel
(interpreter); chunk-by-chunk streaming vs all at once."""
import dataclasses

import numpy as np
import pytest
import torch
from helpers import rel_err

import omni_kernels
from omni_runtime.media.mel import log_mel_features
from omni_runtime.models.audio_encoder import AudioEncoder, feat_extract_output_lengths
from omni_runtime.config import AudioEncoderConfig

TOL = 1e-5
LENGTHS = [100, 237, 400, 710]  # mel frames: 1 s, 2.37 s, 4 s, 7.1 s


def tiny_config(**overrides):
    cfg = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256, d_model=128,
               n_window=100, output_dim=96, max_source_positions=1500)
    cfg.update(overrides)
    return cfg


def build_pair(attn="sdpa", seed=0, **overrides):
    """(transformers encoder, ours) with the same random weights (larger than the default init so
    every part of the network matters)."""
    from transformers import Qwen2_5OmniAudioEncoderConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    hf_cfg = Qwen2_5OmniAudioEncoderConfig(**tiny_config(**overrides))
    hf_cfg._attn_implementation = attn
    torch.manual_seed(seed)
    ref = Qwen2_5OmniAudioEncoder(hf_cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() > 1:
                p.copy_(noise * 0.5 / p.shape[-1] ** 0.5)
            elif name.endswith("weight"):  # layer norms
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    ours = AudioEncoder(AudioEncoderConfig.from_dict(hf_cfg.to_dict())).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def mels(lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(128, n, generator=gen) for n in lengths]


def reference_batch(ref, mel_list):
    """As Qwen2_5OmniThinkerModel.get_audio_features: a padded batch + feature_attention_mask."""
    t = max(m.shape[1] for m in mel_list) + 13
    batch = torch.full((len(mel_list), 128, t), 7.0)  # junk in the padding must not matter
    mask = torch.zeros(len(mel_list), t, dtype=torch.long)
    for i, m in enumerate(mel_list):
        batch[i, :, :m.shape[1]] = m
        mask[i, :m.shape[1]] = 1
    feature_lens = mask.sum(1)
    flat = batch.permute(0, 2, 1)[mask.bool()].permute(1, 0)
    with torch.no_grad():
        out = ref(flat, feature_lens=feature_lens, aftercnn_lens=feat_extract_output_lengths(feature_lens)[0])
    return out.last_hidden_state, batch, mask


def test_parameter_names_equal_transformers(pair):
    ref, ours = pair
    assert list(ours.state_dict()) == list(ref.state_dict())
    for name, t in ref.state_dict().items():
        assert ours.state_dict()[name].shape == t.shape
    # checkpoint layout: thinker.audio_tower.* with the prefix cut, strict
    ckpt = {f"thinker.audio_tower.{k}": v for k, v in ref.state_dict().items()}
    ckpt["thinker.model.embed_tokens.weight"] = torch.zeros(1)
    fresh = AudioEncoder(ours.config)
    fresh.load_state_dict({k[len("thinker.audio_tower."):]: v for k, v in ckpt.items()
                           if k.startswith("thinker.audio_tower.")}, strict=True)
    assert torch.equal(fresh.positional_embedding.positional_embedding, ref.positional_embedding.positional_embedding)


def test_parity_torch_path(pair):
    ref, ours = pair
    mel_list = mels(LENGTHS)
    expected, batch, mask = reference_batch(ref, mel_list)
    counts_expected = [((n - 1) // 2 + 1) // 2 for n in LENGTHS]
    assert expected.shape[0] == sum(counts_expected)
    with torch.no_grad():
        for out, counts in (ours(mel_list),
                            ours(batch, feature_attention_mask=mask),
                            ours(torch.cat(mel_list, 1), torch.tensor(LENGTHS))):
            assert counts.tolist() == counts_expected
            assert out.shape == expected.shape
            assert rel_err(out, expected) <= TOL
        # one audio at a time == its slice of the batch
        offset = 0
        for m, c in zip(mel_list, counts_expected):
            single, _ = ours(m)
            assert rel_err(single, expected[offset:offset + c]) <= TOL
            offset += c


def test_parity_triton_path_interpreter(pair):
    ref, ours = pair
    mel_list = mels([100, 237, 61])  # small: the interpreter is slow
    expected, _, _ = reference_batch(ref, mel_list)
    with torch.no_grad(), omni_kernels.use_backend("triton"):
        out, counts = ours(mel_list)
    assert counts.tolist() == [25, 59, 15]
    assert rel_err(out, expected) <= TOL


@pytest.mark.parametrize("n_window,attn", [(5, "eager"), (8, "sdpa")])
def test_parity_other_windows(n_window, attn):
    """n_window 5: 10-frame chunks -> 5 tokens, so pooled pairs straddle chunks; n_window 8: many
    chunks per audio, lengths around the chunk edges."""
    ref, ours = build_pair(attn=attn, seed=3, n_window=n_window, encoder_layers=1)
    mel_list = mels([1, 2, 3, 9, 10, 11, 57], seed=4)
    expected, _, _ = reference_batch(ref, mel_list)
    with torch.no_grad():
        out, counts = ours(mel_list)
    assert counts.tolist() == [((n - 1) // 2 + 1) // 2 for n in [1, 2, 3, 9, 10, 11, 57]]
    assert rel_err(out, expected) <= TOL


def test_parity_head_dim_without_kernel():
    """head_dim 8 (d_model 16, 2 heads: the repo's "small" tiny checkpoint) is not a kernel head dim:
    the same block-diagonal mask goes through SDPA densely."""
    ref, ours = build_pair(attn="sdpa", seed=10, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=32,
                           output_dim=32, n_window=100)
    mel_list = mels([100, 237, 410], seed=11)
    expected, _, _ = reference_batch(ref, mel_list)
    with torch.no_grad():
        out, _ = ours(mel_list)
        stream = ours.stream()
        streamed = torch.cat([stream.push(mel_list[2]), stream.finish()])
    assert rel_err(out, expected) <= TOL
    assert rel_err(streamed, out[-streamed.shape[0]:]) <= TOL


def test_streaming_chunks_equal_all_at_once(pair):
    _, ours = pair
    mel = mels([710], seed=5)[0]  # 3 full 200-frame chunks + 110 frames
    with torch.no_grad():
        whole, counts = ours(mel)
        per_chunk = [ours.encode_chunk(mel[:, s:s + 200]) for s in range(0, 710, 200)]
        assert [c.shape[0] for c in per_chunk] == [50, 50, 50, 27]
        assert rel_err(torch.cat(per_chunk), whole) <= TOL
        # arbitrary piece sizes through the stream object
        stream = ours.stream()
        outs = [stream.push(mel[:, s:e]) for s, e in ((0, 7), (7, 7), (7, 450), (450, 600), (600, 709), (709, 710))]
        assert [o.shape[0] for o in outs] == [0, 0, 100, 50, 0, 0]
        outs.append(stream.finish())
        assert rel_err(torch.cat(outs), whole) <= TOL
        assert stream.tokens == int(counts) == 177
        # short last chunks: 1 frame -> 1 conv token -> 0 tokens; 2-3 frames -> 2 -> 1
        for tail in (1, 2, 3, 4, 199):
            m = mel[:, :200 + tail]
            whole, counts = ours(m)
            chunks = torch.cat([ours.encode_chunk(m[:, :200]), ours.encode_chunk(m[:, 200:])])
            assert chunks.shape[0] == int(counts) == 50 + ((tail - 1) // 2 + 1) // 2
            assert rel_err(chunks, whole) <= TOL


def test_streaming_odd_window_carries_unpaired_token():
    _, ours = build_pair(attn="eager", seed=6, n_window=5, encoder_layers=1)
    mel = mels([47], seed=7)[0]
    with torch.no_grad():
        whole, counts = ours(mel)
        stream = ours.stream()
        outs = [stream.push(mel[:, s:s + 3]) for s in range(0, 47, 3)] + [stream.finish()]
        assert rel_err(torch.cat(outs), whole) <= TOL
        with pytest.raises(ValueError, match="even n_window"):
            ours.encode_chunk(mel[:, :10])


def test_end_to_end_waveform_features_encoder(pair):
    """waveform -> our log-mel -> our encoder == WhisperFeatureExtractor -> transformers encoder."""
    from transformers import WhisperFeatureExtractor

    ref, ours = pair
    rng = np.random.default_rng(8)
    wavs = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000, 37920, 5000)]
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    inputs = fe(wavs, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    mask = inputs["attention_mask"]
    flat = inputs["input_features"].permute(0, 2, 1)[mask.bool()].permute(1, 0)
    with torch.no_grad():
        expected = ref(flat, feature_lens=mask.sum(1)).last_hidden_state
        out, counts = ours([log_mel_features(w) for w in wavs])
    assert counts.tolist() == [25, 59, 8]
    assert rel_err(out, expected) <= TOL


def test_low_precision_smoke(pair):
    _, ours = pair
    mel_list = mels([237, 100], seed=9)
    with torch.no_grad():
        ref32, _ = ours(mel_list)
        low = AudioEncoder(ours.config).to(torch.bfloat16)
        low.load_state_dict(ours.state_dict())
        out, _ = low(mel_list)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref32) < 3e-2


def test_config_from_dict_and_defaults():
    """The encoder takes omni_runtime.config's AudioEncoderConfig (the one config source)."""
    from transformers import Qwen2_5OmniAudioEncoderConfig

    hf = Qwen2_5OmniAudioEncoderConfig()
    ours = AudioEncoderConfig()
    for f in dataclasses.fields(AudioEncoderConfig):
        if f.name != "extra":
            assert getattr(ours, f.name) == getattr(hf, f.name), f.name
    published = {  # thinker_config.audio_config of Qwen2.5-Omni-7B's config.json
        "activation_dropout": 0.0, "activation_function": "gelu", "attention_dropout": 0.0, "d_model": 1280,
        "dropout": 0.0, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "encoder_layerdrop": 0.0,
        "encoder_layers": 32, "init_std": 0.02, "max_source_positions": 1500, "model_type": "qwen2_5_omni_audio_encoder",
        "n_window": 100, "num_hidden_layers": 32, "num_mel_bins": 128, "output_dim": 3584, "scale_embedding": False,
        "torch_dtype": "bfloat16"}
    cfg = AudioEncoderConfig.from_dict(published)
    assert dataclasses.replace(cfg, extra={}) == ours and cfg.head_dim == 64 and cfg.chunk_frames == 200
    assert AudioEncoderConfig.from_dict({"hidden_size": 256, "num_attention_heads": 4}).d_model == 256


def test_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="divisible"):
        AudioEncoder(AudioEncoderConfig(d_model=130, encoder_attention_heads=4))
    with pytest.raises(ValueError, match="n_window"):
        AudioEncoder(AudioEncoderConfig(n_window=0))
    with pytest.raises(ValueError, match="n_window"):
        AudioEncoderConfig.from_dict({"n_window": 2000})
    with pytest.raises(ValueError, match="activation"):
        AudioEncoder(AudioEncoderConfig(activation_function="mish"))
    with pytest.raises(ValueError, match="expected an object"):
        AudioEncoderConfig.from_dict([1])
    with pytest.raises(ValueError, match="AudioEncoderConfig"):
        AudioEncoder({"d_model": 128})
    mel = torch.randn(128, 50)
    with torch.no_grad():
        with pytest.raises(ValueError, match="mel bins"):
            ours(torch.randn(80, 50))
        with pytest.raises(ValueError, match="sum to"):
            ours(mel, torch.tensor([20, 20]))
        with pytest.raises(ValueError, match="at least one mel frame"):
            ours(mel, torch.tensor([50, 0]))
        with pytest.raises(ValueError, match="no frames"):
            ours([mel, torch.randn(128, 0)])
        with pytest.raises(ValueError, match="empty list"):
            ours([])
        with pytest.raises(ValueError, match="feature_attention_mask"):
            ours(mel[None])
        with pytest.raises(ValueError, match="feature_attention_mask"):
            ours(mel[None], feature_attention_mask=torch.ones(1, 49))
        with pytest.raises(ValueError, match="input_features must be"):
            ours(np.zeros((128, 5)))
        with pytest.raises(ValueError, match="at most 200"):
            ours.encode_chunk(torch.randn(128, 201))
        stream = ours.stream()
        with pytest.raises(ValueError, match="no mel frames"):
            stream.finish()
        stream = ours.stream()
        with pytest.raises(ValueError, match="mel_frames"):
            stream.push(torch.randn(64, 10))
