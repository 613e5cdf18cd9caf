"""Ahead-of-time compile gate: compiles, for sm_80 and sm_90 and with no GPU present, exactly the
kernels the model's launches JIT-compile, and checks what a GPU would refuse or run slowly.

    python -m omni_kernels.aot [KERNEL ...] [--json]

Each kernel module lists the model's real calls (`AOT_CONFIGS`, shapes from `MODELS` below);
`aot_spec(cfg)["launch"]` calls the module's own `launch(...)` with CPU tensors built the way the
call site builds them (views, offsets and all). The gate records the kernel calls that `launch`
makes instead of running them, then replays each one through `JITFunction.warmup` against a
compile-only driver for the target arch: Triton's own binder specialises the arguments (ints
divisible by 16, ints equal to 1 turned into constants, 16-byte pointer alignment, whatever rules
the installed Triton has) and Triton's own compile path builds the kernel -- the same one a GPU
would launch for those arguments, with no rule copied here.

Checks per distinct compiled variant: it compiles to a cubin; shared memory fits the chip's
per-block opt-in limit; on sm_90 the attention kernels use `wgmma` (Hopper tensor cores), not the
sm_80 `mma` path (kernels a spec lists under `"no_matmul"`, like a merge kernel, skip that check);
the main kernel's constexprs and launch options are the ones `aot_spec` states. Configs whose
launches specialise identically share one compile. Must run without TRITON_INTERPRET
(interpreted kernels cannot be compiled).
"""
import argparse
import collections
import concurrent.futures
import functools
import importlib
import json
import multiprocessing
import os
import sys
import time

KERNELS = ("tmrope_attention", "block_sparse_attention", "dit_window_attention", "paged_decode_attention",
           "paged_prefill_attention")
# cudaDevAttrMaxSharedMemoryPerBlockOptin: A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 166912, 90: 232448}
ARCHS = tuple(SHARED_LIMIT)

# The model's attention shapes (Qwen2.5-Omni 7B, /work/shared/NOTES.md; benchmarks/common.py has
# the same numbers): (query heads, kv heads, head_dim).
MODELS = {
    "thinker": (28, 4, 128),
    "talker": (12, 4, 128),
    "audio": (20, 20, 64),
    "vision": (16, 16, 80),
    "dit": (16, 16, 64),
}
MROPE_SECTION = (16, 24, 24)
MAX_MODEL_LEN = 32768  # block-table width = MAX_MODEL_LEN / page size (the engine's StepState)
DIT_BATCH = 2  # classifier-free guidance
DIT_BLOCK = 24  # mel frames per DiT attention block
SM_COUNT = 132  # H100: steers the split-KV count as `paged_decode_attention` picks it

Launch = collections.namedtuple("Launch", "fn grid args kwargs")


def torch_dtype(name: str):
    """"bf16" -> torch.bfloat16 (the dtype names of kernel configs)."""
    from .kernels.core import DTYPES

    return {v: k for k, v in DTYPES.items()}[name]


def kernel_module(name: str):
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    return importlib.import_module(f"omni_kernels.kernels.{name}")


def _record(launches, fn, *args, grid, warmup, **kwargs):
    launches.append(Launch(fn, grid, args, kwargs))


def record_launches(module, cfg: dict) -> list[Launch]:
    """The kernel calls `aot_spec(cfg)["launch"]` makes, in order, recorded instead of run: an
    instance attribute `run` shadows `JITFunction.run`, which `kernel[grid](...)` calls."""
    from triton.runtime.jit import JITFunction

    kernels = {id(v): v for v in vars(module).values() if isinstance(v, JITFunction)}.values()
    launches = []
    for fn in kernels:
        fn.run = functools.partial(_record, launches, fn)
    try:
        module.aot_spec(cfg)["launch"]()
    finally:
        for fn in kernels:
            del fn.run
    return launches


