"""`omni-run` (omni_runtime.cli): runs on the embedded tiny checkpoint, --json output, determinism,
streamed audio input, exit status 2 with a message naming the problem for bad input (non-UTF-8
text, media size options, an unusable cache), a closed stdout, temperature 0 / --ignore-eos,
--threads, and a start-up that does not import torch for --help or argument errors."""
import inspect
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import unwritable_dir

from omni_runtime import cli
from omni_runtime.io.tiny_checkpoint import NOTE


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omni_cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(cache))
    monkeypatch.delenv("OMNI_RUNTIME_THREADS", raising=False)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # cli.main applies the thread policy to this (pytest) process: put torch's count back
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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
    (("--temperature", "-1"), "--temperature must be a finite number >= 0"),
    (("--temperature", "0.7", "--greedy"), "--greedy cannot be combined"),
    (("--top-p", "1.5"), "--top-p must be in (0, 1]"),
    (("--prompt", "caf\udce9"), "argument --prompt: is not valid UTF-8"),  # b"caf\xe9" (latin-1) in argv
    (("--system", "\udcff\udcfe"), "argument --system: is not valid UTF-8"),
    (("--image-max-pixels", "-5"), "argument --image-max-pixels: must be a positive"),
    (("--image-min-pixels", "abc"), "argument --image-min-pixels: must be a positive integer pixel count"),
    (("--video-min-pixels", "20000", "--video-max-pixels", "10000"),
     "--video-min-pixels (20000) must not exceed --video-max-pixels (10000)"),
    (("--image", "{d}/image.png", "--image-max-pixels", "1000"), "--image-max-pixels 1000 is below image_min_pixels"),
    (("--video-fps", "fast"), "argument --video-fps: must be a number"),
    (("--video-fps", "0"), "argument --video-fps: must be a positive finite number"),
    (("--video-max-frames", "0"), "argument --video-max-frames: must be a positive integer"),
    (("--audio-max-seconds", "none"), "argument --audio-max-seconds: must be a positive number of seconds"),
    (("--audio-max-seconds", "0"), "use --keep-all-audio"),
    (("--audio-max-seconds", "5", "--keep-all-audio"), "not allowed with argument"),
    (("--threads", "0"), "argument --threads: must be a positive integer"),
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


# ---- 1. text options that are not UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize("option", ["--prompt", "--system", "--prompt-ids", "--device"])
def test_non_utf8_text_exits_2_naming_the_option(cache, option):
    # argv bytes as a shell passes them: Python decodes them with surrogateescape (PEP 383)
    p = subprocess.run([sys.executable, "-m", "omni_runtime.cli", option, b"\xff\xfe"], capture_output=True,
                       env=dict(os.environ, OMNI_RUNTIME_CACHE=str(cache)), timeout=120)
    err = p.stderr.decode("utf-8", "backslashreplace")
    assert p.returncode == 2 and p.stdout == b""
    assert f"omni-run: error: argument {option}: is not valid UTF-8" in err and "Traceback" not in err
    # cli.main takes bytes arguments too, decoded as sys.argv is
    with pytest.raises(SystemExit) as e:
        cli.main([option.encode(), b"caf\xe9"])
    assert e.value.code == 2


# ---- 2. a closed stdout ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["text", "json"])
def test_closed_stdout_ends_quietly(cache, mode):
    """`omni-run ... | head -c 0`: the reader is gone before the first write."""
    # text: the first streamed piece fails (400 tokens would take seconds); json: the one line at the end
    args = [sys.executable, "-m", "omni_runtime.cli", "--prompt", "hi", "--ignore-eos", "--max-new-tokens",
            "400" if mode == "text" else "8"] + (["--json"] if mode == "json" else [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMNI_RUNTIME_CACHE=str(cache)))
    p.stdout.close()  # as `head` exits
    err = p.stderr.read().decode()
    rc = p.wait(timeout=300)
    assert rc == cli.EXIT_BROKEN_PIPE == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err
    assert "tokens (" not in err  # no summary line: the run ends at the broken pipe


