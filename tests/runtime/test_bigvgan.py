"""BigVGAN vocoder (omni_runtime.models.bigvgan) against transformers' Qwen2_5OmniToken2WavBigVGANModel:
the tiny checkpoints loaded by both, transformers-built configs, odd lengths, batches, bad inputs,
and the receptive field (exact, by NaN propagation; and windows of the mel decoding exactly)."""
import pytest
import torch

from omni_runtime.config import BigVGANConfig
from omni_runtime.io import layout
from omni_runtime.io.checkpoint import load_tensors, open_checkpoint
from omni_runtime.models.bigvgan import BIGVGAN_PREFIX, BigVGAN, kaiser_sinc_filter1d, receptive_field_frames

LENGTHS = (1, 2, 7, 48, 97)
TOL = 1e-4  # max abs error / max abs reference


def log_mel(batch, frames, seed=0, mel_dim=80):
    """Natural-log mel amplitudes like the DiT's output, with a few values past both clamps of the
    mel normalisation (below the -115 dB floor, above 0 dB)."""
    g = torch.Generator().manual_seed(seed)
    mel = -4.0 + 1.5 * torch.randn(batch, mel_dim, frames, generator=g)
    mel[:, :3, ::5] = -20.0
    mel[:, -2:, ::7] = 4.0
    return mel


def rel_max_err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def ours_from_checkpoint(path):
    ckpt = open_checkpoint(path)
    tensors = load_tensors(ckpt, prefix=BIGVGAN_PREFIX)
    return BigVGAN.from_state_dict(ckpt.config.token2wav_config.bigvgan_config, tensors)


@pytest.fixture(scope="module", params=["tiny", "7b-ratios"])
def checkpoint_pair(request, hf, tiny_ckpt, tiny_7b_ckpt):
    path = tiny_ckpt if request.param == "tiny" else tiny_7b_ckpt
    model = hf.Qwen2_5OmniForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)
    return ours_from_checkpoint(path), model.token2wav.code2wav_bigvgan_model.eval()


@pytest.fixture(scope="module")
def tiny_vocoder(tiny_ckpt):
    return ours_from_checkpoint(tiny_ckpt)


def test_tiny_checkpoints_match_transformers(checkpoint_pair, one_thread):
    ours, ref_model = checkpoint_pair
    hop = ours.hop_length
    for i, frames in enumerate(LENGTHS):
        mel = log_mel(2, frames, seed=i)
        with torch.no_grad():
            ref = ref_model(mel).reshape(2, -1)  # transformers squeezes the batch dim; we keep it
            wave = ours(mel)
        assert wave.shape == (2, frames * hop) and wave.dtype == torch.float32
        assert rel_max_err(wave, ref) < TOL, frames
        assert float(wave.abs().max()) <= 1.0


@pytest.mark.parametrize("variant", ["small", "7b-ratios"])
def test_transformers_configs_match(variant, hf, hf_tiny_config_kwargs, one_thread):
    kwargs = hf_tiny_config_kwargs(variant)["token2wav_config"]["bigvgan_config"]
    torch.manual_seed(0)
    ref_model = hf.Qwen2_5OmniToken2WavBigVGANModel(hf.Qwen2_5OmniBigVGANConfig(**kwargs)).eval()
    state = ref_model.state_dict()
    g = torch.Generator().manual_seed(1)
    for name, t in state.items():  # transformers starts SnakeBeta at alpha = beta = 0: exercise exp()
        if name.endswith((".alpha", ".beta")):
            state[name] = 0.1 * torch.randn(t.shape, generator=g)
    ref_model.load_state_dict(state)
    ours = BigVGAN.from_state_dict(BigVGANConfig.from_dict(kwargs), state)
    for i, frames in enumerate(LENGTHS):
        mel = log_mel(2, frames, seed=10 + i)
        with torch.no_grad():
            ref = ref_model(mel).reshape(2, -1)
            wave = ours(mel)
        assert wave.shape == ref.shape == (2, frames * ours.hop_length)
        assert rel_max_err(wave, ref) < TOL, frames


def test_batch_rows_are_independent(tiny_vocoder, one_thread):
    mel = log_mel(2, 31, seed=3)
    with torch.no_grad():
        both = tiny_vocoder(mel)
        rows = [tiny_vocoder(mel[i:i + 1])[0] for i in range(2)]
    for i in range(2):
        assert rel_max_err(both[i], rows[i]) < 1e-5


def test_filter_is_transformers(hf):
    from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as ref

    for args in [(0.25, 0.3, 12), (0.5 / 3, 0.2, 17), (0.4, 0.05, 6), (0.1, 0.01, 9)]:  # beta's three branches
        assert torch.equal(kaiser_sinc_filter1d(*args), ref.kaiser_sinc_filter1d(*args))
    with pytest.raises(ValueError, match="cutoff"):
        kaiser_sinc_filter1d(0.0, 0.3, 12)


# -- the receptive field ---------------------------------------------------------------------------

def nan_frames(model, frames, j):
    """Output frames with NaN samples when the normalised mel's frame j is NaN (injected behind the
    input check): exactly the samples whose computation reads frame j, padding reads included."""
    hook = model.conv_pre.register_forward_pre_hook(
        lambda _, args: (args[0].index_fill(-1, torch.tensor([j]), float("nan")),))
    try:
        with torch.no_grad():
            wave = model(log_mel(1, frames, seed=5))[0]
    finally:
        hook.remove()
    return torch.isnan(wave.view(frames, model.hop_length)).any(1).nonzero().flatten().tolist()


