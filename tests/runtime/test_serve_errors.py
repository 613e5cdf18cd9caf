"""omni-serve's refusals over raw HTTP: malformed requests (4xx with an OpenAI-style error naming the
field, media refused before decoding), bad bodies and keys, overload (429 / 503 at once), clients
leaving mid-stream; and the `omni-serve` command (option errors, a real start and Ctrl-C)."""
import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image
from test_serve import _one_thread, app, server  # noqa: F401 (fixtures)
from test_serve import BASE, KEY, LONG, MODEL, SPEAK, all_free, open_stream, read_until_data, wait_all_free

from omni_runtime.serve import BackgroundServer, ServeOptions, create_app
from omni_runtime.serve.cli import main as serve_main

openai = pytest.importorskip("openai")

C0 = "messages[0].content[0]"


def post(server, body=None, raw=None, key=KEY, path="/v1/chat/completions", method="POST"):
    """(status, JSON answer) of a raw HTTP request."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, raw if raw is not None else json.dumps(body).encode() if body is not None else None,
                 headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(size, mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return b64(buf.getvalue())




def part(p):
    return {"messages": [{"role": "user", "content": [p]}]}


MALFORMED = [  # (changes to BASE, status, param, code)
    ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"model": None}, 400, "model", None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", None),
    (part({"type": "file", "file": {}}), 400, f"{C0}.type", None),
    ({**SPEAK, "audio": {"voice": "alloy", "format": "wav"}}, 400, "audio.voice", "invalid_voice"),
    ({"modalities": ["text", "audio"]}, 400, "audio", None),
    ({**SPEAK, "audio": {"voice": "Ethan", "format": "mp3"}}, 400, "audio.format", None),
    ({**SPEAK, "stream": True}, 400, "audio.format", None),  # streamed speech is raw PCM16
    ({**SPEAK, "stop": "x"}, 400, "stop", None),
    ({**SPEAK, "ignore_eos": True}, 400, "max_audio_codes", None),
    ({"n": 2}, 400, "n", None),
    ({"temperature": "hot"}, 400, "temperature", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "unsupported_parameter"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options", None),
    (part({"type": "input_audio", "input_audio": {"data": "A" * (2 << 20), "format": "wav"}}), 413,
     f"{C0}.input_audio.data", "media_too_large"),  # invalid base64 too: refused on its length, before decoding
    (part({"type": "input_audio", "input_audio": {"data": b64(b"not audio at all"), "format": "wav"}}), 400,
     f"{C0}.input_audio.data", "invalid_media"),
    (part({"type": "input_audio", "input_audio": {"data": "@@@@", "format": "wav"}}), 400,
     f"{C0}.input_audio.data", "invalid_base64"),
    (part({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}}), 400,
     f"{C0}.input_audio.format", None),
    (part({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(b'garbage')}"}}), 400,
     f"{C0}.image_url.url", "invalid_media"),
    (part({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png((9000, 9000), '1')}"}}), 413,
     f"{C0}.image_url.url", "media_too_large"),  # a few KB claiming 81 megapixels
    (part({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}), 400,
     f"{C0}.image_url.url", "remote_media_unsupported"),
    (part({"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}), 403, f"{C0}.image_url.url",
     "media_path_not_allowed"),
    (part({"type": "video_url", "video_url": {"url": "{d}/missing.mp4"}}), 400, f"{C0}.video_url.url",
     "media_not_found"),
    (part({"type": "video", "video": "{d}/speech.wav"}), 400, f"{C0}.video", "invalid_media"),  # not a video
    ({"messages": [{"role": "user", "content": "hi " * 600}]}, 400, "messages", None),  # longer than the context
]


@pytest.mark.parametrize("changes,status,param,code", MALFORMED, ids=[f"{i}-{m[2]}" for i, m in enumerate(MALFORMED)])
def test_malformed_requests(server, omni, files, changes, status, param, code):  # noqa: F811
    body = json.loads(json.dumps({**BASE, **changes}).replace("{d}", str(files)))
    got, answer = post(server, body)
    err = answer["error"]
    assert (got, err["param"], err["type"]) == (status, param, "invalid_request_error"), err
    assert code is None or err["code"] == code
    assert err["message"]
    assert wait_all_free(omni)


@pytest.mark.parametrize("raw,key,status,code", [
    (b"{not json", KEY, 400, "invalid_json"),
    (b"[1, 2]", KEY, 400, None),
    (json.dumps(BASE).encode(), None, 401, "invalid_api_key"),
    (json.dumps(BASE).encode(), "wrong", 401, "invalid_api_key"),
    (json.dumps({**BASE, "pad": "x" * (4 << 20)}).encode(), KEY, 413, "request_too_large"),
])
def test_bad_bodies_and_keys(server, raw, key, status, code):
    got, answer = post(server, raw=raw, key=key)
    assert got == status and answer["error"]["param"] is None and answer["error"]["code"] == code
    assert post(server, key=key, path="/v1/nothing", method="GET")[0] == 404


def test_overload_answers_at_once(omni):
    """One stream, a queue of one: a second request waits (then gets 503 when its wait runs out), a
    third is refused with 429 at once; after the stream ends, requests are served again."""
    app = create_app(omni, ServeOptions(model_name=MODEL, max_streams=1, queue_size=1, queue_timeout_s=1.0))
    with BackgroundServer(app) as s:
        holder = open_stream(s, LONG)  # not read on: its turn stays admitted until it closes
        queued = {}
        waiter = threading.Thread(target=lambda: queued.update(answer=post(s, BASE)))
        waiter.start()
        while app.state.admission.queued == 0:
            time.sleep(0.005)
        status, answer = post(s, BASE)
        assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded"
        waiter.join(timeout=30)
        assert queued["answer"][0] == 503 and queued["answer"][1]["error"]["code"] == "queue_timeout"
        holder.close()
        assert wait_all_free(omni, app)
        assert post(s, BASE)[0] == 200


@pytest.mark.parametrize("marker", [b'"transcript":', b'"data":"'])
def test_client_leaving_mid_stream_frees_its_turn(server, app, omni, marker):
    """The client hangs up once the text (or the speech) has started: its turn is aborted."""
    sock = open_stream(server, LONG)
    read_until_data(sock, marker)
    assert not all_free(omni)  # the turn is running
    sock.close()
    assert wait_all_free(omni, app)


def test_cli_help_and_option_errors_never_import_torch():
    code = ("import sys\nfrom omni_runtime.serve.cli import main\nfor argv in (['--help'], ['--port', 'x']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print(e.code)\n"
            "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[-4:] == ["0", "2", "[]", ""], out.stdout[-500:] + out.stderr


def test_cli_option_errors(capsys, tmp_path):
    for argv, message in ((["--max-streams", "0"], "--max-streams: must be >= 1"),
                          (["--dtype", "int8"], "--dtype: invalid choice: 'int8'")):
        with pytest.raises(SystemExit) as e:
            serve_main(argv)
        assert e.value.code == 2 and f"omni-serve: error: argument {message}" in capsys.readouterr().err
    assert serve_main(["--allowed-media-dir", str(tmp_path / "none")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert serve_main(["--port", str(busy.getsockname()[1])]) == 2  # before any model is loaded
    assert "omni-serve: error: cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_cli_serves_until_interrupted(tiny_ckpt, tmp_path):
    env = dict(os.environ, OMNI_RUNTIME_CACHE=str(tmp_path), OMNI_SERVE_API_KEY=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "omni_runtime.serve", "--checkpoint", str(tiny_ckpt), "--port", "0",
                             "--max-streams", "2", "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "omni-serve exited before serving"
        assert "serving 'ckpt' (voices Chelsie, Ethan) on http://127.0.0.1:" in line and "API key required" in line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="ckpt", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("stop", "length")
        proc.send_signal(signal.SIGINT)  # a clean shutdown
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.stderr.close()
