"""`omni-run` (omni_runtime.cli): runs on the embedded tiny checkpoint, --json output, determinism,
streamed audio input, and exit status 2 with a message naming the problem for bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from omni_runtime import cli
from omni_runtime.io.tiny_checkpoint import NOTE


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omni_cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(cache))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import av
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_inputs")
    t = np.arange(16000 * 5) / 16000
    # loudest at the start: streamed log-mel == offline log-mel (see omni_thinker's docstring)
    sf.write(d / "speech.wav", (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32), 16000)
    sf.write(d / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(d / "image.png")
    (d / "zero.png").write_bytes(b"")
    (d / "not_an_image.png").write_bytes(b"hello")
    rng = np.random.default_rng(1)
    for name, with_audio in (("clip.mp4", True), ("silent.mp4", False)):
        with av.open(str(d / name), "w") as c:
            v = c.add_stream("mpeg4", rate=4)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
            if with_audio:  # every stream before the first packet
                a = c.add_stream("aac", rate=16000)
                a.layout = "mono"
            for _ in range(8):  # 2 s at 4 fps
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
                for pk in v.encode(frame):
                    c.mux(pk)
            for pk in v.encode():
                c.mux(pk)
            if with_audio:
                sig = (0.3 * np.sin(np.arange(32000) * 2 * np.pi * 330 / 16000)).astype(np.float32)
                for i in range(0, 32000, 1024):
                    frame = av.AudioFrame.from_ndarray(sig[None, i:i + 1024], format="fltp", layout="mono")
                    frame.rate, frame.pts = 16000, i
                    for pk in a.encode(frame):
                        c.mux(pk)
                for pk in a.encode():
                    c.mux(pk)
    return d


def run(capsys, *args):
    try:
        rc = cli.main(["--max-new-tokens", "6", *map(str, args)])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *args):
    rc, out, err = run(capsys, "--json", *args)
    assert rc == 0, err
    assert out.count("\n") == 1  # one JSON object, nothing else on stdout
    return json.loads(out), err


def test_json_on_the_embedded_checkpoint(capsys, cache):
    result, err = run_json(capsys, "--prompt", "Hello world")
    assert "random weights" in err and NOTE in err  # the honest label
    assert "loading thinker:" in err and "100%" in err  # the progress line
    assert result["checkpoint"] == str(cache / "tiny-tiny-seed0") and result["note"] == NOTE
    assert result["prompt_tokens"] > 10 and 1 <= len(result["generated_ids"]) <= 6
    assert result["generated_tokens"] == len(result["generated_ids"])
    assert result["finish_reason"] in ("length", "stop") and isinstance(result["text"], str)
    t = result["timings"]
    for key in ("load_s", "prepare_s", "ttft_s", "tokens_per_s", "total_s"):
        assert t[key] > 0, key
    assert (result["device"], result["dtype"]) == ("cpu", "fp32")


def test_text_mode_streams_to_stdout(capsys):
    rc, out, err = run(capsys, "--prompt", "Hello", "--quiet")
    assert rc == 0 and err == ""
    rc, out, err = run(capsys, "--prompt", "Hello")
    assert rc == 0 and "tokens (" in err and "ttft" in err and "tokens/s" in err


def test_greedy_is_deterministic_and_equals_the_api(capsys, files):
    args = ("--prompt", "What is this?", "--audio", files / "speech.wav", "--image", files / "image.png")
    a, _ = run_json(capsys, *args)
    b, _ = run_json(capsys, *args, "--greedy")
    assert a["generated_ids"] == b["generated_ids"] and a["prompt_tokens"] == b["prompt_tokens"]
    from omni_runtime.thinker.thinker import Thinker

    th = Thinker.from_checkpoint()
    ids = [ev.token_id for ev in th.generate("What is this?", audios=[str(files / "speech.wav")],
                                             images=[str(files / "image.png")], max_new_tokens=6)]
    assert ids == a["generated_ids"]


def test_seeded_sampling_is_reproducible(capsys):
    args = ("--prompt-ids", "1,2,3,4,5", "--temperature", "1.5", "--top-k", "50", "--seed", "7",
            "--max-new-tokens", "12")
    a, _ = run_json(capsys, *args)
    b, _ = run_json(capsys, *args)
    assert a["generated_ids"] == b["generated_ids"] and a["prompt_tokens"] == 5


def test_stream_audio_equals_all_at_once(capsys, files):
    offline, _ = run_json(capsys, "--prompt", "Listen.", "--audio", files / "speech.wav")
    streamed, _ = run_json(capsys, "--prompt", "Listen.", "--audio", files / "speech.wav", "--stream-audio")
    s = streamed["stream_audio"]
    assert s["mel_max_deviation"] == 0.0 and s["audio_seconds"] == 5.0
    assert s["chunks_prefilled_while_streaming"] == 2 and len(s["chunk_encode_prefill_s"]) == 3
    assert streamed["prompt_tokens"] == offline["prompt_tokens"]
    assert streamed["generated_ids"] == offline["generated_ids"]


def test_video_with_its_audio(capsys, files):
    plain, _ = run_json(capsys, "--video", files / "clip.mp4")
    with_audio, _ = run_json(capsys, "--video", files / "clip.mp4", "--use-audio-in-video")
    # 2 s of audio at 16 kHz (+ the AAC encoder's priming samples): 50+ audio tokens interleaved
    assert with_audio["prompt_tokens"] >= plain["prompt_tokens"] + 50 + 2


ERRORS = [
    (("--audio", "{d}/missing.wav"), "missing.wav"),
    (("--image", "{d}/missing.png"), "missing.png"),
    (("--video", "{d}/missing.mp4"), "missing.mp4"),
    (("--checkpoint", "{d}/no_checkpoint"), "checkpoint directory not found"),
    (("--dtype", "int8"), "--dtype: invalid choice: 'int8'"),
    (("--audio", "{d}/nan.wav"), "NaN"),
    (("--audio", "{d}/empty.wav"), "empty"),
    (("--image", "{d}/zero.png"), "zero.png is empty (0 bytes)"),
    (("--image", "{d}/not_an_image.png"), "cannot read image"),
    (("--prompt", "hi", "--max-model-len", "40"), "more than the context (max_model_len 40)"),
    (("--audio", "{d}/speech.wav", "--max-model-len", "100"), "more than the context"),
    (("--video", "{d}/silent.mp4", "--use-audio-in-video"), "no audio track"),
    (("--use-audio-in-video",), "needs a --video"),
    (("--stream-audio",), "exactly one --audio"),
    (("--prompt-ids", "1,2,x"), "--prompt-ids must be integers"),
    (("--prompt-ids", "1,2,99999"), "out of range"),
    (("--greedy", "--top-p", "0.5"), "--greedy cannot be combined"),
    (("--temperature", "0"), "temperature"),
    (("--max-new-tokens", "0"), "--max-new-tokens must be >= 1"),
    (("--device", "cuda:0"), "CUDA is not available"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[m for _, m in ERRORS])
def test_bad_input_exits_2_with_a_message(capsys, files, args, message):
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc, out, err = run(capsys, *[a.format(d=files) for a in args])
    assert rc == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("omni-run: error:")


def _subprocess(args, cache):
    env = dict(os.environ, OMNI_RUNTIME_CACHE=str(cache))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def test_console_script_and_module_entry_points(cache, files):
    """`omni-run` (pyproject [project.scripts]) and `python -m omni_runtime.cli` as a user runs them."""
    script = shutil.which("omni-run")
    command = [script] if script else [sys.executable, "-m", "omni_runtime.cli"]
    p = _subprocess([*command, "--json", "--max-new-tokens", "4", "--prompt", "Hi", "--audio",
                     str(files / "speech.wav")], cache)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["generated_ids"]) <= 4
    p = _subprocess([sys.executable, "-m", "omni_runtime.cli", "--audio", str(files / "nan.wav")], cache)
    assert p.returncode == 2 and "NaN" in p.stderr and "Traceback" not in p.stderr
