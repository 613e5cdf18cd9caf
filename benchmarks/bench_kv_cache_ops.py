"""Paged KV-cache ops (store_kv, copy_blocks, swap_blocks) against the device's copy bandwidth and
against what a user would write in torch.

GPU (H100 target), the Thinker's cache (one layer for store_kv: 4 kv heads x 128, bf16):
- the device's copy bandwidth: a large device-to-device `Tensor.copy_` (bytes read + written / time);
- `store_kv` of decode batches (1..64 tokens, each into another sequence's page) and prefill chunks
  (1k..32k tokens through a shuffled block table), page 16 and 256: bandwidth = K+V bytes read +
  written / time, its ratio to the copy bandwidth (target >= 0.8 for the large cases, >= 16k tokens),
  the ratio to a torch copy of the same bytes (contiguous, one launch), and the torch peers
  (`index_copy_` into the flattened cache; the masked `index_put_` reference);
- `copy_blocks` over all 28 layers (copy-on-write of 1..8192 tokens of pages) vs the torch
  reference (index_select + index_copy_ per cache) and vs a torch copy of the same bytes;
- `swap_blocks` GPU -> pinned CPU and back vs `cudaMemcpyAsync` of the same bytes as one contiguous
  transfer (`Tensor.copy_(non_blocking=True)`, pinned) and vs the torch reference.
Every case checks the op's result (the caches) before timing it.

CPU (no CUDA): the C++ CPU twin (public op with its value checks, and the raw torch.ops call) vs
torch `index_copy_` / the reference on small shapes.

    python -m benchmarks.bench_kv_cache_ops            # GPU: table + benchmarks/results/<device>/
    python -m benchmarks.bench_kv_cache_ops --quick    # fewer shapes
    python -m pytest benchmarks/bench_kv_cache_ops.py  # CPU, pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools
import os

import torch

from benchmarks import common
from benchmarks.common import fmt_gbps, fmt_ratio, fmt_us, gbps
from omni_kernels.kv_cache_ops import copy_blocks, store_kv, swap_blocks
from omni_kernels.reference.kv_cache_ops import copy_blocks_reference, store_kv_reference, swap_blocks_reference

NAME = "bench_kv_cache_ops"
_, HK, D = common.THINKER  # the Thinker's kv heads and head_dim
GPU_DECODE = [1, 8, 32, 64]
GPU_PREFILL = [1024, 4096, 16384, 32768]
GPU_COPY = [(16, 1), (16, 16), (16, 512), (256, 1), (256, 32)]  # (page, blocks copied in every layer)
GPU_SWAP_TOKENS = [4096, 32768]
CPU_DECODE = [1, 64]
CPU_PREFILL = [256, 2048]
CPU_COPY = [(16, 16), (16, 128)]
CPU_SWAP_TOKENS = [2048]
CPU_LAYERS = 4
LARGE_STORE_TOKENS = 16384  # "large" store_kv cases (>= 64 MiB moved) carry the bandwidth target
TARGET_STORE_RATIO = 0.8
RAW_OP = "twin op (torch.ops, unchecked)"  # the C++ twin without the wrapper's value checks (CPU)


# -- peers ---------------------------------------------------------------------------------------------

class SameBytesCopy:
    """Torch copy (one contiguous launch) moving the same bytes as a case: the per-size peer that
    includes the same launch overhead. Cached by size."""

    def __init__(self, device, timer):
        self.device, self.timer, self.cache = device, timer, {}

    def ms(self, moved_bytes: int) -> float:
        if moved_bytes not in self.cache:
            src = common.filled(moved_bytes // 2, self.device)
            dst = torch.empty_like(src)
            self.cache[moved_bytes] = self.timer(lambda: dst.copy_(src))
        return self.cache[moved_bytes]


def _time_impls(impls: dict, verify, timer, device) -> dict:
    """{name: {"ms"} | {"error"}}, each impl's result verified (verify(fn) -> None or a message)
    before it is timed; a wrong result is recorded as a mismatch and not timed."""
    results = {}
    for name, fn in impls.items():
        entry = {}
        try:
            problem = verify(fn)
            if problem:
                entry.update(mismatch=True, error=problem)
            else:
                entry["ms"] = timer(fn)
        except Exception as exc:  # noqa: BLE001 -- a peer that cannot run is recorded, not fatal
            entry["error"] = common.short_error(exc)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results[name] = entry
    return results


def _ms(results, name):
    e = results.get(name, {})
    return e.get("ms") if not e.get("mismatch") else None


def _best(results, names):
    cands = [(results[n]["ms"], n) for n in names if common.ok(results.get(n))]
    return (min(cands)[1], min(cands)[0]) if cands else (None, None)


def _randn(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


# -- store_kv -----------------------------------------------------------------------------------------

def store_slots(kind: str, n_tokens: int, page: int, num_blocks: int, device, gen) -> torch.Tensor:
    """decode: each token goes to a different sequence's last page (random block, random offset);
    prefill: one sequence's n tokens through a shuffled block table (consecutive offsets)."""
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    if kind == "decode":
        offsets = torch.randint(0, page, (n_tokens,), generator=gen, device=device)
        return perm[:n_tokens] * page + offsets
    j = torch.arange(n_tokens, device=device)
    return perm[j // page] * page + j % page


def store_case(kind, n_tokens, page, dtype, device, timer, same_bytes: SameBytesCopy, copy_gbps, gen):
    pages = -(-n_tokens // page)
    num_blocks = 2 * (n_tokens if kind == "decode" else pages) + 8
    key_cache = _randn((num_blocks, page, HK, D), dtype, device, gen)
    value_cache = _randn((num_blocks, page, HK, D), dtype, device, gen)
    key, value = _randn((n_tokens, HK, D), dtype, device, gen), _randn((n_tokens, HK, D), dtype, device, gen)
    slots = store_slots(kind, n_tokens, page, num_blocks, device, gen)
    init_k, init_v = key_cache.clone(), value_cache.clone()
    want_k, want_v = init_k.clone(), init_v.clone()
    want_k.view(-1, HK, D)[slots] = key
    want_v.view(-1, HK, D)[slots] = value
    flat_k, flat_v = key_cache.view(-1, HK, D), value_cache.view(-1, HK, D)

    impls = {"omni_kernels.store_kv": lambda: store_kv(key, value, key_cache, value_cache, slots)}
    if device.type == "cpu":  # the C++ twin without the wrapper's value checks
        impls[RAW_OP] = lambda: torch.ops.omni_kernels.store_kv(
            key, value, key_cache, value_cache, slots)
    impls["torch index_copy_"] = lambda: (flat_k.index_copy_(0, slots, key), flat_v.index_copy_(0, slots, value))
    impls["torch index_put_ (reference, masked)"] = lambda: store_kv_reference(key, value, key_cache, value_cache,
                                                                               slots)

    def verify(fn):
        key_cache.copy_(init_k)
        value_cache.copy_(init_v)
        fn()
        common.synchronize(device)
        ok = torch.equal(key_cache, want_k) and torch.equal(value_cache, want_v)
        return None if ok else "cache differs from the expected writes"

    results = _time_impls(impls, verify, timer, device)
    moved = 2 * 2 * n_tokens * HK * D * key.element_size()  # K and V, read + written
    ours_ms = _ms(results, "omni_kernels.store_kv")
    same_ms = same_bytes.ms(moved)
    peer, peer_ms = _best(results, [n for n in impls if n.startswith("torch")])
    ours_bw = gbps(moved, ours_ms)
    return {
        "case": f"store_kv {kind} {n_tokens} tok page {page}", "op": "store_kv", "kind": kind,
        "shape": {"tokens": n_tokens, "page": page, "hk": HK, "d": D, "dtype": common.dtype_name(dtype)},
        "results": results, "bytes_moved": moved, "ours_ms": ours_ms, "ours_gbps": ours_bw,
        "ratio_to_copy_bw": common.ratio(ours_bw, copy_gbps),
        "same_bytes_copy_ms": same_ms, "ratio_to_same_bytes_copy": common.ratio(same_ms, ours_ms),
        "best_peer": peer, "best_peer_ms": peer_ms, "speedup_vs_torch": common.ratio(peer_ms, ours_ms),
    }


# -- copy_blocks --------------------------------------------------------------------------------------

def copy_case(m, page, layers, dtype, device, timer, same_bytes: SameBytesCopy, copy_gbps, gen):
    num_blocks = 2 * m + 4
    key_caches = [_randn((num_blocks, page, HK, D), dtype, device, gen) for _ in range(layers)]
    value_caches = [_randn((num_blocks, page, HK, D), dtype, device, gen) for _ in range(layers)]
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    mapping = torch.stack([perm[:m], perm[m:2 * m]], 1)
    src, dst = mapping[:, 0], mapping[:, 1]
    impls = {
        "omni_kernels.copy_blocks": lambda: copy_blocks(key_caches, value_caches, mapping),
    }
    if device.type == "cpu":
        impls[RAW_OP] = lambda: torch.ops.omni_kernels.copy_blocks(
            key_caches, value_caches, mapping)
    impls["torch index_select+index_copy_ (reference)"] = lambda: copy_blocks_reference(key_caches, value_caches,
                                                                                        mapping)

    def verify(fn):
        for c in key_caches + value_caches:
            c.index_fill_(0, dst, -7.0)
        fn()
        common.synchronize(device)
        ok = all(torch.equal(c[dst], c[src]) for c in key_caches + value_caches)
        return None if ok else "destination blocks differ from their sources"

    results = _time_impls(impls, verify, timer, device)
    block_bytes = page * HK * D * key_caches[0].element_size()
    moved = 2 * 2 * layers * m * block_bytes  # K and V of every layer, read + written
    ours_ms = _ms(results, "omni_kernels.copy_blocks")
    same_ms = same_bytes.ms(moved)
    peer, peer_ms = _best(results, [n for n in impls if n.startswith("torch")])
    ours_bw = gbps(moved, ours_ms)
    return {
        "case": f"copy_blocks {m} blk x {layers} layers page {page}", "op": "copy_blocks",
        "shape": {"blocks": m, "tokens": m * page, "layers": layers, "page": page, "hk": HK, "d": D,
                  "dtype": common.dtype_name(dtype)},
        "results": results, "bytes_moved": moved, "ours_ms": ours_ms, "ours_gbps": ours_bw,
        "ratio_to_copy_bw": common.ratio(ours_bw, copy_gbps),
        "same_bytes_copy_ms": same_ms, "ratio_to_same_bytes_copy": common.ratio(same_ms, ours_ms),
        "best_peer": peer, "best_peer_ms": peer_ms, "speedup_vs_torch": common.ratio(peer_ms, ours_ms),
    }


# -- swap_blocks --------------------------------------------------------------------------------------

def swap_cases(tokens, page, dtype, device, timer, gen):
    """Two records: device -> host (swap out) and host -> device (swap in) of tokens // page blocks
    of one cache. On CPU both caches are on the CPU (the twin's memmove)."""
    m = max(1, tokens // page)
    host = torch.device("cpu")
    pin = device.type == "cuda"
    dev_blocks, host_blocks = 2 * m + 4, 2 * m + 4
    dev_cache = _randn((dev_blocks, page, HK, D), dtype, device, gen)
    host_cache = torch.randn(host_blocks, page, HK, D).to(dtype)
    if pin:
        host_cache = host_cache.pin_memory()
    cpu_gen = torch.Generator().manual_seed(1)
    dev_idx = torch.randperm(dev_blocks, generator=cpu_gen)[:m]
    host_idx = torch.randperm(host_blocks, generator=cpu_gen)[:m]
    block_bytes = page * HK * D * dev_cache.element_size()
    nbytes = m * block_bytes
    # "cudaMemcpy of the same bytes": one contiguous transfer between the device and pinned memory.
    dev_buf = common.filled(nbytes, device)
    host_buf = torch.empty(dev_buf.shape, dtype=dev_buf.dtype, pin_memory=pin)
    records = []
    for direction, src_cache, dst_cache, src_idx, dst_idx, memcpy in (
        ("out", dev_cache, host_cache, dev_idx, host_idx, lambda: host_buf.copy_(dev_buf, non_blocking=pin)),
        ("in", host_cache, dev_cache, host_idx, dev_idx, lambda: dev_buf.copy_(host_buf, non_blocking=pin)),
    ):
        mapping = torch.stack([src_idx, dst_idx], 1)
        label = ("device->pinned host" if direction == "out" else "pinned host->device") if pin else \
            ("cpu->cpu" if direction == "out" else "cpu->cpu (back)")
        impls = {"omni_kernels.swap_blocks": functools.partial(swap_blocks, src_cache, dst_cache, mapping)}
        if not pin:
            impls[RAW_OP] = functools.partial(torch.ops.omni_kernels.swap_blocks,
                                                                       src_cache, dst_cache, mapping)
        impls["torch index_select+.to()+index_copy_ (reference)"] = functools.partial(
            swap_blocks_reference, src_cache, dst_cache, mapping)
        impls["memcpy same bytes (Tensor.copy_, contiguous)"] = memcpy

        def verify(fn, src_cache=src_cache, dst_cache=dst_cache, src_idx=src_idx, dst_idx=dst_idx, memcpy=memcpy):
            if fn is memcpy:
                fn()
                common.synchronize(device)
                return None
            dst_cache.index_fill_(0, dst_idx.to(dst_cache.device), -7.0)
            fn()
            common.synchronize(device)
            got = dst_cache.index_select(0, dst_idx.to(dst_cache.device)).cpu()
            want = src_cache.index_select(0, src_idx.to(src_cache.device)).cpu()
            return None if torch.equal(got, want) else "destination blocks differ from their sources"

        results = _time_impls(impls, verify, timer, device)
        ours_ms = _ms(results, "omni_kernels.swap_blocks")
        memcpy_ms = _ms(results, "memcpy same bytes (Tensor.copy_, contiguous)")
        peer, peer_ms = _best(results, [n for n in impls if n.startswith("torch")])
        records.append({
            "case": f"swap_blocks {label} {m} blk page {page}", "op": "swap_blocks", "direction": direction,
            "shape": {"blocks": m, "tokens": m * page, "page": page, "hk": HK, "d": D, "pinned": pin,
                      "dtype": common.dtype_name(dtype)},
            "results": results, "bytes_moved": nbytes, "ours_ms": ours_ms, "ours_gbps": gbps(nbytes, ours_ms),
            "memcpy_ms": memcpy_ms, "memcpy_gbps": gbps(nbytes, memcpy_ms),
            "ratio_to_memcpy": common.ratio(memcpy_ms, ours_ms),
            "best_peer": peer, "best_peer_ms": peer_ms, "speedup_vs_torch": common.ratio(peer_ms, ours_ms),
        })
    return records


# -- main ---------------------------------------------------------------------------------------------

def table_row(rec):
    raw = fmt_us(_ms(rec["results"], RAW_OP))
    if rec["op"] == "swap_blocks":
        return [rec["case"], f"{rec['bytes_moved'] / 2**20:.2f}", fmt_us(rec["ours_ms"]), raw,
                fmt_gbps(rec["ours_gbps"]), "-", f"{fmt_us(rec['memcpy_ms'])} ({fmt_gbps(rec['memcpy_gbps'])} GB/s)",
                fmt_ratio(rec["ratio_to_memcpy"]), fmt_us(rec["best_peer_ms"]), common.fmt_x(rec["speedup_vs_torch"])]
    return [rec["case"], f"{rec['bytes_moved'] / 2**20:.2f}", fmt_us(rec["ours_ms"]), raw, fmt_gbps(rec["ours_gbps"]),
            fmt_ratio(rec["ratio_to_copy_bw"]), fmt_us(rec["same_bytes_copy_ms"]),
            fmt_ratio(rec["ratio_to_same_bytes_copy"]), fmt_us(rec["best_peer_ms"]),
            common.fmt_x(rec["speedup_vs_torch"])]


HEADERS = ["case", "MiB moved", "ours us", "raw op us (CPU)", "ours GB/s", "/ copy BW",
           "same-bytes copy us (swap: memcpy)", "copy us / ours us", "best torch us", "speedup vs torch"]


def targets_from(payload, pages):
    targets = []
    for page in pages:
        large = [c for c in payload["cases"] if c.get("op") == "store_kv" and c.get("kind") == "prefill"
                 and c["shape"]["page"] == page and c["shape"]["tokens"] >= LARGE_STORE_TOKENS]
        ratios = [c["ratio_to_copy_bw"] for c in large if c.get("ratio_to_copy_bw") is not None]
        targets.append(common.target_entry(
            f"store_kv >= {TARGET_STORE_RATIO} x copy bandwidth (page {page})",
            f"prefill >= {LARGE_STORE_TOKENS} tokens, page {page} ({len(ratios)} cases)",
            min(ratios) if ratios else None, ">=", TARGET_STORE_RATIO,
            "min over the large cases of store_kv GB/s / device copy GB/s"))
    return targets


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv),
                       no_cuda=common.no_cuda_message(NAME).replace("(not the Triton kernel)", "(the C++ CPU twin)"))
    if os.environ.get("OMNI_KERNELS_DEBUG", "0") not in ("", "0"):
        print("warning: OMNI_KERNELS_DEBUG is on: the CUDA ops check index values with a host sync (slower)")
    device, gpu, timer = run.device, run.gpu, run.timer
    dtype = run.dtype(cpu=torch.bfloat16)
    decode = GPU_DECODE if gpu else CPU_DECODE
    prefill = GPU_PREFILL if gpu else CPU_PREFILL
    copy_cases = GPU_COPY if gpu else CPU_COPY
    swap_tokens = GPU_SWAP_TOKENS if gpu else CPU_SWAP_TOKENS
    pages = common.PAGES if gpu else common.PAGES[:1]
    layers = common.THINKER_LAYERS if gpu else CPU_LAYERS
    if run.args.quick:
        decode, prefill, copy_cases, swap_tokens = [decode[0], decode[-1]], prefill[-2:], copy_cases[-1:], \
            swap_tokens[-1:]
    gen = torch.Generator(device).manual_seed(0)

    copy_bw = common.copy_bandwidth(device, timer)
    same_bytes = SameBytesCopy(device, timer)
    payload = common.new_payload("kv_cache_ops", device, run.info, {
        "dtype": common.dtype_name(dtype), "hk": HK, "d": D, "copy_blocks_layers": layers,
        "device_copy_bandwidth": copy_bw,
        "store_kv_bytes": "K and V rows, read + written (2 * 2 * tokens * Hk * D * elsize)",
        "copy_blocks_bytes": "K and V blocks of every layer, read + written",
        "swap_blocks_bytes": "bytes transferred (one direction; compare with the memcpy of the same bytes)",
        "peers": "torch index_copy_ / index_put_ / index_select (the references); a torch copy of the same bytes",
        "debug": os.environ.get("OMNI_KERNELS_DEBUG", "0")})
    run.banner(f"{HK} kv heads x {D}, {payload['config']['dtype']}; device copy bandwidth {copy_bw['gbps']:.0f} GB/s "
               f"({copy_bw['ms'] * 1e3:.0f} us for {copy_bw['bytes'] >> 20} MiB read + written)")

    def run_op(op, kind, n, page):
        if op == "store":
            return store_case(kind, n, page, dtype, device, timer, same_bytes, copy_bw["gbps"], gen)
        if op == "copy":
            return copy_case(n, page, layers, dtype, device, timer, same_bytes, copy_bw["gbps"], gen)
        return swap_cases(n, page, dtype, device, timer, gen)

    ops = [("store", kind, n, page) for kind, ns in (("decode", decode), ("prefill", prefill)) for n in ns
           for page in pages]
    ops += [("copy", None, m, page) for page, m in copy_cases if page in pages]
    ops += [("swap", None, n, page) for n in swap_tokens for page in pages]
    # Run order: the large prefill stores (the bandwidth target) first, so a short budget never
    # drops them; the table keeps the natural order.
    order = {o: i for i, o in enumerate(ops)}
    ops.sort(key=lambda o: (o[0] != "store" or o[1] != "prefill", -o[2] if o[0] == "store" else 0))
    cases = [common.Case(f"{op} {kind or ''} {n} {'blk' if op == 'copy' else 'tok'} page {page}".replace("  ", " "),
                         functools.partial(run_op, op, kind, n, page), order=order[(op, kind, n, page)])
             for op, kind, n, page in ops]

    def summary(rec):
        bad = [f"{k}: {v['error']}" for k, v in rec["results"].items() if "error" in v]
        return (f"ours {fmt_us(rec['ours_ms'])} us, {fmt_gbps(rec['ours_gbps'])} GB/s"
                f"{'; ' + '; '.join(bad) if bad else ''}")

    rows = common.sweep(run, payload, cases, table_row, summary)
    payload["targets"] = targets_from(payload, pages)
    return common.finish(run, payload, f"paged KV-cache ops ({run.info['name']}, {payload['config']['dtype']}, "
                         f"{HK} kv heads x {D}; device copy {copy_bw['gbps']:.0f} GB/s)", HEADERS, rows)


# -- pytest-benchmark (CPU: the C++ twin vs torch, small shapes) -------------------------------------

CPU = torch.device("cpu")


def cpu_store_impls(case):
    """store_kv of case = (kind, tokens) at page 16; check(impl): the cache, zeroed first, holds
    exactly the rows that impl wrote."""
    kind, n = case
    page, dtype = 16, torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    pages = -(-n // page)
    num_blocks = 2 * (n if kind == "decode" else pages) + 8
    kc, vc = _randn((num_blocks, page, HK, D), dtype, CPU, gen), _randn((num_blocks, page, HK, D), dtype, CPU, gen)
    key, value = _randn((n, HK, D), dtype, CPU, gen), _randn((n, HK, D), dtype, CPU, gen)
    slots = store_slots(kind, n, page, num_blocks, CPU, gen)
    fns = {
        "store_kv": lambda: store_kv(key, value, kc, vc, slots),
        "twin_op_unchecked": lambda: torch.ops.omni_kernels.store_kv(key, value, kc, vc, slots),
        "torch_index_copy": lambda: (kc.view(-1, HK, D).index_copy_(0, slots, key),
                                     vc.view(-1, HK, D).index_copy_(0, slots, value)),
        "torch_reference": lambda: store_kv_reference(key, value, kc, vc, slots),
    }

    def check(impl):
        kc.zero_()
        vc.zero_()
        fns[impl]()
        return torch.equal(kc.view(-1, HK, D)[slots], key) and torch.equal(vc.view(-1, HK, D)[slots], value)
    return common.CpuCase(fns, check)


def _copy_inputs(m, page=16, layers=CPU_LAYERS):
    gen = torch.Generator().manual_seed(0)
    kcs = [_randn((2 * m + 4, page, HK, D), torch.bfloat16, CPU, gen) for _ in range(layers)]
    vcs = [_randn((2 * m + 4, page, HK, D), torch.bfloat16, CPU, gen) for _ in range(layers)]
    perm = torch.randperm(2 * m + 4, generator=gen)
    return kcs, vcs, torch.stack([perm[:m], perm[m:2 * m]], 1)


def cpu_copy_impls(_):
    """copy_blocks of 64 blocks in every layer; check(impl): destinations, overwritten first, equal
    their sources."""
    kcs, vcs, mapping = _copy_inputs(64)
    fns = {"copy_blocks": lambda: copy_blocks(kcs, vcs, mapping),
           "torch_reference": lambda: copy_blocks_reference(kcs, vcs, mapping)}

    def check(impl):
        for c in kcs + vcs:
            c.index_fill_(0, mapping[:, 1], -7.0)
        fns[impl]()
        return all(torch.equal(c[mapping[:, 1]], c[mapping[:, 0]]) for c in kcs + vcs)
    return common.CpuCase(fns, check)


def cpu_swap_impls(_):
    """swap_blocks of 128 blocks between two CPU caches; check(impl) as for copy_blocks."""
    kcs, vcs, mapping = _copy_inputs(128, layers=1)
    src, dst = kcs[0], vcs[0]
    fns = {"swap_blocks": lambda: swap_blocks(src, dst, mapping),
           "torch_reference": lambda: swap_blocks_reference(src, dst, mapping)}

    def check(impl):
        dst.index_fill_(0, mapping[:, 1], -7.0)
        fns[impl]()
        return torch.equal(dst[mapping[:, 1]], src[mapping[:, 0]])
    return common.CpuCase(fns, check)


test_store_kv_cpu = common.cpu_benchmark(
    cpu_store_impls, ["store_kv", "twin_op_unchecked", "torch_index_copy", "torch_reference"],
    "store_kv {case} tokens (bf16, page 16)", {"decode_64": ("decode", 64), "prefill_2048": ("prefill", 2048)},
    rounds=10)
test_copy_blocks_cpu = common.cpu_benchmark(
    cpu_copy_impls, ["copy_blocks", "torch_reference"], f"copy_blocks 64 blocks x {CPU_LAYERS} layers (bf16, page 16)",
    rounds=10)
test_swap_blocks_cpu = common.cpu_benchmark(
    cpu_swap_impls, ["swap_blocks", "torch_reference"], "swap_blocks 128 blocks cpu->cpu (bf16, page 16)", rounds=10)


if __name__ == "__main__":
    main()
