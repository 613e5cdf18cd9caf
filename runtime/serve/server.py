"""Running the app on uvicorn: `bind` (a listening socket; port 0 picks a free one, so the real port is
known before serving), `uvicorn_server` (the one uvicorn configuration omni-serve uses) and
`BackgroundServer` (uvicorn on a thread of its own, for tests, benchmarks and embedding):

    with BackgroundServer(create_app(omni, options)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-")
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

__all__ = ["bind", "uvicorn_server", "BackgroundServer", "GRACEFUL_SHUTDOWN_S"]

GRACEFUL_SHUTDOWN_S = 5.0  # on shutdown, streams still running after this are cancelled (their turns freed)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when the host is one); raises ValueError naming the
    address when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP (0 would leave
    # Nagle on, and every small answer would wait ~40 ms for the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, log_level: str = "warning") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off",
                                         timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))


class BackgroundServer:
    """Serve `app` on host:port (default a free loopback port) from a daemon thread; `url` is where.
    Use as a context manager, or `start()` / `close()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn_server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="omni-serve", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"omni-serve did not start on {self.url}")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
