"""paged_decode_attention (split-KV, GQA-packed Triton kernel) against the device's copy bandwidth
and against "gather-then-SDPA": gather each sequence's K/V through the block table into contiguous
tensors, then torch SDPA on its best backend (flash / cuDNN / efficient / torch's own choice; GQA
by enable_gqa or by repeating k/v) -- the peer a user would write. Outputs are checked against ours.

GPU (H100 target): bf16, 28 query / 4 kv heads, head_dim 128, one new token per sequence; contexts
1k, 4k, 16k, 32k x batches 1, 8, 32, 64 (every sequence at the context: the peer's best case, one
batched gather + one SDPA call), page 16 and 256, the physical pages shuffled; plus one batch of
mixed lengths (the peer pads to the longest and masks). Bandwidth = K+V bytes read / time.
Targets: >= 0.7 x the measured copy bandwidth for the large cases (K+V >= 128 MiB), and never
slower than gather+SDPA. Shapes that do not fit the GPU's free memory or the time budget are
skipped and reported.

    python -m benchmarks.bench_paged_decode_attention            # GPU: table + benchmarks/results/<device>/
    python -m benchmarks.bench_paged_decode_attention --quick    # fewer shapes
    python -m pytest benchmarks/bench_paged_decode_attention.py  # CPU, pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools

import torch

from benchmarks import common
from benchmarks.common import Impl, fmt_gbps, fmt_ratio, fmt_us, gbps
from omni_kernels import paged_decode_attention
from omni_kernels.kernels.paged_decode_attention import pick_num_splits
from omni_kernels.paged_attention import sm_count

NAME = "bench_paged_decode_attention"
HQ, HK, D = common.THINKER
GPU_CONTEXTS = [1024, 4096, 16384, 32768]
GPU_BATCHES = [1, 8, 32, 64]
GPU_VARLEN = (32, 1024, 32768, 16)  # batch, shortest, longest, page: uniform random lengths
CPU_CONTEXTS = [256, 1024]
CPU_BATCHES = [1, 4]
CPU_VARLEN = (4, 17, 1000, 16)
LARGE_KV_BYTES = 128 << 20  # "large" cases (B x L >= 64k tokens) carry the bandwidth target
TARGET_BW_RATIO = 0.7
TARGET_PEER_SPEEDUP = 1.0
MAX_REPEAT_BYTES = 4 << 30  # repeat_kv peers materialize Hq/Hk x the K/V: skipped above this


# -- inputs ---------------------------------------------------------------------------------------

def make_inputs(lengths, page, dtype, device, seed=0):
    """q (B, Hq, D), caches (num_blocks, page, Hk, D) whose pages are a random permutation of the
    physical blocks, block_tables (B, max_pages) int32 (unused entries 0: valid, never read by
    ours), seq_lens (B,) int32."""
    g = torch.Generator(device).manual_seed(seed)
    pages = [-(-length // page) for length in lengths]
    num_blocks = sum(pages) + 1
    key_cache = torch.randn((num_blocks, page, HK, D), generator=g, device=device, dtype=dtype)
    value_cache = torch.randn((num_blocks, page, HK, D), generator=g, device=device, dtype=dtype)
    physical = torch.randperm(num_blocks, generator=g, device=device).int()
    tables = torch.zeros((len(lengths), max(pages)), dtype=torch.int32, device=device)
    used = 0
    for b, n in enumerate(pages):
        tables[b, :n] = physical[used:used + n]
        used += n
    q = torch.randn((len(lengths), HQ, D), generator=g, device=device, dtype=dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    return q, key_cache, value_cache, tables, seq_lens


def gather_sdpa_fn(q, key_cache, value_cache, block_tables, seq_lens, backend, use_gqa):
    """The peer: gather every sequence's pages into (B, Hk, L, D) (padded to the longest, masked
    when lengths differ), then one SDPA call with the single query token."""
    page = key_cache.shape[1]
    lengths = seq_lens.tolist()
    longest = max(lengths)
    n_pages = -(-longest // page)
    tables = block_tables[:, :n_pages].long()
    mask = None
    if min(lengths) != longest:
        mask = (torch.arange(longest, device=q.device)[None, :] < seq_lens[:, None].long())[:, None, None, :]

    def gather(cache):
        return cache[tables].flatten(1, 2)[:, :longest].transpose(1, 2)  # (B, Hk, L, D)

    def run():
        k, v = gather(key_cache), gather(value_cache)
        return common.sdpa_call(q[:, :, None, :], k, v, backend=backend, use_gqa=use_gqa, attn_mask=mask)[:, :, 0]

    def attention_only(k, v):
        return common.sdpa_call(q[:, :, None, :], k, v, backend=backend, use_gqa=use_gqa, attn_mask=mask)[:, :, 0]

    return run, gather, attention_only


def kv_bytes(lengths, dtype) -> int:
    return 2 * sum(lengths) * HK * D * torch.empty((), dtype=dtype).element_size()


# -- one case -------------------------------------------------------------------------------------

def run_case(name, lengths, page, dtype, device, timer, copy_gbps):
    q, kc, vc, tables, seq_lens = make_inputs(lengths, page, dtype, device)
    longest = max(lengths)

    def ours():
        return paged_decode_attention(q, kc, vc, tables, seq_lens, max_seq_len=longest)

    reference = ours()
    results = common.measure([Impl("omni_kernels.paged_decode_attention", ours, role="ours")], timer, device)
    # Per SDPA backend, GQA by enable_gqa first; repeat_kv (which materializes Hq/Hk x the K/V)
    # only where that backend refuses enable_gqa.
    variants = {}
    repeat_bytes = 2 * len(lengths) * HQ * longest * D * q.element_size()
    masked = min(lengths) != longest
    by_backend = {}
    for label, backend, use_gqa in common.sdpa_variants(device, gqa=True, masked=masked):
        by_backend.setdefault(backend, []).append((label, use_gqa))
    for backend, options in by_backend.items():
        for label, use_gqa in sorted(options, key=lambda o: not o[1]):  # enable_gqa first
            impl_name = f"gather+sdpa[{label}]"
            if not use_gqa and repeat_bytes > MAX_REPEAT_BYTES:
                results[impl_name] = {"role": "peer", "group": "gather+sdpa",
                                 "skipped": f"repeat_kv would materialize {repeat_bytes >> 20} MiB"}
                break
            run, gather, attention_only = gather_sdpa_fn(q, kc, vc, tables, seq_lens, backend, use_gqa)
            variants[label] = (gather, attention_only)
            common.measure([Impl(impl_name, run, group="gather+sdpa")], timer, device, reference=reference,
                           results=results)
            if "error" not in results[impl_name]:
                break

    peer, peer_ms = common.best(results, "gather+sdpa")
    attn_only = None
    if peer is not None:  # the attention alone on pre-gathered K/V: the peer's floor
        label = peer[len("gather+sdpa["):-1]
        gather, attention_only = variants[label]
        k, v = gather(kc), gather(vc)
        attn_only = f"sdpa-only[{label}]"
        common.measure([Impl(attn_only, functools.partial(attention_only, k, v), role="attention_only",
                             group="sdpa_only")], timer, device, reference=reference, results=results)
        del k, v

    ours_ms = results["omni_kernels.paged_decode_attention"].get("ms")
    nbytes = kv_bytes(lengths, dtype)
    ours_bw = gbps(nbytes, ours_ms)
    attn_ms = results.get(attn_only, {}).get("ms") if attn_only else None
    record = common.case_record(name, {
        "batch": len(lengths), "context": longest, "lengths": lengths if masked else None,
        "tokens": sum(lengths), "page": page, "hq": HQ, "hk": HK, "d": D,
        "dtype": common.dtype_name(dtype)}, results, {
        "kv_bytes": nbytes, "ours_ms": ours_ms, "ours_gbps": ours_bw,
        "ratio_to_copy_bw": common.ratio(ours_bw, copy_gbps),
        "num_splits": pick_num_splits(len(lengths), HK, HQ // HK, longest, sm_count(device)),
        "best_peer": peer, "best_peer_ms": peer_ms, "speedup_vs_gather_sdpa": common.ratio(peer_ms, ours_ms),
        "sdpa_only_ms": attn_ms, "speedup_vs_sdpa_only": common.ratio(attn_ms, ours_ms),
    })
    return record


def memory_problem(lengths, dtype, device) -> str | None:
    """Cache + one gathered copy inside the peer + one pre-gathered copy for the SDPA-only timing:
    why that does not fit the GPU's free memory, or None."""
    if device.type != "cuda":
        return None
    need = 3 * kv_bytes(lengths, dtype) + (256 << 20)
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.9 * free:
        return f"memory: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def table_row(rec):
    return [rec["case"], f"{rec['kv_bytes'] / 2**20:.0f}", rec["num_splits"], fmt_us(rec["ours_ms"]),
            fmt_gbps(rec["ours_gbps"]), fmt_ratio(rec["ratio_to_copy_bw"]),
            common.fmt_named(rec["best_peer_ms"], rec["best_peer"], fmt_us),
            common.fmt_x(rec["speedup_vs_gather_sdpa"]), fmt_us(rec["sdpa_only_ms"]),
            common.fmt_x(rec["speedup_vs_sdpa_only"]), common.failed(rec["results"])]


