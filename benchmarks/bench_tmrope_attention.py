"""tmrope_attention (fused TMRoPE + causal varlen GQA attention) vs what a user would otherwise run:
a separate rope pass (omni_kernels.rotary in eager torch, and the same function torch.compile'd,
which Inductor turns into fused Triton kernels) followed by torch SDPA on its best backend
(flash / cuDNN / efficient / torch's own choice; GQA by enable_gqa or by repeating k/v; varlen
batches as a loop of per-sequence SDPA calls or torch's varlen_attn where it exists).

GPU (H100 target): bf16, 28 query heads / 4 kv heads, head_dim 128, mrope_section [16, 24, 24];
single sequences of 1k-16k tokens and varlen batches. Target: >= 1.1x faster than rope + SDPA at 8k.

    python -m benchmarks.bench_tmrope_attention            # GPU: table + benchmarks/results/<device>/
    python -m benchmarks.bench_tmrope_attention --quick    # fewer shapes
    python -m pytest benchmarks/bench_tmrope_attention.py  # CPU, pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools
import inspect

import torch

from benchmarks import common
from benchmarks.common import Impl
from omni_kernels import tmrope_attention
from omni_kernels.rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq

NAME = "bench_tmrope_attention"
HQ, HK, D = common.THINKER
SECTION, THETA = common.MROPE_SECTION, common.ROPE_THETA
TARGET_CASE = "single L=8192"
TARGET_SPEEDUP = 1.1

GPU_SINGLE = [1024, 2048, 4096, 8192, 16384]
# Varlen batches: unaligned lengths, as packed prefill of several requests produces them.
GPU_VARLEN = {8192: [3000, 2048, 1500, 1024, 620], 16384: [6000, 4096, 3000, 2048, 1240]}
CPU_SINGLE = [256, 512, 1024]
CPU_VARLEN = {1024: [500, 300, 224]}


# -- inputs ---------------------------------------------------------------------------------------

def make_inputs(lengths, dtype, device, hq=HQ, hk=HK, d=D, seed=0):
    """Packed q (N, Hq, D), k/v (N, Hk, D), TMRoPE positions (3, N) and cu_seqlens (int32).
    Positions per sequence: text-like ids with an image block (t fixed, h/w on a grid) in the
    middle, so the three axes differ as in a multimodal prompt."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, d, generator=g).to(device=device, dtype=dtype) for h in (hq, hk, hk))
    pos = []
    for length in lengths:
        p = torch.arange(length).repeat(3, 1)
        img = min(length // 2, 1024)
        if img >= 64:
            lo, side = length // 4, int(img ** 0.5)
            idx = torch.arange(side * side)
            p[0, lo:lo + side * side] = lo
            p[1, lo:lo + side * side] = lo + idx // side
            p[2, lo:lo + side * side] = lo + idx % side
            p[:, lo + side * side:] -= side * side - side  # the cursor resumes after the image
        pos.append(p)
    positions = torch.cat(pos, 1).to(device)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, k, v, positions, cu


def rope_qk(q, k, positions, inv_freq):
    """The separate rope pass: transformers' rotate-half TMRoPE, fp32 math, cast back."""
    cos, sin = mrope_cos_sin(positions, inv_freq, SECTION)
    return apply_rotate_half(q, cos, sin), apply_rotate_half(k, cos, sin)


@functools.lru_cache(maxsize=1)
def compiled_rope_qk():
    common.configure_compile()
    return torch.compile(rope_qk, dynamic=False)


def _bhld(x):  # (N, H, D) -> (1, H, N, D) view
    return x.transpose(0, 1)[None]


def _varlen_attn_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def attention_variants(device, lengths, q_len_max):
    """{label: attn(q_rot, k_rot, v) -> (N, Hq, D)}: every SDPA way to run causal GQA attention on
    packed, already rotated tokens (single sequence: one call; varlen: per-sequence loop, or
    torch's varlen_attn where available)."""
    bounds = [0] + torch.tensor(lengths).cumsum(0).tolist()
    variants = {}
    for label, backend, use_gqa in common.sdpa_variants(device, gqa=HQ != HK, masked=False):
        def attn(qr, kr, v, backend=backend, use_gqa=use_gqa):
            if len(lengths) == 1:
                o = common.sdpa_call(_bhld(qr), _bhld(kr), _bhld(v), backend=backend, use_gqa=use_gqa, is_causal=True)
                return o[0].transpose(0, 1).contiguous()
            out = torch.empty_like(qr)
            for s, e in zip(bounds[:-1], bounds[1:]):
                o = common.sdpa_call(_bhld(qr[s:e]), _bhld(kr[s:e]), _bhld(v[s:e]), backend=backend,
                                     use_gqa=use_gqa, is_causal=True)
                out[s:e] = o[0].transpose(0, 1)
            return out
        name = f"sdpa[{label}]" if len(lengths) == 1 else f"sdpa-loop[{label}]"
        variants[name] = attn

    varlen_attn = _varlen_attn_fn()
    if varlen_attn is not None and device.type == "cuda":
        params = inspect.signature(varlen_attn).parameters
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
        for use_gqa in ([True, False] if "enable_gqa" in params else [False]):
            def attn(qr, kr, v, use_gqa=use_gqa):
                if not use_gqa:
                    kr, v = kr.repeat_interleave(HQ // HK, 1), v.repeat_interleave(HQ // HK, 1)
                extra = {"enable_gqa": True} if use_gqa else {}
                return varlen_attn(qr, kr, v, cu, cu, q_len_max, q_len_max, **causal, **extra)
            variants[f"varlen_attn[{'gqa' if use_gqa else 'repeat_kv'}]"] = attn
    return variants


# -- one case -------------------------------------------------------------------------------------

def run_case(name, lengths, dtype, device, timer, compile_peers):
    q, k, v, positions, cu = make_inputs(lengths, dtype, device)
    max_len = max(lengths)
    inv_freq = rope_inv_freq(D, THETA, device)

    def ours():
        return tmrope_attention(q, k, v, positions, cu, mrope_section=list(SECTION), rope_theta=THETA,
                                max_seqlen=max_len)

    reference = common.first_tensor(ours())
    q_rot, k_rot = rope_qk(q, k, positions, inv_freq)
    attns = attention_variants(device, lengths, max_len)
    impls = [Impl("omni_kernels.tmrope_attention", ours, role="ours")]
    impls += [Impl(label, functools.partial(fn, q_rot, k_rot, v), role="attention_only", group="sdpa_only")
              for label, fn in attns.items()]
    results = common.measure(impls, timer, device, reference=reference)
    best_attn, _ = common.best(results, "sdpa_only")

    peers = []
    if best_attn is not None:
        attn = attns[best_attn]

        def eager_peer():
            qr, kr = rope_qk(q, k, positions, inv_freq)
            return attn(qr, kr, v), kr
        peers.append(Impl(f"rope(eager)+{best_attn}", eager_peer, group="rope+sdpa"))
        if compile_peers:
            crope = compiled_rope_qk()

            def compiled_peer():
                qr, kr = crope(q, k, positions, inv_freq)
                return attn(qr, kr, v), kr
            peers.append(Impl(f"rope(torch.compile)+{best_attn}", compiled_peer, group="rope+sdpa"))
    common.measure(peers, timer, device, reference=reference, results=results)

    ours_ms = results["omni_kernels.tmrope_attention"].get("ms")
    peer_name, peer_ms = common.best(results, "rope+sdpa")
    attn_ms = common.best(results, "sdpa_only")[1]
    record = common.case_record(name, {"lengths": lengths, "tokens": sum(lengths), "hq": HQ, "hk": HK, "d": D,
                                       "dtype": common.dtype_name(dtype)}, results, {
        "ours_ms": ours_ms, "best_peer": peer_name, "best_peer_ms": peer_ms,
        "best_sdpa_only": best_attn, "best_sdpa_only_ms": attn_ms,
        "speedup_vs_rope_sdpa": common.ratio(peer_ms, ours_ms),
        "speedup_vs_sdpa_only": common.ratio(attn_ms, ours_ms),
    })
    return record


def table_row(rec):
    return [rec["case"], rec["shape"]["tokens"], common.fmt_ms(rec["ours_ms"]),
            common.fmt_named(rec["best_peer_ms"], rec["best_peer"]), common.fmt_x(rec["speedup_vs_rope_sdpa"]),
            common.fmt_named(rec["best_sdpa_only_ms"], rec["best_sdpa_only"]),
            common.fmt_x(rec["speedup_vs_sdpa_only"]), common.failed(rec["results"])]


HEADERS = ["case", "tokens", "ours ms", "best rope+SDPA ms (peer)", "speedup", "SDPA alone ms (backend)",
           "vs SDPA alone", "peers failed"]


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv))
    device, gpu = run.device, run.gpu
    dtype = run.dtype()
    single = GPU_SINGLE if gpu else CPU_SINGLE
    varlen = GPU_VARLEN if gpu else CPU_VARLEN
    if run.args.quick:
        single = [single[0], 8192] if gpu else single[:2]
        varlen = dict(list(varlen.items())[:1])
    compile_peers = gpu or run.args.compile
    payload = common.new_payload("tmrope_attention", device, run.info, {
        "dtype": common.dtype_name(dtype), "hq": HQ, "hk": HK, "d": D, "mrope_section": list(SECTION),
        "rope_theta": THETA, "compiled_peers": compile_peers,
        "peer": "separate rope pass (eager / torch.compile) + best torch SDPA variant, causal, GQA",
        "speedup": "best peer ms / ours ms (> 1: ours faster)"})
    run.banner(f"{HQ}/{HK} heads, d={D}, {payload['config']['dtype']}")

    shapes = [(f"single L={n}", [n]) for n in single] + [(f"varlen N={n} ({len(ls)} seqs)", ls)
                                                          for n, ls in varlen.items()]
    cases = [common.Case(case, functools.partial(run_case, case, lengths, dtype, device, run.timer, compile_peers))
             for case, lengths in shapes]
    rows = common.sweep(run, payload, cases, table_row, lambda rec: (
        f"ours {common.fmt_ms(rec['ours_ms'])} ms, best peer {common.fmt_ms(rec['best_peer_ms'])} ms "
        f"({rec['best_peer']})"))

    target_rec = next((c for c in payload["cases"] if c.get("case") == TARGET_CASE), None)
    payload["targets"] = [common.target_entry(
        "tmrope_attention >= 1.1x rope+SDPA at 8k", TARGET_CASE,
        target_rec.get("speedup_vs_rope_sdpa") if target_rec else None, ">=", TARGET_SPEEDUP,
        "best rope+SDPA ms / ours ms")]
    return common.finish(run, payload, f"tmrope_attention vs rope + SDPA ({run.info['name']}, "
                         f"{payload['config']['dtype']}, {HQ}/{HK} heads, d={D}, causal)", HEADERS, rows)


# -- pytest-benchmark (CPU torch path, small shapes) -------------------------------------------------

PYTEST_CASES = {"single_L512": [512], "varlen_3seq": [300, 150, 62]}


def cpu_impls(lengths):
    q, k, v, positions, cu = make_inputs(lengths, torch.float32, torch.device("cpu"))
    inv_freq = rope_inv_freq(D, THETA)
    attn = attention_variants(torch.device("cpu"), lengths, max(lengths))
    label = "sdpa[auto,gqa]" if len(lengths) == 1 else "sdpa-loop[auto,gqa]"
    return {
        "omni_kernels": lambda: tmrope_attention(q, k, v, positions, cu, mrope_section=list(SECTION),
                                                 rope_theta=THETA, max_seqlen=max(lengths)),
        "rope+sdpa": lambda: attn[label](*rope_qk(q, k, positions, inv_freq), v),
    }


test_tmrope_attention_cpu = common.cpu_benchmark(
    cpu_impls, ["omni_kernels", "rope+sdpa"], "tmrope_attention {case}", PYTEST_CASES)


if __name__ == "__main__":
    main()
