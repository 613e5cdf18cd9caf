"""Token2Wav on CPU, ours against transformers on the same checkpoint, codes, speaker and noise:
the whole decode, our streamed decode, and the BigVGAN vocoder alone at three sizes.

(a) whole: transformers' `model.token2wav(code, conditioning, reference_mel)` (its initial noise
    given through `torch.randn`, see check_dit_transformers_457.randn_returns) against ours,
    `omni_runtime.token2wav.Token2Wav.from_checkpoint(dir)(codes, speaker, noise=...)`; the
    waveforms are compared (rel. error), so the two time the same function.
(b) streamed (ours only; transformers has none): `t2w.stream(speaker)`, the codes pushed one at a
    time as a Talker emits them (no waiting): first packet latency = compute of the push that
    completes packet 0 (and how many codes it needed), ms per later chunk, total and RTF.
(c) BigVGAN alone on 50 mel frames: ours (`omni_runtime.models.bigvgan.BigVGAN`) against
    transformers' `Qwen2_5OmniToken2WavBigVGANModel` with the same weights, for the checkpoint's
    vocoder, transformers' "7b-ratios" test shape (128 channels, rates 4,4,2) and the real 7B shape
    (1536 channels, rates 5,3,2,2,2,2, kernels 11,7,4,4,4,4, resblocks 3,7,11 x 1,3,5; random).

Times: host clock, one warm-up each, then ours and transformers called in turn (so a busy machine
slows both alike), the median. RTF = compute seconds / audio seconds (24 kHz); ratios are time
ratios ours / transformers (< 1: ours faster). fp32, one thread (`--threads`). The checkpoint is a
random tiny one (--preset, default 7b-ratios) or --checkpoint DIR.

    python -m benchmarks.bench_token2wav --quick [--preset tiny]
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
import warnings

import torch

from benchmarks import common
from benchmarks.bench_thinker import add_checkpoint_args, checkpoint_dir, quiet_transformers
from benchmarks.check_dit_transformers_457 import randn_returns

NAME = "bench_token2wav"
SAMPLE_RATE = 24_000  # Qwen2.5-Omni's waveform rate (50 codes/s x 2 mel frames x hop 240)
SPEAKER = "Chelsie"
VOCODER_FRAMES = 50
# (c)'s shapes besides the checkpoint's own (transformers' Qwen2_5OmniBigVGANConfig keywords).
VOCODER_SHAPES = {
    "7b-ratios test shape": dict(upsample_initial_channel=128, upsample_rates=[4, 4, 2], upsample_kernel_sizes=[8, 8, 4],
                                 resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 2, 4]]),
    "real 7B shape": dict(upsample_initial_channel=1536),
}


def alternate(fns: dict, reps: int, max_s: float) -> dict[str, float]:
    """Median seconds per fn: a warm-up each, then rounds calling each once, up to reps rounds (at
    least 2; fewer once max_s is spent)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    end = time.perf_counter() + max_s
    while len(times[next(iter(fns))]) < 2 or (len(times[next(iter(fns))]) < reps and time.perf_counter() < end):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(secs: dict[str, float], audio_s: float, err: float) -> dict:
    """The record fields of a case timed both ways (secs: {"ours", "transformers"})."""
    return {"audio_s": audio_s, "results": {name: {"s": t, "rtf": t / audio_s} for name, t in secs.items()},
            "ours_over_transformers": common.ratio(secs["ours"], secs["transformers"]), "rel_err": err}


# -- cases ------------------------------------------------------------------------------------------

def whole_case(ctx) -> dict:
    t2w, model, codes, noise = ctx["t2w"], ctx["hf"], ctx["codes"], ctx["noise"]
    speaker = t2w.speaker(SPEAKER)
    code = torch.tensor([codes])

    def hf():
        with torch.no_grad(), randn_returns(noise):
            return model.token2wav(code, conditioning=speaker.cond, reference_mel=speaker.ref_mel).reshape(-1)

    def ours():
        return t2w(codes, SPEAKER, noise=noise)

    err = common.rel_err(hf(), ours())
    secs = alternate({"ours": ours, "transformers": hf}, ctx["reps"], ctx["max_s"])
    audio_s = len(codes) * t2w.repeats * t2w.hop_length / SAMPLE_RATE
    return {"case": f"token2wav {len(codes)} codes", "kind": "whole",
            **compare(secs, audio_s, err)}


