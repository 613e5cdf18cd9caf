"""block_sparse_attention vs FlexAttention with the same mask, vs SDPA with the same mask as a dense
element mask, and vs dense attention (SDPA, no mask) for density scaling.

Peers (same function as ours, output checked): torch.compile'd flex_attention with
`mask.to_flex()`, and with a BlockMask that create_block_mask builds from the natural mask_mod
(segment ids equal / causal), as a FlexAttention user would write it; SDPA with the dense bool
mask (or causal) on its best backend. Baseline (not the same function): SDPA with no mask on
the same shape -- the dense time the density is measured against.

GPU (H100 target): bf16, 28 query / 4 kv heads, head_dim 128, 128-blocks; segment masks at
~10/25/50/100% block density over 8k tokens, causal 8k, chunked prefill (a 2k chunk over an 8k
context), and the model's patterns: audio chunks of 100 tokens over 30 s of audio (20 heads x 64),
vision windows of a 1280x720 image and of video frames, per-frame full attention of the video
(16 heads x 80). Targets at 25% density: <= 0.35x the dense time, >= 1.2x faster than FlexAttention.

    python -m benchmarks.bench_block_sparse_attention            # GPU: table + JSON
    python -m pytest benchmarks/bench_block_sparse_attention.py  # CPU, pytest-benchmark
"""
from __future__ import annotations

import functools

import pytest
import torch

from benchmarks import common
from benchmarks.common import Impl
from omni_kernels.block_mask import (
    audio_chunk_block_mask, chunked_prefill_block_mask, segment_block_mask, vision_full_block_mask,
    vision_window_block_mask,
)
from omni_kernels.block_sparse_attention import block_sparse_attention

# pytest (CPU): the peer is eager FlexAttention, which warns that it is not compiled.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

NAME = "bench_block_sparse_attention"
LLM_HEADS, AUDIO_HEADS, VISION_HEADS = common.THINKER, common.AUDIO, common.VISION
TARGET_CASE = "segments 2048 (25%)"
TARGET_DENSE_FRACTION = 0.35
TARGET_FLEX_SPEEDUP = 1.2


# -- masks ----------------------------------------------------------------------------------------

def _segments(length, seg_len):
    return list(range(0, length, seg_len)) + [length]


def build_mask(kind, device, **kw):
    """(BlockSparseMask, natural flex mask_mod spec): ("segments", seg_ids) or ("causal", offset)."""
    block = kw.get("block_size", 128)
    if kind == "segments":
        mask = segment_block_mask(torch.tensor(_segments(kw["length"], kw["seg_len"]), device=device), block)
    elif kind == "causal":
        mask = chunked_prefill_block_mask(kw["q_len"], kw["kv_len"], block, device=device)
        return mask, ("causal", kw["kv_len"] - kw["q_len"])
    elif kind == "audio":
        mask, _ = audio_chunk_block_mask(torch.tensor(kw["feature_lens"], device=device), 100, block)
    elif kind == "vision_window":
        mask, _, _ = vision_window_block_mask(torch.tensor(kw["grid_thw"], device=device), block_size=block)
    elif kind == "vision_full":
        mask, _ = vision_full_block_mask(torch.tensor(kw["grid_thw"], device=device), block)
    else:
        raise ValueError(kind)
    return mask, ("segments", mask.q_segment_ids[0])


