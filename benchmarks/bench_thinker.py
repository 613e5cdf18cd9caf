"""The Thinker end to end: our `ThinkerEngine` (omni_runtime: fused TMRoPE prefill, paged KV cache,
paged decode, sampling on the device) vs transformers' `Qwen2_5OmniThinkerForConditionalGeneration`
(sdpa attention, `generate`), both loaded from the same checkpoint directory in the same dtype.

(a) prefill: time to first token of one prompt of 128 / 512 / 2048 tokens (a generate call with one
    new token; prompt tokens/s = prompt length / that time);
(b) decode: 64 new tokens, greedy, batch 1 and batch 4 (four prompts of different lengths:
    transformers gets them left-padded with an attention mask, our engine packs them); tokens/s =
    batch x 63 / (time of the last token - time of the first token) inside one generate call, read
    from each implementation's own stream (our TokenEvents, a transformers streamer).

Both generate exactly the same number of tokens: greedy, no repetition penalty, our engine with no
stop ids, transformers with min_new_tokens = max_new_tokens and an eos id outside the vocabulary
(so it can never be produced). In fp32 the generated ids are compared row by row and the table says
whether they are identical (in bf16 too, for information: rounding can break near-ties there).

The checkpoint is by default a random one with the 7B's shape ratios at small width
(`write_tiny_checkpoint(..., preset="7b-ratios")`: GQA 7:1, head_dim 128, mrope [16, 24, 24],
2 layers, hidden 896), written into a temporary directory; `--checkpoint DIR` times any checkpoint
in the official layout (a real Qwen2.5-Omni-7B on a GPU, say).

CPU: fp32, torch's own thread count (the ops' torch paths). GPU: bf16 and fp32 on CUDA, our ops
through their Triton kernels. `speedup` = transformers ms / ours ms (> 1: ours faster).

    python -m benchmarks.bench_thinker                  # GPU: table + benchmarks/results/<device>/bench_thinker.json
    python -m benchmarks.bench_thinker --quick          # CPU: prompts 128 / 512, shorter timing; table only
    python -m benchmarks.bench_thinker --checkpoint DIR --dtype bf16 --out /tmp/thinker.json
    python -m pytest benchmarks/bench_thinker.py        # CPU, pytest-benchmark, tiny preset, 32-token prompt
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import common

NAME = "bench_thinker"
PREFILL_LENS = [128, 512, 2048]
QUICK_PREFILL_LENS = [128, 512]
NEW_TOKENS = 64
# Decode batches: prompt lengths per row. Batch 4 has different lengths, so transformers runs it
# left-padded (attention mask) while our engine packs the rows.
DECODE_BATCHES = {1: [128], 4: [128, 112, 96, 80]}
OURS, HF = "omni_runtime.ThinkerEngine", "transformers.generate"


# -- models ---------------------------------------------------------------------------------------

def quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        transformers.utils.logging.disable_progress_bar()
    return transformers


def load_ours(checkpoint: Path, device: torch.device, dtype: torch.dtype, max_model_len: int,
              max_batched_tokens: int, max_num_seqs: int):
    from omni_runtime.engine import Engine

    ckpt, model = load_lm(checkpoint, device, dtype)
    limit = model.config.max_position_embeddings
    engine = Engine(model, max_num_seqs=max_num_seqs, max_model_len=min(max_model_len, limit),
                    max_num_batched_tokens=max_batched_tokens)
    return ckpt, engine


def load_lm(checkpoint: Path, device: torch.device, dtype: torch.dtype):
    """(opened checkpoint, our ThinkerLM on device in dtype)."""
    from omni_runtime.io.checkpoint import open_checkpoint
    from omni_runtime.models.thinker_lm import ThinkerLM

    ckpt = open_checkpoint(checkpoint)
    return ckpt, ThinkerLM.from_checkpoint(ckpt, device=device, dtype=dtype)


def checkpoint_dir(args: argparse.Namespace, stack: contextlib.ExitStack, prefix: str) -> tuple[Path, str]:
    """(directory, description): --checkpoint, else a tiny checkpoint (--preset, --seed) written
    into a temporary directory that lives as long as `stack`."""
    if args.checkpoint:
        return Path(args.checkpoint), str(args.checkpoint)
    from omni_runtime.io.tiny_checkpoint import NOTE, write_tiny_checkpoint

    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
    directory = write_tiny_checkpoint(Path(tmp) / "ckpt", seed=args.seed, preset=args.preset)
    return directory, f"write_tiny_checkpoint(preset={args.preset!r}, seed={args.seed}) ({NOTE})"


def model_config(checkpoint: Path) -> dict:
    """The Thinker text model's shape, for the JSON and the banner."""
    from omni_runtime.io.checkpoint import open_checkpoint

    text = open_checkpoint(checkpoint).config.thinker_config.text_config
    cfg = {k: getattr(text, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                         "num_attention_heads", "num_key_value_heads", "vocab_size")}
    cfg.update(head_dim=text.dim_per_head, mrope_section=list(text.mrope_section), rope_theta=float(text.rope_theta))
    return cfg


