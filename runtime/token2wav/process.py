"""The Token2Wav decoder in a process of its own, for the CPU.

Why: torch runs an op without the GIL, but between two ops a thread needs it back, and the Thinker
and Talker engines spend most of a step in Python. Measured on the embedded checkpoint: a 48-frame
DiT solve takes 115 ms alone, 130 ms beside a thread doing matmuls, 260-380 ms beside a thread
decoding -- the codec thread waits for the GIL between its small ops. In its own process the
decoder has its own interpreter and runs on the second core at full speed.

`CodecProcess` offers what `batching.StreamBatcher` offers -- `open` a stream (push / finish /
cancel / ready / wait / done / busy / error), `decode` a whole code sequence, `num_streams` -- and
runs a StreamBatcher in a child process (`python -m omni_runtime.token2wav.worker`: a fresh
interpreter that imports no user code) over a socket pair. The child loads the checkpoint's
Token2Wav itself; packets come back as they are decoded, in order. If the child dies, every open
stream and pending decode fails with a RuntimeError naming its exit status, and so does every
later call.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Optional

import torch

from ..io.speakers import Speaker
from .batching import PacketQueue
from .streaming import Packet

__all__ = ["CodecProcess", "RemoteStream", "packet_to_wire", "packet_from_wire", "speaker_to_wire",
           "speaker_from_wire", "picklable_error"]


def packet_to_wire(p: Packet) -> dict:
    return {"index": p.index, "samples": p.samples.numpy(), "start_sample": p.start_sample, "codes": p.codes,
            "depends_on": p.depends_on, "dit_ms": p.dit_ms, "vocoder_ms": p.vocoder_ms, "batch": p.batch}


def packet_from_wire(d: dict) -> Packet:
    return Packet(**{**d, "samples": torch.from_numpy(d["samples"])})


def speaker_to_wire(speaker):
    """A name stays a name; a Speaker travels as plain arrays (tensors would go through torch's
    shared-memory pickling, which needs the two processes to know each other)."""
    if isinstance(speaker, Speaker):
        return ("speaker", speaker.name, speaker.bos_token, speaker.cond.numpy(), speaker.ref_mel.numpy())
    return speaker


def speaker_from_wire(speaker):
    if isinstance(speaker, tuple) and speaker and speaker[0] == "speaker":
        _, name, bos, cond, ref_mel = speaker
        return Speaker(name, bos, torch.from_numpy(cond), torch.from_numpy(ref_mel))
    return speaker


def picklable_error(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- an exception that does not pickle: its message survives
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class RemoteStream(PacketQueue):
    """One stream decoded in the child; the same face as `batching.BatchedStream`."""

    def __init__(self, owner: "CodecProcess", sid: int):
        super().__init__(owner.cond)
        self._owner, self._id = owner, sid
        self._waiting = False  # codes sent since the last packet

    def push(self, codes) -> None:
        codes = [int(c) for c in codes]
        with self.cond:
            self._refuse_push()
            self._waiting = True
        self._owner.send(("push", self._id, codes))

    def finish(self) -> None:
        with self.cond:
            self.finishing = True
        self._owner.send(("finish", self._id))

    def cancel(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.cancelled = True
            self._owner._streams.pop(self._id, None)  # what the child still sends for it is dropped
        self._owner.send(("cancel", self._id), quiet=True)

    @property
    def busy(self) -> bool:
        with self.cond:
            return (self._waiting or self.finishing) and not self.closed


class CodecProcess:
    """A StreamBatcher in a child process (see the module docstring)."""

    def __init__(self, checkpoint_path, threads: int = 1):
        parent, child = socket.socketpair()
        cmd = [sys.executable, "-m", "omni_runtime.token2wav.worker", "--fd", str(child.fileno()),
               "--checkpoint", os.fspath(checkpoint_path), "--threads", str(int(threads))]
        # its own session: a Ctrl-C in the terminal reaches only the parent, which ends the child
        self._proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        child.close()
        self._conn = Connection(parent.detach())
        self.cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._streams: dict[int, RemoteStream] = {}
        self._decodes: dict[int, concurrent.futures.Future] = {}
        self._dead: Optional[BaseException] = None
        self._ready = False
        self._fatal: Optional[BaseException] = None  # why the child could not start
        self._reader = threading.Thread(target=self._read, name="omni-token2wav-reader", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until the child has loaded its Token2Wav; raises RuntimeError if it failed."""
        with self.cond:
            if not self.cond.wait_for(lambda: self._ready or self._dead is not None, timeout):
                raise RuntimeError(f"the Token2Wav process did not start within {timeout:g} s")
            if self._dead is not None:
                raise self._dead

    # ---- the StreamBatcher face ---------------------------------------------------------------
    def open(self, speaker, *, seed: int = 0, **stream_kwargs) -> RemoteStream:
        sid = next(self._ids)
        handle = RemoteStream(self, sid)
        with self.cond:
            self._streams[sid] = handle
        self.send(("open", sid, speaker_to_wire(speaker), seed, stream_kwargs))
        return handle

    def decode(self, codes, speaker, *, noise=None, seed: int = 0) -> concurrent.futures.Future:
        """The whole code sequence at once (`Token2Wav.__call__`), in the child."""
        did = next(self._ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self._decodes[did] = future
        self.send(("decode", did, [int(c) for c in codes], speaker_to_wire(speaker),
                   None if noise is None else torch.as_tensor(noise).numpy(), seed))
        return future

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def num_streams(self) -> int:
        with self.cond:
            return sum(not h.closed for h in self._streams.values())

    def close(self, wait: bool = True) -> None:
        """Stop the child (its open streams fail); with `wait`, until it has exited."""
        self.send(("close",), quiet=True)
        if wait:
            self._reader.join(timeout=10)
            if self._reader.is_alive():
                self._proc.kill()
                self._reader.join(timeout=10)

    # ---- the wire -----------------------------------------------------------------------------
    def send(self, message, quiet: bool = False) -> None:
        with self._send_lock:
            if self._dead is not None:
                if quiet:
                    return
                raise self._dead
            try:
                self._conn.send(message)
            except (OSError, EOFError, ValueError) as exc:
                if quiet:
                    return
                self._reader.join(timeout=10)  # it records why the child ended
                raise self._dead or RuntimeError(f"the Token2Wav process is gone ({exc})") from None

    def _read(self) -> None:
        try:
            while True:
                kind, key, *rest = self._conn.recv()
                with self.cond:
                    if kind == "ready":
                        self._ready = True
                    elif kind == "fatal":
                        self._fatal = rest[0]
                    elif kind == "packets" and key in self._streams:
                        h = self._streams[key]
                        if not h.cancelled:
                            h._out.extend(packet_from_wire(d) for d in rest[0])
                        h._waiting = False
                    elif kind in ("done", "error") and key in self._streams:
                        h = self._streams.pop(key)
                        if kind == "done":
                            h.done = True
                        else:
                            h.error = rest[0]
                    elif kind in ("decoded", "decode_error") and key in self._decodes:
                        future = self._decodes.pop(key)
                        if kind == "decoded":
                            future.set_result(torch.from_numpy(rest[0]))
                        else:
                            future.set_exception(rest[0])
                    self.cond.notify_all()
        except (EOFError, OSError):
            pass
        self._conn.close()
        code = self._proc.wait()
        with self.cond:
            if self._fatal is not None:
                self._dead = RuntimeError(f"the Token2Wav process could not start: {self._fatal}")
            else:
                self._dead = RuntimeError(f"the Token2Wav process exited (status {code}); its streams are lost")
            for h in self._streams.values():
                if not h.closed:
                    h.error = self._dead
            for future in self._decodes.values():
                future.set_exception(self._dead)
            self._streams.clear()
            self._decodes.clear()
            self.cond.notify_all()
