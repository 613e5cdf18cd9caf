"""Shared test helpers (imported as `from helpers import ...`: pytest puts tests/ on sys.path)."""
import os

import torch


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
