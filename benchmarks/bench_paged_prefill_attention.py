"""paged_prefill_attention (a chunk of new tokens over a cached prefix, TMRoPE on q in-kernel, K/V
read through the block table) against "gather+rope+SDPA": rotate q with a separate rope pass
(omni_kernels.rotary, eager), gather the sequence's K/V through the block table into contiguous
tensors, then torch SDPA on its best backend with the prefix-plus-causal mask -- as a
bottom-right-aligned causal bias (`torch.nn.attention.bias.causal_lower_right`, which flash /
efficient run without a dense mask) or as a dense bool mask; GQA by enable_gqa or repeated k/v.
Outputs are checked against ours.

GPU (H100 target): bf16, 28 query / 4 kv heads, head_dim 128, mrope_section [16, 24, 24]; one
sequence, a 2k-token chunk over cached prefixes of 0, 2k, 8k and 30k tokens, page 16 and 256
(physical pages shuffled). Time, TFLOP/s (4 * Hq * D * visible (q, k) pairs) and the speedup over
the best peer; this benchmark's own bar: not slower than gather+rope+SDPA at prefixes >= 8k.

    python -m benchmarks.bench_paged_prefill_attention            # GPU: table + benchmarks/results/<device>/
    python -m benchmarks.bench_paged_prefill_attention --quick    # fewer shapes
    python -m pytest benchmarks/bench_paged_prefill_attention.py  # CPU, pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools

import torch

from benchmarks import common
from benchmarks.common import Impl
from omni_kernels import paged_prefill_attention
from omni_kernels.rotary import apply_rotate_half, mrope_cos_sin, rope_inv_freq

NAME = "bench_paged_prefill_attention"
HQ, HK, D = common.THINKER
SECTION, THETA = common.MROPE_SECTION, common.ROPE_THETA
GPU_CHUNK = 2048
GPU_PREFIXES = [0, 2048, 8192, 30720]
CPU_CHUNK = 256
CPU_PREFIXES = [0, 256, 1024]
TARGET_MIN_PREFIX = 8192
TARGET_SPEEDUP = 1.0


# -- inputs ---------------------------------------------------------------------------------------

def chunk_positions(prefix: int, chunk: int, device) -> torch.Tensor:
    """TMRoPE (3, chunk) positions of the new tokens at cache indices prefix..prefix+chunk-1: text
    ids with an image block (t fixed, h/w on a grid) in the middle of the chunk when it fits."""
    p = torch.arange(prefix, prefix + chunk).repeat(3, 1)
    side = int((chunk // 4) ** 0.5)
    if side >= 4:
        lo, idx = chunk // 4, torch.arange(side * side)
        p[0, lo:lo + side * side] = prefix + lo
        p[1, lo:lo + side * side] = prefix + lo + idx // side
        p[2, lo:lo + side * side] = prefix + lo + idx % side
        p[:, lo + side * side:] -= side * side - side
    return p.to(device)


def make_inputs(prefix, chunk, page, dtype, device, seed=0):
    """One sequence of prefix + chunk cached tokens (the chunk's rotated K/V already stored, as the
    runtime stores them before attention) over shuffled pages; q (chunk, Hq, D) un-rotated."""
    g = torch.Generator(device).manual_seed(seed)
    length = prefix + chunk
    pages = -(-length // page)
    num_blocks = pages + 1
    key_cache = torch.randn((num_blocks, page, HK, D), generator=g, device=device, dtype=dtype)
    value_cache = torch.randn((num_blocks, page, HK, D), generator=g, device=device, dtype=dtype)
    tables = torch.randperm(num_blocks, generator=g, device=device)[:pages].int()[None]
    q = torch.randn((chunk, HQ, D), generator=g, device=device, dtype=dtype)
    positions = chunk_positions(prefix, chunk, device)
    cu = torch.tensor([0, chunk], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([length], dtype=torch.int32, device=device)
    return q, positions, key_cache, value_cache, tables, cu, seq_lens


def _bias_variants(device, prefix):
    """(label, mask kind, backend, use_gqa): bottom-right causal bias and dense bool mask (and
    is_causal when there is no prefix), each on the backends that may run it."""
    if device.type != "cuda":
        kinds = [("lower_right", [None]), ("bool_mask", [None])]
    else:
        kinds = [("lower_right", [None, "flash", "efficient", "cudnn"]), ("bool_mask", [None, "efficient", "cudnn"])]
        if prefix == 0:
            kinds.append(("is_causal", [None, "flash", "efficient", "cudnn"]))
    out = []
    for kind, backends in kinds:
        for backend in backends:
            for use_gqa in (True, False):
                label = f"{kind},{backend or 'auto'},{'gqa' if use_gqa else 'repeat_kv'}"
                out.append((label, kind, backend, use_gqa))
    return out


def peer_fns(q, positions, key_cache, value_cache, tables, length, kind, backend, use_gqa):
    """(full peer: rope + gather + SDPA, attention only on pre-rotated q / pre-gathered K/V, the
    rope+gather preparation)."""
    chunk = q.shape[0]
    prefix = length - chunk
    page = key_cache.shape[1]
    rows = tables[0, :-(-length // page)].long()
    inv_freq = rope_inv_freq(D, THETA, q.device)
    if kind == "lower_right":
        from torch.nn.attention.bias import causal_lower_right

        mask, causal = causal_lower_right(chunk, length), False
    elif kind == "bool_mask":
        rows_abs = prefix + torch.arange(chunk, device=q.device)  # each new token's cache index
        mask, causal = torch.arange(length, device=q.device)[None, :] <= rows_abs[:, None], False
    else:
        mask, causal = None, True

    def prepare():
        cos, sin = mrope_cos_sin(positions, inv_freq, SECTION)
        q_rot = apply_rotate_half(q, cos, sin).transpose(0, 1)[None]  # (1, Hq, chunk, D)
        k = key_cache[rows].flatten(0, 1)[:length].transpose(0, 1)[None]  # (1, Hk, L, D)
        v = value_cache[rows].flatten(0, 1)[:length].transpose(0, 1)[None]
        return q_rot, k, v

    def attention(q_rot, k, v):
        o = common.sdpa_call(q_rot, k, v, backend=backend, use_gqa=use_gqa, attn_mask=mask, is_causal=causal)
        return o[0].transpose(0, 1)

    def full():
        return attention(*prepare())

    return full, attention, prepare


def flops(prefix, chunk) -> float:
    """4 * Hq * D per visible (query, key) pair; new token i sees prefix + i + 1 keys."""
    pairs = chunk * prefix + chunk * (chunk + 1) / 2
    return 4.0 * HQ * D * pairs


# -- one case -------------------------------------------------------------------------------------

def run_case(name, prefix, chunk, page, dtype, device, timer, quick):
    q, positions, kc, vc, tables, cu, seq_lens = make_inputs(prefix, chunk, page, dtype, device)
    length = prefix + chunk

    def ours():
        return paged_prefill_attention(q, positions, kc, vc, tables, cu, seq_lens, mrope_section=list(SECTION),
                                       rope_theta=THETA, max_seqlen_q=chunk)

    reference = ours()
    results = common.measure([Impl("omni_kernels.paged_prefill_attention", ours, role="ours")], timer, device)
    # Per (mask kind, SDPA backend), GQA by enable_gqa first; repeat_kv only where it is refused.
    parts = {}
    done = set()  # (mask kind, backend) pairs that ran
    for label, kind, backend, use_gqa in sorted(_bias_variants(device, prefix), key=lambda v: not v[3]):
        if (kind, backend) in done or (quick and not use_gqa):
            continue
        full, attention, prepare = peer_fns(q, positions, kc, vc, tables, length, kind, backend, use_gqa)
        parts[label] = (attention, prepare)
        impl_name = f"rope+gather+sdpa[{label}]"
        common.measure([Impl(impl_name, full, group="rope+gather+sdpa")], timer, device, reference=reference,
                       results=results)
        if "error" not in results[impl_name]:
            done.add((kind, backend))
    peer, peer_ms = common.best(results, "rope+gather+sdpa")
    attn_name = None
    if peer is not None:  # SDPA alone on the pre-rotated q and pre-gathered K/V: the peer's floor
        label = peer[len("rope+gather+sdpa["):-1]
        attention, prepare = parts[label]
        attn_name = f"sdpa-only[{label}]"
        common.measure([Impl(attn_name, functools.partial(attention, *prepare()), role="attention_only",
                             group="sdpa_only")], timer, device, reference=reference, results=results)

    ours_ms = results["omni_kernels.paged_prefill_attention"].get("ms")
    attn_ms = results.get(attn_name, {}).get("ms") if attn_name else None
    work = flops(prefix, chunk)
    record = common.case_record(name, {"prefix": prefix, "chunk": chunk, "page": page, "hq": HQ, "hk": HK, "d": D,
                                       "dtype": common.dtype_name(dtype)}, results, {
        "flops": work, "ours_ms": ours_ms, "ours_tflops": None if not ours_ms else work / ours_ms / 1e9,
        "best_peer": peer, "best_peer_ms": peer_ms, "speedup_vs_peer": common.ratio(peer_ms, ours_ms),
        "sdpa_only_ms": attn_ms, "speedup_vs_sdpa_only": common.ratio(attn_ms, ours_ms),
    })
    return record


def table_row(rec):
    tflops = rec["ours_tflops"]
    tflops_text = "-" if tflops is None else (f"{tflops:.0f}" if tflops >= 10 else f"{tflops:.3f}")
    return [rec["case"], common.fmt_ms(rec["ours_ms"]), tflops_text,
            common.fmt_named(rec["best_peer_ms"], rec["best_peer"]),
            common.fmt_x(rec["speedup_vs_peer"]), common.fmt_ms(rec["sdpa_only_ms"]),
            common.fmt_x(rec["speedup_vs_sdpa_only"]), common.failed(rec["results"])]


HEADERS = ["case", "ours ms", "ours TFLOP/s", "best rope+gather+SDPA ms (variant)", "speedup", "SDPA alone ms",
           "vs SDPA alone", "peers failed"]


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv))
    device, gpu = run.device, run.gpu
    dtype = run.dtype()
    chunk = GPU_CHUNK if gpu else CPU_CHUNK
    prefixes = GPU_PREFIXES if gpu else CPU_PREFIXES
    pages = common.PAGES if gpu else common.PAGES[:1]
    if run.args.quick:
        prefixes = [prefixes[0], prefixes[-1]]
    payload = common.new_payload("paged_prefill_attention", device, run.info, {
        "dtype": common.dtype_name(dtype), "hq": HQ, "hk": HK, "d": D, "mrope_section": list(SECTION),
        "rope_theta": THETA, "chunk": chunk,
        "peer": "rope on q (eager) + gather K/V through the block table + best torch SDPA variant "
                "(causal_lower_right bias / bool mask / is_causal; enable_gqa / repeat_kv)",
        "flops": "4 * Hq * D * visible (query, key) pairs",
        "speedup": "best peer ms / ours ms (> 1: ours faster)"})
    run.banner(f"{HQ}/{HK} heads, d={D}, {payload['config']['dtype']}; chunk {chunk}")

    cases = []
    for prefix in sorted(prefixes, reverse=True):  # the long prefixes (the target) first
        for page in pages:
            case = f"chunk {chunk} over prefix {prefix} page {page}"
            cases.append(common.Case(case, functools.partial(run_case, case, prefix, chunk, page, dtype, device,
                                                             run.timer, run.args.quick), order=(prefix, page)))
    rows = common.sweep(run, payload, cases, table_row, lambda rec: (
        f"ours {common.fmt_ms(rec['ours_ms'])} ms, best peer {common.fmt_ms(rec['best_peer_ms'])} ms "
        f"({rec['best_peer']})"))

    big = [c for c in payload["cases"] if "results" in c and c["shape"]["prefix"] >= TARGET_MIN_PREFIX
           and c.get("speedup_vs_peer") is not None]
    payload["targets"] = [common.target_entry(
        "paged prefill not slower than gather+rope+SDPA (this benchmark's own bar)",
        f"prefix >= {TARGET_MIN_PREFIX} ({len(big)} cases)", min((c["speedup_vs_peer"] for c in big), default=None),
        ">=", TARGET_SPEEDUP, "min over cases of best rope+gather+SDPA ms / ours ms")]
    return common.finish(run, payload, f"paged_prefill_attention vs rope + gather + SDPA ({run.info['name']}, "
                         f"{payload['config']['dtype']}, {HQ}/{HK} heads, d={D})", HEADERS, rows)


# -- pytest-benchmark (CPU torch path, small shapes) -------------------------------------------------

PYTEST_CASES = {"chunk128_prefix384_page16": (384, 128, 16)}


def cpu_impls(case):
    prefix, chunk, page = case
    q, positions, kc, vc, tables, cu, seq_lens = make_inputs(prefix, chunk, page, torch.float32, torch.device("cpu"))
    peer, _, _ = peer_fns(q, positions, kc, vc, tables, prefix + chunk, "bool_mask", None, True)
    return {
        "omni_kernels": lambda: paged_prefill_attention(q, positions, kc, vc, tables, cu, seq_lens,
                                                        mrope_section=list(SECTION), rope_theta=THETA,
                                                        max_seqlen_q=chunk),
        "rope+gather+sdpa": peer,
    }


test_paged_prefill_attention_cpu = common.cpu_benchmark(
    cpu_impls, ["omni_kernels", "rope+gather+sdpa"], "paged_prefill_attention {case}", PYTEST_CASES)


if __name__ == "__main__":
    main()
