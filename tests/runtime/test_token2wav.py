"""Token2Wav, not streamed: codes -> waveform within 1e-4 (max abs error / max abs reference) of
transformers' `Qwen2_5OmniToken2WavModel(code, conditioning, reference_mel)` given the same noise,
on the tiny and 7b-ratios checkpoints; speakers, code validity, seeded noise, and every bad input."""
import dataclasses
import json

import pytest
import torch

from omni_runtime.io.speakers import Speaker
from omni_runtime.token2wav import Token2Wav, initial_noise

TOL = 1e-4


@pytest.fixture(scope="module")
def t2w(tiny_ckpt):
    return Token2Wav.from_checkpoint(tiny_ckpt)


@pytest.mark.parametrize("preset,n_codes", [("tiny", 1), ("tiny", 13), ("tiny", 37), ("7b-ratios", 12),
                                            ("7b-ratios", 25)])
def test_matches_transformers(one_thread, hf, tiny_ckpt, tiny_7b_ckpt, preset, n_codes):
    path = tiny_ckpt if preset == "tiny" else tiny_7b_ckpt
    ours = Token2Wav.from_checkpoint(path)
    theirs = hf.Qwen2_5OmniToken2WavModel(hf.Qwen2_5OmniToken2WavConfig(
        **json.loads((path / "config.json").read_text())["token2wav_config"])).eval()
    theirs.load_state_dict({k: v for k, v in _tensors(path).items()}, strict=True)
    speaker = ours.speaker("Ethan")
    codes = torch.randint(0, ours.num_codes, (n_codes,), generator=torch.Generator().manual_seed(n_codes))
    torch.manual_seed(11)
    noise = torch.randn(1, 2 * n_codes, ours.mel_dim)
    torch.manual_seed(11)
    with torch.no_grad():
        ref = theirs(codes[None], speaker.cond, speaker.ref_mel)
    wave = ours(codes, "Ethan", noise=noise)
    assert wave.shape == ref.shape == (2 * n_codes * ours.hop_length,) and wave.dtype == torch.float32
    assert float((wave - ref).abs().max() / ref.abs().max()) < TOL


def _tensors(path):
    from omni_runtime.io.checkpoint import load_tensors, open_checkpoint

    return {k[len("token2wav."):]: v for k, v in load_tensors(open_checkpoint(path), prefix="token2wav.").items()}


def test_speakers(t2w):
    assert t2w.speakers == ["Chelsie", "Ethan"]
    assert t2w.speaker("Chelsie").name == "Chelsie"
    with pytest.raises(ValueError, match=r"unknown speaker 'Bob' \(available: Chelsie, Ethan\)"):
        t2w.speaker("Bob")
    with pytest.raises(ValueError, match="unknown speaker"):
        t2w.mel([1, 2], "Bob")


def test_codes_table(t2w):
    n = t2w.config.dit_config.num_embeds
    assert t2w.num_codes == n + 1
    assert t2w.valid_codes([0, n, n + 1, -1]).tolist() == [True, True, False, False]
    assert t2w.valid_codes(torch.tensor([[3, n + 5]])).tolist() == [[True, False]]


def test_seeded_noise_and_shapes(one_thread, t2w):
    codes = [3, 1, 4, 1, 5]
    mel = t2w.mel(codes, "Chelsie", seed=3)
    assert mel.shape == (1, t2w.mel_dim, 10)
    assert torch.equal(mel, t2w.mel(torch.tensor(codes), "Chelsie", seed=3))
    assert torch.equal(mel, t2w.mel(codes, "Chelsie", noise=initial_noise(3, 0, 10, t2w.mel_dim)))
    assert not torch.equal(mel, t2w.mel(codes, "Chelsie", seed=4))
    spk = t2w.speaker("Chelsie")
    assert torch.equal(mel, t2w.mel(codes, Speaker("mine", 0, spk.cond.clone(), spk.ref_mel.clone()), seed=3))
    wave = t2w.vocode(torch.cat([mel, mel]))
    assert wave.shape == (2, 10 * t2w.hop_length) and float(wave.abs().max()) <= 1.0
    assert torch.equal(t2w(codes, "Chelsie", seed=3), t2w.vocode(mel)[0])
    assert torch.allclose(wave[0], wave[1]) and torch.allclose(wave[0], t2w.vocode(mel)[0], atol=1e-6)


