"""The GPU-compile gate: every kernel configuration the library can launch compiles ahead of time
for sm_80 and sm_90, fits shared memory, and uses wgmma on sm_90. Runs in a subprocess because
the test session runs under TRITON_INTERPRET=1, and interpreted kernels cannot be compiled."""
import json
import os
import subprocess
import sys

import pytest

from omni_kernels.aot import KERNELS


@pytest.mark.parametrize("kernel", KERNELS)
def test_aot_compile(kernel):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "omni_kernels.aot", kernel, "--json"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.stdout, proc.stderr[-4000:]
    rows = json.loads(proc.stdout)
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert all(r["wgmma"] for r in rows if r["arch"] == "sm_90" and r["needs_wgmma"])
    assert any(r["needs_wgmma"] for r in rows)
    problems = [(r["arch"], r["config"], r["problems"]) for r in rows if r["problems"]]
    assert not problems, problems
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_aot_rejects_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "omni_kernels.aot", "tmrope_attention"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "TRITON_INTERPRET" in proc.stderr
