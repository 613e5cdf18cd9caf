"""Static-buffer runners of the streamed Token2Wav: the flow solve of a chunk's DiT window and the
vocoder run of its mel window, captured as CUDA graphs on CUDA.

What is captured. `SolveRunner`: the whole solve of a window of W mel frames under one Schedule --
the DiT condition (code, speaker and cond columns of its input projection) and the 4 (num_steps - 1)
DiT evaluations of the RK4 solve with classifier-free guidance, for B streams' windows at once (B a
batch bucket, `BATCH_SIZES`: the DiT batch is 2B with CFG, B without; fewer streams fill the first
rows). `VocoderRunner`: BigVGAN over B mel windows of F frames. The shapes are a
stream plan's regular chunks (`Token2WavStream.regular_shapes`: the first chunk, those whose left
context is still clipped or the chunks still grow, the steady state -- 48, 120, 216, 360 DiT frames
and 48, 120, 202, 346 vocoder frames for the default plan); they are made when the first stream with that plan and schedule
starts. A stream's last window is as long as the codes left over, and padding it would change it
(the block attention would see the pad frames): a shape without a runner runs the plain call.

Discipline (as the engine's decode graphs). Everything a replay reads lives in persistent buffers
(codes, speaker vectors, cond rows, noise; the mel) or is a constant the runner holds (the time
grid and the AdaLN modulation of its schedule, so they outlive the FlowSampler's cache). `replay`
copies the inputs in, replays, and returns a copy of the output before any other replay can
overwrite it. Nothing inside reads the device on the host: the DiT attention op checks shapes
only, and the vocoder runs `BigVGAN.synthesize`: its forward without the NaN check of its input (a
host read; the mel here is the DiT's). Each capture follows two eager warm-up runs on a side stream
(they compile the Triton kernels and create the cuBLAS / cuDNN workspaces); runners are captured
largest first into one memory pool per Token2Wav, which is safe because its replays never overlap:
they run under one lock, each after the previous one's work on the GPU (an event), whatever stream
or thread issues them. On CPU the same buffers and functions run eagerly -- how the tests prove the
path equal to the plain call.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import torch

from ..models.bigvgan import BigVGAN
from .flow import FlowSampler, Schedule

__all__ = ["SolveRunner", "VocoderRunner", "Token2WavGraphs", "graphs_enabled", "BATCH_SIZES"]

_WARMUP_RUNS = 2
# Batch buckets of the captured solves and vocoder runs: chunks of up to 8 streams decode at once.
BATCH_SIZES = (1, 2, 4, 8)


def graphs_enabled(graphs, device: torch.device) -> bool:
    """The `graphs` switch: None -> on for a CUDA device, off otherwise; True needs CUDA."""
    if graphs is None:
        return device.type == "cuda"
    if not isinstance(graphs, bool):
        raise ValueError(f"graphs must be True, False or None, got {graphs!r}")
    if graphs and device.type != "cuda":
        raise ValueError(f"graphs=True needs a CUDA device, the model is on {device}; "
                         f"static=True runs the same static-buffer path without capture")
    return graphs


class _StaticRunner:
    """`fn()` reads only `buffers` (and constants): run eagerly over them, or captured and replayed."""

    def __init__(self, fn: Callable[[], torch.Tensor], buffers: dict[str, torch.Tensor]):
        self.fn, self.buffers = fn, buffers
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def capture(self, pool) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_RUNS):
                self.fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the Thinker's and Talker's engines) may run CUDA work meanwhile.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            self.out = self.fn()
        self.graph = graph

    @torch.inference_mode()
    def _run(self, **inputs: torch.Tensor) -> torch.Tensor:
        for name, value in inputs.items():
            buf = self.buffers[name]
            if not isinstance(value, torch.Tensor) or value.shape != buf.shape or value.dtype != buf.dtype:
                got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a {buf.dtype} tensor of shape {tuple(buf.shape)}, got {got}")
            buf.copy_(value)
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.out.clone()


class SolveRunner(_StaticRunner):
    """The flow solve of `batch` windows of `frames` mel frames (frames / repeats codes each) under
    `schedule`."""

    def __init__(self, sampler: FlowSampler, schedule: Schedule, frames: int, batch: int = 1):
        dit = sampler.dit
        cfg, dev = dit.config, dit.device
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or frames % cfg.repeats:
            raise ValueError(f"frames must be a positive multiple of repeats ({cfg.repeats}), got {frames!r}")
        _check_batch(batch)
        self.schedule, self.frames, self.batch = schedule, frames, batch
        self.rows = 2 if schedule.cfg else 1
        with torch.inference_mode():
            grid, modulation = sampler.grid_and_modulation(schedule)
        buffers = dict(codes=torch.zeros(batch, frames // cfg.repeats, dtype=torch.int64, device=dev),
                       speaker=torch.zeros(batch * self.rows, cfg.enc_dim, device=dev),
                       cond=torch.zeros(batch * self.rows, cfg.enc_emb_dim, device=dev),
                       noise=torch.zeros(batch, frames, cfg.mel_dim, device=dev))
        b = buffers

        def solve() -> torch.Tensor:
            return sampler.solve(b["codes"], (b["speaker"], b["cond"]), b["noise"], schedule, grid, modulation)

        super().__init__(solve, buffers)

    def replay(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor) -> torch.Tensor:
        """`FlowSampler.sample(codes, speaker_condition, noise, schedule)` over the buffers; fewer
        streams than `batch` fill the first rows (the rest compute on zeros, discarded)."""
        speaker, cond = speaker_condition
        if isinstance(codes, torch.Tensor) and codes.dim() == 1:
            codes = codes[None]  # one stream's window, as `FlowSampler.sample` takes it
        n = codes.shape[0] if isinstance(codes, torch.Tensor) else 0
        if n == self.batch or not 1 <= n <= self.batch:  # (a bad n: `_run` names the bad input)
            return self._run(codes=codes, speaker=speaker, cond=cond, noise=noise)
        return self._run(codes=_pad(codes, self.batch), speaker=_pad(speaker, self.batch * self.rows),
                         cond=_pad(cond, self.batch * self.rows), noise=_pad(noise, self.batch))[:n]


class VocoderRunner(_StaticRunner):
    """BigVGAN over `batch` mel windows of `frames` frames. The buffer is time-major (batch, frames,
    mel_dim), read transposed: the layout of the mel a stream builds."""

    def __init__(self, vocoder: BigVGAN, frames: int, batch: int = 1):
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        _check_batch(batch)
        self.frames, self.batch = frames, batch
        weight = vocoder.conv_pre.weight
        mel = torch.zeros(batch, frames, vocoder.config.mel_dim, device=weight.device)
        super().__init__(lambda: vocoder.synthesize(mel.transpose(1, 2)), dict(mel=mel))

    def replay(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (n <= batch, mel_dim, frames) -> `BigVGAN.forward(mel)` (n, frames * hop_length)."""
        mel_dim = self.buffers["mel"].shape[2]
        if (not isinstance(mel, torch.Tensor) or mel.dim() != 3 or not 1 <= mel.shape[0] <= self.batch
                or tuple(mel.shape[1:]) != (mel_dim, self.frames)):
            got = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
            raise ValueError(f"mel must be a tensor of shape (n <= {self.batch}, {mel_dim}, {self.frames}) "
                             f"(streams, mel_dim, frames), got {got}")
        n = mel.shape[0]
        return self._run(mel=_pad(mel.transpose(1, 2), self.batch))[:n]


