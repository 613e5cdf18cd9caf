"""dit_window_attention (the Token2Wav DiT's block-window attention, RoPE on head 0 inside the
kernel) vs FlexAttention with the equivalent block mask and vs SDPA with the dense mask.

Peers compute the same function as ours (output checked): head-0 interleaved RoPE as a separate
pass (torch.compile'd, and eager), then torch.compile'd flex_attention with the BlockMask that
create_block_mask builds from the window rule (block_diff in [-back, ahead]); or the same rope
then SDPA with the dense bool mask, on its best backend (transformers' DiTAttention runs SDPA with
a dense mask). "flex alone" times flex_attention on pre-rotated inputs: the attention-only floor
of that peer.

GPU (H100 target): B=2 (classifier-free guidance), 16 heads, head_dim 64, blocks of 24 frames,
(back, ahead) in {(0,0), (1,0), (0,1)}, L = 1k..8k frames, fp32 (the model's dtype) and bf16.
Target: >= 1.5x faster than FlexAttention.

    python -m benchmarks.bench_dit_window_attention            # GPU: table + JSON
    python -m pytest benchmarks/bench_dit_window_attention.py  # CPU, pytest-benchmark
"""
from __future__ import annotations

import functools

import pytest
import torch

from benchmarks import common
from benchmarks.common import Impl
from omni_kernels import dit_window_attention
from omni_kernels.rotary import apply_interleaved_rope, rope_inv_freq

# pytest (CPU): the peer is eager FlexAttention, which warns that it is not compiled.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

NAME = "bench_dit_window_attention"
B, (H, _, D) = common.DIT_BATCH, common.DIT
BLOCK, THETA = common.DIT_BLOCK, common.DIT_ROPE_THETA
PATTERNS = [(0, 0), (1, 0), (0, 1)]
TARGET_SPEEDUP = 1.5
GPU_LENGTHS = [1024, 2048, 4096, 8192]
CPU_LENGTHS = [240, 480]


