"""What omni-bench prints and writes: the Markdown tables (ours per scenario x concurrency; ours
at concurrency 1 against the peer, with the ratios), the target lines (measured, never asserted),
the JSON file and the PNG timeline of one request (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from .metrics import SAMPLE_RATE, level_figures

__all__ = ["levels_table", "peer_table", "ratios", "targets", "target_lines", "write_json", "draw_timeline"]

CPU_TARGETS = "CPU: end to end >= 3x faster than transformers, first audio packet >= 10x sooner, decode >= 1.2x"
GPU_TARGETS = "GPU: first packet <= 150 ms at concurrency 1, p50 <= 300 ms with 8 streams, RTF <= 0.1"


def _f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _three(d: dict) -> str:
    return " / ".join(_f(d.get(k)) for k in ("p50", "p90", "p99"))


def _md(headers, rows) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def levels_table(levels: list) -> str:
    """levels: dicts with scenario, concurrency, figures."""
    headers = ["scenario", "streams", "first text ms p50/p90/p99", "first audio ms p50/p90/p99",
               "packet gap ms max/p90", "gap/audio max", "real-time", "RTF p50", "Thinker tok/s stream/total",
               "Talker codes/s stream/total", "DiT ms/chunk", "vocoder ms/chunk", "streams/chunk batch",
               "peak MiB"]
    rows = []
    for lv in levels:
        f = lv["figures"]
        th, ta = f["thinker_tokens_per_s"], f["talker_codes_per_s"]
        rows.append([lv["scenario"], lv["concurrency"], _three(f["first_text_ms"]), _three(f["first_audio_ms"]),
                     f"{_f(f['gap_ms']['max'])} / {_f(f['gap_ms']['p90'])}", _f(f["gap_vs_audio_max"], 2),
                     f"{f['realtime_streams']}/{f['requests']}", _f(f["rtf"]["p50"], 3),
                     f"{_f(th['per_stream_p50'])} / {_f(th['total'])}",
                     f"{_f(ta['per_stream_p50'])} / {_f(ta['total'])}",
                     _f(f["dit_ms_per_chunk"]["mean"]), _f(f["vocoder_ms_per_chunk"]["mean"]),
                     _f(f["codec_batch"]["mean"], 2), _f(f["peak_memory_mib"], 0)])
    return _md(headers, rows)


def ratios(ours: dict, peer: dict) -> dict:
    """ours (concurrency 1) vs the peer: > 1 means ours is better on every ratio."""
    def div(a, b):
        return None if a is None or b is None or b == 0 else round(a / b, 3)

    return {
        "end_to_end": div(peer["end_ms"]["p50"], ours["end_ms"]["p50"]),
        "first_audio": div(peer["first_audio_ms"]["p50"], ours["first_audio_ms"]["p50"]),
        "first_text": div(peer["first_text_ms"]["p50"], ours["first_text_ms"]["p50"]),
        "thinker_decode": div(ours["thinker_tokens_per_s"]["per_stream_p50"],
                              peer["thinker_tokens_per_s"]["per_stream_p50"]),
        "talker_decode": div(ours["talker_codes_per_s"]["per_stream_p50"],
                             peer["talker_codes_per_s"]["per_stream_p50"]),
    }


def peer_table(rows: list, peer_name: str) -> str:
    """rows: dicts with scenario, ours (figures at concurrency 1), peer (figures), ratios."""
    headers = ["scenario", "run", "end to end ms", "first text ms", "first audio ms", "Thinker tok/s",
               "Talker codes/s", "RTF", "peak MiB"]
    out = []
    for r in rows:
        for name, f in (("ours (1 stream)", r["ours"]), (peer_name, r["peer"])):
            out.append([r["scenario"], name, _f(f["end_ms"]["p50"]), _f(f["first_text_ms"]["p50"]),
                        _f(f["first_audio_ms"]["p50"]), _f(f["thinker_tokens_per_s"]["per_stream_p50"]),
                        _f(f["talker_codes_per_s"]["per_stream_p50"]), _f(f["rtf"]["p50"], 3),
                        _f(f["peak_memory_mib"], 0)])
        x = r["ratios"]
        out.append([r["scenario"], "ratio", f"{_f(x['end_to_end'], 2)}x faster", f"{_f(x['first_text'], 2)}x sooner",
                    f"{_f(x['first_audio'], 2)}x sooner", f"{_f(x['thinker_decode'], 2)}x",
                    f"{_f(x['talker_decode'], 2)}x", "", ""])
    return _md(headers, out)


def _target(name, scenario, value, op, threshold, what) -> dict:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "scenario": scenario, "measured": value, "op": op, "threshold": threshold,
            "what": what, "met": met}


def targets(gpu: bool, levels: list, peer_rows: list, scenarios: list) -> list:
    out = []
    if gpu:
        by = {(lv["scenario"], lv["concurrency"]): lv["figures"] for lv in levels}
        for s in scenarios:
            one, eight = by.get((s, 1)), by.get((s, 8))
            out.append(_target("first packet, 1 stream", s, one and one["first_audio_ms"]["p50"], "<=", 150,
                               "first audio packet p50 (ms) at concurrency 1"))
            out.append(_target("first packet, 8 streams", s, eight and eight["first_audio_ms"]["p50"], "<=", 300,
                               "first audio packet p50 (ms) at concurrency 8"))
            out.append(_target("real-time factor", s, one and one["rtf"]["p50"], "<=", 0.1,
                               "RTF p50 at concurrency 1"))
        return out
    got = {r["scenario"]: r["ratios"] for r in peer_rows}
    for s in scenarios:
        x = got.get(s, {})
        out.append(_target("end to end", s, x.get("end_to_end"), ">=", 3, "transformers' time / ours (x faster)"))
        out.append(_target("first audio packet", s, x.get("first_audio"), ">=", 10,
                           "transformers' first audio / ours (x sooner)"))
        out.append(_target("decode (Thinker)", s, x.get("thinker_decode"), ">=", 1.2, "our tokens/s / transformers'"))
        out.append(_target("decode (Talker)", s, x.get("talker_decode"), ">=", 1.2, "our codes/s / transformers'"))
    return out


def target_lines(items: list, gpu: bool) -> str:
    lines = [f"Targets ({GPU_TARGETS if gpu else CPU_TARGETS}; measured above, never asserted):"]
    for t in items:
        status = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        lines.append(f"  {status:<12} {t['scenario']}: {t['target']}: {t['what']} = {value} "
                     f"(target {t['op']} {t['threshold']:g})")
    return "\n".join(lines)


def write_json(path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def draw_timeline(path, tl: dict, title: str) -> None:
    """One request over time (ms from its arrival): text tokens, codes, DiT and vocoder work per
    chunk, packets ready, and when each packet plays (a player starting at the first packet)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ms = lambda xs: [1e3 * x for x in xs]  # noqa: E731
    rows = ["text tokens", "codes", "DiT", "vocoder", "packets ready", "playback"]
    y = {name: len(rows) - 1 - i for i, name in enumerate(rows)}
    ax.vlines(ms(tl["text_t"]), y["text tokens"] - 0.3, y["text tokens"] + 0.3, color="tab:blue", lw=0.8)
    ax.vlines(ms(tl["code_t"]), y["codes"] - 0.3, y["codes"] + 0.3, color="tab:green", lw=0.5)
    play_end: Optional[float] = None
    for p in tl["packets"]:
        t = 1e3 * p["t"]
        voc = p.get("vocoder_ms") or 0.0
        if p.get("dit_ms") is not None:
            ax.broken_barh([(t - voc - p["dit_ms"], p["dit_ms"])], (y["DiT"] - 0.3, 0.6), color="tab:orange")
            ax.broken_barh([(t - voc, voc)], (y["vocoder"] - 0.3, 0.6), color="tab:red")
        ax.plot([t], [y["packets ready"]], marker="v", color="black")
        dur = 1e3 * p["samples"] / SAMPLE_RATE
        start = t if play_end is None or t > play_end else play_end
        ax.broken_barh([(start, dur)], (y["playback"] - 0.3, 0.6), color="tab:purple", alpha=0.6)
        play_end = start + dur
    for label, x, style in (("prompt ready", tl["prepared_s"], ":"), ("end", tl["end_s"], "--")):
        if x is not None:
            ax.axvline(1e3 * x, color="gray", ls=style, lw=0.8)
            ax.text(1e3 * x, len(rows) - 0.45, label, fontsize=7, color="gray")
    ax.set_yticks(list(y.values()), list(y.keys()))
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("ms from the request's arrival")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def figures_of(records, wall_s, peak) -> tuple[dict, list]:
    timelines = [r.timeline() for r in records]
    return level_figures(timelines, wall_s, peak), timelines
