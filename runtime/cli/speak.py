"""omni-run --speak: one spoken turn -- text streamed to stdout as the Thinker writes it, audio
packets decoded while it speaks, the waveform written as 24 kHz PCM16 (soundfile), then a latency
table. Imported only for --speak."""
from __future__ import annotations

import time

from .parser import UsageError
from .run import check_loaded, note, setup

__all__ = ["run_speech_turn", "latency_table"]


def _ms(v):
    return None if v is None else round(1000 * v, 3)


def run_speech_turn(args, write_text) -> dict:
    import soundfile

    from ..io.progress import ProgressLine
    from ..omni import AudioEvent, Omni, TurnResult
    from ..engine.sequence import TokenEvent

    c = setup(args)
    timings, path = c["timings"], c["path"]
    t0 = time.perf_counter()
    omni = Omni.from_checkpoint(path, device=c["device"], dtype=c["dtype"], speech=True,
                                progress=None if args.quiet else ProgressLine("loading"),
                                engine_kwargs=c["engine_kwargs"])
    timings["load_s"] = time.perf_counter() - t0
    thinker = omni.thinker
    if thinker.note:
        note(args, f"note: {path}: {thinker.note}")
    check_loaded(args, thinker, path, c["conversation"])
    if args.speaker is not None and args.speaker not in omni.speakers:
        raise UsageError(f"unknown --speaker {args.speaker!r}; {path} has: {', '.join(omni.speakers)}")
    params = thinker.sampling_params(c["params"])
    seed = 0 if args.seed is None else args.seed
    talker_params = omni.talker.sampling_params(greedy=args.talker_greedy, seed=seed, max_new_tokens=args.max_codes)
    t_turn = time.perf_counter()
    prepared = thinker.prepare(c["conversation"], audios=list(args.audio), system_prompt=c["system"], **c["media"])
    timings["prepare_s"] = time.perf_counter() - t_turn
    result = packets = None
    packets = []
    gen = omni.generate(prepared=prepared, params=params, speaker=args.speaker, talker_params=talker_params,
                        seed=seed)
    try:
        for ev in gen:
            if isinstance(ev, TokenEvent) and ev.text:
                write_text(ev.text)
            elif isinstance(ev, AudioEvent):
                packets.append(ev)
            elif isinstance(ev, TurnResult):
                result = ev
    finally:
        gen.close()  # ^C / a closed stdout: abort both requests now
    wav = result.waveform
    try:
        soundfile.write(args.out, wav.numpy(), result.sample_rate, subtype="PCM_16")
    except (OSError, RuntimeError) as e:  # soundfile raises RuntimeError for an unwritable path
        raise UsageError(f"cannot write --out {args.out}: {e}") from None
    t = result.timings
    # latency from when the turn's input is ready (prompt prepared), as the table says
    ready = timings["prepare_s"]
    timings.update({
        "ttft_s": t.get("first_text"), "first_audio_s": t.get("first_audio"), "turn_s": t["end"],
        "total_s": time.perf_counter() - c["t_start"], "rtf": t["rtf"], "codes_per_s": t["codes_per_s"],
        "dit_ms_per_chunk": [round(x, 3) for x in t["dit_ms"]],
        "vocoder_ms_per_chunk": [round(x, 3) for x in t["vocoder_ms"]],
        "prepare_s": ready,
    })
    return {
        "checkpoint": str(path), "note": thinker.note, "device": str(c["dev"]), "dtype": c["dtype"],
        "threads": c["threads"], "prompt_tokens": prepared.num_tokens, "generated_ids": result.token_ids,
        "generated_tokens": len(result.token_ids), "text": result.text, "finish_reason": result.finish_reason,
        "speaker": result.speaker, "codes": result.codes, "dropped_codes": result.dropped_codes,
        "audio_seconds": round(result.audio_seconds, 6), "sample_rate": result.sample_rate, "out": args.out,
        "packets": len(packets),
        "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in timings.items()},
    }


def latency_table(result: dict) -> str:
    """The --speak summary as a Markdown table."""
    t = result["timings"]

    def fmt(v, unit="ms", scale=1000.0):
        return "n/a" if v is None else f"{v * scale:.1f} {unit}".strip()

    def per_chunk(xs):
        if not xs:
            return "n/a"
        return f"{xs[0]:.1f} ms first, {sum(xs) / len(xs):.1f} ms mean over {len(xs)}"

    rows = [
        ("time to first text token", fmt(t.get("ttft_s"))),
        ("time to first audio packet", fmt(t.get("first_audio_s"))),
        ("turn (text + speech)", fmt(t.get("turn_s"))),
        ("audio", f"{result['audio_seconds']:.2f} s in {result['packets']} packets -> {result['out']}"),
        ("real-time factor", "n/a" if t.get("rtf") is None else f"{t['rtf']:.3f}"),
        ("codes/s", "n/a" if t.get("codes_per_s") is None else f"{t['codes_per_s']:.1f}"),
        ("DiT per chunk", per_chunk(t.get("dit_ms_per_chunk"))),
        ("vocoder per chunk", per_chunk(t.get("vocoder_ms_per_chunk"))),
        ("text tokens / codes", f"{result['generated_tokens']} / {len(result['codes'])}"
                                + (f" ({result['dropped_codes']} codes outside the codec's table dropped)"
                                   if result["dropped_codes"] else "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'latency (from the prepared prompt)'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)
