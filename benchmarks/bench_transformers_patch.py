"""transformers' own Qwen2.5-Omni `generate`, unpatched vs patched with one call
(`omni_kernels.transformers.apply_to_qwen2_5_omni(model)`), on the same model in the same process.

Cases: a text prompt and an audio + image prompt (random features of the checkpoint's sizes, the
placeholders expanded as transformers' processor does), each answered in text (the Thinker only)
and in speech (Thinker, Talker, Token2Wav). Fixed lengths: a greedy Thinker with min_new_tokens =
max_new_tokens, a greedy Talker with min_new_tokens = max_new_tokens and the codes the DiT's table
cannot take banned (as `omni_runtime.bench.peer` does). Timing: whole generate calls, unpatched and
patched alternating (the patch is bound and removed between calls), one warm-up each, the median;
`speedup` = unpatched ms / patched ms (> 1: the patch is faster). Every patched answer is checked
against the unpatched one (text ids, codes identical; waveform relative error), and the calls our
kernels served (prefills, encoders, DiT) and handed back (decode steps) are listed.

CPU: fp32, one thread, the ops' torch paths (what `omni_kernels` runs on CPU tensors); GPU: bf16,
the Triton kernels. The checkpoint: a random 7b-ratios one (`--preset`), or `--checkpoint DIR`.

    python -m benchmarks.bench_transformers_patch --quick
    python -m benchmarks.bench_transformers_patch --checkpoint /path/to/Qwen2.5-Omni-7B --dtype bf16
    python -m pytest benchmarks/bench_transformers_patch.py     # CPU, pytest-benchmark, tiny preset
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.bench_thinker import add_checkpoint_args, checkpoint_dir, quiet_transformers, text_id_limit

NAME = "bench_transformers_patch"
HEADERS = ["prompt", "answer", "tokens", "unpatched ms", "patched ms", "speedup", "same answer", "kernel calls"]


def load(checkpoint: Path, device: torch.device, dtype: torch.dtype):
    from omni_runtime.bench.peer import keep_talker_attention_mask

    transformers = quiet_transformers()
    model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
        str(checkpoint), dtype=dtype, attn_implementation="sdpa").to(device).eval().requires_grad_(False)
    model.token2wav.float()  # as its generate does: Token2Wav runs in fp32
    return keep_talker_attention_mask(model)


def make_prompt(model, checkpoint: Path, kind: str, text_tokens: int, audio_s: float, image_px: int) -> dict:
    """generate() inputs: `text_tokens` random text ids, after them for "audio+image" an audio of
    audio_s seconds (100 mel frames / s) and an image_px x image_px image."""
    from omni_runtime.io.checkpoint import open_checkpoint

    device, tc = model.device, model.config.thinker_config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, text_id_limit(open_checkpoint(checkpoint)), (text_tokens,), generator=gen).tolist()
    inputs = {}
    if kind == "audio+image":
        frames = int(audio_s * 100)
        n_audio = int(model.thinker.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(frames))[1])
        vc = tc.vision_config
        side = image_px // vc.patch_size // vc.spatial_merge_size * vc.spatial_merge_size
        grid = torch.tensor([[1, side, side]], device=device)
        n_image = side * side // vc.spatial_merge_size ** 2
        ids = ([tc.audio_start_token_id] + [tc.audio_token_index] * n_audio + [tc.audio_end_token_id]
               + [tc.vision_start_token_id] + [tc.image_token_index] * n_image + [tc.vision_end_token_id] + ids)
        patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        inputs = dict(input_features=torch.randn(1, tc.audio_config.num_mel_bins, frames, generator=gen).to(device),
                      feature_attention_mask=torch.ones(1, frames, dtype=torch.long, device=device),
                      thinker_pixel_values=torch.randn(side * side, patch, generator=gen).to(device, model.dtype),
                      image_grid_thw=grid)
    ids = torch.tensor([ids], device=device)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs)


def answer_fn(model, inputs: dict, speech: bool, new_tokens: int, codes: int):
    """A zero-argument call of generate returning (text ids, codes or None, waveform or None)."""
    from omni_runtime.bench.peer import TransformersPeer

    talker = model.config.talker_config
    table = model.config.token2wav_config.dit_config.num_embeds + 1
    banned = list(range(table, talker.vocab_size))
    kw = dict(thinker_max_new_tokens=new_tokens, thinker_min_new_tokens=new_tokens, thinker_do_sample=False)
    if speech:
        kw.update(talker_max_new_tokens=codes, talker_min_new_tokens=codes, talker_do_sample=False,
                  talker_eos_token_id=[talker.tts_codec_pad_token_id, talker.tts_codec_end_token_id],
                  speaker=next(iter(model.speaker_map)))
        if banned:
            kw["talker_logits_processor"] = TransformersPeer._ban(banned)
    else:
        kw["generation_mode"] = "text"
    seen = {}
    t2w_forward = model.token2wav.forward

    def keep_codes(code, **kwargs):
        seen["codes"] = code.clone()
        return t2w_forward(code, **kwargs)

    def run():
        torch.manual_seed(0)  # the DiT's initial noise
        model.token2wav.forward = keep_codes
        try:
            with torch.no_grad():
                out = model.generate(**inputs, **kw)
        finally:
            del model.token2wav.forward
        ids, wav = out if speech else (out, None)
        return ids, seen.pop("codes", None), wav

    return run


def compare(patched, unpatched) -> dict:
    (ids, codes, wav), (ref_ids, ref_codes, ref_wav) = patched, unpatched
    same = {"ids_identical": torch.equal(ids, ref_ids)}
    if ref_wav is not None:
        same["codes_identical"] = torch.equal(codes, ref_codes)
        same["wav_rel_err"] = common.rel_err(wav, ref_wav) if wav.shape == ref_wav.shape else None
    return same


def time_alternating(model, fn, reps: int, device: torch.device) -> tuple[dict, tuple, tuple]:
    """Median seconds of fn unpatched and patched, calls alternating; returns also one output of each
    and the patched calls' kernel / fallback counters (of one call)."""
    import omni_kernels.transformers as okt

    times, outputs = {"unpatched": [], "patched": []}, {}
    for rep in range(reps + 1):  # rep 0: warm-up
        for name in ("unpatched", "patched"):
            patched = name == "patched"
            if patched:
                okt.apply_to_qwen2_5_omni(model)
                okt.reset_kernel_calls()
            try:
                common.synchronize(device)
                t0 = time.perf_counter()
                outputs[name] = fn()
                common.synchronize(device)
            finally:
                if patched:  # never leave the model patched for the next unpatched call or case
                    calls = (okt.kernel_calls(), okt.fallback_calls())
                    okt.unpatch(model)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, (outputs["patched"], outputs["unpatched"]), calls


