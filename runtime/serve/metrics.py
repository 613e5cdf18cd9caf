"""omni-serve's Prometheus metrics (prometheus_client), on a registry of the app's own so several apps
in one process (tests, a server embedded elsewhere) never collide. Served at GET /metrics:

- omni_serve_queue_length, omni_serve_running_streams: requests waiting for a stream / turns running;
- omni_serve_requests_total{status}: chat completion answers by HTTP status (499: the client left
  before the answer started);
- omni_serve_completion_tokens_total, omni_serve_tokens_per_second (text tokens over the last
  TOKEN_WINDOW_S seconds, computed when scraped), omni_serve_audio_seconds_total;
- omni_serve_time_to_first_token_seconds, omni_serve_time_to_first_audio_seconds: histograms, from a
  request's arrival (queueing and media decoding included) to its first text token / audio packet;
- omni_serve_kv_free_blocks{engine}: the Thinker's and Talker's free KV-cache blocks.

Everything is updated on the event loop's thread.
"""
from __future__ import annotations

import collections
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST", "TOKEN_WINDOW_S"]

TOKEN_WINDOW_S = 10.0
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self, omni):
        r = self.registry = CollectorRegistry()
        self.queue_length = Gauge("omni_serve_queue_length", "Requests waiting for a stream", registry=r)
        self.running_streams = Gauge("omni_serve_running_streams", "Turns running", registry=r)
        self.requests = Counter("omni_serve_requests", "Chat completion answers by HTTP status", ["status"],
                                registry=r)
        self.tokens = Counter("omni_serve_completion_tokens", "Text tokens generated", registry=r)
        self.audio_seconds = Counter("omni_serve_audio_seconds", "Seconds of speech sent", registry=r)
        rate = Gauge("omni_serve_tokens_per_second", f"Text tokens per second over the last {TOKEN_WINDOW_S:g} s",
                     registry=r)
        rate.set_function(self._tokens_per_s)
        self.first_token = Histogram("omni_serve_time_to_first_token_seconds",
                                     "From a request's arrival to its first text token", buckets=LATENCY_BUCKETS_S,
                                     registry=r)
        self.first_audio = Histogram("omni_serve_time_to_first_audio_seconds",
                                     "From a request's arrival to its first audio packet", buckets=LATENCY_BUCKETS_S,
                                     registry=r)
        free = Gauge("omni_serve_kv_free_blocks", "Free KV-cache blocks", ["engine"], registry=r)
        free.labels("thinker").set_function(lambda: omni.thinker.engine.block_manager.num_free_blocks)
        if omni.can_speak:
            free.labels("talker").set_function(lambda: omni.talker.engine.block_manager.num_free_blocks)
        self._token_times: collections.deque = collections.deque()

    def count_token(self) -> None:
        self.tokens.inc()
        now = time.monotonic()
        self._token_times.append(now)
        self._forget_before(now - TOKEN_WINDOW_S)

    def _forget_before(self, t: float) -> None:
        times = self._token_times
        while times and times[0] < t:
            times.popleft()

    def _tokens_per_s(self) -> float:
        self._forget_before(time.monotonic() - TOKEN_WINDOW_S)
        return len(self._token_times) / TOKEN_WINDOW_S

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
