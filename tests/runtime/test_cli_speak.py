"""`omni-run --speak`: the main job -- a spoken turn on the embedded tiny checkpoint writes a 24 kHz
PCM16 WAV and prints a latency table; --json adds the codes and timings; bad speech input exits 2
with `omni-run: error: ...`."""
import json
import shutil

import pytest
import soundfile as sf
import torch

from omni_runtime import cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omni_cache_speak")


@pytest.fixture(autouse=True)
def _env(cache, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(cache))
    monkeypatch.delenv("OMNI_RUNTIME_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(capsys, *args):
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_speak_writes_a_wav_and_a_latency_table(capsys, tmp_path):
    out_wav = tmp_path / "reply.wav"
    rc, out, err = run(capsys, "--speak", "--out", out_wav, "--max-new-tokens", "8", "--ignore-eos",
                       "--max-codes", "30", "--talker-greedy")
    assert rc == 0, err
    assert "time to first audio packet" in out and "real-time factor" in out and "DiT per chunk" in out
    info = sf.info(str(out_wav))
    assert (info.samplerate, info.subtype, info.channels) == (24000, "PCM_16", 1)
    assert info.frames > 0 and info.frames % 480 == 0  # whole codes: 2 mel frames x 240 samples each


def test_speak_json_has_codes_and_timings(capsys, tmp_path):
    out_wav = tmp_path / "a.wav"
    args = ("--json", "--speak", "--out", out_wav, "--max-new-tokens", "6", "--ignore-eos", "--max-codes", "24",
            "--speaker", "Ethan", "--talker-greedy")
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    r = json.loads(out)
    assert r["speaker"] == "Ethan" and r["sample_rate"] == 24000 and 1 <= len(r["codes"]) <= 24
    assert r["audio_seconds"] == pytest.approx(len(r["codes"]) * 0.02)  # 50 codes per second
    t = r["timings"]
    for key in ("ttft_s", "first_audio_s", "rtf", "codes_per_s", "load_s"):
        assert t[key] is not None and t[key] > 0, key
    assert len(t["dit_ms_per_chunk"]) == r["packets"] == len(t["vocoder_ms_per_chunk"])
    wav, sr = sf.read(str(out_wav), dtype="float32")
    assert sr == 24000 and len(wav) == round(r["audio_seconds"] * 24000)
    # greedy everywhere + the same seed: the same codes and audio again
    rc, out2, _ = run(capsys, *args)
    assert json.loads(out2)["codes"] == r["codes"]
    assert (sf.read(str(out_wav), dtype="float32")[0] == wav).all()


def test_speak_on_a_text_only_checkpoint_exits_2(capsys, tmp_path, cache):
    from omni_runtime.io.tiny_cache import default_checkpoint_dir

    src = default_checkpoint_dir()
    text_only = tmp_path / "text_only"
    shutil.copytree(src, text_only)
    cfg = json.loads((text_only / "config.json").read_text())
    cfg["enable_audio_output"] = False
    (text_only / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run(capsys, "--speak", "--checkpoint", text_only, "--out", tmp_path / "x.wav")
    assert rc == 2 and "no Talker" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("omni-run: error:")


@pytest.mark.parametrize("args,message", [
    (("--speak", "--speaker", "Nobody"), "unknown --speaker 'Nobody'"),
    (("--speaker", "Ethan"), "need --speak"),
    (("--speak", "--out", "{d}"), "is a directory"),
    (("--speak", "--out", "{d}/missing/x.wav"), "does not exist"),
    (("--speak", "--out", "{d}/reply.mp3"), "must end in .wav"),
    (("--speak", "--max-codes", "0"), "--max-codes: must be a positive integer"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_speech_input_exits_2(capsys, tmp_path, args, message):
    rc, out, err = run(capsys, *[a.format(d=tmp_path) for a in args])
    assert rc == 2 and message in err and "Traceback" not in err