@pytest.mark.parametrize("variant", ["checkpoint", "7b-ratios"])
def test_receptive_field_is_exact(variant, tiny_vocoder, hf_tiny_config_kwargs, one_thread):
    if variant == "checkpoint":
        model = tiny_vocoder
    else:
        cfg = BigVGANConfig.from_dict(hf_tiny_config_kwargs("7b-ratios")["token2wav_config"]["bigvgan_config"])
        g = torch.Generator().manual_seed(0)
        model = BigVGAN.from_state_dict(cfg, {k: 0.1 * torch.randn(s, generator=g)
                                              for k, s in layout.bigvgan_tensors(cfg).items()})
    left, right = model.receptive_field_frames()
    assert (left, right) == receptive_field_frames(model.config)
    frames, j = left + right + 30, left + right // 2 + 7
    # Frame f reads frames f - left .. f + right, so frame j reaches frames j - right .. j + left.
    assert nan_frames(model, frames, j) == list(range(j - right, j + left + 1))
    # Near the edges the reach is cut off by the ends of the mel, not widened.
    assert nan_frames(model, frames, 2) == list(range(0, 2 + left + 1))


def test_receptive_field_perturbation_and_windows(tiny_vocoder, one_thread):
    model, hop = tiny_vocoder, tiny_vocoder.hop_length
    left, right = model.receptive_field_frames()
    assert (left, right) == (34, 34)  # the 7B's geometry: rates 5,3,2,2,2,2, resblocks 3/7/11 x 1,3,5
    frames, j = 110, 55
    mel = log_mel(1, frames, seed=7)
    bumped = mel.clone()
    bumped[..., j] += 0.5
    with torch.no_grad():
        whole = model(mel)[0]
        changed = (model(bumped)[0] != whole).view(frames, hop).any(1).nonzero().flatten()
        assert j - right <= int(changed.min()) and int(changed.max()) <= j + left
        assert int(changed.min()) < j - 10 and int(changed.max()) > j + 10  # it does reach out
        # A window holding frames f - left .. f + right decodes frame f as the whole mel does.
        for f in (left, 50, frames - 1 - right):
            window = model(mel[..., f - left:f + right + 1])[0]
            got, ref = window[left * hop:(left + 1) * hop], whole[f * hop:(f + 1) * hop]
            assert float((got - ref).abs().max()) < 1e-5 * float(whole.abs().max()) + 1e-7


# -- bad inputs --------------------------------------------------------------------------------------

def test_bad_mels(tiny_vocoder):
    good = log_mel(1, 4)
    bad = {
        "mel must be a": [good[0], good[None], good.tolist()],
        "mel bins": [good[:, :79]],
        "empty": [good[..., :0], good[:0]],
        "float": [good.long()],
        "NaN or Inf": [good.index_fill(-1, torch.tensor([2]), float("nan")),
                       good.index_fill(-1, torch.tensor([0]), float("inf"))],
    }
    for message, mels in bad.items():
        for mel in mels:
            with pytest.raises(ValueError, match=message):
                tiny_vocoder(mel)


def test_from_state_dict_names_and_mismatches(tiny_ckpt):
    ckpt = open_checkpoint(tiny_ckpt)
    cfg = ckpt.config.token2wav_config.bigvgan_config
    full = load_tensors(ckpt, prefix=BIGVGAN_PREFIX)
    stripped = {k[len(BIGVGAN_PREFIX):]: v for k, v in full.items()}
    mel = log_mel(1, 3)
    with torch.no_grad():
        ref = BigVGAN.from_state_dict(cfg, full)(mel)
        assert torch.equal(BigVGAN.from_state_dict(cfg, stripped)(mel), ref)
        # A checkpoint carrying the resampling filters: they are recomputed, not read.
        extra = dict(stripped, **{"resblocks.0.activations.0.upsample.filter": torch.zeros(1, 1, 12)})
        assert torch.equal(BigVGAN.from_state_dict(cfg, extra)(mel), ref)
        half = {k: v.to(torch.bfloat16) for k, v in stripped.items()}
        assert BigVGAN.from_state_dict(cfg, half).conv_pre.weight.dtype == torch.float32
    broken = dict(stripped)
    del broken["conv_post.weight"]
    broken["conv_pre.weight"] = broken["conv_pre.weight"][:, :, :5]
    broken["conv_post.bias"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        BigVGAN.from_state_dict(cfg, broken)
    for text in ("missing (1): conv_post.weight", "unexpected (1): conv_post.bias", "conv_pre.weight"):
        assert text in str(err.value)


def test_bad_configs():
    with pytest.raises(ValueError, match="BigVGANConfig"):
        BigVGAN({"mel_dim": 80})
    with pytest.raises(ValueError, match="must be even"):
        BigVGAN(BigVGANConfig(upsample_initial_channel=16, upsample_rates=[2, 2], upsample_kernel_sizes=[5, 4]))
    with pytest.raises(ValueError, match="dilation"):
        BigVGAN(BigVGANConfig(upsample_initial_channel=16, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                              resblock_kernel_sizes=[4], resblock_dilation_sizes=[[1, 2, 3]]))
    with pytest.raises(ValueError, match="upsample_initial_channel"):
        receptive_field_frames(BigVGANConfig(upsample_initial_channel=6, upsample_rates=[2, 2],
                                             upsample_kernel_sizes=[4, 4]))
