"""Running the app: in the foreground for ``genrnn serve``, or in a background
thread for tests, notebooks and benchmarks.

    with BackgroundServer(create_app({"tiny": "runs/tiny"})) as server:
        openai.OpenAI(base_url=server.url + "/v1", api_key="-").completions.create(...)
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``; raises OSError (port in use,
    unknown address) before anything is served, so the CLI can say so in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says IPPROTO_TCP; without it every small write waits for a delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until Ctrl-C: one uvicorn process, in which the engine
    thread owns the models (several worker processes would each hold a copy
    and batch separately)."""
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


class BackgroundServer:
    """uvicorn in a daemon thread on ``host`` and a free port (or ``port``).

    The socket is bound before the thread starts, so :attr:`port` is known at
    once and no other process can take it in between.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app = app
        self.host = host
        self._socket = bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="genrnn-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
