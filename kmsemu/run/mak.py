"""The MAK service and licensing portal: store, service and app, then HTTP with uvicorn.

``open_mak`` is the one start-up of the service (``kmsemu mak serve``, ``kmsemu lab``,
``kmsemu.testing.BackgroundMak``); ``start_http`` serves an app on bound sockets from
the caller's loop and returns once it accepts connections; ``serve_mak`` is the whole
``kmsemu mak serve`` process, ``MakThread`` the service on a background thread.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog
from kmsemu.clock import Clock
from kmsemu.errors import LocalError
from kmsemu.run.background import ServerThread
from kmsemu.run.loop import run_on
from kmsemu.run.signals import until_signal
from mak.api import create_app
from mak.defaults import DB_NAME, DEFAULT_REDEEM_RATE
from mak.server import MakServer, bind, ensure_token, executor_for, open_store, uvicorn_config
from mak.service import MakService
from mak.store.base import Store


@dataclass
class MakConfig:
    """What the service is opened with: ``db`` is a ``--db`` URL (None: SQLite in ``home``)
    or ``store`` one already open; ``admin_token`` None keeps one in ``home``."""

    home: Path
    secret: str
    clock: Clock
    catalog: Catalog
    db: str | None = None
    store: Store | None = None
    admin_token: str | None = None
    redeem_rate: int = DEFAULT_REDEEM_RATE


@dataclass
class OpenMak:
    """An opened service: its store, the service, the ASGI app and the token it checks."""

    store: Store
    service: MakService
    app: Any
    token: str
    executor: ThreadPoolExecutor | None = None
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Finish the database threads and close the store (once)."""
        if self.closed:
            return
        self.closed = True
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.store.close()


def open_mak(config: MakConfig) -> OpenMak:
    """Open the store and build the service and its app.

    Raises ConfigError for a bad ``db`` (and PostgreSQL out of reach), OSError or
    sqlite3.Error for a database that cannot be opened."""
    store = config.store if config.store is not None else open_store(config.db, config.home)
    try:
        token = config.admin_token or ensure_token(config.home)
        service = MakService(
            store, now=config.clock.now, secret=config.secret, catalog=config.catalog
        )
        executor = executor_for(store)
        app = create_app(
            service, admin_token=token, executor=executor, redeem_rate=config.redeem_rate
        )
    except BaseException:
        store.close()
        raise
    return OpenMak(store, service, app, token, executor)


@dataclass
class RunningHttp:
    """An app served by uvicorn on the caller's loop; ``close`` finishes requests in flight."""

    server: MakServer
    task: asyncio.Task[None]
    bound: list[tuple[str, int]]

    async def close(self) -> None:
        """Stop taking requests, finish those in flight, return when the server is down."""
        self.server.should_exit = True
        await self.task


async def start_http(app: Any, sockets: list[socket.socket]) -> RunningHttp:
    """Serve ``app`` on ``sockets``; returns once it accepts connections.

    The caller owns the signals (``kmsemu.run.signals``) and the sockets."""
    ready = asyncio.Event()
    server = MakServer(uvicorn_config(app), on_ready=lambda _: ready.set(), handle_signals=False)
    serving = asyncio.create_task(server.serve(sockets=sockets))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiting.cancel()
        serving.result()  # raises what stopped it
        raise OSError("the HTTP server stopped at start")
    return RunningHttp(server, serving, [s.getsockname()[:2] for s in sockets])


class MakThread(ServerThread):
    """The service on 127.0.0.1 (a free port) served from a background thread."""

    name = "kmsemu-mak"

    def __init__(self, config: MakConfig) -> None:
        super().__init__()
        self.mak = open_mak(config)
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def serve(self, ready: Callable[[], None]) -> None:
        """Serve the app, report ready, serve until stopped; the store stays open."""
        sockets = bind([("127.0.0.1", 0)])
        try:
            http = await start_http(self.mak.app, sockets)
            self.address = http.bound[0]
            ready()
            await self.stopping.wait()
            await http.close()
        finally:
            for sock in sockets:
                sock.close()


def serve_mak(
    config: MakConfig,
    addresses: list[tuple[str, int]],
    announce: Callable[[OpenMak, list[tuple[str, int]]], None],
    loop: str = "auto",
) -> None:
    """``kmsemu mak serve``: open the service, bind, announce, serve until SIGTERM/SIGINT.

    A database that cannot be opened is ``database_unavailable``, an address that cannot
    be bound ``listen_failed`` (what ``config`` names that is wrong stays the ConfigError
    it is)."""
    try:
        opened = open_mak(config)
    except (OSError, sqlite3.Error) as exc:
        where = config.db or config.home / DB_NAME
        raise LocalError("database_unavailable", f"{where}: {exc}") from exc
    try:
        try:
            sockets = bind(addresses)
        except OSError as exc:
            wanted = " ".join(format_address(h, p) for h, p in addresses)
            raise LocalError("listen_failed", f"{wanted}: {exc.strerror or exc}") from exc
        try:
            run_on(loop, _serve(opened, sockets, announce))
        finally:
            for sock in sockets:
                sock.close()
    finally:
        opened.close()


async def _serve(
    opened: OpenMak,
    sockets: list[socket.socket],
    announce: Callable[[OpenMak, list[tuple[str, int]]], None],
) -> None:
    http = await start_http(opened.app, sockets)
    with until_signal() as stopper:
        announce(opened, http.bound)
        await stopper.wait()
        await http.close()
