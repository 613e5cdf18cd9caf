"""omni-serve on loopback through the official `openai` client: streamed text, streamed speech,
non-streamed speech, multimodal inputs, stop strings, seeded sampling -- each equal to the same turn
run in-process --, /v1/models, /health, /metrics; the asyncio embedding example. Also the fixtures
and raw-HTTP helpers test_serve_errors.py and test_serve_load.py share."""
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import all_freed as engines_free

from omni_runtime.serve import BackgroundServer, ServeOptions, create_app
from omni_runtime.serve.audio_out import pcm16_bytes
from omni_runtime.serve.completions import StopMatcher

openai = pytest.importorskip("openai")

MODEL, KEY = "omni-test", "test-key"
SPOKEN = dict(talker_greedy=True, max_audio_codes=30)  # extension fields: argmax codes, 0.6 s of speech


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app(omni, files):  # noqa: F811
    return create_app(omni, ServeOptions(model_name=MODEL, api_key=KEY, allowed_media_dir=files, max_media_mb=1,
                                         max_request_mb=3))


@pytest.fixture(scope="module")
def server(app):
    with BackgroundServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def all_free(omni, app=None) -> bool:
    """No request, KV block or Token2Wav stream held (and, given the app, no stream admitted)."""
    return engines_free(omni) and (app is None or (app.state.admission.running == 0
                                                   and app.state.admission.queued == 0))


def wait_all_free(omni, app=None, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not all_free(omni, app) and time.monotonic() < deadline:
        time.sleep(0.01)
    return all_free(omni, app)


def solo(omni, messages, max_tokens, seed=0, speaker="Ethan", speak=True, **kw):
    """The same turn, in-process: what the server must answer."""
    talker = omni.talker.sampling_params(greedy=True, seed=seed, max_new_tokens=SPOKEN["max_audio_codes"])
    return omni.generate(messages, stream=False, params=omni.thinker.sampling_params(max_new_tokens=max_tokens),
                         speak=speak, speaker=speaker, talker_params=talker, seed=seed, **kw)


def assert_same_pcm(pcm: bytes, waveform: torch.Tensor) -> None:
    """The server's PCM16 equals the turn's waveform converted (fp32 rounding of batched decodes: 1 LSB)."""
    got = np.frombuffer(pcm, "<i2").astype(np.int32)
    want = np.frombuffer(pcm16_bytes(waveform), "<i2").astype(np.int32)
    assert got.shape == want.shape and got.size > 0
    assert np.abs(got - want).max() <= 1


def user(text, *parts):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}] if parts else text}]


def test_streamed_text(client, omni):
    messages = user("Hello world, are you a helpful assistant?")
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ref = solo(omni, messages, 8, speak=False)
    assert text == ref.text and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == 8
    assert usage.prompt_tokens == omni.thinker.prepare(messages).num_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_speech(client, omni):
    messages = user("Sing.")
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, stream=True, seed=3,
                                            modalities=["text", "audio"], audio={"voice": "ethan", "format": "pcm16"},
                                            extra_body=SPOKEN)
    audio = [c.choices[0].delta.audio for c in stream if c.choices and c.choices[0].delta.audio]
    ref = solo(omni, messages, 10, seed=3)
    assert audio[0].id and all(a.id in (None, audio[0].id) for a in audio)
    assert "".join(a.transcript or "" for a in audio) == ref.text
    assert audio[-1].expires_at and audio[-1].data is None
    assert sum(a.data is not None for a in audio) > 1  # packets streamed, not one block at the end
    assert_same_pcm(b"".join(base64.b64decode(a.data) for a in audio if a.data), ref.waveform)


def test_non_streamed_speech(client, omni):
    messages = user("Why is the sky blue?")
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, seed=5,
                                       modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"},
                                       extra_body=SPOKEN)
    ref = solo(omni, messages, 6, seed=5, speaker="Chelsie")
    msg = r.choices[0].message
    assert msg.content is None and msg.audio.transcript == ref.text and r.choices[0].finish_reason == "length"
    data, rate = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)), dtype="int16")
    assert rate == 24000 and data.ndim == 1
    assert_same_pcm(data.astype("<i2").tobytes(), ref.waveform)
    assert r.usage.completion_tokens == 6 + len(ref.codes) == 6 + r.usage.completion_tokens_details.audio_tokens


