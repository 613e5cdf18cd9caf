"""Static-buffer runners of the streamed Token2Wav: the flow solve of a chunk's DiT window and the
vocoder run of its mel window, captured as CUDA graphs on CUDA.

What is captured. `SolveRunner`: the whole solve of a window of W mel frames under one Schedule --
the DiT condition (code, speaker and cond columns of its input projection) and the 4 (num_steps - 1)
DiT evaluations of the RK4 solve with classifier-free guidance; its batch bucket is the DiT batch,
2 with CFG, 1 without. `VocoderRunner`: BigVGAN over a mel window of F frames. The shapes are a
stream plan's regular chunks (`Token2WavStream.regular_shapes`: the first chunk, those whose left
context is still clipped, the steady state -- 48, 120, 144 DiT frames and 48, 120, 130 vocoder
frames for the default plan); they are made when the first stream with that plan and schedule
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

__all__ = ["SolveRunner", "VocoderRunner", "Token2WavGraphs", "graphs_enabled"]

_WARMUP_RUNS = 2


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
    """The flow solve of a window of `frames` mel frames (frames / repeats codes) under `schedule`."""

    def __init__(self, sampler: FlowSampler, schedule: Schedule, frames: int):
        dit = sampler.dit
        cfg, dev = dit.config, dit.device
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or frames % cfg.repeats:
            raise ValueError(f"frames must be a positive multiple of repeats ({cfg.repeats}), got {frames!r}")
        self.schedule, self.frames = schedule, frames
        self.rows = 2 if schedule.cfg else 1
        with torch.inference_mode():
            grid, modulation = sampler.grid_and_modulation(schedule)
        buffers = dict(codes=torch.zeros(frames // cfg.repeats, dtype=torch.int64, device=dev),
                       speaker=torch.zeros(self.rows, cfg.enc_dim, device=dev),
                       cond=torch.zeros(self.rows, cfg.enc_emb_dim, device=dev),
                       noise=torch.zeros(1, frames, cfg.mel_dim, device=dev))
        b = buffers

        def solve() -> torch.Tensor:
            return sampler.solve(b["codes"], (b["speaker"], b["cond"]), b["noise"], schedule, grid, modulation)

        super().__init__(solve, buffers)

    def replay(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor) -> torch.Tensor:
        """`FlowSampler.sample(codes, speaker_condition, noise, schedule)`, over the buffers."""
        speaker, cond = speaker_condition
        return self._run(codes=codes, speaker=speaker, cond=cond, noise=noise)


class VocoderRunner(_StaticRunner):
    """BigVGAN over a mel window of `frames` frames, batch 1. The buffer is time-major (1, frames,
    mel_dim), read transposed: the layout of the mel a stream builds."""

    def __init__(self, vocoder: BigVGAN, frames: int):
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        self.frames = frames
        weight = vocoder.conv_pre.weight
        mel = torch.zeros(1, frames, vocoder.config.mel_dim, device=weight.device)
        super().__init__(lambda: vocoder.synthesize(mel.transpose(1, 2)), dict(mel=mel))

    def replay(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (1, mel_dim, frames) -> `BigVGAN.forward(mel)` (1, frames * hop_length), over the buffer."""
        want = (1, self.buffers["mel"].shape[2], self.frames)
        if not isinstance(mel, torch.Tensor) or tuple(mel.shape) != want:
            got = tuple(mel.shape) if isinstance(mel, torch.Tensor) else type(mel).__name__
            raise ValueError(f"mel must be a tensor of shape {want} (1, mel_dim, frames), got {got}")
        return self._run(mel=mel.transpose(1, 2))


class Token2WavGraphs:
    """The runners of one Token2Wav, by shape: captured (`capture=True`, CUDA) or eager over their
    buffers. `solve` / `vocode` take what `FlowSampler.sample` / `BigVGAN.forward` take and use a
    runner where one has the shape, else the plain call. Thread-safe."""

    def __init__(self, sampler: FlowSampler, vocoder: BigVGAN, capture: bool):
        if capture and sampler.dit.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {sampler.dit.device}")
        self.sampler, self.vocoder, self.capture = sampler, vocoder, capture
        self.solvers: dict[tuple[Schedule, int], SolveRunner] = {}
        self.vocoders: dict[int, VocoderRunner] = {}
        self.pool = None
        self._lock = threading.Lock()
        # recorded after each replay's work, on whichever stream it ran (waiting before a record is a no-op)
        self._done = torch.cuda.Event() if capture else None

    def prepare(self, schedule: Schedule, solve_frames, vocoder_frames) -> None:
        """Make (and with `capture`, capture) the runners of these shapes that do not exist yet,
        largest first."""
        with self._lock:
            solvers = {(schedule, f): SolveRunner(self.sampler, schedule, f)
                       for f in sorted(set(solve_frames), reverse=True) if (schedule, f) not in self.solvers}
            vocoders = {f: VocoderRunner(self.vocoder, f)
                        for f in sorted(set(vocoder_frames), reverse=True) if f not in self.vocoders}
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

    def solve(self, codes: torch.Tensor, speaker_condition, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        runner = self.solvers.get((schedule, noise.shape[1]))
        if runner is None:
            return self.sampler.sample(codes, speaker_condition, noise, schedule)
        return self._replay(runner.replay, codes, speaker_condition, noise)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        runner = self.vocoders.get(mel.shape[2]) if mel.dim() == 3 and mel.shape[0] == 1 else None
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
