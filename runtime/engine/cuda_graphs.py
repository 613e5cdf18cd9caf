"""CUDA graphs of the decode step, one per batch bucket, captured into one memory pool.

Buckets: 1, 2, 4, 8, 16, then multiples of 16 up to the engine's max_num_seqs (nano-vllm's
choice); a decode batch runs in the smallest bucket that holds it, its extra rows padded so they
write no cache slot (StepState pads with slot -1). Captured largest first so the smaller graphs
reuse the pool. Everything a replay reads lives in persistent buffers: the StepState's metadata
and the runner's input-embedding buffer; the hidden states come out in the graph's own output,
which the runner consumes before the next replay. Logits are computed outside the graph (their
rows vary). Triton kernels are compiled by the eager warm-up run before each capture.
"""
from __future__ import annotations

import torch

__all__ = ["capture_sizes", "DecodeGraphs"]


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8, 16) if s < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))[1:] if max_num_seqs > 16 else []
    return sorted(set(sizes + [max_num_seqs]))


def bucket_for(batch: int, sizes: list[int]) -> int:
    for s in sizes:
        if s >= batch:
            return s
    raise ValueError(f"a decode batch of {batch} exceeds the largest capture size {sizes[-1]}")


class DecodeGraphs:
    def __init__(self, model, state, kv_caches, embeds_buffer: torch.Tensor, sizes: list[int]):
        self.model, self.state, self.kv_caches = model, state, kv_caches
        self.embeds = embeds_buffer
        self.sizes = sizes
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    @torch.inference_mode()
    def capture(self) -> None:
        state = self.state
        for bs in sorted(self.sizes, reverse=True):
            state.decode_views(bs)
            x = self.embeds[:bs]
            # warm-up on a side stream (compiles the kernels, creates the cuBLAS workspaces), as
            # torch.cuda.graph's documentation asks
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.model.forward_embeds(x, state, self.kv_caches)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model.forward_embeds(x, state, self.kv_caches)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = (graph, out)
        torch.cuda.synchronize()

    def replay(self, bs: int) -> torch.Tensor:
        graph, out = self.graphs[bs]
        graph.replay()
        return out
