"""A bounded load on omni-serve over loopback: concurrent streamed spoken requests (more than the
server's streams) each equal their solo run -- no cross-talk between turns batched together; 1,000
sequential requests leave the KV blocks and the process's memory (RSS, measured) where they were;
clients that leave mid-stream or while queued leave nothing held."""
import gc
import http.client
import json
import os
import threading
import time

import pytest
from test_serve import _one_thread  # noqa: F401 (fixture)
from test_serve import (BASE, KEY, LONG, MODEL, SPOKEN, all_free, assert_same_pcm, read_until_data, send_stream,
                        solo, user, wait_all_free)

from omni_runtime.serve import BackgroundServer, ServeOptions, create_app

openai = pytest.importorskip("openai")

PROMPTS = ["Hello world, are you a helpful assistant?", "What is the capital of the moon?", "Sing.",
           "Count to ten.", "Why is the sky blue?", "Tell me a story about a cat."]
REQUESTS = 1000
MAX_RSS_GROWTH = 16 << 20  # 16 KiB per request would be a leak; measured growth is printed


def test_concurrent_streams_equal_their_solo_runs(omni):
    speakers = ("Chelsie", "Ethan")
    refs = [solo(omni, user(p), 10, seed=i, speaker=speakers[i % 2]) for i, p in enumerate(PROMPTS)]
    app = create_app(omni, ServeOptions(model_name=MODEL, api_key=KEY, max_streams=4, queue_size=4))
    got = [None] * len(PROMPTS)

    def one(i, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model=MODEL, messages=user(PROMPTS[i]), max_tokens=10, stream=True, seed=i, modalities=["text", "audio"],
            audio={"voice": speakers[i % 2], "format": "pcm16"}, extra_body=SPOKEN)
        audio = [c.choices[0].delta.audio for c in stream if c.choices and c.choices[0].delta.audio]
        got[i] = ("".join(a.transcript or "" for a in audio), b"".join(__import__("base64").b64decode(a.data)
                                                                      for a in audio if a.data))

    with BackgroundServer(app) as server:
        threads = [threading.Thread(target=one, args=(i, server.url)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    for (text, pcm), ref in zip(got, refs):
        assert text == ref.text
        assert_same_pcm(pcm, ref.waveform)
    assert wait_all_free(omni, app)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_sequential_requests_hold_nothing(omni):
    """1,000 tiny requests, streamed and not in turn, one after the other on one connection."""
    app = create_app(omni, ServeOptions(model_name=MODEL))
    engines = (omni.thinker.engine, omni.talker.engine)

    with BackgroundServer(app) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)

        def ask(i):
            body = json.dumps({**BASE, "max_tokens": 1 + i % 2, "stream": i % 2 == 1}).encode()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = r.read()
            assert r.status == 200 and (b"data: [DONE]" in answer if i % 2 else b'"finish_reason"' in answer)

        for i in range(100):  # warm-up: allocator pools, lazily built caches
            ask(i)
        gc.collect()
        rss, free = rss_bytes(), [e.block_manager.num_free_blocks for e in engines]
        t0 = time.perf_counter()
        for i in range(REQUESTS):
            ask(i)
        seconds = time.perf_counter() - t0
        gc.collect()
        growth = rss_bytes() - rss
    print(f"\n{REQUESTS} sequential requests in {seconds:.1f} s: RSS {rss / 2**20:.1f} MiB -> "
          f"{(rss + growth) / 2**20:.1f} MiB ({growth / 2**20:+.2f} MiB)")
    assert [e.block_manager.num_free_blocks for e in engines] == free == [e.kv_cache.num_blocks for e in engines]
    assert growth < MAX_RSS_GROWTH
    assert all_free(omni, app)


def test_clients_leaving_streaming_or_queued_leave_nothing_held(omni):
    app = create_app(omni, ServeOptions(model_name=MODEL, api_key=KEY, max_streams=3, queue_size=4))
    with BackgroundServer(app) as server:
        socks = [send_stream(server, LONG) for _ in range(5)]  # 3 stream, 2 wait in the queue
        for sock, marker in zip(socks[:3], (b"data: ", b'"transcript":', b'"data":"')):
            read_until_data(sock, marker)  # their turns run: one just started, one writing, one speaking
        while app.state.admission.queued < 2:
            time.sleep(0.005)
        for sock in socks:
            sock.close()
        assert wait_all_free(omni, app)
        left = app.state.metrics.requests.labels("499")._value.get()
    assert left == 2  # the queued two left before their answer started
