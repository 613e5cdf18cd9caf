"""Ahead-of-time compile gate: compiles every configuration each kernel's launcher can pick for
sm_80 and sm_90 with no GPU present, and checks what a GPU would refuse or run slowly.

    python -m omni_kernels.aot [KERNEL ...] [--json]

Checks per configuration: it compiles to a cubin; shared memory fits the chip's per-block opt-in
limit; on sm_90 the attention kernels use `wgmma` (Hopper tensor cores), not the sm_80 `mma` path
(a config whose spec says `"wgmma": False`, like a merge kernel with no matmul, skips that check).
A config may name a kernel other than the module's `KERNEL` with a `"kernel"` key.
Must run without TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""
import argparse
import concurrent.futures
import importlib
import json
import os
import sys
import time

KERNELS = ("tmrope_attention", "block_sparse_attention", "dit_window_attention", "paged_decode_attention",
           "paged_prefill_attention")
# cudaDevAttrMaxSharedMemoryPerBlockOptin: A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 166912, 90: 232448}


def kernel_module(name: str):
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    return importlib.import_module(f"omni_kernels.kernels.{name}")


def signature(fn, spec: dict) -> dict:
    """Triton signature: pointers as given, listed floats fp32, other runtime args i32."""
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in spec["pointers"]:
            sig[name] = spec["pointers"][name]
        else:
            sig[name] = "fp32" if name in spec["floats"] else "i32"
    return sig


def alignment_hints(fn, spec: dict) -> dict:
    """16-divisibility of pointers and strides, as the JIT infers it on a GPU for aligned tensors:
    without it the gate would compile variants with unpipelined, unvectorized loads that a GPU
    never runs (and would under-report shared memory)."""
    return {(i,): [["tt.divisibility", 16]] for i, param in enumerate(fn.params)
            if not param.is_constexpr and (param.name in spec["pointers"] or param.name.startswith("stride"))}


def compile_config(name: str, cfg: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = kernel_module(name)
    spec = module.aot_spec(cfg)
    fn = getattr(module, cfg.get("kernel", "KERNEL"))
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn, signature(fn, spec), spec["constexprs"], attrs=alignment_hints(fn, spec)),
        target=GPUTarget("cuda", arch, 32),
        options=dict(spec["options"]),
    )
    ptx = compiled.asm["ptx"]
    shared = compiled.metadata.shared
    problems = []
    if not compiled.asm.get("cubin"):
        problems.append("no cubin")
    if shared > SHARED_LIMIT[arch]:
        problems.append(f"shared memory {shared} B > sm_{arch} limit {SHARED_LIMIT[arch]} B")
    if arch == 90 and spec.get("wgmma", True) and "wgmma" not in ptx:
        problems.append("no wgmma on sm_90")
    return {
        "kernel": name, "arch": f"sm_{arch}", "config": cfg, "shared_bytes": shared,
        "wgmma": "wgmma" in ptx, "needs_wgmma": spec.get("wgmma", True), "seconds": round(time.perf_counter() - start, 2), "problems": problems,
    }


def distinct_configs(name: str) -> list[dict]:
    """The kernel's AOT_CONFIGS, keeping one config per distinct compiled variant."""
    module = kernel_module(name)
    seen, configs = set(), []
    for cfg in module.AOT_CONFIGS:
        spec = module.aot_spec(cfg)
        key = json.dumps([cfg.get("kernel", "KERNEL"), sorted(spec["pointers"].items()), sorted(spec["constexprs"].items()),
                          sorted(spec["options"].items())], default=str)
        if key not in seen:
            seen.add(key)
            configs.append(cfg)
    return configs


def run(names=KERNELS, archs=(80, 90), workers: int | None = None) -> list[dict]:
    jobs = [(name, cfg, arch) for name in names for cfg in distinct_configs(name) for arch in archs]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return list(pool.map(compile_config, *zip(*jobs)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*", default=list(KERNELS))
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    rows = run(args.kernels)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            status = "; ".join(r["problems"]) or "ok"
            print(f"{r['kernel']:24s} {r['arch']} smem={r['shared_bytes']:6d} wgmma={int(r['wgmma'])} "
                  f"{r['seconds']:5.2f}s {status}  {r['config']}")
    bad = [r for r in rows if r["problems"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} configurations compiled clean", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
