"""Speech out, ours vs transformers on the same checkpoint: the Talker's codes and Token2Wav's
waveform for the same Thinker answer and the same codes.

(a) Talker: the same Thinker rows (one greedy Thinker answer of --text-tokens tokens to a text
    prompt), then N codes, stop codes ignored. transformers: `model.talker.generate(...)` with the
    very inputs its own `Qwen2_5OmniForConditionalGeneration.generate` builds (captured from one
    call), `min_new_tokens=N`, greedy (`do_sample=False`, repetition penalty 1.05 as its default);
    ours: the Talker request on the engine (`Talker.start` over a filled `TalkerInputs`),
    `ignore_eos=True`. Both greedy, so the codes are compared too.
(b) Token2Wav on the same N codes (clipped into the DiT's table) and the same speaker:
    transformers' `model.token2wav(code, conditioning, reference_mel)` against ours
    (`Token2Wav.__call__`, non-streamed) and our streamed decode (first packet latency, ms per chunk).
(c) the sum (a) + (b): what a spoken answer of N codes costs after the Thinker.

Times: host clock, one warm-up, the median of repeats. Ratios are time ratios ours / transformers
(< 1: ours faster). CPU: fp32, one thread; GPU: Thinker and Talker bf16. The checkpoint: the random "tiny" (the embedded one) by
default, --preset 7b-ratios, or --checkpoint DIR.

    python -m benchmarks.bench_speech --quick
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch

from benchmarks import common
from benchmarks.bench_thinker import add_checkpoint_args, checkpoint_dir, quiet_transformers
from omni_runtime.bench.peer import keep_talker_attention_mask

NAME = "bench_speech"


def _median_time(fn, repeats: int, device):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        common.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        common.synchronize(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def _capture_talker_inputs(hf, prompt_ids, speaker, text_tokens, stops, cfg):
    """Run transformers' whole generate once; keep the kwargs it hands `talker.generate`."""
    got = {}
    talker_generate = hf.talker.generate

    def capture(**kwargs):
        got.update(kwargs)
        return talker_generate(**{**kwargs, "max_new_tokens": 1})

    hf.talker.generate = capture
    hf.token2wav.forward = lambda code, conditioning, reference_mel, **kw: torch.zeros(1)
    ids = torch.tensor([prompt_ids], device=hf.device)
    with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), speaker=speaker, thinker_do_sample=False,
                    thinker_max_new_tokens=text_tokens, thinker_min_new_tokens=text_tokens,
                    thinker_eos_token_id=stops, talker_do_sample=False,
                    talker_eos_token_id=[cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id])
    hf.talker.generate = talker_generate
    del hf.token2wav.forward
    return got


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], compile_flag=False)
    add_checkpoint_args(p)
    p.set_defaults(preset="tiny")
    p.add_argument("--codes", type=int, default=None, help="codes per answer (default 100 = 2 s; --quick 50)")
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_codes = args.codes or (50 if args.quick else 100)
    repeats = 2 if args.quick else 5
    device = torch.device("cpu") if args.cpu else common.pick_device()
    dtype = common.DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    transformers = quiet_transformers()
    from omni_runtime.engine.sampling import SamplingParams
    from omni_runtime.engine.sequence import StepRows
    from omni_runtime.omni import Omni
    from omni_runtime.talker import TalkerInputs

    with contextlib.ExitStack() as stack:
        ckpt_dir, origin = checkpoint_dir(args, stack, "bench_speech_")
        omni = Omni.from_checkpoint(ckpt_dir, device=device, dtype=dtype, speech=True,
                                    engine_kwargs=dict(max_model_len=1024, max_num_seqs=1),
                                    talker_engine_kwargs=dict(max_model_len=2048, max_num_seqs=1))
        hf = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(ckpt_dir), dtype=dtype, attn_implementation="sdpa").to(device).eval()
        hf.token2wav.float()  # as its generate does: Token2Wav runs in fp32
        keep_talker_attention_mask(hf)
        th, talker, t2w = omni.thinker, omni.talker, omni.token2wav
        speaker = t2w.speaker(t2w.speakers[0])
        cfg = talker.config
        stops = list(th.stop_token_ids)
        prep = th.prepare("Tell me about the weather today, in a few words.")
        # (a) the Talker, from the same Thinker answer: its rows and tokens, recorded once
        rows, reply = [], []

        def keep(r):
            rows.append(StepRows(None, r.start, r.hidden_states.clone(), r.inputs_embeds.clone()))

        for ev in th.generate(prepared=prep, params=SamplingParams(max_new_tokens=args.text_tokens, ignore_eos=True),
                              sink=keep):
            reply.append(ev.token_id)
        kwargs = _capture_talker_inputs(hf, prep.ids, speaker.name, args.text_tokens, stops, cfg)

        def ours_talker():
            inputs = TalkerInputs(prep, talker.lm, th.lm.embed, speaker.bos_token,
                                  th.thinker_config.vision_config.spatial_merge_size)
            for r in rows:
                inputs.sink(r)
            for t in reply:
                inputs.add_reply_token(t)
            inputs.thinker_finished()
            seq = talker.start(inputs, talker.sampling_params(greedy=True, max_new_tokens=n_codes, ignore_eos=True))
            return [ev.token_id for ev in talker.engine.stream(seq)]

        def hf_talker():
            talker_kw = dict(kwargs, max_new_tokens=n_codes, min_new_tokens=n_codes,
                             inputs_embeds=kwargs["inputs_embeds"].clone())
            hf.talker.rope_deltas = None
            with torch.no_grad():
                out = hf.talker.generate(**talker_kw)
            return out[0, kwargs["input_ids"].shape[1]:].tolist()

        codes_ours, t_ours = _median_time(ours_talker, repeats, device)
        codes_hf, t_hf = _median_time(hf_talker, repeats, device)
        # (b) Token2Wav on the same codes
        codes = [c % t2w.num_codes for c in codes_ours]
        code_t = torch.tensor([codes], device=device)
        cond, ref = speaker.cond.to(device), speaker.ref_mel.to(device)

        def hf_t2w():
            with torch.no_grad():
                return hf.token2wav(code_t, conditioning=cond, reference_mel=ref)

        def ours_stream():
            stream, first, packets = t2w.stream(speaker, seed=0), None, []
            t0 = time.perf_counter()
            for c in codes:
                for pk in stream.push([c]):
                    first = first or time.perf_counter() - t0
                    packets.append(pk)
            packets += stream.finish()
            if first is None:  # fewer codes than the first chunk needs: the first packet comes at finish()
                first = time.perf_counter() - t0
            return first, packets

        _, w_hf = _median_time(hf_t2w, repeats, device)
        _, w_ours = _median_time(lambda: t2w(codes, speaker), repeats, device)
        (first, packets), w_stream = _median_time(ours_stream, max(1, repeats // 2), device)
    audio_s = n_codes * 0.02  # 50 codes per second
    rows = [
        ["talker", f"{n_codes} codes", common.fmt_ms(1e3 * t_hf), common.fmt_ms(1e3 * t_ours),
         common.fmt_ratio(t_ours / t_hf), f"{1e3 * t_ours / n_codes:.2f} ms/code"],
        ["token2wav", f"{audio_s:.1f} s audio", common.fmt_ms(1e3 * w_hf), common.fmt_ms(1e3 * w_ours),
         common.fmt_ratio(w_ours / w_hf), f"RTF {w_ours / audio_s:.3f}"],
        ["talker + token2wav", "", common.fmt_ms(1e3 * (t_hf + w_hf)), common.fmt_ms(1e3 * (t_ours + w_ours)),
         common.fmt_ratio((t_ours + w_ours) / (t_hf + w_hf)), ""],
        ["token2wav streamed", f"{len(packets)} packets", "-", common.fmt_ms(1e3 * w_stream),
         "-", f"first packet {1e3 * first:.1f} ms after its codes"],
    ]
    where = f"{device.type} {common.dtype_name(dtype)}" + (f", {args.threads} thread(s)" if device.type == "cpu" else "")
    common.print_table(f"{NAME}: {origin}, {where} (Token2Wav fp32)",
                       ["stage", "work", "transformers", "ours", "ours/transformers", "note"], rows)
    # fp32: identical; bf16 rounding can break near-ties (for information only)
    print(f"greedy codes identical: {codes_ours == codes_hf}")
    info = common.device_info(device)
    payload = common.new_payload(NAME, device, info, {"checkpoint": origin, "codes": n_codes,
                                                      "text_tokens": args.text_tokens, "threads": args.threads,
                                                      "dtype": common.dtype_name(dtype)})
    payload["cases"] = [{
        "case": "speech", "talker_s": {"transformers": t_hf, "ours": t_ours}, "codes_identical": codes_ours == codes_hf,
        "token2wav_s": {"transformers": w_hf, "ours": w_ours, "ours_streamed": w_stream},
        "first_packet_s": first, "packets": len(packets),
        "dit_ms": [pk.dit_ms for pk in packets], "vocoder_ms": [pk.vocoder_ms for pk in packets],
        "ratios": {"talker": t_ours / t_hf, "token2wav": w_ours / w_hf,
                   "talker_plus_token2wav": (t_ours + w_ours) / (t_hf + w_hf)},
    }]
    common.write_json(common.json_path(args, NAME, info, device), payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