HEADERS = ["case", "K+V MiB", "splits", "ours us", "ours GB/s", "/ copy BW", "best gather+SDPA us (variant)",
           "speedup", "SDPA alone us", "vs SDPA alone", "peers failed"]


def targets_from(payload, pages):
    measured = [c for c in payload["cases"] if "results" in c]
    targets = []
    for page in pages:
        large = [c for c in measured if c["shape"]["page"] == page and c["kv_bytes"] >= LARGE_KV_BYTES
                 and c.get("ratio_to_copy_bw") is not None]
        targets.append(common.target_entry(
            f"paged decode >= {TARGET_BW_RATIO} x copy bandwidth (page {page})",
            f"K+V >= {LARGE_KV_BYTES >> 20} MiB, page {page} ({len(large)} cases)",
            min((c["ratio_to_copy_bw"] for c in large), default=None), ">=", TARGET_BW_RATIO,
            "min over the large cases of K+V GB/s / device copy GB/s"))
    speedups = [c["speedup_vs_gather_sdpa"] for c in measured if c.get("speedup_vs_gather_sdpa") is not None]
    targets.append(common.target_entry(
        "paged decode not slower than gather+SDPA (this benchmark's own bar)", f"all {len(speedups)} measured cases",
        min(speedups, default=None), ">=", TARGET_PEER_SPEEDUP, "min over cases of best gather+SDPA ms / ours ms"))
    return targets


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv))
    device, gpu = run.device, run.gpu
    dtype = run.dtype()
    contexts = GPU_CONTEXTS if gpu else CPU_CONTEXTS
    batches = GPU_BATCHES if gpu else CPU_BATCHES
    pages = common.PAGES if gpu else common.PAGES[:1]
    varlen = GPU_VARLEN if gpu else CPU_VARLEN
    if run.args.quick:
        contexts, batches = [contexts[0], contexts[-1]], [batches[0], batches[-1]]
    copy_bw = common.copy_bandwidth(device, run.timer)
    payload = common.new_payload("paged_decode_attention", device, run.info, {
        "dtype": common.dtype_name(dtype), "hq": HQ, "hk": HK, "d": D, "device_copy_bandwidth": copy_bw,
        "bytes": "K+V read once: 2 * sum(seq_lens) * Hk * D * elsize",
        "peer": "gather K/V through the block table (torch indexing) + best torch SDPA variant (one query token)",
        "speedup": "best peer ms / ours ms (> 1: ours faster)"})
    run.banner(f"{HQ}/{HK} heads, d={D}, {payload['config']['dtype']}; device copy bandwidth "
               f"{copy_bw['gbps']:.0f} GB/s")

    shapes = [(f"B={b} L={ctx} page {page}", [ctx] * b, page) for ctx in contexts for b in batches for page in pages]
    vb, lo, hi, vpage = varlen
    gen = torch.Generator().manual_seed(1)
    mixed = torch.randint(lo, hi + 1, (vb,), generator=gen).tolist()
    shapes.append((f"B={vb} L={lo}..{hi} mixed page {vpage}", mixed, vpage))
    # Largest K+V first: the cases that carry the bandwidth target are measured before the budget
    # can run out; the table lists them by context, batch, page.
    order = {case: i for i, (case, _, _) in enumerate(shapes)}
    shapes.sort(key=lambda s: -kv_bytes(s[1], dtype))
    cases = [common.Case(case, functools.partial(run_case, case, lengths, page, dtype, device, run.timer,
                                                 copy_bw["gbps"]), order=order[case],
                         skip=functools.partial(memory_problem, lengths, dtype, device))
             for case, lengths, page in shapes]
    rows = common.sweep(run, payload, cases, table_row, lambda rec: (
        f"ours {fmt_us(rec['ours_ms'])} us ({fmt_gbps(rec['ours_gbps'])} GB/s), best peer "
        f"{fmt_us(rec['best_peer_ms'])} us ({rec['best_peer']})"))

    payload["targets"] = targets_from(payload, pages)
    return common.finish(run, payload, f"paged_decode_attention vs gather+SDPA ({run.info['name']}, "
                         f"{payload['config']['dtype']}, {HQ}/{HK} heads, d={D}; device copy "
                         f"{copy_bw['gbps']:.0f} GB/s)", HEADERS, rows)


# -- pytest-benchmark (CPU torch path, small shapes) -------------------------------------------------

PYTEST_CASES = {"B4_L512_page16": ([512] * 4, 16), "mixed_B4_page16": ([17, 300, 1000, 600], 16)}


def cpu_impls(case):
    lengths, page = case
    q, kc, vc, tables, seq_lens = make_inputs(lengths, page, torch.float32, torch.device("cpu"))
    peer, _, _ = gather_sdpa_fn(q, kc, vc, tables, seq_lens, None, True)
    return {
        "omni_kernels": lambda: paged_decode_attention(q, kc, vc, tables, seq_lens, max_seq_len=max(lengths)),
        "gather+sdpa": peer,
    }


test_paged_decode_attention_cpu = common.cpu_benchmark(
    cpu_impls, ["omni_kernels", "gather+sdpa"], "paged_decode_attention {case}", PYTEST_CASES)


if __name__ == "__main__":
    main()
