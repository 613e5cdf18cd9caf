"""The engine on a GPU: the Thinker decode step captured as CUDA graphs (one per batch bucket, one
pool) and replayed equals the eager step, pad rows write no cache slot, and concurrent streams
under graphs equal their solo runs. Skipped without CUDA; benchmarks/run_gpu.sh runs it with
TRITON_INTERPRET=0."""
import pytest
import torch

from omni_kernels import backend
from omni_runtime.engine import Engine, SamplingParams
from omni_runtime.engine.cuda_graphs import capture_sizes
from omni_runtime.io.checkpoint import open_checkpoint
from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint
from omni_runtime.models.thinker_lm import ThinkerLM

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(backend.interpreter_active(), reason="TRITON_INTERPRET=1: run with TRITON_INTERPRET=0"),
]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def lm(request, tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt", seed=0, preset="7b-ratios")
    model = ThinkerLM.from_checkpoint(open_checkpoint(path), device="cuda", dtype=request.param)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def _prompts(n):
    g = torch.Generator().manual_seed(n)
    return [torch.randint(1, 300, (int(torch.randint(3, 60, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("batch", [1, 3, 8, 13])
def test_graph_decode_equals_eager(lm, batch):
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    prompts = _prompts(batch)
    runs = []
    for graphs in (False, True):
        engine = Engine(lm, max_num_seqs=16, num_blocks=256, max_model_len=512, cuda_graphs=graphs)
        if graphs:
            assert sorted(engine.runner.graphs.graphs) == capture_sizes(16)
        seqs = [engine.add_request(p, params, return_logits=True) for p in prompts]
        while engine.has_unfinished:
            engine.step()
        runs.append((engine, seqs))
    (eager, a), (graphed, b) = runs
    tol = 1e-4 if lm.dtype == torch.float32 else 2e-2
    for x, y in zip(a, b):
        assert x.output_ids == y.output_ids
        assert torch.allclose(x.output_logits, y.output_logits, rtol=tol, atol=tol)
    # same blocks were allocated; pad rows (slot -1) must not have written anywhere else
    for ka, kb in zip(eager.kv_cache.key_caches, graphed.kv_cache.key_caches):
        assert torch.allclose(ka.float(), kb.float(), rtol=tol, atol=tol)


def test_pad_rows_write_no_slot(lm):
    engine = Engine(lm, max_num_seqs=8, num_blocks=64, max_model_len=256, cuda_graphs=True)
    seqs = [engine.add_request(p, SamplingParams(max_new_tokens=4, ignore_eos=True)) for p in _prompts(3)]
    engine.step()  # prefill
    before = [k.clone() for k in engine.kv_cache.key_caches]
    used = {b for s in seqs for b in engine.block_manager.block_table(s.seq_id)}
    (r, *_) = engine.step()  # a decode of 3 rows replayed in the bucket of 4
    assert r.mode == "decode" and engine.state.num_seqs == 4 and engine.state.num_real_seqs == 3
    for k0, k1 in zip(before, engine.kv_cache.key_caches):
        untouched = [b for b in range(k0.shape[0]) if b not in used]
        assert torch.equal(k0[untouched], k1[untouched])