def describe_model(cfg: dict) -> str:
    return (f"thinker {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_attention_heads']}/"
            f"{cfg['num_key_value_heads']} heads, head_dim {cfg['head_dim']}")


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory (official layout); default: a random 7b-ratios one in a temp dir")
    p.add_argument("--preset", default="7b-ratios", help="tiny checkpoint preset when --checkpoint is not given")
    p.add_argument("--seed", type=int, default=0, help="tiny checkpoint seed")


def eos_outside_vocab(ckpt) -> tuple[int, int]:
    """(pad id, eos id) for transformers' generate: the checkpoint's pad id when it has one in the
    vocabulary (else 0), and an eos id outside the vocabulary so that it is never generated."""
    thinker = ckpt.config.thinker_config
    vocab = thinker.text_config.vocab_size
    pad = (getattr(thinker, "extra", None) or {}).get("pad_token_id")
    return (pad if isinstance(pad, int) and 0 <= pad < vocab else 0), vocab


def load_transformers(checkpoint: Path, device: torch.device, dtype: torch.dtype):
    transformers = quiet_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            str(checkpoint), dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval().requires_grad_(False)
    # Only the settings passed to generate() count: none of the checkpoint's generation_config.json
    # (sampling, repetition penalty, eos ids) may leak into the comparison.
    model.generation_config = transformers.GenerationConfig()
    return model


def text_id_limit(ckpt) -> int:
    """Prompt ids are drawn below every special / multimodal placeholder id of the checkpoint (a
    placeholder id would make transformers look for audio or image features)."""
    thinker = ckpt.config.thinker_config
    ids = [getattr(thinker, n, None) for n in ("audio_token_index", "image_token_index", "video_token_index",
                                                "audio_start_token_id", "audio_end_token_id",
                                                "vision_start_token_id", "vision_end_token_id")]
    extra = getattr(thinker, "extra", None) or {}
    ids += [extra.get(n) for n in ("vision_token_id", "bos_token_id", "eos_token_id", "pad_token_id")]
    vocab = thinker.text_config.vocab_size
    return min([vocab] + [int(i) for i in ids if isinstance(i, int) and 0 <= i < vocab])


def make_prompts(lengths, limit: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, limit, (n,), generator=g).tolist() for n in lengths]


# -- one generate call, timed from each implementation's own token stream -----------------------

class _StepClock:
    """A transformers streamer that notes when each step's tokens arrive: generate() calls put()
    with the prompt ids (batch, length) first, then with each step's new tokens (batch,), already
    copied to the host (so the time is after the step's GPU work)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        if value.dim() == 1:
            self.times.append(time.perf_counter())

    def end(self):
        pass


def run_ours(engine, prompts, new_tokens: int):
    """(ids per row, t_first_token - t0, t_last_token - t_first_token) for one generate call."""
    from omni_runtime.engine import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, do_sample=False)  # no stop ids: always new_tokens
    common.synchronize(engine.device)
    t0 = time.perf_counter()
    first = last = None
    seqs = {}
    for ev in engine.generate(prompts, params):
        last = time.perf_counter()
        first = first or last
        seqs[ev.seq.seq_id] = ev.seq
    ids = [seqs[k].output_ids for k in sorted(seqs)]
    return ids, first - t0, last - first


def run_transformers(model, prompts, new_tokens: int, pad_id: int, eos_id: int):
    """The same for transformers: left-padded batch, greedy, exactly new_tokens tokens."""
    import transformers

    device = model.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=eos_id,
        pad_token_id=pad_id, repetition_penalty=1.0, num_beams=1, use_cache=True)
    clock = _StepClock()
    common.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock)
    common.synchronize(device)
    t_end = time.perf_counter()
    times = clock.times or [t_end]
    return out[:, width:].tolist(), times[0] - t0, times[-1] - times[0]


def time_runs(fn, reps: int, max_s: float):
    """One warm-up call, then up to `reps` calls (at least 2, stopping after max_s seconds):
    the last call's ids and the median (time to first token, decode time) in ms."""
    fn()
    ttft, decode, ids = [], [], None
    t_end = time.perf_counter() + max_s
    while len(ttft) < 2 or (len(ttft) < reps and time.perf_counter() < t_end):
        ids, a, b = fn()
        ttft.append(a * 1e3)
        decode.append(b * 1e3)
    return ids, statistics.median(ttft), statistics.median(decode), len(ttft)