def make_qkv(length, dtype, device, seed=0):
    """q, k, v (B, H, L, D) as DiTAttention makes them: views of a (B, L, H*D) projection."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, length, H, D, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
                 for _ in range(3))


def rope_head0_qk(q, k, inv_freq):
    """The separate rope pass: interleaved 1-D RoPE (positions 0..L-1) on head 0 of q and k."""
    def rot(x):
        return torch.cat((apply_interleaved_rope(x[:, :1], inv_freq), x[:, 1:]), dim=1)
    return rot(q), rot(k)


@functools.lru_cache(maxsize=1)
def compiled_fns():
    from torch.nn.attention.flex_attention import flex_attention

    common.configure_compile()
    return torch.compile(rope_head0_qk, dynamic=False), torch.compile(flex_attention, dynamic=False)


def window_block_mask(length, back, ahead, device):
    """FlexAttention's BlockMask for the window rule (128-blocks, as create_block_mask makes it).
    back/ahead are 0-d tensors in the mask_mod, so one compiled flex kernel serves all patterns."""
    from torch.nn.attention.flex_attention import create_block_mask

    back_t = torch.tensor(back, device=device)
    ahead_t = torch.tensor(ahead, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        diff = kv_idx // BLOCK - q_idx // BLOCK
        return (diff >= -back_t) & (diff <= ahead_t)
    return create_block_mask(mask_mod, None, None, length, length, device=device)


def dense_window_mask(length, back, ahead, device):
    block = torch.arange(length, device=device) // BLOCK
    diff = block[None, :] - block[:, None]
    return (diff >= -back) & (diff <= ahead)


def build_impls(q, k, v, back, ahead, compiled):
    from torch.nn.attention.flex_attention import flex_attention

    device, length = q.device, q.shape[2]
    inv_freq = rope_inv_freq(D, THETA, device)
    flex_mask = window_block_mask(length, back, ahead, device)
    dense = dense_window_mask(length, back, ahead, device)
    q_rot, k_rot = rope_head0_qk(q, k, inv_freq)
    if compiled:
        crope, flex = compiled_fns()
        tag = "compiled"
    else:
        crope, flex = None, flex_attention
        tag = "eager"

    impls = [Impl("omni_kernels.dit_window_attention",
                  lambda: dit_window_attention(q, k, v, block_size=BLOCK, back=back, ahead=ahead, rope_theta=THETA),
                  role="ours")]
    impls.append(Impl(f"flex[{tag}] alone (pre-rotated)", lambda: flex(q_rot, k_rot, v, block_mask=flex_mask),
                      role="attention_only", group="flex_only"))
    if crope is not None:
        impls.append(Impl("rope(torch.compile)+flex[compiled]",
                          lambda: flex(*crope(q, k, inv_freq), v, block_mask=flex_mask), group="flex"))
    impls.append(Impl(f"rope(eager)+flex[{tag}]",
                      lambda: flex(*rope_head0_qk(q, k, inv_freq), v, block_mask=flex_mask), group="flex"))
    for label, backend, _ in common.sdpa_variants(device, gqa=False, masked=True):
        impls.append(Impl(f"rope(eager)+sdpa[{label},bool mask]", functools.partial(
            lambda backend: common.sdpa_call(*rope_head0_qk(q, k, inv_freq), v, backend=backend, use_gqa=False,
                                             attn_mask=dense), backend), group="sdpa_masked"))
    return impls


def run_case(name, length, back, ahead, dtype, device, timer, compiled):
    q, k, v = make_qkv(length, dtype, device)
    results = common.measure(build_impls(q, k, v, back, ahead, compiled), timer, device)
    ours_ms = results["omni_kernels.dit_window_attention"].get("ms")
    flex_name, flex_ms = common.best(results, "flex")
    flex_only_ms = common.best(results, "flex_only")[1]
    sdpa_name, sdpa_ms = common.best(results, "sdpa_masked")
    rec = common.case_record(name, {"B": B, "H": H, "L": length, "D": D, "block_size": BLOCK, "back": back,
                                    "ahead": ahead, "dtype": common.dtype_name(dtype)}, results, {
        "ours_ms": ours_ms, "best_flex": flex_name, "best_flex_ms": flex_ms, "flex_alone_ms": flex_only_ms,
        "best_sdpa_masked": sdpa_name, "best_sdpa_masked_ms": sdpa_ms,
        "speedup_vs_flex": common.ratio(flex_ms, ours_ms),
        "speedup_vs_flex_alone": common.ratio(flex_only_ms, ours_ms),
        "speedup_vs_sdpa_masked": common.ratio(sdpa_ms, ours_ms),
    })
    return rec


HEADERS = ["case", "ours ms", "rope+flex ms", "vs flex", "flex alone ms", "vs flex alone", "rope+SDPA+mask ms",
           "vs SDPA+mask", "target", "failed"]


def table_row(rec):
    speedup = rec["speedup_vs_flex"]
    met = "-" if speedup is None else ("met" if speedup >= TARGET_SPEEDUP else "NOT met")
    return [rec["case"], common.fmt_ms(rec["ours_ms"]), common.fmt_ms(rec["best_flex_ms"]), common.fmt_x(speedup),
            common.fmt_ms(rec["flex_alone_ms"]), common.fmt_x(rec["speedup_vs_flex_alone"]),
            common.fmt_ms(rec["best_sdpa_masked_ms"]), common.fmt_x(rec["speedup_vs_sdpa_masked"]), met,
            common.failed(rec["results"])]


def main(argv=None):
    run = common.start(NAME, common.parse_args(__doc__.split("\n\n")[0], argv))
    device, gpu = run.device, run.gpu
    if run.args.dtype:
        dtypes = [common.DTYPES[run.args.dtype]]
    else:
        dtypes = [torch.float32, torch.bfloat16] if gpu else [torch.float32]
    lengths = GPU_LENGTHS if gpu else CPU_LENGTHS
    if run.args.quick:
        lengths = [lengths[0], lengths[-1]] if gpu else lengths[:1]
    compiled = gpu or run.args.compile
    payload = common.new_payload("dit_window_attention", device, run.info, {
        "dtypes": [common.dtype_name(d) for d in dtypes], "B": B, "H": H, "D": D, "block_size": BLOCK,
        "patterns": PATTERNS, "lengths": lengths, "compiled_peers": compiled,
        "flex": "torch.compile(flex_attention)" if compiled else "flex_attention (eager)",
        "speedup": "peer ms / ours ms (> 1: ours faster)"})
    run.banner(f"B={B}, {H} heads, d={D}, block {BLOCK}; flex peer: {payload['config']['flex']}")

    # L outermost: if the budget runs out, both dtypes have their shorter lengths measured; the
    # table lists them by dtype, then length.
    cases = []
    for length in lengths:
        for dtype in dtypes:
            dname = common.dtype_name(dtype)
            for back, ahead in PATTERNS:
                name = f"{dname} L={length} back={back} ahead={ahead}"
                cases.append(common.Case(name, functools.partial(run_case, name, length, back, ahead, dtype, device,
                                                                 run.timer, compiled), order=(dname, length)))
    rows = common.sweep(run, payload, cases, table_row, lambda rec: (
        f"ours {common.fmt_ms(rec['ours_ms'])} ms, flex {common.fmt_ms(rec['best_flex_ms'])} ms"))

    targets = []
    for dtype in dtypes:
        dname = common.dtype_name(dtype)
        speedups = [c["speedup_vs_flex"] for c in payload["cases"]
                    if c.get("shape", {}).get("dtype") == dname and c.get("speedup_vs_flex") is not None]
        entry = common.target_entry(f"dit_window_attention >= 1.5x FlexAttention ({dname}, every case)",
                                    f"{dname}: {len(speedups)} cases", min(speedups) if speedups else None, ">=",
                                    TARGET_SPEEDUP, "min over cases of best rope+flex ms / ours ms")
        entry["cases_met"] = sum(s >= TARGET_SPEEDUP for s in speedups)
        targets.append(entry)
    payload["targets"] = targets
    return common.finish(run, payload, f"dit_window_attention vs FlexAttention / SDPA ({run.info['name']}; B={B}, "
                         f"H={H}, d={D}, block {BLOCK}; flex = {payload['config']['flex']})", HEADERS, rows)


# -- pytest-benchmark (CPU torch path, small shapes) -------------------------------------------------

def cpu_impls(_):
    q, k, v = make_qkv(240, torch.float32, torch.device("cpu"))
    impls = build_impls(q, k, v, 1, 0, compiled=False)
    pick = {"omni_kernels": impls[0], "flex": next(i for i in impls if i.group == "flex"),
            "sdpa+mask": next(i for i in impls if i.group == "sdpa_masked")}
    return {name: impl.fn for name, impl in pick.items()}


test_dit_window_attention_cpu = common.cpu_benchmark(
    cpu_impls, ["omni_kernels", "flex", "sdpa+mask"],
    "dit_window_attention L=240 back=1 ahead=0 fp32 (flex eager on CPU)")


if __name__ == "__main__":
    main()
