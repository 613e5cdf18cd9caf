"""Shared test helpers (imported as `from helpers import ...`: pytest puts tests/ on sys.path)."""
import os

import torch

from omni_runtime.bench.peer import keep_talker_attention_mask  # noqa: F401 (re-exported for the tests)

# The KV cache of the whole-turn tests' engines (Thinker and Talker): small, several turns at once.
OMNI_ENGINE = dict(max_model_len=512, num_blocks=96, block_size=16)


def assert_same_turn(a, b) -> None:
    """Two turns (`TurnResult`s) with the same text and codes and the same audio up to fp32
    rounding: their chunks may have been decoded in different batches (token2wav.batching)."""
    assert a.text == b.text and a.token_ids == b.token_ids and a.codes == b.codes
    assert a.waveform.shape == b.waveform.shape
    torch.testing.assert_close(a.waveform, b.waveform, rtol=0, atol=1e-5)


def all_freed(omni) -> bool:
    """No request, KV block or Token2Wav stream of this Omni is held."""
    return omni.codec().num_streams == 0 and all(
        not e.has_unfinished and e.block_manager.num_free_blocks == e.kv_cache.num_blocks
        for e in (omni.thinker.engine, omni.talker.engine))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e|| / ||e|| in fp64: the one error measure every kernel test states its bounds in."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def capture_cuda_graph(fn, warmup: int = 2):
    """Warm up on a side stream (compiles the kernels, fills caches), then capture fn into a CUDA
    graph. Returns (graph, the static output of the captured call)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()
    return graph, static_out


def unwritable_dir(monkeypatch, path):
    """`path` as a directory this process cannot create entries in (also as root, who ignores modes)."""
    path.mkdir()
    path.chmod(0o500)
    if os.access(path, os.W_OK):  # root
        real_mkdir = os.mkdir

        def mkdir(p, *a, **k):
            if os.path.dirname(os.fspath(p)) == str(path):
                raise PermissionError(13, "Permission denied", os.fspath(p))
            return real_mkdir(p, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    return path


def sharpen_checkpoint(src, dst, prefixes=("thinker.",), seed=0):
    """Copy a checkpoint, re-drawing the weights under `prefixes` so greedy ids are meaningful:
    the default 0.02 init gives nearly flat logits, where near-ties would make id comparisons
    test rounding instead of the model. Decoder linears at unit-scale logits (1 / sqrt(fan_in),
    2x for the output heads), encoders and other linears at 0.5 / sqrt(fan_in), the codec
    embeddings ~1, norms ~1, biases 0.1; the stop ids' head rows are zeroed (the Thinker's eos from
    generation_config.json, the Talker's codec pad and eos) so every generation runs to its length.
    Returns (dst, the Thinker's stop ids)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    config = json.loads((dst / "config.json").read_text())
    stops = json.loads((dst / "generation_config.json").read_text())["eos_token_id"]
    talker = config["talker_config"]
    heads = {"thinker.lm_head.weight": stops,
             "talker.codec_head.weight": [talker["tts_codec_pad_token_id"], talker["tts_codec_end_token_id"]]}
    g = torch.Generator().manual_seed(seed)
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(dst / shard))
        touched = False
        for name, p in tensors.items():
            if not name.startswith(tuple(prefixes)):
                continue
            touched = True
            r = torch.randn(p.shape, generator=g)
            module, leaf = name.rsplit(".", 2)[-2:]
            if p.dim() == 1:
                is_norm = leaf == "weight" and ("norm" in module or module in ("ln_q", "ln_post"))
                tensors[name] = 1 + 0.1 * r if is_norm else 0.1 * r
            elif name == "talker.model.embed_tokens.weight":
                tensors[name] = r  # codec embeddings, added to the Thinker's O(1) rows
            elif p.dim() == 2 and name.startswith(("thinker.model.", "thinker.lm_head.", "talker.")):
                tensors[name] = r / p.shape[1] ** 0.5 * (2.0 if name in heads else 1.0)
            elif p.dim() == 2:
                tensors[name] = 0.5 * r / p.shape[1] ** 0.5
            if name in heads:
                for s in heads[name]:
                    tensors[name][s] = 0
                    tensors[name][s, 0] = -1e-3
        if touched:
            save_file(tensors, str(dst / shard), metadata={"format": "pt"})
    return dst, list(stops)