@pytest.mark.parametrize("case", ["audio+images", "video+its audio"])
def test_multimodal_inputs(client, omni, files, case):  # noqa: F811
    """Content parts reach the model as the same items run in-process: same prompt length, same answer."""
    def data(path):
        return base64.b64encode((files / path).read_bytes()).decode()

    if case == "audio+images":
        sf.write(files / "short.wav", sf.read(files / "speech.wav")[0][:16000], 16000)  # 1 s: the prompt fits
        parts = [{"type": "input_audio", "input_audio": {"data": data("short.wav"), "format": "wav"}},
                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data('image.png')}"}},
                 {"type": "image_url", "image_url": {"url": f"file://{files / 'image.png'}"}}]
        image = {"type": "image", "image": str(files / "image.png")}
        items = [{"type": "audio", "audio": str(files / "short.wav")}, image, image]
        extra = {}
    else:  # the Qwen convention, inline
        parts = [{"type": "video", "video": f"data:video/mp4;base64,{data('clip.mp4')}"}]
        items = [{"type": "video", "video": str(files / "clip.mp4")}]
        extra = {"use_audio_in_video": True}
    r = client.chat.completions.create(model=MODEL, messages=user("What is this?", *parts), max_tokens=6,
                                       extra_body=extra)
    messages = user("What is this?", *items)
    ref = solo(omni, messages, 6, speak=False, **extra)
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == omni.thinker.prepare(messages, **extra).num_tokens


def test_stop_strings(client, omni):
    messages = user("Count to ten.")
    ref = solo(omni, messages, 12, speak=False).text
    stop = ref[len(ref) // 2:len(ref) // 2 + 3]
    want = ref[:ref.find(stop)]  # the answer ends before the first occurrence; the stop string is not returned
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stop=[stop, "@@"],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stop=stop)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (want, "stop")
    assert wait_all_free(omni)


def test_stop_matcher_holds_back_what_could_become_a_stop_string():
    m = StopMatcher(["END", "xy"])
    assert [m.feed(t) for t in ("abE", "N", "Dzz")] == [("ab", False), ("", False), ("", True)]
    m = StopMatcher(["END", "xy"])
    assert [m.feed(t) for t in ("aEN", "Ex")] == [("a", False), ("ENE", False)] and m.flush() == "x"


def test_sampling_follows_the_seed(client):
    kw = dict(model=MODEL, messages=user("Tell me a story about a cat."), max_tokens=12, temperature=2.0)
    a, b, c = (client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in (1, 1, 2))
    greedy = client.chat.completions.create(**{**kw, "temperature": 0}).choices[0].message.content
    assert a == b and len({a, c, greedy}) == 3


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list()] == [MODEL] and client.models.retrieve(MODEL).id == MODEL
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["status"] == "ok"  # no key needed
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for name in ("omni_serve_queue_length", "omni_serve_running_streams", "omni_serve_tokens_per_second",
                 "omni_serve_time_to_first_audio_seconds_bucket", 'omni_serve_kv_free_blocks{engine="talker"}'):
        assert name in text
    assert 'omni_serve_requests_total{status="200"}' in text


BASE = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SPEAK = {"modalities": ["text", "audio"], "audio": {"voice": "Ethan", "format": "wav"}}
def read_until_data(sock: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        piece = sock.recv(65536)
        assert piece, f"closed before {marker!r}: {got[-300:]!r}"
        got += piece
    return got


def send_stream(server, body: dict) -> socket.socket:
    """A streamed request sent on a raw socket (its answer not read)."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def open_stream(server, body: dict) -> socket.socket:
    """A streamed request on a raw socket, its answer started."""
    sock = send_stream(server, body)
    assert read_until_data(sock, b"data: ").startswith(b"HTTP/1.1 200")
    return sock


# a turn that runs for seconds on CPU: 8 s of speech
LONG = {**BASE, **SPEAK, "audio": {"voice": "Ethan", "format": "pcm16"}, "max_tokens": 200, "ignore_eos": True,
        "max_audio_codes": 400}


def test_the_embedding_example_runs(tiny_ckpt):
    """examples/embed_asyncio.py (the README's asyncio example): its own client gets a streamed spoken answer."""
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "embed_asyncio.py")
    out = subprocess.run([sys.executable, example, "--checkpoint", str(tiny_ckpt), "--max-tokens", "4",
                          "--max-codes", "30", "--max-model-len", "256"], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    kinds = [line.split()[0] for line in lines]
    assert 1 <= kinds.count("text") <= 4 and kinds[-1] == "done" and kinds.count("done") == 1
    assert {"text", "audio", "done"} >= set(kinds)
