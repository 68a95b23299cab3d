"""Listening: bind the address, start uvicorn on it, load the models in the background, stop cleanly."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from assistant.errors import USER_ERRORS, ModelUnavailable, UsageError
from assistant.server.app import build_app
from assistant.server.backend import Backend, SessionLoader
from assistant.server.completions import ServerContext
from assistant.server.gate import EngineGate
from assistant.server.options import ServeOptions, check_exposure


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a UsageError that says why not (in use, no such address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, OverflowError, UnicodeError) as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc}", "check --host/--port (serve_host, serve_port)"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "is another server on that port? pick another with --port (0: any free port)",
        ) from None
    sock.listen(2048)  # connections wait in the backlog from now on, even before uvicorn takes the socket
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class RunningServer:
    """A server started by `start`; `stop()` ends it."""

    url: str
    backend: Backend
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def _prepare(
    load: SessionLoader, options: ServeOptions, log: Callable[[str], None]
) -> tuple[socket.socket, Backend, uvicorn.Server]:
    check_exposure(options)
    sock = bind(options.host, options.port)
    backend = Backend(load, log)
    ctx = ServerContext(backend, EngineGate(options.queue_size, options.engine_slots), options)
    config = uvicorn.Config(
        build_app(ctx, log),
        http="h11",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,  # RequestLog writes the one line per request
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    def stop_on_failure(exc: BaseException) -> None:
        server.should_exit = True  # nothing to serve; `serve` reports why once uvicorn has stopped

    backend.start(stop_on_failure)
    return sock, backend, server


def serve(load: SessionLoader, options: ServeOptions, log: Callable[[str], None]) -> int:
    """Serve until interrupted; the models load in the background while /health already answers.

    A failure to load stops the server and is raised here, so the command exits with its message.
    """
    sock, backend, server = _prepare(load, options, log)
    key = "API key required" if options.api_key else "no API key (loopback only)"
    log(f"serving on {url_of(sock)} ({key}); models loading, GET /health says when ready")
    server.run(sockets=[sock])
    error = backend.error
    if isinstance(error, USER_ERRORS):
        raise error
    if error is not None:
        raise ModelUnavailable(
            f"the models could not be loaded: {type(error).__name__}: {error}",
            "see the lines above for what was loading",
        ) from error
    return 0


def start(load: SessionLoader, options: ServeOptions, log: Callable[[str], None]) -> RunningServer:
    """Serve on a background thread (tests and embedding); returns once the port accepts connections."""
    sock, backend, server = _prepare(load, options, log)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="serve-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.01)
    return RunningServer(url_of(sock), backend, server, thread)
