"""Run the server: uvicorn on a socket bound here first (so a port in use is an error the
caller sees at once, and port 0 picks a free one), in this thread (the CLI) or on a thread of
its own (the GUI, tests, the benchmark)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from app.engine.shared_host import SharedHost
from app.server.config import ServerConfig
from app.server.request_log import RequestLog
from app.server.routes import create_app

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; OSError (in words) when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    return sock


class ServerRunner:
    """One server for ``shared``'s model. ``start`` validates the configuration and binds (it
    raises ServerConfigError or OSError); ``stop`` ends it."""

    def __init__(self, shared: SharedHost, config: ServerConfig,
                 request_log: RequestLog | None = None) -> None:
        self.shared = shared
        self.config = config
        self.log = request_log or RequestLog()
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def base_url(self) -> str:
        return self.config.base_url(self.port)

    def _prepare(self) -> uvicorn.Server:
        self.config.validate()
        self._socket = bind(self.config.host, self.config.port)
        self.port = int(self._socket.getsockname()[1])
        app = create_app(self.shared, self.config, self.log)
        server_config = uvicorn.Config(app, log_level="warning", access_log=False,
                                       lifespan="off", timeout_graceful_shutdown=3,
                                       timeout_keep_alive=30)
        self._server = uvicorn.Server(server_config)
        return self._server

    def serve_forever(self, on_bound: Callable[[str], None] | None = None) -> None:
        """Serve in this thread until interrupted (Ctrl-C, SIGTERM); ``on_bound`` gets the
        address once the socket is bound."""
        server = self._prepare()
        assert self._socket is not None
        if on_bound is not None:
            on_bound(self.base_url)
        try:
            server.run(sockets=[self._socket])
        finally:
            self._close_socket()

    def start(self, timeout: float = 10.0) -> None:
        """Serve on a thread of its own; returns once it accepts connections."""
        server = self._prepare()
        sockets = [self._socket]
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": sockets},
                                        name="quantdesk-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError("The server did not start.")
            time.sleep(0.01)
        log.info("serving %s", self.base_url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open streams (their work is cancelled), wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        self._thread = None
        self._server = None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