def stream_case(ctx) -> dict:
    t2w, codes = ctx["t2w"], ctx["codes"]
    runs = []
    for _ in range(max(2, ctx["reps"] // 2)):
        stream = t2w.stream(SPEAKER)
        pushes, t_start = [], time.perf_counter()
        for i, code in enumerate(codes):
            t0 = time.perf_counter()
            packets = stream.push([code])
            if packets:
                pushes.append((i + 1, time.perf_counter() - t0, packets))
        t0 = time.perf_counter()
        packets = stream.finish()
        if packets:
            pushes.append((len(codes), time.perf_counter() - t0, packets))
        runs.append((time.perf_counter() - t_start, pushes))
    total, pushes = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run
    packets = [p for _, _, ps in pushes for p in ps]
    later = [secs for _, secs, _ in pushes[1:]]
    audio_s = len(codes) * t2w.repeats * t2w.hop_length / SAMPLE_RATE
    samples = sum(p.samples.numel() for p in packets)
    return {"case": f"stream {len(codes)} codes", "kind": "stream", "audio_s": audio_s,
            "results": {"ours": {"s": total, "rtf": total / audio_s}}, "packets": len(packets),
            "samples_match_whole": samples == len(codes) * t2w.repeats * t2w.hop_length,
            "first_packet_ms": pushes[0][1] * 1e3, "first_packet_codes": pushes[0][0],
            "first_packet_audio_ms": packets[0].samples.numel() / SAMPLE_RATE * 1e3,
            "ms_per_later_chunk": statistics.mean(later) * 1e3 if later else None,
            "dit_ms_per_chunk": statistics.mean(p.dit_ms for p in packets),
            "vocoder_ms_per_chunk": statistics.mean(p.vocoder_ms for p in packets)}


def vocoder_case(ctx, label: str, hf_kwargs: dict | None) -> dict:
    """hf_kwargs None: the checkpoint's own vocoder; else a random one of that shape."""
    from omni_runtime.config import BigVGANConfig
    from omni_runtime.models.bigvgan import BigVGAN

    transformers = ctx["transformers"]
    if hf_kwargs is None:
        ref = ctx["hf"].token2wav.code2wav_bigvgan_model
        cfg = ctx["t2w"].config.bigvgan_config
    else:
        torch.manual_seed(0)
        ref = transformers.Qwen2_5OmniToken2WavBigVGANModel(transformers.Qwen2_5OmniBigVGANConfig(**hf_kwargs))
        cfg = BigVGANConfig.from_dict(hf_kwargs)
    ref = ref.eval()
    ours = BigVGAN.from_state_dict(cfg, ref.state_dict())
    mel = -4.0 + 1.5 * torch.randn(1, cfg.mel_dim, VOCODER_FRAMES, generator=torch.Generator().manual_seed(0))
    fns = {"ours": lambda: ours(mel)[0], "transformers": lambda: ref(mel).reshape(-1)}
    with torch.no_grad():
        err = common.rel_err(fns["transformers"](), fns["ours"]())
        secs = alternate(fns, ctx["reps"], ctx["max_s"])
    audio_s = VOCODER_FRAMES * cfg.hop_length / SAMPLE_RATE
    return {"case": f"bigvgan {label}, {VOCODER_FRAMES} frames", "kind": "vocoder",
            "channels": cfg.upsample_initial_channel, **compare(secs, audio_s, err)}


# -- output -----------------------------------------------------------------------------------------

def fmt_s(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def row(rec) -> list:
    r = rec["results"]
    ours, hf = r["ours"], r.get("transformers", {})
    cells = [rec["case"], f"{rec['audio_s']:.2f}", fmt_s(ours["s"]), fmt_s(hf.get("s")), common.fmt_ratio(ours["rtf"]),
             common.fmt_ratio(hf.get("rtf")), common.fmt_x(rec.get("ours_over_transformers"))]
    if rec["kind"] == "stream":
        return cells + ["-", (f"first packet {rec['first_packet_ms']:.0f} ms after code {rec['first_packet_codes']}, "
                              f"{common.fmt_ms(rec['ms_per_later_chunk'])} ms per later chunk, {rec['packets']} packets")]
    return cells + [f"{rec['rel_err']:.1e}", ""]


HEADERS = ["case", "audio s", "ours s", "transformers s", "ours RTF", "transformers RTF", "ours/transformers (time)",
           "rel err", "streaming"]


def summary(rec) -> str:
    r = rec["results"]
    if rec["kind"] == "stream":
        return f"first packet {rec['first_packet_ms']:.0f} ms, RTF {r['ours']['rtf']:.2f}"
    return (f"ours {fmt_s(r['ours']['s'])} s, transformers {fmt_s(r['transformers']['s'])} s, "
            f"ours/transformers {common.fmt_x(rec['ours_over_transformers'])}, rel err {rec['rel_err']:.1e}")


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n\n")[0], compile_flag=False, quick_help="fewer repeats, no real-7B vocoder")
    add_checkpoint_args(p)
    p.add_argument("--codes", type=int, default=100, help="codec codes to decode (50 = 1 s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see NOTES.md)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.cpu = True  # Token2Wav is timed on the CPU here; its GPU path is the engine's business
    run = common.start(NAME, args, no_cuda=f"[{NAME}] CPU run: fp32, {args.threads} thread(s).")
    transformers = quiet_transformers()
    run.info["transformers"] = transformers.__version__
    reps, max_s = (3, 4.0) if args.quick else (7, 20.0)
    from omni_runtime.token2wav.token2wav import Token2Wav

    with contextlib.ExitStack() as stack:
        checkpoint, source = checkpoint_dir(args, stack, "bench_token2wav_")
        t2w = Token2Wav.from_checkpoint(checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32)
        hf = hf.eval().requires_grad_(False)
        g = torch.Generator().manual_seed(args.seed)
        codes = torch.randint(0, t2w.num_codes, (args.codes,), generator=g).tolist()
        noise = torch.randn(1, args.codes * t2w.repeats, t2w.mel_dim, generator=g)
        ctx = {"t2w": t2w, "hf": hf, "transformers": transformers, "codes": codes, "noise": noise,
               "reps": reps, "max_s": max_s}
        payload = common.new_payload("token2wav", run.device, run.info, {
            "checkpoint": source, "codes": args.codes, "speaker": SPEAKER, "threads": args.threads,
            "vocoder_frames": VOCODER_FRAMES, "timing": "alternating calls after a warm-up each, median"})
        run.banner(f"{args.codes} codes ({args.codes / 50:.1f} s); checkpoint: {source}")
        cases = [common.Case(f"token2wav {args.codes} codes", lambda: whole_case(ctx))]
        if hasattr(Token2Wav, "stream"):
            cases.append(common.Case(f"stream {args.codes} codes", lambda: stream_case(ctx)))
        cases.append(common.Case("bigvgan checkpoint", lambda: vocoder_case(ctx, "checkpoint", None)))
        for label, kwargs in VOCODER_SHAPES.items():
            skip = (lambda: "--quick") if args.quick and kwargs["upsample_initial_channel"] > 512 else None
            run_case = lambda label=label, kwargs=kwargs: vocoder_case(ctx, label, kwargs)  # noqa: E731
            cases.append(common.Case(f"bigvgan {label}", run_case, skip=skip))
        rows = common.sweep(run, payload, cases, row, summary)
    common.finish(run, payload, f"Token2Wav on {run.info['name']} (fp32; ratios are time ratios, < 1: ours faster)",
                  HEADERS, rows, targets_origin="none set")
    print(json.dumps({"benchmark": NAME, "cases": [c for c in payload["cases"]]}, default=str))
    return payload


def _cpu_vocoders(_):
    """pytest-benchmark: ours and transformers' BigVGAN (64 channels, the real rates) on 20 frames."""
    from omni_runtime.config import BigVGANConfig
    from omni_runtime.models.bigvgan import BigVGAN

    transformers = quiet_transformers()
    torch.manual_seed(0)
    ref = transformers.Qwen2_5OmniToken2WavBigVGANModel(
        transformers.Qwen2_5OmniBigVGANConfig(upsample_initial_channel=64)).eval()
    ours = BigVGAN.from_state_dict(BigVGANConfig(upsample_initial_channel=64), ref.state_dict())
    mel = -4.0 + 1.5 * torch.randn(1, 80, 20)
    return {"ours": torch.no_grad()(lambda: ours(mel)[0]), "transformers": torch.no_grad()(lambda: ref(mel).reshape(-1))}


test_bigvgan_cpu = common.cpu_benchmark(_cpu_vocoders, ["ours", "transformers"], "bigvgan 64 channels, 20 frames")


if __name__ == "__main__":
    main()
