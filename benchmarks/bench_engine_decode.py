"""Decode tokens/s of our engine against transformers' generate and against the plain-loop floor, on
the same checkpoint, dtype and batch; and chunked against one-shot prefill of one long prompt.

(a) ours: `omni_runtime.engine.Engine(lm, max_num_seqs=16, max_model_len=...)`,
    `generate_ids([prompt] * B, SamplingParams(max_new_tokens=N, ignore_eos=True))` (greedy);
(b) transformers: `Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(dir).generate(input_ids
    (B, L), max_new_tokens=N, min_new_tokens=N, do_sample=False)` (loaded and called as in
    bench_thinker: sdpa attention, an eos id outside the vocabulary);
(c) the floor: a minimal hand-written decode loop over the same weights (read from our model's
    modules): a contiguous (B, kv heads, T, head_dim) K/V tensor per layer, rotary in torch,
    `scaled_dot_product_attention`, greedy argmax -- no paging, no scheduler, no checks.

Decode ms per step = (time of a call making N tokens - time of a call making 1) / (N - 1): the
prefill and the first token cancel out, the same way for all three; tokens/s = B / that. Each call
is timed whole on the host clock (CUDA synchronized), one warm-up first, the median of repeats.
The greedy ids of (a), (b), (c) are compared row by row (fp32: they must be identical; bf16 for
information, rounding can break near-ties). Ratios are TIME ratios per decode step (< 1: ours
faster): ours / transformers and ours / floor; target: ours within 1.3x of the floor at batch 1.

Chunked prefill: one prompt of 2048 tokens through `Engine(lm, max_num_batched_tokens=512)` (four
steps: a prefill, then three chunks over the cached prefix) and through max_num_batched_tokens=2048
(one step); time to the first token of each, ratio chunked / one-shot.

The checkpoint is by default the random "7b-ratios" tiny one (bench_thinker's); `--checkpoint DIR`
times a real one. CPU: fp32, one thread (`--threads`). GPU: bf16, ours through its Triton kernels.

    python -m benchmarks.bench_engine_decode --quick        # CPU: N=32, fewer repeats, table only
    python -m benchmarks.bench_engine_decode --checkpoint DIR --dtype bf16 --out /tmp/engine_decode.json
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.bench_thinker import (
    add_checkpoint_args, checkpoint_dir, compare_ids, describe_model, eos_outside_vocab, load_lm,
    load_transformers, make_prompts, model_config, quiet_transformers, run_transformers, text_id_limit,
)

NAME = "bench_engine_decode"
OURS, HF, FLOOR = "omni_runtime.Engine", "transformers.generate", "floor (plain loop)"
BATCHES = [1, 4, 16]
PROMPT_LEN = 128
NEW_TOKENS = 32
PREFILL_LEN, PREFILL_CHUNK = 2048, 512
TARGET_FLOOR_RATIO = 1.3  # ours ms/step <= 1.3 x the floor's at batch 1


# -- (c) the floor ----------------------------------------------------------------------------------

class FloorLoop:
    """The fastest simple decode loop over a ThinkerLM's weights: per layer a contiguous K/V cache
    (B, Hk, T, D) written in place, SDPA over its first t positions, text rotary (all three TMRoPE
    axes equal, so plain 1-D RoPE) from one cos/sin table. Numerics as ours and transformers:
    RMSNorm and rotary in fp32, cast back; logits in the model dtype."""

    def __init__(self, lm):
        cfg = lm.config
        self.hq, self.hk, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head
        self.eps = cfg.rms_norm_eps
        self.embed = lm.model.embed_tokens.weight
        self.layers = [(layer.input_layernorm.weight,
                        layer.self_attn.q_proj.weight, layer.self_attn.q_proj.bias,
                        layer.self_attn.k_proj.weight, layer.self_attn.k_proj.bias,
                        layer.self_attn.v_proj.weight, layer.self_attn.v_proj.bias,
                        layer.self_attn.o_proj.weight, layer.post_attention_layernorm.weight,
                        layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight)
                       for layer in lm.model.layers]
        self.norm, self.lm_head = lm.model.norm.weight, lm.lm_head.weight
        self.device, self.dtype = self.embed.device, self.embed.dtype
        exponent = torch.arange(0, self.d, 2, dtype=torch.int64, device=self.device).float() / self.d
        self.inv_freq = 1.0 / (float(cfg.rope_theta) ** exponent)  # as transformers computes it
        self.caches, self.cos, self.sin = None, None, None

    def _allocate(self, batch: int, max_len: int) -> None:
        """Caches and the rotary table, reused while the batch and length fit."""
        if self.caches is not None and self.caches[0][0].shape[0] == batch and self.cos.shape[0] >= max_len:
            return
        shape = (batch, self.hk, max_len, self.d)
        self.caches = [(torch.empty(shape, device=self.device, dtype=self.dtype),
                        torch.empty(shape, device=self.device, dtype=self.dtype)) for _ in self.layers]
        freqs = torch.arange(max_len, device=self.device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def _rms(self, x, w):
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, x, cos, sin):  # x (B, H, T, D), cos/sin (T, D)
        xf = x.float()
        half = self.d // 2
        rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)

    def _forward(self, x, start: int):
        """x (B, T, hidden) at cache positions start..start+T-1 -> logits of the last position."""
        b, t, _ = x.shape
        end = start + t
        cos, sin = self.cos[start:end], self.sin[start:end]
        for (ln1, wq, bq, wk, bk, wv, bv, wo, ln2, wg, wu, wd), (kc, vc) in zip(self.layers, self.caches):
            h = self._rms(x, ln1)
            q = F.linear(h, wq, bq).view(b, t, self.hq, self.d).transpose(1, 2)
            k = F.linear(h, wk, bk).view(b, t, self.hk, self.d).transpose(1, 2)
            kc[:, :, start:end] = self._rope(k, cos, sin)
            vc[:, :, start:end] = F.linear(h, wv, bv).view(b, t, self.hk, self.d).transpose(1, 2)
            o = F.scaled_dot_product_attention(self._rope(q, cos, sin), kc[:, :, :end], vc[:, :, :end],
                                               is_causal=t > 1, enable_gqa=True)
            x = x + F.linear(o.transpose(1, 2).reshape(b, t, self.hq * self.d), wo)
            h = self._rms(x, ln2)
            x = x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)
        return F.linear(self._rms(x[:, -1], self.norm), self.lm_head)

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, new_tokens: int) -> list[list[int]]:
        """prompt_ids (B, L) on the device, all rows the same length -> greedy ids (B, new_tokens)."""
        b, length = prompt_ids.shape
        self._allocate(b, length + new_tokens)
        token = self._forward(self.embed[prompt_ids], 0).argmax(-1)
        out = [token]
        for i in range(1, new_tokens):  # no host sync inside the loop: the ids stay on the device
            token = self._forward(self.embed[token][:, None], length + i - 1).argmax(-1)
            out.append(token)
        return torch.stack(out, 1).tolist()


# -- timing -----------------------------------------------------------------------------------------

def timed(fn, device):
    """(result, seconds) of one call, CUDA synchronized on both sides."""
    common.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    common.synchronize(device)
    return out, time.perf_counter() - t0


def decode_timing(make, new_tokens: int, device, reps: int, max_s: float) -> dict:
    """make(n) -> a zero-argument call generating n tokens per row. One warm-up, then calls with 1
    and with n tokens alternated (so drift hits both), up to reps pairs (at least 2, fewer past
    max_s): medians, and ms per decode step = (ms(n) - ms(1)) / (n - 1)."""
    one, full = make(1), make(new_tokens)
    ids, _ = timed(full, device)
    t1, tn = [], []
    t_end = time.perf_counter() + max_s
    while len(tn) < 2 or (len(tn) < reps and time.perf_counter() < t_end):
        t1.append(timed(one, device)[1] * 1e3)
        ids, t = timed(full, device)
        tn.append(t * 1e3)
    ms1, msn = statistics.median(t1), statistics.median(tn)
    return {"ids": ids, "ms_1_token": ms1, f"ms_{new_tokens}_tokens": msn,
            "ms_per_step": (msn - ms1) / (new_tokens - 1), "reps": len(tn)}


# -- cases ------------------------------------------------------------------------------------------

def decode_case(ctx, batch: int) -> dict:
    from omni_runtime.engine import SamplingParams

    n = ctx["new_tokens"]
    prompt = make_prompts([ctx["prompt_len"]], ctx["limit"], seed=batch)[0]
    prompts = [prompt] * batch
    input_ids = torch.tensor(prompts, device=ctx["device"])
    makers = {
        OURS: lambda k: lambda: ctx["engine"].generate_ids(prompts, SamplingParams(max_new_tokens=k, ignore_eos=True)),
        HF: lambda k: lambda: run_transformers(ctx["hf"], prompts, k, ctx["pad"], ctx["eos"])[0],
        FLOOR: lambda k: lambda: ctx["floor"].generate(input_ids, k),
    }
    results, ids = {}, {}
    if isinstance(ctx["engine"], str):  # it failed to build: its error stands for ours in every case
        results[OURS] = {"error": ctx["engine"]}
        del makers[OURS]
    for name, make in makers.items():
        try:
            entry = decode_timing(make, n, ctx["device"], ctx["reps"], ctx["max_s"])
        except Exception as exc:  # noqa: BLE001 -- one side failing leaves the others' numbers
            results[name] = {"error": common.short_error(exc)}
            continue
        ids[name] = entry.pop("ids")
        entry["tokens_per_s"] = batch / entry["ms_per_step"] * 1e3 if entry["ms_per_step"] > 0 else None
        results[name] = entry
    step = {name: results[name].get("ms_per_step") for name in (OURS, HF, FLOOR)}
    rec = {"case": f"decode B={batch}", "kind": "decode",
           "shape": {"batch": batch, "prompt_len": ctx["prompt_len"], "new_tokens": n}, "results": results,
           "ours_over_transformers": common.ratio(step[OURS], step[HF]),
           "ours_over_floor": common.ratio(step[OURS], step[FLOOR])}
    if OURS in ids:
        rec["ids"] = {other: compare_ids(ids[OURS], ids[other]) for other in (HF, FLOOR) if other in ids}
        rec["ids_identical"] = len(rec["ids"]) == 2 and all(c["identical"] for c in rec["ids"].values())
    return rec


def prefill_case(ctx) -> dict:
    """Time to first token of one long prompt, chunked against one-shot (ours only). Host clock
    around whole calls (the returned ids are on the host, so CUDA work is done), warm-up, median."""
    from omni_runtime.engine import Engine, SamplingParams

    length, chunk = ctx["prefill_len"], ctx["prefill_chunk"]
    prompt = make_prompts([length], ctx["limit"], seed=length)[0]
    params = SamplingParams(max_new_tokens=1, ignore_eos=True)
    results, first = {}, {}
    for name, budget in (("chunked", chunk), ("one-shot", length)):
        try:
            engine = Engine(ctx["lm"], max_num_seqs=1, max_model_len=length + 1, max_num_batched_tokens=budget)
            first[name] = engine.generate_ids(prompt, params)
            ms = common.time_cpu(functools.partial(engine.generate_ids, prompt, params), 2, ctx["reps"], ctx["max_s"])
            results[name] = {"ms": ms, "max_num_batched_tokens": budget, "steps": -(-length // budget)}
        except Exception as exc:  # noqa: BLE001 -- recorded; the other configuration still runs
            results[name] = {"error": common.short_error(exc)}
    return {"case": f"prefill {length} (chunks of {chunk} vs one-shot)", "kind": "prefill",
            "shape": {"prompt_len": length, "chunk": chunk}, "results": results,
            "chunked_over_one_shot": common.ratio(results["chunked"].get("ms"), results["one-shot"].get("ms")),
            "first_token_identical": (first["chunked"] == first["one-shot"]) if len(first) == 2 else None}


def tok_s(entry: dict) -> str:
    x = entry.get("tokens_per_s")
    return "-" if x is None else f"{x:,.0f}"


def ids_text(rec) -> str:
    if "ids" not in rec:
        return "-"
    parts = [f"{'=' if c['identical'] else '!='}{'hf' if other == HF else 'floor'}" for other, c in rec["ids"].items()]
    return ("yes" if rec["ids_identical"] else "NO") + f" ({', '.join(parts)})"


def decode_row(rec) -> list:
    r = rec["results"]
    return [rec["shape"]["batch"], tok_s(r[OURS]), tok_s(r[HF]), tok_s(r[FLOOR]),
            common.fmt_ms(r[OURS].get("ms_per_step")), common.fmt_ms(r[HF].get("ms_per_step")),
            common.fmt_ms(r[FLOOR].get("ms_per_step")), common.fmt_x(rec["ours_over_transformers"]),
            common.fmt_x(rec["ours_over_floor"]), ids_text(rec), common.failed(r)]


DECODE_HEADERS = ["batch", "ours tok/s", "transformers tok/s", "floor tok/s", "ours ms/step", "transformers ms/step",
                  "floor ms/step", "ours/transformers (time)", "ours/floor (time)", "ids (a)=(b)=(c)", "failed"]


def prefill_row(rec) -> list:
    r = rec["results"]
    return [rec["case"], common.fmt_ms(r["chunked"].get("ms")), common.fmt_ms(r["one-shot"].get("ms")),
            common.fmt_x(rec["chunked_over_one_shot"]), rec["first_token_identical"], common.failed(r)]


PREFILL_HEADERS = ["case", "chunked ms", "one-shot ms", "chunked/one-shot (time)", "first token identical", "failed"]


def summary(rec) -> str:
    if rec["kind"] == "prefill":
        r = rec["results"]
        return (f"chunked {common.fmt_ms(r['chunked'].get('ms'))} ms, one-shot {common.fmt_ms(r['one-shot'].get('ms'))}"
                f" ms, chunked/one-shot {common.fmt_x(rec['chunked_over_one_shot'])}")
    r = rec["results"]
    return (f"tok/s ours {tok_s(r[OURS])}, transformers {tok_s(r[HF])}, floor {tok_s(r[FLOOR])}; ours/floor "
            f"{common.fmt_x(rec['ours_over_floor'])}, ids identical: {rec.get('ids_identical')}")


# -- command line ---------------------------------------------------------------------------------

def parse_args(argv=None):
    p = common.parser(__doc__.split("\n\n")[0], compile_flag=False, quick_help="fewer repeats")
    add_checkpoint_args(p)
    p.add_argument("--batches", type=common.int_list, default=BATCHES, help="decode batches (default 1,4,16)")
    p.add_argument("--prompt-len", type=int, default=PROMPT_LEN, help="decode prompt length")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens generated per row (N)")
    p.add_argument("--prefill-len", type=int, default=PREFILL_LEN, help="chunked-prefill prompt length (0: skip)")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK, help="max_num_batched_tokens when chunked")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see NOTES.md)")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode time is the difference of N tokens and 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        # One thread: torch's default OpenMP threads on busy cores make decode 10-20x slower and noisy.
        torch.set_num_threads(args.threads)
    run = common.start(NAME, args, no_cuda=(
        f"[{NAME}] CUDA is not available: timing our engine (its ops' CPU torch paths), transformers and the "
        f"plain loop on CPU. GPU numbers come from `bash benchmarks/run_gpu.sh` on a CUDA machine."))
    from omni_runtime.engine import Engine

    run.info["transformers"] = quiet_transformers().__version__
    dtype = run.dtype()
    reps, max_s = ((2, 1.0) if args.quick else (3, 3.0)) if run.gpu else ((3, 3.0) if args.quick else (5, 6.0))
    with contextlib.ExitStack() as stack:
        checkpoint, source = checkpoint_dir(args, stack, "bench_engine_decode_")
        model_cfg = model_config(checkpoint)
        payload = common.new_payload("engine_decode", run.device, run.info, {
            "checkpoint": source, "model": model_cfg, "dtype": common.dtype_name(dtype), "batches": args.batches,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "prefill_len": args.prefill_len,
            "prefill_chunk": args.prefill_chunk,
            "ours": "omni_runtime.engine.Engine.generate_ids, SamplingParams(max_new_tokens=N, ignore_eos=True), "
                    "greedy, max_num_seqs = max batch",
            "transformers": "Qwen2_5OmniThinkerForConditionalGeneration.generate, sdpa, greedy, "
                            "min_new_tokens = max_new_tokens, eos outside the vocabulary",
            "floor": "plain decode loop over the same weights: contiguous per-layer K/V, torch rotary, SDPA, argmax",
            "decode": "ms per step = (median ms of a call making N tokens - median ms of a call making 1) / (N - 1); "
                      "tokens/s = batch / that",
            "ratios": "time ratios per decode step: ours / transformers, ours / floor (< 1: ours faster); "
                      "prefill: chunked ms / one-shot ms"})
        payload["timing"] = (f"time.perf_counter around whole calls (CUDA synchronized), one warm-up, median of up "
                             f"to {reps} calls")
        run.banner(f"{describe_model(model_cfg)}; {payload['config']['dtype']}; checkpoint: {source}")

        t0 = time.perf_counter()
        ckpt, lm = load_lm(checkpoint, run.device, dtype)
        hf = load_transformers(checkpoint, run.device, dtype)
        pad, eos = eos_outside_vocab(ckpt)
        limit = lm.config.max_position_embeddings
        try:
            engine = Engine(lm, max_num_seqs=max(args.batches),
                            max_model_len=min(args.prompt_len + args.new_tokens, limit),
                            max_num_batched_tokens=max(args.batches) * args.prompt_len)
        except Exception as exc:  # noqa: BLE001 -- the engine is being rewritten: keep the peers' numbers
            engine = common.short_error(exc)
            print(f"  our Engine failed to build: {engine}")
        print(f"  loaded in {time.perf_counter() - t0:.1f} s [{run.budget.elapsed():.0f} s]")
        ctx = {"engine": engine, "hf": hf, "floor": FloorLoop(lm), "lm": lm, "device": run.device,
               "limit": text_id_limit(ckpt),
               "pad": pad, "eos": eos, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "prefill_len": args.prefill_len, "prefill_chunk": args.prefill_chunk, "reps": reps, "max_s": max_s}
        cases = [common.Case(f"decode B={b}", functools.partial(decode_case, ctx, b)) for b in args.batches]
        if args.prefill_len:
            cases.append(common.Case(f"prefill {args.prefill_len}", functools.partial(prefill_case, ctx)))
        # The sweep's rows are the measured records themselves: they make two tables below.
        records = common.sweep(run, payload, cases, lambda rec: rec, summary)

    decoded = [c for c in records if c["kind"] == "decode"]
    first = next((c for c in decoded if c["shape"]["batch"] == 1), None)
    payload["targets"] = [common.target_entry(
        f"ours within {TARGET_FLOOR_RATIO}x of the plain-loop floor at batch 1", "decode B=1",
        first and first.get("ours_over_floor"), "<=", TARGET_FLOOR_RATIO, "ours ms/step / floor ms/step")]
    common.print_table(f"Decode tokens/s, N={args.new_tokens} new tokens, prompt {args.prompt_len} "
                       f"({run.info['name']}, {payload['config']['dtype']}; ratios are time ratios per step, "
                       f"< 1: ours faster)",
                       DECODE_HEADERS, [decode_row(c) for c in decoded])
    ids = [c["ids_identical"] for c in decoded if "ids_identical" in c]
    notes = [f"\ngreedy ids of ours, transformers and the floor identical in every decode case: {all(ids)}"
             + ("" if dtype == torch.float32 else " (not fp32: rounding can break near-ties)")] if ids else []
    return common.finish(run, payload, "Prefill: chunked vs one-shot (ours; time to first token)", PREFILL_HEADERS,
                         [prefill_row(c) for c in records if c["kind"] == "prefill"], notes,
                         targets_origin="the engine's own bar, on any device")


if __name__ == "__main__":
    main()