def gpu_cases(quick=False):
    L = 8192
    cases = [
        ("segments 768 (~10%)", "segments", LLM_HEADS, {"length": L, "seg_len": 768}),
        (TARGET_CASE, "segments", LLM_HEADS, {"length": L, "seg_len": 2048}),
        ("segments 4096 (50%)", "segments", LLM_HEADS, {"length": L, "seg_len": 4096}),
        ("segments 8192 (100%)", "segments", LLM_HEADS, {"length": L, "seg_len": L}),
        ("causal 8k", "causal", LLM_HEADS, {"q_len": L, "kv_len": L}),
        ("chunked prefill 2k over 8k", "causal", LLM_HEADS, {"q_len": 2048, "kv_len": L}),
        ("audio 30 s, 100-token chunks", "audio", AUDIO_HEADS, {"feature_lens": [3000]}),
        ("audio 30 s, 100-token chunks, block 64", "audio", AUDIO_HEADS, {"feature_lens": [3000], "block_size": 64}),
        ("vision windows 1280x720 image", "vision_window", VISION_HEADS, {"grid_thw": [[1, 52, 92]]}),
        ("vision windows video 8 frames 504x896", "vision_window", VISION_HEADS, {"grid_thw": [[4, 36, 64]]}),
        ("vision full/frame video 8 frames 504x896", "vision_full", VISION_HEADS, {"grid_thw": [[4, 36, 64]]}),
    ]
    return cases[:2] + cases[4:6] if quick else cases


def cpu_cases(quick=False):
    L = 1024
    heads = (8, 2, 128)
    cases = [
        ("segments 128 (12.5%)", "segments", heads, {"length": L, "seg_len": 128}),
        ("segments 256 (25%)", "segments", heads, {"length": L, "seg_len": 256}),
        ("segments 512 (50%)", "segments", heads, {"length": L, "seg_len": 512}),
        ("segments 1024 (100%)", "segments", heads, {"length": L, "seg_len": L}),
        ("causal 1k", "causal", heads, {"q_len": L, "kv_len": L}),
        ("chunked prefill 256 over 1k", "causal", heads, {"q_len": 256, "kv_len": L}),
        ("audio 10 s, 100-token chunks", "audio", (4, 4, 64), {"feature_lens": [1000]}),
        ("vision windows 224x392 image", "vision_window", (4, 4, 80), {"grid_thw": [[1, 16, 28]]}),
    ]
    return cases[:2] + cases[4:5] if quick else cases


