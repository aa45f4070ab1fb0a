"""Run the MAK service: open the store named by a URL, serve the API with uvicorn.

``open_store`` turns ``--db`` into a store: ``sqlite:///PATH`` (or a bare
path) for SQLite, ``postgresql://...`` for PostgreSQL. ``MakServer`` is
uvicorn's server with two changes: it reports the addresses it bound (port 0
works) through ``on_ready``, and SIGTERM/SIGINT stop it and return normally
instead of re-raising the signal, so the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kmsemu.errors import ConfigError
from mak.defaults import DB_NAME, token_file
from mak.store.base import Store

#: Store calls at once on PostgreSQL (a connection each): a key's activations waiting while
#: its previous call is out share the next one, so more threads make fewer, larger calls.
POSTGRES_THREADS: Final = 16
#: Seconds a request's line and headers may take, and the bytes they may fill.
HEAD_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 64 * 1024


def open_store(url: str | None, home: Path) -> Store:
    """The store a ``--db`` value names (default: SQLite under ``home``)."""
    if not url:
        from mak.store.sqlite import SqliteStore

        return SqliteStore(home / DB_NAME)
    if url.startswith(("postgresql://", "postgres://")):
        from mak.store.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        if not path:
            raise ConfigError("--db sqlite:///PATH needs a path")
    elif "://" in url:
        raise ConfigError(
            f"--db {url.split('://')[0]}:// is not supported; use sqlite:/// or postgresql://"
        )
    else:
        path = url
    from mak.store.sqlite import SqliteStore

    return SqliteStore(path)


def ensure_token(home: Path) -> str:
    """The token kept in ``home`` for a service started without one (made once, 0600)."""
    path = token_file(home)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    with contextlib.suppress(FileExistsError):
        fd = path.open("x", encoding="ascii")
        path.chmod(0o600)
        with fd:
            fd.write(token + "\n")
    return path.read_text().strip()


def bind(addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets; port 0 takes one free port for every address."""
    sockets: list[socket.socket] = []
    port = None
    try:
        for host, wanted in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port if wanted == 0 and port else wanted))
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            sockets.append(sock)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class MakServer(uvicorn.Server):
    """uvicorn's server that reports its bound addresses and may leave signals to the caller."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
        *,
        handle_signals: bool = True,
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        #: False when the caller stops us (``kmsemu lab`` owns SIGTERM and SIGINT).
        self._handle_signals = handle_signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then report the addresses actually bound (port 0 resolved)."""
        await super().startup(sockets)
        if self._on_ready is not None and self.started:
            self._on_ready([s.getsockname()[:2] for s in sockets or []])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM and SIGINT stop the server (twice: at once), unless the caller owns them."""
        loop = asyncio.get_running_loop()
        handled: tuple[signal.Signals, ...] = (
            (signal.SIGTERM, signal.SIGINT) if self._handle_signals else ()
        )
        try:
            for sig in handled:
                loop.add_signal_handler(sig, self._stop)
        except (RuntimeError, ValueError):  # not the main thread: the caller stops us
            handled = ()
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.force_exit = self.should_exit
        self.should_exit = True


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for request heads.

    uvicorn closes a kept-alive connection idle after a response, but a connection that
    never sends a request, or stalls inside its request line or headers, would stay open
    for ever, and a head of any size is read. Here a head must arrive whole within
    ``head_timeout`` seconds of the connection opening or the previous response, and be
    at most ``max_head`` bytes (else 400 and close).
    """

    head_timeout: float = HEAD_TIMEOUT
    max_head: int = MAX_HEAD
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the head deadline as the connection opens."""
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        """Count head bytes against ``max_head`` (400 past it); a new request rearms the timer."""
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # a new request begins
        super().data_received(data)
        if self._head_timer is not None:  # still inside the head (a body does not count)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head and not self.transport.is_closing():
                self._cancel_head_timer()
                self.send_400_response("Request header too large.")

    def on_headers_complete(self) -> None:
        """The head is in: stop its timer; one over ``max_head`` in a single read is refused."""
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head:  # a whole head in one read: the parser's error path, a 400
            raise ValueError(f"request head of {size} bytes")
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the head deadline with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: Any) -> uvicorn.Config:
    """How the MAK app is served: guarded HTTP, no lifespan, access log or server headers."""
    return uvicorn.Config(
        app,
        http=GuardedHttp,
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )


def executor_for(store: Store) -> ThreadPoolExecutor | None:
    """Threads for a store too slow for the event loop (PostgreSQL); None for SQLite."""
    if store.blocking_ok:
        return None
    return ThreadPoolExecutor(POSTGRES_THREADS, thread_name_prefix="mak-db")
