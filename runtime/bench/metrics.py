"""The figures of a level (or of the peer's runs), from its requests' timelines.

Latencies are from each request's arrival: first text token, first audio packet, end. Streams:
the gap between packets k-1 and k is compared with the audio packet k-1 carries; a player that
starts at the first packet stalls whenever the next packet comes after the audio so far has played
out -- a stream is real-time when it never stalls (1 ms of slack for the clock). RTF: the turn's
time from arrival / the audio's duration. Decode speeds per stream: (n - 1) / (last - first event)
for the Thinker's tokens and the Talker's codes; "total" divides all of a level's tokens (codes) by
its wall time. DiT and vocoder milliseconds per chunk come from the packets.
"""
from __future__ import annotations

import math
from typing import Optional

__all__ = ["SAMPLE_RATE", "percentile", "spread", "request_figures", "level_figures", "FIGURES"]

SAMPLE_RATE = 24_000
_STALL_SLACK_S = 1e-3

# every key of level_figures' result, in the order the JSON and the test expect
FIGURES = ("requests", "wall_s", "prepare_ms", "first_text_ms", "first_audio_ms", "end_ms", "gap_ms",
           "gap_vs_audio_max", "stall_ms_max", "realtime_streams", "rtf", "thinker_tokens_per_s",
           "talker_codes_per_s", "dit_ms_per_chunk", "vocoder_ms_per_chunk", "codec_batch", "packets", "audio_seconds",
           "peak_memory_mib")


def percentile(xs, q: float) -> Optional[float]:
    """Linear interpolation between the closest ranks (numpy's default); None when empty."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(xs, qs=(50, 90, 99)) -> dict:
    return {f"p{q}": _round(percentile(xs, q)) for q in qs}


def _round(x, nd: int = 3):
    return None if x is None else round(x, nd)


def _rate(times) -> Optional[float]:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def request_figures(tl: dict) -> dict:
    """One request's figures from its timeline (seconds from arrival, as RequestRecord.timeline)."""
    packets = tl["packets"]
    times = [p["t"] for p in packets]
    durations = [p["samples"] / SAMPLE_RATE for p in packets]
    gaps = [(times[k] - times[k - 1], durations[k - 1]) for k in range(1, len(packets))]
    stall, play_end = 0.0, None
    for t, d in zip(times, durations):
        if play_end is None:
            play_end = t + d
        elif t > play_end:
            stall += t - play_end
            play_end = t + d
        else:
            play_end += d
    audio = tl["audio_seconds"]
    return {
        "prepare_s": tl["prepared_s"],
        "first_text_s": tl["text_t"][0] if tl["text_t"] else None,
        "first_audio_s": times[0] if times else None,
        "end_s": tl["end_s"],
        "gaps_s": [g for g, _ in gaps],
        "gap_vs_audio": [g / d for g, d in gaps if d > 0],
        "stall_s": stall,
        "rtf": tl["end_s"] / audio if audio else None,
        "thinker_tokens_per_s": _rate(tl["text_t"]),
        "talker_codes_per_s": _rate(tl["code_t"]),
    }


def level_figures(timelines: list, wall_s: float, peak_memory_bytes: Optional[int] = None) -> dict:
    per = [request_figures(tl) for tl in timelines]
    ms = lambda key: [None if f[key] is None else 1e3 * f[key] for f in per]  # noqa: E731
    gaps = [1e3 * g for f in per for g in f["gaps_s"]]
    ratios = [r for f in per for r in f["gap_vs_audio"]]
    packets = [p for tl in timelines for p in tl["packets"]]
    firsts = [tl["packets"][0] for tl in timelines if tl["packets"]]
    laters = [p for tl in timelines for p in tl["packets"][1:]]
    tokens = sum(tl["text_tokens"] for tl in timelines)
    codes = sum(tl["codes"] for tl in timelines)

    def per_chunk(key):
        def mean(ps):
            vals = [p[key] for p in ps if p.get(key) is not None]  # the peer's one "packet" has none
            return _round(sum(vals) / len(vals)) if vals else None
        return {"mean": mean(packets), "first": mean(firsts), "later": mean(laters)}

    def speeds(key, total):
        return {"per_stream_p50": _round(percentile([f[key] for f in per], 50), 1),
                "total": _round(total / wall_s, 1) if wall_s > 0 else None}

    return {
        "requests": len(timelines),
        "wall_s": _round(wall_s, 4),
        "prepare_ms": spread(ms("prepare_s"), (50,)),
        "first_text_ms": spread(ms("first_text_s")),
        "first_audio_ms": spread(ms("first_audio_s")),
        "end_ms": spread(ms("end_s"), (50, 90)),
        "gap_ms": {"max": _round(max(gaps)) if gaps else None, "p90": _round(percentile(gaps, 90))},
        "gap_vs_audio_max": _round(max(ratios)) if ratios else None,
        "stall_ms_max": _round(max(1e3 * f["stall_s"] for f in per)) if per else None,
        "realtime_streams": sum(f["stall_s"] <= _STALL_SLACK_S for f in per),
        "rtf": {"p50": _round(percentile([f["rtf"] for f in per], 50), 4),
                "max": _round(max((f["rtf"] for f in per if f["rtf"] is not None), default=None), 4)},
        "thinker_tokens_per_s": speeds("thinker_tokens_per_s", tokens),
        "talker_codes_per_s": speeds("talker_codes_per_s", codes),
        "dit_ms_per_chunk": per_chunk("dit_ms"),
        "vocoder_ms_per_chunk": per_chunk("vocoder_ms"),
        "codec_batch": per_chunk("batch"),  # how many streams' chunks each packet's DiT run decoded
        "packets": len(packets),
        "audio_seconds": _round(sum(tl["audio_seconds"] for tl in timelines), 4),
        "peak_memory_mib": None if peak_memory_bytes is None else round(peak_memory_bytes / 2**20, 1),
    }