def make_qkv(heads, q_len, kv_len, dtype, device, seed=0):
    hq, hk, d = heads
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, q_len, d, generator=g).to(device=device, dtype=dtype)
    k, v = (torch.randn(1, hk, kv_len, d, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    return q, k, v


# -- peers ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    common.configure_compile()
    return torch.compile(flex_attention, dynamic=False)


def native_flex_mask(spec, q_len, kv_len, device):
    """The BlockMask a FlexAttention user builds from the mask's meaning (flex's default 128-blocks)."""
    from torch.nn.attention.flex_attention import create_block_mask

    kind, value = spec
    if kind == "segments":
        seg = value

        def mask_mod(b, h, q_idx, kv_idx):
            return seg[q_idx] == seg[kv_idx]
    else:
        offset = value

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)


def flex_impls(q, k, v, mask, spec, compiled):
    from torch.nn.attention.flex_attention import flex_attention

    flex = compiled_flex() if compiled else flex_attention
    tag = "compiled" if compiled else "eager"
    gqa = q.shape[1] != k.shape[1]
    impls = []
    try:
        to_flex = mask.to_flex()
        impls.append(Impl(f"flex[{tag}, mask.to_flex()]",
                          lambda: flex(q, k, v, block_mask=to_flex, enable_gqa=gqa), group="flex"))
    except Exception as exc:  # noqa: BLE001
        impls.append(Impl(f"flex[{tag}, mask.to_flex()]", _raiser(exc), group="flex"))
    try:
        native = native_flex_mask(spec, *mask.seq_lengths, q.device)
        impls.append(Impl(f"flex[{tag}, create_block_mask]",
                          lambda: flex(q, k, v, block_mask=native, enable_gqa=gqa), group="flex"))
    except Exception as exc:  # noqa: BLE001
        impls.append(Impl(f"flex[{tag}, create_block_mask]", _raiser(exc), group="flex"))
    return impls


def _raiser(exc):
    def fn():
        raise exc
    return fn


def sdpa_masked_impls(q, k, v, mask, spec, device):
    """SDPA computing the same function: dense bool mask, or causal (lower-right aligned)."""
    gqa = q.shape[1] != k.shape[1]
    impls = []
    q_len, kv_len = mask.seq_lengths
    if spec[0] == "causal":
        if q_len == kv_len:
            for label, backend, use_gqa in common.sdpa_variants(device, gqa, masked=False):
                impls.append(Impl(f"sdpa[{label},is_causal]", functools.partial(
                    common.sdpa_call, q, k, v, backend=backend, use_gqa=use_gqa, is_causal=True), group="sdpa_masked"))
        else:
            from torch.nn.attention.bias import causal_lower_right

            bias = causal_lower_right(q_len, kv_len)
            for label, backend, use_gqa in common.sdpa_variants(device, gqa, masked=True):
                impls.append(Impl(f"sdpa[{label},causal_lower_right]", functools.partial(
                    common.sdpa_call, q, k, v, backend=backend, use_gqa=use_gqa, attn_mask=bias), group="sdpa_masked"))
    dense = mask.to_dense()  # (1, 1, Lq, Lk) bool
    for label, backend, use_gqa in common.sdpa_variants(device, gqa, masked=True):
        impls.append(Impl(f"sdpa[{label},bool mask]", functools.partial(
            common.sdpa_call, q, k, v, backend=backend, use_gqa=use_gqa, attn_mask=dense), group="sdpa_masked"))
    return impls


def dense_impls(q, k, v, device):
    gqa = q.shape[1] != k.shape[1]
    return [Impl(f"dense sdpa[{label}]", functools.partial(common.sdpa_call, q, k, v, backend=backend, use_gqa=use_gqa),
                 role="baseline", group="dense", check=False)
            for label, backend, use_gqa in common.sdpa_variants(device, gqa, masked=False)]


# -- one case -------------------------------------------------------------------------------------

def run_case(name, kind, heads, kw, dtype, device, timer, compile_peers, dense_cache):
    mask, spec = build_mask(kind, device, **kw)
    q_len, kv_len = mask.seq_lengths
    q, k, v = make_qkv(heads, q_len, kv_len, dtype, device)

    def ours():
        return block_sparse_attention(q, k, v, mask)

    impls = [Impl("omni_kernels.block_sparse_attention", ours, role="ours")]
    impls += flex_impls(q, k, v, mask, spec, compile_peers)
    impls += sdpa_masked_impls(q, k, v, mask, spec, device)
    results = common.measure(impls, timer, device)
    dense_key = (heads, q_len, kv_len, dtype)
    if dense_key not in dense_cache:
        dense_cache[dense_key] = common.measure(dense_impls(q, k, v, device), timer, device)
    results.update(dense_cache[dense_key])

    ours_ms = results["omni_kernels.block_sparse_attention"].get("ms")
    flex_name, flex_ms = common.best(results, "flex")
    sdpa_name, sdpa_ms = common.best(results, "sdpa_masked")
    dense_name, dense_ms = common.best(results, "dense")
    rec = common.case_record(name, {
        "kind": kind, "q_len": q_len, "kv_len": kv_len, "hq": heads[0], "hk": heads[1], "d": heads[2],
        "block_size": list(mask.block_size), "density": round(mask.density(), 4),
        "dtype": common.dtype_name(dtype)}, results, {
        "ours_ms": ours_ms, "best_flex": flex_name, "best_flex_ms": flex_ms,
        "best_sdpa_masked": sdpa_name, "best_sdpa_masked_ms": sdpa_ms,
        "dense": dense_name, "dense_ms": dense_ms,
        "speedup_vs_flex": common.ratio(flex_ms, ours_ms),
        "speedup_vs_sdpa_masked": common.ratio(sdpa_ms, ours_ms),
        "fraction_of_dense": common.ratio(ours_ms, dense_ms),
    })
    return rec


HEADERS = ["case", "Lq x Lk", "heads", "density", "ours ms", "flex ms", "vs flex", "SDPA+mask ms", "vs SDPA+mask",
           "dense ms", "ours/dense", "failed"]


def table_row(rec):
    s = rec["shape"]
    return [rec["case"], f"{s['q_len']}x{s['kv_len']}", f"{s['hq']}/{s['hk']}x{s['d']}", f"{s['density']:.1%}",
            common.fmt_ms(rec["ours_ms"]), common.fmt_ms(rec["best_flex_ms"]), common.fmt_x(rec["speedup_vs_flex"]),
            common.fmt_ms(rec["best_sdpa_masked_ms"]), common.fmt_x(rec["speedup_vs_sdpa_masked"]),
            common.fmt_ms(rec["dense_ms"]), common.fmt_x(rec["fraction_of_dense"]), common.failed(rec["results"])]


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv))
    device, gpu = run.device, run.gpu
    dtype = run.dtype()
    shapes = gpu_cases(run.args.quick) if gpu else cpu_cases(run.args.quick)
    compile_peers = gpu or run.args.compile
    target_case = TARGET_CASE if gpu else "segments 256 (25%)"
    payload = common.new_payload("block_sparse_attention", device, run.info, {
        "dtype": common.dtype_name(dtype), "compiled_peers": compile_peers,
        "flex": "torch.compile(flex_attention)" if compile_peers else "flex_attention (eager)",
        "speedup": "peer ms / ours ms (> 1: ours faster)", "fraction_of_dense": "ours ms / dense SDPA ms"})
    run.banner(f"{payload['config']['dtype']}; flex peer: {payload['config']['flex']}")

    dense_cache = {}
    cases = [common.Case(name, functools.partial(run_case, name, kind, heads, kw, dtype, device, run.timer,
                                                 compile_peers, dense_cache))
             for name, kind, heads, kw in shapes]
    rows = common.sweep(run, payload, cases, table_row, lambda rec: (
        f"density {rec['shape']['density']:.1%}, ours {common.fmt_ms(rec['ours_ms'])} ms, "
        f"flex {common.fmt_ms(rec['best_flex_ms'])} ms, dense {common.fmt_ms(rec['dense_ms'])} ms"))

    t = next((c for c in payload["cases"] if c.get("case") == target_case and "results" in c), None)
    payload["targets"] = [
        common.target_entry("block_sparse_attention at 25% density <= 0.35x dense", target_case,
                            t and t.get("fraction_of_dense"), "<=", TARGET_DENSE_FRACTION,
                            "ours ms / dense SDPA ms"),
        common.target_entry("block_sparse_attention at 25% density >= 1.2x FlexAttention", target_case,
                            t and t.get("speedup_vs_flex"), ">=", TARGET_FLEX_SPEEDUP,
                            "best FlexAttention ms / ours ms"),
    ]
    return common.finish(run, payload, f"block_sparse_attention vs FlexAttention / SDPA ({run.info['name']}, "
                         f"{payload['config']['dtype']}; flex = {payload['config']['flex']})", HEADERS, rows)


# -- pytest-benchmark (CPU torch path, small shapes) -------------------------------------------------

def cpu_impls(_):
    device = torch.device("cpu")
    mask, spec = build_mask("segments", device, length=512, seg_len=128)  # 4 of 16 blocks: 25%
    q, k, v = make_qkv((8, 2, 128), 512, 512, torch.float32, device)
    impls = {"omni_kernels": lambda: block_sparse_attention(q, k, v, mask)}
    for impl in flex_impls(q, k, v, mask, spec, compiled=False)[:1] + sdpa_masked_impls(q, k, v, mask, spec, device)[:1]:
        impls[impl.name.split("[")[0] + ("+mask" if "sdpa" in impl.name else "")] = impl.fn
    impls["dense_sdpa"] = dense_impls(q, k, v, device)[0].fn
    return impls


test_block_sparse_attention_cpu = common.cpu_benchmark(
    cpu_impls, ["omni_kernels", "flex", "sdpa+mask", "dense_sdpa"],
    "block_sparse_attention segments 25% L=512 (flex eager on CPU)", unchecked=["dense_sdpa"])


if __name__ == "__main__":
    main()
