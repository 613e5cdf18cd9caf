"""The child side of `process.CodecProcess`: `python -m omni_runtime.token2wav.worker --fd N
--checkpoint DIR --threads T`. Loads the checkpoint's Token2Wav, runs a `StreamBatcher` over it and
answers the parent's messages on the socket `--fd`: open / push / finish / cancel a stream, decode a
whole sequence, close. A forwarding thread sends each stream's packets as they are decoded, then
its end ("done") or its error; a decode's waveform or error."""
from __future__ import annotations

import argparse
import os
import sys
import threading
from multiprocessing.connection import Connection

import torch

from .batching import StreamBatcher
from .process import packet_to_wire, picklable_error, speaker_from_wire
from .token2wav import Token2Wav


class _Worker:
    def __init__(self, conn: Connection, t2w: Token2Wav):
        self.conn, self.t2w = conn, t2w
        self.batcher = StreamBatcher(t2w)
        self.streams: dict = {}  # id -> BatchedStream, guarded by the batcher's condition
        self.send_lock = threading.Lock()
        self.closing = False

    def send(self, message) -> None:
        with self.send_lock:
            self.conn.send(message)

    def forward(self) -> None:
        """Packets, ends and errors of every stream, as the batcher produces them."""
        cond = self.batcher.cond
        while True:
            with cond:
                cond.wait_for(lambda: self.closing or any(h._out or h.done or h.error for h in self.streams.values()))
                if self.closing:
                    return
                out = []
                for sid, h in list(self.streams.items()):
                    packets = list(h._out)
                    h._out.clear()
                    if packets:
                        out.append(("packets", sid, [packet_to_wire(p) for p in packets]))
                    if h.error is not None:
                        out.append(("error", sid, picklable_error(h.error)))
                        del self.streams[sid]
                    elif h.done:
                        out.append(("done", sid))
                        del self.streams[sid]
            for message in out:
                self.send(message)

    def decode(self, did, codes, speaker, noise, seed) -> None:
        noise = None if noise is None else torch.from_numpy(noise)
        future = self.batcher.decode(codes, speaker_from_wire(speaker), noise=noise, seed=seed)

        def reply(f):
            try:
                self.send(("decoded", did, f.result().numpy()))
            except Exception as exc:  # noqa: BLE001 -- the caller's error
                self.send(("decode_error", did, picklable_error(exc)))

        future.add_done_callback(reply)

    def serve(self) -> None:
        threading.Thread(target=self.forward, name="omni-token2wav-forward", daemon=True).start()
        cond = self.batcher.cond
        while True:
            try:
                kind, *args = self.conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if kind == "close":
                return
            if kind == "decode":
                self.decode(*args)
                continue
            sid = args[0]
            with cond:
                if kind == "open":
                    _, speaker, seed, kwargs = args
                    self.streams[sid] = self.batcher.open(speaker_from_wire(speaker), seed=seed, **kwargs)
                    continue
                h = self.streams.get(sid)
            if h is None:
                continue  # cancelled or failed meanwhile
            try:
                if kind == "push":
                    h.push(args[1])
                elif kind == "finish":
                    h.finish()
                elif kind == "cancel":
                    h.cancel()
                    with cond:
                        self.streams.pop(sid, None)
            except ValueError as exc:  # e.g. a push after finish: that stream's error
                with cond:
                    h.error = exc
                    cond.notify_all()


def _warm_up(t2w: Token2Wav) -> None:
    """One short stream before "ready": the first calls of every op (kernel selection, the custom
    ops' registration, the allocator's first blocks) happen now, not in the user's first packet."""
    if t2w.speakers:
        stream = t2w.stream(t2w.speakers[0], num_steps=2)
        stream.push([0] * stream.codes_needed())
        stream.finish()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="omni-token2wav-worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    conn = Connection(args.fd)
    try:
        t2w = Token2Wav.from_checkpoint(args.checkpoint)
        t2w.vocoder.receptive_field_frames()
        _warm_up(t2w)
    except Exception as exc:  # noqa: BLE001 -- the parent reports it (no traceback on the user's terminal)
        conn.send(("fatal", None, picklable_error(exc)))
        return
    worker = _Worker(conn, t2w)
    conn.send(("ready", None))
    try:
        worker.serve()
    finally:
        with worker.batcher.cond:
            worker.closing = True
            worker.batcher.cond.notify_all()
        worker.batcher.close()
        thread = worker.batcher._thread
        if thread is not None:
            thread.join(timeout=10)  # it ends after the round it is in
    # no interpreter teardown under daemon threads that may still be in a torch op
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