def _check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with zero rows appended up to `rows` rows."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


class Token2WavGraphs:
    """The runners of one Token2Wav, by shape and batch bucket: captured (`capture=True`, CUDA) or
    eager over their buffers. `solve` / `vocode` take what `FlowSampler.sample` / `BigVGAN.forward`
    take (N streams' windows of one shape at once, N up to `max_batch`) and use the runner of the
    smallest bucket that holds N where one has the shape, else the plain call. Thread-safe."""

    def __init__(self, sampler: FlowSampler, vocoder: BigVGAN, capture: bool, batch_sizes=BATCH_SIZES):
        if capture and sampler.dit.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {sampler.dit.device}")
        sizes = tuple(batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
        self.sampler, self.vocoder, self.capture = sampler, vocoder, capture
        self.batch_sizes = tuple(sorted(set(sizes)))
        self.solvers: dict[tuple[Schedule, int, int], SolveRunner] = {}
        self.vocoders: dict[tuple[int, int], VocoderRunner] = {}
        self.pool = None
        self._lock = threading.Lock()
        # recorded after each replay's work, on whichever stream it ran (waiting before a record is a no-op)
        self._done = torch.cuda.Event() if capture else None

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def prepare(self, schedule: Schedule, solve_frames, vocoder_frames) -> None:
        """Make (and with `capture`, capture) the runners of these shapes, every batch bucket, that
        do not exist yet, largest first."""
        with self._lock:
            sizes = sorted(self.batch_sizes, reverse=True)
            solvers = {(schedule, f, b): SolveRunner(self.sampler, schedule, f, b)
                       for f in sorted(set(solve_frames), reverse=True) for b in sizes
                       if (schedule, f, b) not in self.solvers}
            vocoders = {(f, b): VocoderRunner(self.vocoder, f, b)
                        for f in sorted(set(vocoder_frames), reverse=True) for b in sizes
                        if (f, b) not in self.vocoders}
            if self.capture and (solvers or vocoders):
                self._wait()
                if self.pool is None:
                    self.pool = torch.cuda.graph_pool_handle()
                for runner in (*solvers.values(), *vocoders.values()):
                    runner.capture(self.pool)
                torch.cuda.synchronize()
            # only now: a capture that failed leaves no runner behind
            self.solvers.update(solvers)
            self.vocoders.update(vocoders)

    def _bucket(self, n: int) -> Optional[int]:
        return next((b for b in self.batch_sizes if b >= n), None)

    def solve(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        runner = self.solvers.get((schedule, noise.shape[1], self._bucket(noise.shape[0])))
        if runner is None:
            return self.sampler.sample(codes, speaker_condition, noise, schedule)
        return self._replay(runner.replay, codes, speaker_condition, noise)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        runner = self.vocoders.get((mel.shape[2], self._bucket(mel.shape[0]))) if mel.dim() == 3 else None
        if runner is None:
            return self.vocoder(mel)
        return self._replay(runner.replay, mel)

    def _replay(self, replay, *inputs) -> torch.Tensor:
        with self._lock:
            self._wait()
            out = replay(*inputs)
            if self._done is not None:
                self._done.record()
            return out

    def _wait(self) -> None:
        """Order this stream's next work after the last replay's (the runners share the pool)."""
        if self._done is not None:
            torch.cuda.current_stream().wait_event(self._done)
