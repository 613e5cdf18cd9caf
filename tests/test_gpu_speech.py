"""A spoken turn on a GPU: Thinker and Talker on CUDA (their decode steps captured as CUDA graphs),
Token2Wav in fp32 through the Triton DiT kernel. Graphs on and off give identical text, codes and
waveform; the GPU turn equals the CPU turn (fp32: same ids and codes, waveform within 1e-3).
Skipped without CUDA; benchmarks/run_gpu.sh runs it with TRITON_INTERPRET=0."""
import pytest
import torch

from helpers import sharpen_checkpoint
from omni_kernels import backend
from omni_runtime.engine import SamplingParams
from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint
from omni_runtime.omni import Omni

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(backend.interpreter_active(), reason="TRITON_INTERPRET=1: run with TRITON_INTERPRET=0"),
]

ENGINE = dict(max_model_len=512, num_blocks=96, block_size=16)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    src = write_tiny_checkpoint(d / "ckpt", seed=0, preset="tiny")
    return sharpen_checkpoint(src, d / "sharp", prefixes=("thinker.", "talker."))


def _turn(omni, stops, **kw):
    params = SamplingParams(max_new_tokens=12, stop_token_ids=tuple(stops))
    talker = omni.talker.sampling_params(greedy=True, max_new_tokens=48)
    return omni.generate("Hello world, are you a helpful assistant?", params=params, talker_params=talker,
                         seed=5, **kw)


def test_graphs_on_off_and_cpu_agree(path):
    ckpt, stops = path
    runs = {}
    for name, device, graphs in (("graphs", "cuda", True), ("eager", "cuda", False), ("cpu", "cpu", None)):
        kw = dict(ENGINE, cuda_graphs=graphs) if graphs is not None else dict(ENGINE)
        omni = Omni.from_checkpoint(ckpt, device=device, dtype="fp32", engine_kwargs=kw, talker_engine_kwargs=kw)
        runs[name] = _turn(omni, stops, stream=False)
        streamed = list(_turn(omni, stops))[-1]
        assert streamed.codes == runs[name].codes and streamed.waveform.shape == runs[name].waveform.shape
    g, e, c = runs["graphs"], runs["eager"], runs["cpu"]
    assert g.token_ids == e.token_ids == c.token_ids
    assert g.codes == e.codes == c.codes and len(g.codes) == 48
    assert torch.equal(g.waveform, e.waveform)
    err = ((g.waveform - c.waveform).abs().max() / c.waveform.abs().max()).item()
    assert err < 1e-3, err
