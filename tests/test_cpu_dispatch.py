"""CPU eager dispatch: every public op calls its implementation directly on plain CPU tensors (no
`torch.library` dispatch, no torch._dynamo import), and goes through `torch.ops.omni_kernels.*`
whenever something traces (FakeTensor, make_fx, vmap, torch.compile) or the Triton backend is forced.
"""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import rel_err
from omni_kernels import backend, paged_decode_attention, use_backend
from omni_kernels.reference.paged_decode_attention import paged_decode_attention_reference

# Runs in a fresh interpreter: one call of every public op on small CPU tensors.
_EVERY_OP_ONCE = textwrap.dedent("""
    import sys
    import torch
    import omni_kernels as ok

    torch.manual_seed(0)
    n, d = 20, 64
    q, k, v = torch.randn(n, 4, d), torch.randn(n, 2, d), torch.randn(n, 2, d)
    pos = torch.arange(n).expand(3, n).contiguous()
    out, k_rot = ok.tmrope_attention(q, k, v, pos, torch.tensor([0, 7, n], dtype=torch.int32),
                                     mrope_section=[16, 8, 8])
    q4, k4 = torch.randn(1, 4, 32, d), torch.randn(1, 2, 32, d)
    ok.block_sparse_attention(q4, k4, k4, ok.chunked_prefill_block_mask(32, 32, 16))
    ok.dit_window_attention(q4, q4, q4, block_size=8, back=1)
    kc, vc = torch.zeros(6, 16, 2, d), torch.zeros(6, 16, 2, d)
    slots = torch.cat([torch.arange(16, 23), torch.arange(48, 61)])  # seq 0: 7 tokens, seq 1: 13
    ok.store_kv(k_rot, v, kc, vc, slots)
    tables = torch.tensor([[1, 0], [3, 4]], dtype=torch.int32)
    lens = torch.tensor([7, 13], dtype=torch.int32)
    ok.paged_prefill_attention(q, pos, kc, vc, tables, torch.tensor([0, 7, n], dtype=torch.int32), lens,
                               mrope_section=[16, 8, 8])
    ok.paged_decode_attention(q[:2], kc, vc, tables, lens)
    ok.copy_blocks([kc], [vc], torch.tensor([[1, 5]]))
    ok.swap_blocks(kc, torch.zeros(2, 16, 2, d), torch.tensor([[1, 0]]))
    assert "torch._dynamo" not in sys.modules, "an op imported torch._dynamo"
    print("OK")
""")


def test_cpu_eager_ops_do_not_import_dynamo():
    env = {k: v for k, v in os.environ.items() if k != "OMNI_KERNELS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", _EVERY_OP_ONCE], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def _decode_inputs():
    q = torch.randn(2, 4, 64)
    kc, vc = torch.randn(4, 16, 2, 64), torch.randn(4, 16, 2, 64)
    return q, kc, vc, torch.tensor([[2, 0], [1, 3]], dtype=torch.int32), torch.tensor([20, 5], dtype=torch.int32)


def test_direct_cpu_call_on_plain_cpu_tensors():
    x = torch.randn(3)
    assert backend.direct_cpu_call(x, None, x)
    assert not backend.direct_cpu_call(x, torch.empty(3, device="meta"))
    assert not backend.direct_cpu_call(torch.nn.Parameter(x))  # a subclass: the dispatcher handles it
    with use_backend("triton"):
        assert not backend.direct_cpu_call(x)
    with use_backend("torch"):
        assert backend.direct_cpu_call(x)


def test_direct_cpu_call_is_false_while_tracing():
    seen = []

    def probe(x):
        seen.append(backend.direct_cpu_call(x))
        return x + 1

    x = torch.randn(3)
    with FakeTensorMode():
        probe(torch.empty(3))
    make_fx(probe)(x)
    make_fx(probe, pre_dispatch=True)(x)
    torch.func.vmap(probe)(torch.randn(2, 3))
    torch.func.grad(lambda t: probe(t).sum())(x)
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert seen and not any(seen), seen
    assert backend.direct_cpu_call(x)


def test_eager_cpu_call_skips_the_dispatcher(monkeypatch):
    """The torch path runs, but no omni_kernels:: op is dispatched (it is, through torch.ops)."""
    module = importlib.import_module("omni_kernels.paged_decode_attention")
    calls = []
    original = module._torch_path
    monkeypatch.setattr(module, "_torch_path", lambda *a: calls.append(1) or original(*a))
    q, kc, vc, bt, sl = _decode_inputs()
    with torch.profiler.profile() as prof:
        out = paged_decode_attention(q, kc, vc, bt, sl)
    assert calls and not any("omni_kernels::" in e.name for e in prof.events())
    assert rel_err(out, paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5
    with torch.profiler.profile() as prof:
        torch.ops.omni_kernels.paged_decode_attention(q, kc, vc, bt, sl, 0.125, 20, 0)
    assert any("omni_kernels::paged_decode_attention" in e.name for e in prof.events())


def test_make_fx_traces_the_custom_op():
    q, kc, vc, bt, sl = _decode_inputs()
    graph = make_fx(lambda *a: paged_decode_attention(*a, max_seq_len=20, validate=False))(q, kc, vc, bt, sl)
    assert "omni_kernels.paged_decode_attention" in graph.code
    assert rel_err(graph(q, kc, vc, bt, sl), paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5


@pytest.mark.parametrize("validate", [True, False])
def test_torch_compile_keeps_the_custom_op(validate):
    q, kc, vc, bt, sl = _decode_inputs()
    fn = torch.compile(lambda *a: paged_decode_attention(*a, max_seq_len=20, validate=validate),
                       backend="eager", fullgraph=True)
    assert rel_err(fn(q, kc, vc, bt, sl), paged_decode_attention_reference(q, kc, vc, bt, sl, 0.125)) < 1e-5