# -- cases ----------------------------------------------------------------------------------------

def compare_ids(ours, theirs) -> dict:
    rows = []
    for a, b in zip(ours, theirs):
        diverge = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if diverge is None and len(a) != len(b):
            diverge = min(len(a), len(b))
        rows.append(diverge)
    return {"identical": all(d is None for d in rows) and len(ours) == len(theirs),
            "first_divergence_per_row": rows}


def prefill_case(ctx, length: int) -> dict:
    prompt = make_prompts([length], ctx["limit"], seed=length)
    runs = {
        OURS: lambda: run_ours(ctx["engine"], prompt, 1),
        HF: lambda: run_transformers(ctx["hf"], prompt, 1, ctx["pad"], ctx["eos"]),
    }
    results = {}
    for name, fn in runs.items():
        try:
            _, ttft, _, n = time_runs(fn, ctx["reps"], ctx["max_s"])
            results[name] = {"ttft_ms": ttft, "prompt_tokens_per_s": length / ttft * 1e3, "reps": n}
        except Exception as exc:  # noqa: BLE001 -- record, keep going
            results[name] = {"error": common.short_error(exc)}
    ours, theirs = results[OURS].get("ttft_ms"), results[HF].get("ttft_ms")
    return {"case": f"prefill L={length}", "kind": "prefill", "dtype": ctx["dtype_name"],
            "shape": {"batch": 1, "prompt_lens": [length], "new_tokens": 1}, "results": results,
            "ours_ms": ours, "transformers_ms": theirs, "speedup": common.ratio(theirs, ours)}


def decode_case(ctx, batch: int, lengths, new_tokens: int) -> dict:
    prompts = make_prompts(lengths, ctx["limit"], seed=1000 + batch)
    runs = {
        OURS: lambda: run_ours(ctx["engine"], prompts, new_tokens),
        HF: lambda: run_transformers(ctx["hf"], prompts, new_tokens, ctx["pad"], ctx["eos"]),
    }
    results, ids = {}, {}
    steps = new_tokens - 1
    for name, fn in runs.items():
        try:
            ids[name], ttft, decode, n = time_runs(fn, ctx["reps"], ctx["max_s"])
            results[name] = {"ttft_ms": ttft, "decode_ms": decode, "ms_per_step": decode / steps,
                             "tokens_per_s": batch * steps / decode * 1e3, "reps": n,
                             "generated_per_row": [len(r) for r in ids[name]]}
        except Exception as exc:  # noqa: BLE001
            results[name] = {"error": common.short_error(exc)}
    rec = {"case": f"decode B={batch}", "kind": "decode", "dtype": ctx["dtype_name"],
           "shape": {"batch": batch, "prompt_lens": list(lengths), "new_tokens": new_tokens,
                     "transformers_padding": "left" if len(set(lengths)) > 1 else "none"},
           "results": results}
    ours, theirs = results[OURS].get("ms_per_step"), results[HF].get("ms_per_step")
    rec.update(ours_ms=ours, transformers_ms=theirs, speedup=common.ratio(theirs, ours))
    if OURS in ids and HF in ids:
        rec["ids"] = compare_ids(ids[OURS], ids[HF])
    return rec