def case(run: common.Run, model, checkpoint: Path, kind: str, speech: bool, args) -> dict:
    inputs = make_prompt(model, checkpoint, kind, args.prompt_tokens, args.audio_s, args.image_px)
    fn = answer_fn(model, inputs, speech, args.new_tokens, args.codes)
    secs, (patched, unpatched), (served, handed_back) = time_alternating(model, fn, args.reps, run.device)
    answer = "speech" if speech else "text"
    return {"case": f"{kind} -> {answer}", "prompt": kind, "answer": answer,
            "prompt_tokens": inputs["input_ids"].shape[1], "new_tokens": args.new_tokens, "codes": args.codes if speech else 0,
            "results": {"transformers": {"ms": 1e3 * secs["unpatched"]}, "patched": {"ms": 1e3 * secs["patched"]}},
            "speedup": secs["unpatched"] / secs["patched"], "same": compare(patched, unpatched),
            "kernel_calls": served, "fallback_calls": handed_back}


def row(rec: dict) -> list:
    same = rec["same"]
    ok = same["ids_identical"] and same.get("codes_identical", True)
    err = same.get("wav_rel_err")
    calls = ", ".join(f"{k} {v}" for k, v in sorted(rec["kernel_calls"].items()))
    return [rec["prompt"], rec["answer"], f"{rec['prompt_tokens']} + {rec['new_tokens']}"
            + (f" + {rec['codes']} codes" if rec["codes"] else ""),
            common.fmt_ms(rec["results"]["transformers"]["ms"]), common.fmt_ms(rec["results"]["patched"]["ms"]),
            common.fmt_x(rec["speedup"]), ("yes" if ok else "NO") + ("" if err is None else f" (wav {err:.1e})"), calls]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], compile_flag=False, quick_help="shorter prompts and answers, 2 repeats")
    add_checkpoint_args(p)
    p.add_argument("--prompt-tokens", type=int, default=None, help="text tokens of the prompt (default 512; --quick 64)")
    p.add_argument("--audio-s", type=float, default=None,
                   help="seconds of audio in the audio+image prompt (default 10; --quick 2)")
    p.add_argument("--image-px", type=int, default=None, help="image side in pixels (default 448; --quick 112)")
    p.add_argument("--new-tokens", type=int, default=None, help="Thinker tokens per answer (default 32; --quick 8)")
    p.add_argument("--codes", type=int, default=None, help="Talker codes per spoken answer (default 100; --quick 24)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, short in (("prompt_tokens", 512, 64), ("audio_s", 10.0, 2.0), ("image_px", 448, 112),
                              ("new_tokens", 32, 8), ("codes", 100, 24)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    args.reps = 2 if quick else 5
    torch.set_num_threads(args.threads)
    run = common.start(NAME, args, no_cuda=(
        f"[{NAME}] CUDA is not available: transformers on CPU, patched with the ops' CPU torch paths."))
    run.info["transformers"] = quiet_transformers().__version__
    dtype = run.dtype()
    with contextlib.ExitStack() as stack:
        checkpoint, source = checkpoint_dir(args, stack, f"{NAME}_")
        model = load(checkpoint, run.device, dtype)
        payload = common.new_payload(NAME, run.device, run.info, {
            "checkpoint": source, "dtype": common.dtype_name(dtype), "threads": args.threads,
            "prompt_tokens": args.prompt_tokens, "audio_s": args.audio_s, "image_px": args.image_px,
            "new_tokens": args.new_tokens, "codes": args.codes, "repeats": args.reps,
            "speedup": "unpatched ms / patched ms (> 1: patched faster)"})
        run.banner(f"{common.dtype_name(dtype)}; checkpoint: {source}")
        cases = [common.Case(f"{kind} -> {'speech' if speech else 'text'}",
                             lambda kind=kind, speech=speech: case(run, model, checkpoint, kind, speech, args))
                 for kind in ("text", "audio+image") for speech in (False, True)]
        rows = common.sweep(run, payload, cases, row, lambda rec: f"speedup {common.fmt_x(rec['speedup'])}")
    common.finish(run, payload, f"transformers generate, patched / unpatched ({run.info['name']}, "
                  f"{common.dtype_name(dtype)}; speedup = unpatched ms / patched ms)", HEADERS, rows)
    return 0


# -- pytest-benchmark (CPU, tiny preset, a short text answer) ---------------------------------------

def cpu_pair(_):
    """Two copies of the tiny preset, one patched; check: the same ids, our kernels ran."""
    import omni_kernels.transformers as okt
    from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix=f"{NAME}_") as tmp:
        checkpoint = write_tiny_checkpoint(Path(tmp) / "ckpt", seed=0, preset="tiny")
        models = {name: load(checkpoint, torch.device("cpu"), torch.float32) for name in ("patched", "transformers")}
        fns = {name: answer_fn(model, make_prompt(model, checkpoint, "text", 32, 0, 0), speech=False, new_tokens=4,
                               codes=0) for name, model in models.items()}
    okt.apply_to_qwen2_5_omni(models["patched"])
    okt.reset_kernel_calls()
    ids = {name: fn()[0] for name, fn in fns.items()}
    served = okt.kernel_calls().get("attention", 0) > 0
    return common.CpuCase(fns, lambda impl: served and torch.equal(ids[impl], ids["transformers"]))


test_transformers_patch_cpu = common.cpu_benchmark(
    cpu_pair, ["patched", "transformers"], "transformers generate, patched vs not (tiny, 32 + 4 tokens, fp32)",
    rounds=3)


if __name__ == "__main__":
    raise SystemExit(main())
