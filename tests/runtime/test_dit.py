"""The Token2Wav DiT and its flow matching against transformers 5.x: ECAPA, the sampled mel for the
same codes / speaker / initial noise (within 1e-4 relative: max abs error / max abs reference) on
the tiny and 7b-ratios checkpoints and on transformers-built configs (another rope_theta, ff_mult 3,
res2net scale 4), odd code counts (partial blocks), guidance on and off; the RK4 solver; the
block-wise initial noise; bad settings.

The DiT weights are re-drawn with O(1) mixing (linears ~ N(0, 1/fan_in)) before the comparisons:
with the checkpoint's std-0.02 linears the attention barely moves the output, and a wrong window or
rotary would hide under 1e-4 (test_parity_is_sensitive shows it no longer can)."""
import dataclasses
import json
import math

import pytest
import torch

from omni_runtime.config import DiTConfig
from omni_runtime.io.checkpoint import load_tensors, open_checkpoint
from omni_runtime.models.dit import DIT_PREFIX, DiT
from omni_runtime.models.ecapa import ECAPA, min_reference_frames
from omni_runtime.token2wav.flow import (FlowSampler, Schedule, evaluation_times, initial_noise, rk4_integrate,
                                         time_grid)

TOL = 1e-4


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def strong_mixing(tensors: dict, seed: int = 0) -> dict:
    """DiT tensors with every linear ~ N(0, 1/fan_in) and the codec table ~ N(0, 1); ECAPA kept."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in sorted(tensors.items()):
        if "spk_encoder" not in name and name.endswith("codec_embed.weight"):
            t = torch.randn(t.shape, generator=g)
        elif "spk_encoder" not in name and t.dim() == 2:
            t = torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1])
        out[name] = t
    return out


def hf_token2wav(hf, token2wav_config: dict):
    return hf.Qwen2_5OmniToken2WavModel(hf.Qwen2_5OmniToken2WavConfig(**token2wav_config)).eval()


@pytest.fixture(scope="module")
def pairs(hf, tiny_ckpt, tiny_7b_ckpt):
    """preset -> (our DiT, transformers' DiT, speaker) on the same strong-mixing weights."""
    out = {}
    for preset, path in (("tiny", tiny_ckpt), ("7b-ratios", tiny_7b_ckpt)):
        ckpt = open_checkpoint(path)
        tensors = strong_mixing(load_tensors(ckpt, prefix=DIT_PREFIX, dtype=torch.float32, strip_prefix=True))
        ours = DiT.from_state_dict(ckpt.config.token2wav_config.dit_config, tensors)
        theirs = hf_token2wav(hf, json.loads((path / "config.json").read_text())["token2wav_config"]).code2wav_dit_model
        theirs.load_state_dict(tensors, strict=True)
        out[preset] = (ours, theirs, ckpt.speaker("Chelsie"))
    return out


def ours_mel(dit, codes, cond, ref_mel, noise, **schedule):
    sampler, s = FlowSampler(dit), Schedule(**schedule)
    with torch.inference_mode():
        return sampler.sample(codes, sampler.speaker_condition(ref_mel, cond, s), noise, s).transpose(1, 2)


def compare(ours, theirs, cond, ref_mel, n_codes, guidance, seed=0, **schedule):
    codes = torch.randint(0, ours.config.num_embeds + 1, (1, n_codes), generator=torch.Generator().manual_seed(seed))
    frames = n_codes * ours.config.repeats
    torch.manual_seed(seed)
    noise = torch.randn(1, frames, ours.config.mel_dim)
    torch.manual_seed(seed)  # transformers' sample draws the same randn first
    ref = theirs.sample(cond, ref_mel, codes, guidance_scale=guidance, **schedule)
    mine = ours_mel(ours, codes[0], cond, ref_mel, noise, guidance_scale=guidance, **schedule)
    assert mine.shape == ref.shape == (1, ours.config.mel_dim, frames)
    return rel(mine, ref)


def test_ecapa_matches_transformers(one_thread, pairs):
    ours, theirs, speaker = pairs["7b-ratios"]
    ref_mel = torch.cat([speaker.ref_mel, -4 + torch.randn_like(speaker.ref_mel)])
    with torch.no_grad():
        assert rel(ours.input_embed.spk_encoder(ref_mel), theirs.input_embed.spk_encoder(ref_mel)) < 1e-5


CASES = [("tiny", n, 0.5) for n in (1, 11, 12, 13, 37, 50)] + [("tiny", n, 0.0) for n in (1, 13, 50)] + \
        [("7b-ratios", n, 0.5) for n in (1, 12, 37)] + [("7b-ratios", 11, 0.0)]


@pytest.mark.parametrize("preset,n_codes,guidance", CASES)
def test_mel_matches_transformers(one_thread, pairs, preset, n_codes, guidance):
    ours, theirs, speaker = pairs[preset]
    assert compare(ours, theirs, speaker.cond, speaker.ref_mel, n_codes, guidance) < TOL


def test_mel_matches_transformers_other_schedule(one_thread, pairs):
    ours, theirs, speaker = pairs["tiny"]
    err = compare(ours, theirs, speaker.cond, speaker.ref_mel, 25, 1.5, num_steps=5, sway_coefficient=0.3)
    assert err < TOL


@pytest.mark.parametrize("variant,rope_theta", [("small", 500.0), ("7b-ratios", None)])
def test_mel_matches_transformers_built_configs(one_thread, hf, hf_tiny_config_kwargs, variant, rope_theta):
    kw = hf_tiny_config_kwargs(variant)["token2wav_config"]
    if rope_theta is not None:
        kw["dit_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    torch.manual_seed(0)
    theirs = hf_token2wav(hf, kw).code2wav_dit_model
    tensors = strong_mixing(theirs.state_dict())
    theirs.load_state_dict(tensors)
    config = DiTConfig.from_dict(theirs.config.to_dict())
    assert rope_theta is None or config.rope_parameters.rope_theta == rope_theta
    ours = DiT.from_state_dict(config, {DIT_PREFIX + k: v for k, v in tensors.items()})
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, config.enc_emb_dim, generator=g)
    ref_mel = -4 + torch.randn(1, 40, config.mel_dim, generator=g)
    for n_codes, guidance in ((13, 0.5), (37, 0.0)):
        assert compare(ours, theirs, cond, ref_mel, n_codes, guidance) < TOL


def test_parity_is_sensitive(one_thread, pairs, tiny_ckpt):
    """Without the look-back / look-ahead windows (or with another rope_theta) the same weights miss
    transformers by far more than TOL: the comparisons above do see the attention."""
    ours, theirs, speaker = pairs["tiny"]
    tensors = {k: v for k, v in ours.state_dict().items()}
    for change in ({"look_backward_layers": [], "look_ahead_layers": []},
                   {"rope_parameters": dataclasses.replace(ours.config.rope_parameters, rope_theta=100.0)}):
        other = DiT.from_state_dict(dataclasses.replace(ours.config, **change), tensors)
        assert compare(other, theirs, speaker.cond, speaker.ref_mel, 37, 0.5) > 100 * TOL, change


def test_rk4_matches_transformers_solver(hf):
    """36 evaluations at transformers' time points, the same final state (a toy ODE)."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    grid = time_grid(10, -1.0)
    times = evaluation_times(grid)
    x0 = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    seen = []

    def theirs_f(t, x):
        seen.append(float(t))
        return torch.sin(3 * t) - x * t

    ref = RungeKutta4ODESolver(theirs_f, x0).integrate(grid)[-1]
    calls = []

    def ours_f(i, x):
        calls.append(i)
        return theirs_f(times[i], x)

    out = rk4_integrate(ours_f, x0, grid)
    assert calls == list(range(36)) and len(seen) == 72
    assert seen[:36] == seen[36:]  # the same time points, in the same order
    assert torch.equal(out, ref)


def test_modulation_is_cached_per_grid(one_thread, pairs):
    sampler = FlowSampler(pairs["tiny"][0])
    a = sampler.grid_and_modulation(Schedule())
    assert sampler.grid_and_modulation(Schedule(guidance_scale=0.0)) is a  # guidance does not change it
    b = sampler.grid_and_modulation(Schedule(num_steps=6))
    assert len(a[1]) == 36 and len(b[1]) == 20 and Schedule().num_evaluations == 36


def test_initial_noise_is_window_independent():
    whole = initial_noise(7, 0, 130, 80)
    assert whole.shape == (1, 130, 80)
    for start, n in ((0, 1), (5, 30), (24, 24), (23, 2), (100, 30)):
        assert torch.equal(initial_noise(7, start, n, 80), whole[:, start:start + n])
    assert not torch.equal(initial_noise(8, 0, 130, 80), whole)
    assert not torch.equal(whole[:, :24], whole[:, 24:48])  # every block has its own numbers
    assert abs(float(whole.std()) - 1) < 0.05
    with pytest.raises(ValueError, match="num_frames"):
        initial_noise(0, 0, 0, 80)
    with pytest.raises(ValueError, match="start_frame"):
        initial_noise(0, -1, 4, 80)
    with pytest.raises(ValueError, match="seed"):
        initial_noise(1.5, 0, 4, 80)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=1), "num_steps"), (dict(num_steps=2.0), "num_steps"), (dict(guidance_scale=-0.1), "guidance"),
    (dict(guidance_scale=float("nan")), "guidance"), (dict(sway_coefficient=float("inf")), "sway"),
    (dict(sway_coefficient=-3.0), "not strictly increasing"),
])
def test_bad_schedule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_no_sway_and_no_guidance_schedules():
    assert torch.equal(time_grid(5, None), torch.linspace(0, 1, 5))
    assert not Schedule(guidance_scale=0.0).cfg and not Schedule(guidance_scale=9e-6).cfg and Schedule().cfg


def test_from_state_dict_names(tiny_ckpt):
    ckpt = open_checkpoint(tiny_ckpt)
    config = ckpt.config.token2wav_config.dit_config
    full = load_tensors(ckpt, prefix="token2wav.", dtype=torch.float32)
    DiT.from_state_dict(config, full)  # prefixed, with the vocoder's tensors ignored
    bare = {k[len(DIT_PREFIX):]: v for k, v in full.items() if k.startswith(DIT_PREFIX)}
    dit = DiT.from_state_dict(config, bare)
    assert dit.proj_out.weight.dtype == torch.float32 and not dit.training
    assert set(dit.state_dict()) == set(bare)
    del bare["transformer_blocks.1.attn.to_k.weight"]
    bare["transformer_blocks.0.ff.ff.0.weight"] = bare["transformer_blocks.0.ff.ff.0.weight"][:, :3]
    with pytest.raises(ValueError, match=r"(?s)missing.*to_k.*wrong shape.*ff\.ff\.0"):
        DiT.from_state_dict(config, bare)


def test_ecapa_shortest_reference():
    """min_reference_frames is the reflection padding's limit: it runs, one frame fewer cannot."""
    config = DiTConfig(enc_channels=[8, 8, 8, 16], enc_kernel_sizes=[5, 3, 3, 1], enc_dilations=[1, 2, 3, 1],
                       enc_attention_channels=4, enc_se_channels=4, enc_dim=6)
    need = min_reference_frames(config)
    assert need == 4  # kernel 3, dilation 3: pads 3 on each side
    enc = ECAPA(config)
    assert enc(torch.randn(2, need, config.mel_dim)).shape == (2, 6)
    with pytest.raises(RuntimeError):
        enc(torch.randn(2, need - 1, config.mel_dim))