def run_dtype(run: common.Run, checkpoint: Path, dtype_name: str, payload, rows) -> None:
    args, device, budget = run.args, run.device, run.budget
    dtype = common.DTYPES[dtype_name]
    prefill_lens = args.prompt_lens
    decode_batches = {b: DECODE_BATCHES[b] for b in args.batches}
    max_len = max(prefill_lens + [n for ls in decode_batches.values() for n in ls]) + args.new_tokens + 16
    t0 = time.perf_counter()
    ckpt, engine = load_ours(checkpoint, device, dtype, max_model_len=max_len,
                             max_batched_tokens=max(max(prefill_lens), sum(max(decode_batches.values(), key=sum))),
                             max_num_seqs=max(decode_batches))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = load_transformers(checkpoint, device, dtype)
    t_hf = time.perf_counter() - t0
    pad, eos = eos_outside_vocab(ckpt)
    ctx = {"engine": engine, "hf": hf, "limit": text_id_limit(ckpt), "dtype_name": dtype_name, "pad": pad,
           "eos": eos, "reps": args.reps, "max_s": args.max_s}
    payload["loads"].append({"dtype": dtype_name, "ours_load_s": t_ours, "transformers_load_s": t_hf,
                             "kv_cache_blocks": engine.kv_cache.num_blocks, "block_size": engine.block_size})
    print(f"  {dtype_name}: loaded ours in {t_ours:.1f} s, transformers in {t_hf:.1f} s "
          f"[{budget.elapsed():.0f} s]")

    tags = {"dtype": dtype_name}
    cases = [common.Case(f"prefill L={n} {dtype_name}", functools.partial(prefill_case, ctx, n), tags=tags)
             for n in prefill_lens]
    cases += [common.Case(f"decode B={b} {dtype_name}", functools.partial(decode_case, ctx, b, ls, args.new_tokens),
                          tags=tags) for b, ls in decode_batches.items()]

    def summary(rec):
        match = rec.get("ids", {}).get("identical")
        return (f"ours {common.fmt_ms(rec['ours_ms'])} ms, transformers {common.fmt_ms(rec['transformers_ms'])} ms, "
                f"speedup {common.fmt_x(rec['speedup'])}{'' if match is None else f', ids identical: {match}'}")

    rows.extend(common.sweep(run, payload, cases, table_row, summary))
    del engine, hf, ctx
    if run.gpu:
        torch.cuda.empty_cache()


def table_row(rec):
    r = rec["results"]
    ours, theirs = r[OURS], r[HF]
    if rec["kind"] == "prefill":
        batch, prompt = 1, rec["shape"]["prompt_lens"][0]
        tok = [e.get("prompt_tokens_per_s") for e in (ours, theirs)]
        what = "TTFT"
    else:
        batch, prompt = rec["shape"]["batch"], "/".join(map(str, rec["shape"]["prompt_lens"]))
        tok = [e.get("tokens_per_s") for e in (ours, theirs)]
        what = f"ms/step ({rec['shape']['new_tokens']} new)"
    fmt_tok = lambda x: "-" if x is None else f"{x:,.0f}"  # noqa: E731
    ids = rec.get("ids")
    match = "-" if ids is None else ("yes" if ids["identical"] else
                                     f"NO (rows diverge at {ids['first_divergence_per_row']})")
    errors = "; ".join(f"{n}: {e['error']}" for n, e in r.items() if "error" in e)
    return [rec["case"], rec["dtype"], batch, prompt, what, common.fmt_ms(rec["ours_ms"]),
            common.fmt_ms(rec["transformers_ms"]), fmt_tok(tok[0]), fmt_tok(tok[1]),
            common.fmt_x(rec["speedup"]), match + (f" [{errors}]" if errors else "")]


HEADERS = ["case", "dtype", "batch", "prompt", "time", "ours ms", "transformers ms", "ours tok/s",
           "transformers tok/s", "speedup", "ids identical"]