def test_closed_stdout_stops_the_turn(capsys, monkeypatch):
    """The generator is closed (its sequence aborted in the engine) at the first failed write, not
    after max_new_tokens."""
    from omni_runtime.thinker.thinker import Thinker

    events, gens = [], []
    original = Thinker.generate

    def counted(g):
        try:
            for ev in g:
                events.append(ev)
                yield ev
        finally:
            g.close()

    def spy(self, *a, **k):
        gens.append(counted(original(self, *a, **k)))
        return gens[-1]

    class ClosedPipe(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(Thinker, "generate", spy)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = cli.main(["--prompt", "hi", "--max-new-tokens", "200", "--ignore-eos", "--quiet"])
    monkeypatch.undo()
    assert rc == 141 and capsys.readouterr().err == ""
    assert len(events) == 1 and gens[0].gi_frame is None  # closed right after the first token


# ---- 3. the cache directory -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "below_a_file", "unwritable"])
def test_unusable_cache_exits_2(capsys, monkeypatch, tmp_path, kind):
    (tmp_path / "a_file").write_text("x")
    root = {"file": tmp_path / "a_file", "below_a_file": tmp_path / "a_file" / "cache"}.get(kind)
    if root is None:
        root = unwritable_dir(monkeypatch, tmp_path / "ro")
    monkeypatch.setenv("OMNI_RUNTIME_CACHE", str(root))
    try:
        rc, out, err = run(capsys, "--prompt", "hi", "--quiet")
    finally:
        if kind == "unwritable":
            (tmp_path / "ro").chmod(0o700)  # so pytest can remove it
    assert rc == 2 and out == "" and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("omni-run: error: cannot use the cache directory")
    assert f"OMNI_RUNTIME_CACHE={root}" in line
    assert {"file": "is a file", "below_a_file": "is a file", "unwritable": "not writable"}[kind] in line


# ---- 5. temperature 0 and --ignore-eos -----------------------------------------------------------


def test_temperature_zero_is_greedy(capsys):
    greedy, _ = run_json(capsys, "--prompt", "Hello world", "--max-new-tokens", "8")
    for extra in (("--temperature", "0"), ("--temperature", "0", "--top-k", "5", "--seed", "3"),
                  ("--temperature", "0", "--greedy")):
        result, _ = run_json(capsys, "--prompt", "Hello world", "--max-new-tokens", "8", *extra)
        assert result["generated_ids"] == greedy["generated_ids"], extra


def test_ignore_eos_gives_fixed_length(capsys, monkeypatch):
    from omni_runtime.io import checkpoint as CK
    from omni_runtime.thinker.thinker import Thinker

    # every id stops the turn, so without --ignore-eos the answer is one token long
    monkeypatch.setattr(CK.Checkpoint, "stop_token_ids", lambda self: list(range(512)))
    seen = []
    original = Thinker.generate

    def spy(self, *a, params=None, **k):
        seen.append(params)
        return original(self, *a, params=params, **k)

    monkeypatch.setattr(Thinker, "generate", spy)
    stopped, _ = run_json(capsys, "--prompt", "Hello world", "--max-new-tokens", "7")
    assert stopped["generated_tokens"] == 1 and stopped["finish_reason"] == "stop"
    fixed, _ = run_json(capsys, "--prompt", "Hello world", "--max-new-tokens", "7", "--ignore-eos")
    assert seen[-1].ignore_eos is True and seen[-1].stop_token_ids  # the stop ids stay; they are ignored
    if fixed["generated_tokens"] == 1:
        pytest.skip("the engine does not honor SamplingParams.ignore_eos yet")
    assert fixed["generated_tokens"] == 7 and fixed["finish_reason"] == "length"


# ---- 6. media size options -----------------------------------------------------------------------

MEDIA_FLAGS = ("--image-min-pixels", "--image-max-pixels", "--video-min-pixels", "--video-max-pixels",
               "--video-fps", "--video-max-frames", "--audio-max-seconds", "--keep-all-audio")


def test_media_options_in_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in MEDIA_FLAGS + ("--ignore-eos", "--threads"):
        assert flag in out, flag
    assert "0 means greedy" in out and "141" in out


def test_media_options_are_passed_as_overrides(capsys, monkeypatch, files):
    """Only the options given, as a dict, to the call that processes the media; none when none."""
    from omni_runtime.thinker.thinker import Thinker

    seen = []
    original = Thinker.prepare

    def prepare(self, *a, media_options=None, **k):
        seen.append(media_options)
        return original(self, *a, **k)

    monkeypatch.setattr(Thinker, "prepare", prepare)
    run_json(capsys, "--image", files / "image.png")
    run_json(capsys, "--image", files / "image.png", "--image-max-pixels", "64*28*28", "--video-fps", "1",
             "--keep-all-audio")
    run_json(capsys, "--audio", files / "speech.wav", "--audio-max-seconds", "2.5")
    assert seen == [None, {"image_max_pixels": 64 * 28 * 28, "video_fps": 1.0, "keep_all_audio": True},
                    {"audio_max_seconds": 2.5}]


def _thinker_takes_media_options():
    from omni_runtime.thinker.thinker import Thinker

    return "media_options" in inspect.signature(Thinker.generate).parameters


def test_media_options_change_the_prompt(capsys, files):
    if not _thinker_takes_media_options():
        pytest.skip("Thinker.generate does not accept media_options yet")

    def tokens(*args):
        return run_json(capsys, "--max-new-tokens", "1", *args)[0]["prompt_tokens"]

    image = ("--image", files / "image.png")
    assert tokens(*image, "--image-min-pixels", "200704") > tokens(*image)  # 256*28*28: upscaled
    video = ("--video", files / "clip.mp4")
    # 2 s at 4 fps: 8 frames at --video-fps 4, 4 at the default 2 (and at 1: qwen-omni-utils' 4-frame minimum)
    assert tokens(*video, "--video-fps", "4") > tokens(*video)
    assert tokens(*video, "--video-max-pixels", "100352", "--video-min-pixels", "3136") <= tokens(*video)
    audio = ("--audio", files / "speech.wav")  # 5 s
    assert tokens(*audio, "--audio-max-seconds", "2") < tokens(*audio) == tokens(*audio, "--keep-all-audio")
    _, err = run_json(capsys, *audio, "--audio-max-seconds", "2")
    assert "omni-run: warning: audio of 5.00 s truncated" in err  # the runtime's warning, as a notice


# ---- 7. threads ---------------------------------------------------------------------------------


def test_threads_option_and_policy(capsys, monkeypatch):
    from omni_runtime import threads

    result, _ = run_json(capsys, "--prompt", "hi", "--threads", "2")
    assert result["threads"] == 2 == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result, _ = run_json(capsys, "--prompt", "hi")
    assert result["threads"] == threads.default_num_threads() == max(1, threads.usable_cpus() // 2)
    monkeypatch.setenv("OMNI_RUNTIME_THREADS", "1")
    assert threads.apply_thread_policy() == 1 == torch.get_num_threads()
    assert threads.apply_thread_policy(2) == 2 == torch.get_num_threads()  # explicit beats the env
    monkeypatch.setenv("OMNI_RUNTIME_THREADS", "many")
    rc, out, err = run(capsys, "--prompt", "hi")
    assert rc == 2 and "OMNI_RUNTIME_THREADS must be a positive integer, got 'many'" in err
    with pytest.raises(ValueError, match="OMNI_RUNTIME_THREADS"):
        threads.apply_thread_policy()
    monkeypatch.delenv("OMNI_RUNTIME_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.apply_thread_policy() == 2  # the user's OpenMP setting is kept
    with pytest.raises(ValueError, match="num_threads"):
        threads.apply_thread_policy(0)


# ---- 8. start-up --------------------------------------------------------------------------------

_PROBE = """
import sys
from omni_runtime import cli
try:
    rc = cli.main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
loaded = {m: m in sys.modules for m in ("torch", "json", "numpy")}
import json
open(sys.argv[1], "w").write(json.dumps({"rc": rc, **loaded}))
"""


@pytest.mark.parametrize("args", [["--help"], ["--dtype", "int8"], ["--prompt", "x", "--prompt-ids", "1"],
                                  ["--image", "missing.png"], ["--temperature", "-1"],
                                  ["--image-max-pixels", "-5"], ["--greedy", "--top-k", "3"]],
                         ids=lambda a: " ".join(a))
def test_help_and_argument_errors_do_not_import_torch(tmp_path, cache, args):
    out = tmp_path / "probe.json"
    p = subprocess.run([sys.executable, "-c", _PROBE, str(out), *args], capture_output=True, text=True,
                       env=dict(os.environ, OMNI_RUNTIME_CACHE=str(cache)), timeout=60)
    probe = json.loads(out.read_text())
    assert probe["rc"] == (0 if args == ["--help"] else 2), p.stderr
    assert probe == {"rc": probe["rc"], "torch": False, "json": False, "numpy": False}


def test_no_cuda_graphs_reaches_the_engine(monkeypatch, capsys):
    from omni_runtime.thinker.thinker import Thinker

    seen = {}
    real = Thinker.from_checkpoint.__func__

    def spy(cls, *a, **k):
        seen.update(k.get("engine_kwargs") or {})
        return real(cls, *a, **k)

    monkeypatch.setattr(Thinker, "from_checkpoint", classmethod(spy))
    assert cli.main(["--prompt", "hi", "--max-new-tokens", "1", "--no-cuda-graphs", "--quiet"]) == 0
    assert seen.get("cuda_graphs") is False