class _CompileOnlyDriver:
    """What `JITFunction.run` asks the driver before it compiles. The arch stands in for the device
    id, so each arch gets its own binder and kernel cache. The gate never launches."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.target.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _target(arch: int) -> None:
    """Make `arch` the compile target (this process launches nothing, so the driver stays swapped)."""
    from triton.runtime.driver import driver

    driver.set_active(_CompileOnlyDriver(arch))


def specialization(launch: Launch, arch: int) -> dict:
    """{parameter: [type, key]} exactly as the launcher's binder computes it for these arguments:
    key "D" = divisible by 16 (ints) / 16-byte aligned (pointers), "" = neither, type "constexpr"
    with the value for constexprs and for ints specialised as constants (== 1)."""
    _target(arch)
    binder = launch.fn.device_caches[arch][-1]
    _, spec, _ = binder(*launch.args, **launch.kwargs)
    return {p.name: list(s) for p, s in zip(launch.fn.params, spec)}


def compile_launch(launch: Launch, arch: int):
    """The CompiledKernel the JIT builds for this launch on `arch` (its own warmup path)."""
    _target(arch)
    return launch.fn.warmup(*launch.args, grid=launch.grid, **launch.kwargs)


def _summary(launch: Launch, spec: dict) -> dict:
    """What the specialisation made of the runtime arguments, where it differs from "every int
    divisible by 16, every pointer aligned": ints turned into constants (== 1), ints not divisible
    by 16, pointers not 16-byte aligned."""
    out = {"constant": [], "not_div16": [], "unaligned": []}
    for p in launch.fn.params:
        kind, key = spec[p.name]
        if p.is_constexpr or key == "D" or key is None:  # constexpr params; divisible; floats and bools
            continue
        out["constant" if kind == "constexpr" else "unaligned" if kind.startswith("*") else "not_div16"].append(p.name)
    return out


def plan(names=KERNELS, archs=ARCHS) -> list[dict]:
    """One job per distinct (kernel, specialisation, options) and arch, with the configs it serves."""
    jobs = {}
    for name in names:
        module = kernel_module(name)
        for index, cfg in enumerate(module.AOT_CONFIGS):
            for slot, launch in enumerate(record_launches(module, cfg)):
                options = {k: v for k, v in launch.kwargs.items() if k not in {p.name for p in launch.fn.params}}
                for arch in archs:
                    spec = specialization(launch, arch)
                    key = json.dumps([name, launch.fn.__name__, spec, sorted(options.items()), arch], default=str)
                    job = jobs.setdefault(key, {"kernel": name, "launched": launch.fn.__name__, "arch": arch,
                                                "at": (index, slot), "configs": [], "specialization": spec})
                    job["configs"].append(cfg)
    return list(jobs.values())


def check(job: dict) -> dict:
    """Compile one job's launch (recorded again here: a worker gets indices, not tensors) and check it."""
    name, arch = job["kernel"], job["arch"]
    module = kernel_module(name)
    index, slot = job["at"]
    cfg = module.AOT_CONFIGS[index]
    spec = module.aot_spec(cfg)
    launches = record_launches(module, cfg)
    launch = launches[slot]
    problems = []
    if specialization(launch, arch) != job["specialization"]:
        problems.append("specialisation differs between recordings")
    if launch.fn is module.KERNEL:
        for what in ("constexprs", "options"):
            used = {k: launch.kwargs.get(k) for k in spec[what]}
            if used != spec[what]:
                problems.append(f"aot_spec {what} {spec[what]} but launch passed {used}")
    start = time.perf_counter()
    compiled = compile_launch(launch, arch)
    ptx = compiled.asm["ptx"]
    shared = compiled.metadata.shared
    needs_wgmma = launch.fn.__name__ not in spec.get("no_matmul", ())
    if not compiled.asm.get("cubin"):
        problems.append("no cubin")
    if shared > SHARED_LIMIT[arch]:
        problems.append(f"shared memory {shared} B > sm_{arch} limit {SHARED_LIMIT[arch]} B")
    if arch == 90 and needs_wgmma and "wgmma" not in ptx:
        problems.append("no wgmma on sm_90")
    return {
        "kernel": name, "launched": job["launched"], "arch": f"sm_{arch}", "configs": job["configs"],
        "shared_bytes": shared, "wgmma": "wgmma" in ptx, "needs_wgmma": needs_wgmma,
        "specialization": job["specialization"], "summary": _summary(launch, job["specialization"]),
        "seconds": round(time.perf_counter() - start, 2), "problems": problems,
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run(names=KERNELS, archs=ARCHS, workers: int | None = None) -> list[dict]:
    _one_thread()
    jobs = plan(names, archs)
    # spawn, not fork: building the masks started torch's thread pool, which a forked child inherits locked.
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers or os.cpu_count(), initializer=_one_thread,
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(check, jobs))


def _row(r: dict) -> str:
    status = "; ".join(r["problems"]) or "ok"
    s = r["summary"]
    spec = " ".join(f"{k}={','.join(v)}" for k, v in s.items() if v)
    configs = json.dumps(r["configs"][0], separators=(",", ":"))
    if len(r["configs"]) > 1:
        configs += f" (+{len(r['configs']) - 1} configs alike)"
    return (f"{r['launched']:30s} {r['arch']} smem={r['shared_bytes']:6d} wgmma={int(r['wgmma'])} "
            f"{r['seconds']:6.2f}s {status}  [{spec}]  {configs}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*", default=list(KERNELS))
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    for name in args.kernels:
        kernel_module(name)  # unknown names fail before any work
    rows = run(args.kernels)
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        for r in rows:
            print(_row(r))
    bad = [r for r in rows if r["problems"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} compiled variants clean", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