# -- command line ---------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__.split("\n\n")[0], compile_flag=False, dtype_list=True,
                      quick_help="prompts 128/512 only, fewer repeats")
    add_checkpoint_args(p)
    p.add_argument("--prompt-lens", type=common.int_list, default=None,
                   help=f"prefill prompt lengths (default {','.join(map(str, PREFILL_LENS))})")
    p.add_argument("--batches", type=common.int_list, default=[1, 4],
                   help=f"decode batches, from {sorted(DECODE_BATCHES)}")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="decode tokens per row")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = p.parse_args(argv)
    if args.prompt_lens is None:
        args.prompt_lens = QUICK_PREFILL_LENS if args.quick else PREFILL_LENS
    bad = [b for b in args.batches if b not in DECODE_BATCHES]
    if bad:
        p.error(f"--batches: {bad} not in {sorted(DECODE_BATCHES)}")
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode time is measured from the first to the last token)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = common.start(NAME, args, no_cuda=(
        f"[{NAME}] CUDA is not available: timing the CPU torch path of our ops against transformers "
        f"on CPU. GPU numbers come from `bash benchmarks/run_gpu.sh` on a CUDA machine."))
    # After start(): importing transformers counts inside the case budget (run_gpu.sh's RESERVE).
    run.info["transformers"] = quiet_transformers().__version__
    gpu = run.gpu
    names = args.dtype or (["bf16", "fp32"] if gpu else ["fp32"])
    # Repeats per implementation and case (one warm-up call first; at least 2, at most reps, fewer
    # past max_s seconds). GPU timings repeat well, and run_gpu.sh gives this whole file ~40 s.
    if gpu:
        args.reps, args.max_s = (2, 0.5) if args.quick else (3, 1.0)
    else:
        args.reps, args.max_s = (3, 1.0) if args.quick else (5, 3.0)

    with contextlib.ExitStack() as stack:
        checkpoint, source = checkpoint_dir(args, stack, "bench_thinker_")
        model_cfg = model_config(checkpoint)
        payload = common.new_payload("thinker", run.device, run.info, {
            "checkpoint": source, "model": model_cfg, "dtypes": names,
            "prefill_prompt_lens": args.prompt_lens,
            "decode_batches": {str(b): DECODE_BATCHES[b] for b in args.batches},
            "new_tokens": args.new_tokens,
            "ours": "omni_runtime.ThinkerEngine.generate (paged KV cache, block 16; "
                    + ("Triton kernels)" if gpu else "ops' CPU torch paths)"),
            "peer": "transformers Qwen2_5OmniThinkerForConditionalGeneration.generate, attn_implementation=sdpa, "
                    "DynamicCache; greedy, min_new_tokens = max_new_tokens, eos outside the vocabulary",
            "prefill": "time to first token of one generate call with max_new_tokens=1 (batch 1)",
            "decode": "(time of last token - time of first token) in one generate call / (new_tokens - 1); "
                      "tokens/s = batch x (new_tokens - 1) / that time",
            "speedup": "transformers ms / ours ms (> 1: ours faster)",
        })
        payload["timing"] = ("time.perf_counter around whole generate calls (CUDA synchronized); token times "
                             "from each implementation's stream; one warm-up call, median of "
                             f"{args.reps} calls (fewer past {args.max_s:.0f} s)")
        payload["loads"] = []
        run.banner(f"{describe_model(model_cfg)}; {', '.join(names)}; checkpoint: {source}")

        rows: list = []
        for name in names:
            if run.budget.spent():
                print(f"  {name}: skipped (budget of {args.budget_s:.0f} s spent)")
                payload["cases"].append({"case": f"all {name}", "dtype": name, "skipped": "budget"})
                continue
            try:
                run_dtype(run, checkpoint, name, payload, rows)
            except Exception as exc:  # noqa: BLE001 -- e.g. a load that does not fit: record it
                payload["cases"].append({"case": f"load {name}", "dtype": name, "error": common.short_error(exc)})
                print(f"  {name}: FAILED {common.short_error(exc)}")
                if gpu:
                    torch.cuda.empty_cache()
    fp32 = [c["ids"]["identical"] for c in payload["cases"] if c.get("dtype") == "fp32" and "ids" in c]
    notes = [f"\nfp32 greedy ids identical to transformers' in every decode case: {all(fp32)}"] if fp32 else []
    return common.finish(run, payload, f"Thinker: ours vs transformers ({run.info['name']}; speedup = transformers "
                         f"ms / ours ms; prefill: time to first token, decode: ms per step)", HEADERS, rows, notes)


# -- pytest-benchmark (CPU, tiny preset, small shapes) ---------------------------------------------

PYTEST_PROMPT, PYTEST_NEW = 32, 8


def cpu_pair(_):
    """Ours and transformers on the tiny preset; check: each makes PYTEST_NEW tokens, the same ones."""
    from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench_thinker_") as tmp:  # both load the weights into memory
        directory = write_tiny_checkpoint(Path(tmp) / "ckpt", seed=0, preset="tiny")
        ckpt, engine = load_ours(directory, torch.device("cpu"), torch.float32, max_model_len=256,
                                 max_batched_tokens=256, max_num_seqs=1)
        hf = load_transformers(directory, torch.device("cpu"), torch.float32)
    vocab = ckpt.config.thinker_config.text_config.vocab_size
    prompt = make_prompts([PYTEST_PROMPT], text_id_limit(ckpt))
    fns = {
        "omni_runtime": lambda: run_ours(engine, prompt, PYTEST_NEW)[0],
        "transformers": lambda: run_transformers(hf, prompt, PYTEST_NEW, pad_id=0, eos_id=vocab)[0],
    }
    ids = {name: fn() for name, fn in fns.items()}
    return common.CpuCase(fns, lambda impl: len(ids[impl][0]) == PYTEST_NEW
                          and ids["omni_runtime"] == ids["transformers"])  # fp32 greedy: the same tokens


test_thinker_generate_cpu = common.cpu_benchmark(
    cpu_pair, ["omni_runtime", "transformers"],
    f"thinker generate (tiny, prompt {PYTEST_PROMPT}, {PYTEST_NEW} new tokens, fp32)", rounds=3)


if __name__ == "__main__":
    main()