def test_no_guidance_and_other_steps(one_thread, t2w):
    a = t2w.mel([7] * 6, "Ethan", guidance_scale=0.0)
    b = t2w.mel([7] * 6, "Ethan", guidance_scale=0.5, num_steps=4, sway_coefficient=None)
    assert a.shape == b.shape == (1, t2w.mel_dim, 12) and not torch.equal(a, b)


def _bad_speaker(t2w, **change):
    return dataclasses.replace(t2w.speaker("Chelsie"), **change)


@pytest.mark.parametrize("make,match", [
    (lambda t: dict(codes=[]), "codes is empty"),
    (lambda t: dict(codes=torch.zeros(0, dtype=torch.int64)), "codes is empty"),
    (lambda t: dict(codes=[1, t.num_codes, 2, -3]),
     r"2 code\(s\) outside the valid range 0\.\.\d+: codes\[1\] = \d+, codes\[3\] = -3"),
    (lambda t: dict(codes=[1.0, 2.0]), "must be ints"),
    (lambda t: dict(codes=[True]), "must be ints"),
    (lambda t: dict(codes=torch.tensor([[1, 2]])), "1-D integer tensor"),
    (lambda t: dict(codes=torch.tensor([1.0])), "1-D integer tensor"),
    (lambda t: dict(codes="12"), "list of ints"),
    (lambda t: dict(codes=[0] * (t.max_frames // t.repeats + 1)), "max_position_embeddings"),
    (lambda t: dict(speaker=_bad_speaker(t, ref_mel=t.speaker("Chelsie").ref_mel * float("nan"))), "ref_mel holds NaN"),
    (lambda t: dict(speaker=_bad_speaker(t, cond=t.speaker("Chelsie").cond + float("inf"))), "cond holds NaN or Inf"),
    (lambda t: dict(speaker=_bad_speaker(t, cond=torch.zeros(1, 3))), "enc_emb_dim"),
    (lambda t: dict(speaker=_bad_speaker(t, ref_mel=torch.zeros(1, 2, t.mel_dim))), r"frames >= \d+"),
    (lambda t: dict(speaker=_bad_speaker(t, ref_mel=torch.zeros(20, t.mel_dim))), "ref_mel must be"),
    (lambda t: dict(speaker=42), "name or a Speaker"),
    (lambda t: dict(noise=torch.zeros(1, 3, t.mel_dim)), r"noise must have shape \(1, 4, 80\)"),
    (lambda t: dict(noise=torch.zeros(1, t.mel_dim, 4)), "noise must have shape"),
    (lambda t: dict(noise=torch.full((1, 4, t.mel_dim), float("nan"))), "noise holds NaN"),
    (lambda t: dict(num_steps=1), "num_steps"),
    (lambda t: dict(guidance_scale=-1.0), "guidance_scale"),
    (lambda t: dict(sway_coefficient=-5.0), "sway_coefficient"),
    (lambda t: dict(seed="x"), "seed"),
])
def test_bad_inputs(t2w, make, match):
    kwargs = dict(codes=[1, 2], speaker="Chelsie")
    kwargs.update(make(t2w))
    codes, speaker = kwargs.pop("codes"), kwargs.pop("speaker")
    with pytest.raises(ValueError, match=match):
        t2w.mel(codes, speaker, **kwargs)


def test_bad_mel_for_vocoder(t2w):
    for mel, match in ((torch.zeros(1, 7, 5), "mel must be"), (torch.zeros(1, t2w.mel_dim, 0), "mel must be"),
                       (torch.full((1, t2w.mel_dim, 3), float("inf")), "NaN or Inf")):
        with pytest.raises(ValueError, match=match):
            t2w.vocode(mel)


def test_from_checkpoint_needs_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint directory or an opened Checkpoint"):
        Token2Wav.from_checkpoint(3)
