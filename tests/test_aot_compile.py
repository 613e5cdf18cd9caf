"""The GPU-compile gate: every kernel the model's calls JIT-compile builds ahead of time for sm_80
and sm_90, fits shared memory and uses wgmma on sm_90 -- and the gate compiles what the launcher
launches: its specialisation is Triton's own for the launcher's real arguments.

Runs the gate in subprocesses because the test session runs under TRITON_INTERPRET=1, and
interpreted kernels cannot be compiled; `python tests/test_aot_compile.py` is the subprocess that
recomputes the Thinker's tmrope specialisation and the old gate's number without the interpreter.
"""
import functools
import json
import os
import subprocess
import sys

import pytest

from omni_kernels.aot import KERNELS, kernel_module

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
THINKER_TMROPE = {"model": "thinker", "dtype": "bf16", "tokens": 1000}
# The Thinker's tmrope call as the launcher's rules specialise it: ints divisible by 16 get "D"
# (strides, head_dim, section_t), the rest "" (stride_pos = 1000 tokens, group 7, section_h 24),
# every torch allocation is 16-byte aligned. A Triton that changes these rules fails here.
THINKER_TMROPE_INTS = {
    "stride_qn": "D", "stride_qh": "D", "stride_kn": "D", "stride_kh": "D", "stride_vn": "D", "stride_vh": "D",
    "stride_on": "D", "stride_oh": "D", "stride_rn": "D", "stride_rh": "D", "stride_pos": "",
    "group": "", "head_dim": "D", "section_t": "D", "section_h": "",
}
# sm_90 shared memory of that call, (gate, old gate hinting only pointers and strides), per Triton:
# the launched kernel pipelines its loads (16-byte vectors need head_dim's divisibility), the old
# gate compiled an unpipelined variant no GPU runs.
THINKER_TMROPE_SHARED = {"3.6": (166912, 68608), "3.9": (166912, 68608)}


@functools.cache
def gate_rows(kernel: str) -> tuple[list[dict], int, str]:
    proc = subprocess.run([sys.executable, "-m", "omni_kernels.aot", kernel, "--json"],
                          capture_output=True, text=True, env=ENV, timeout=1800)
    return (json.loads(proc.stdout) if proc.stdout else []), proc.returncode, proc.stderr[-4000:]


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # tuples came back as lists


@pytest.mark.parametrize("kernel", KERNELS)
def test_aot_compile(kernel):
    rows, returncode, stderr = gate_rows(kernel)
    assert rows, stderr
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert all(r["wgmma"] for r in rows if r["arch"] == "sm_90" and r["needs_wgmma"])
    assert any(r["needs_wgmma"] for r in rows)
    problems = [(r["arch"], r["configs"], r["problems"]) for r in rows if r["problems"]]
    assert not problems, problems
    assert returncode == 0, stderr
    for cfg in kernel_module(kernel).AOT_CONFIGS:  # every real call was compiled for both archs
        archs = {r["arch"] for r in rows if any(_same(cfg, c) for c in r["configs"])}
        assert archs == {"sm_80", "sm_90"}, cfg


def test_gate_compiles_the_launchers_specialisation():
    """Thinker tmrope, bf16: the gate's specialisation equals what Triton's per-argument rule
    computes for the arguments `launch` passes, its int keys are the pinned ones, and the shared
    memory it reports is the launched kernel's, which the old hinting under-reported."""
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=ENV, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout)
    rows, _, stderr = gate_rows("tmrope_attention")
    row = next((r for r in rows if r["arch"] == "sm_90" and any(_same(THINKER_TMROPE, c) for c in r["configs"])),
               None)
    assert row is not None, stderr
    assert row["specialization"] == facts["triton"]
    assert {name: row["specialization"][name][1] for name in THINKER_TMROPE_INTS} == THINKER_TMROPE_INTS
    assert all(key == "D" for kind, key in row["specialization"].values() if kind.startswith("*"))
    print(f"Thinker tmrope bf16 sm_90 (triton {facts['version']}): gate {row['shared_bytes']} B, "
          f"old pointer/stride hints {facts['old_shared']} B")
    assert row["shared_bytes"] > facts["old_shared"]
    pinned = THINKER_TMROPE_SHARED.get(".".join(facts["version"].split(".")[:2]))
    if pinned:
        assert (row["shared_bytes"], facts["old_shared"]) == pinned


def test_aot_rejects_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "omni_kernels.aot", "tmrope_attention"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr


def _launcher_facts() -> dict:
    """(No interpreter.) For the Thinker's tmrope launch: Triton's per-argument specialisation
    (`native_specialize_impl`, the function the JIT's binder calls), and the sm_90 shared memory of
    the old gate's compile, which typed every runtime int i32 and hinted only pointers and strides."""
    import inspect

    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    from omni_kernels import aot
    from omni_kernels.kernels import tmrope_attention as module

    launch = aot.record_launches(module, THINKER_TMROPE)[0]
    fn, target = launch.fn, GPUTarget("cuda", 90, 32)
    names = [p.name for p in fn.params]
    bound = inspect.signature(fn.fn).bind(*launch.args, **{k: v for k, v in launch.kwargs.items() if k in names})
    backend = make_backend(target)
    spec = {}
    for p in fn.params:
        value = bound.arguments[p.name]
        spec[p.name] = (["constexpr", value] if p.is_constexpr else
                        list(native_specialize_impl(backend, value, p.is_const, not p.do_not_specialize,
                                                    not p.do_not_specialize_on_alignment)))
    signature = {p.name: "constexpr" if p.is_constexpr else spec[p.name][0] if spec[p.name][0][0] in "*f" else "i32"
                 for p in fn.params}
    constexprs = {p.name: spec[p.name][1] for p in fn.params if p.is_constexpr}
    hints = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names)
             if signature[name].startswith("*") or name.startswith("stride")}
    options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages")}
    old = triton.compile(ASTSource(fn, signature, constexprs, attrs=hints), target=target, options=options)
    return {"version": triton.__version__, "triton": spec, "old_shared": old.metadata.shared}


if __name__ == "__main__":
    print(json.dumps(_launcher_facts(), default=str))
