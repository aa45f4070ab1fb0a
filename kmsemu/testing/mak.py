"""A real MAK service on 127.0.0.1 (port 0), served from a background thread.

    with BackgroundMak() as service:           # SQLite in memory, a fresh token
        key = service.mint_key(limit=3)          # a registered MAK, as text
        client = service.client(admin=True)      # mak.client.MakClient
        client.activate(key, "00112233445566778899")

``clock`` lets a test move the service's time (a key's expiry, say).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path
from types import TracebackType

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.clock import Clock, SystemClock
from kmsemu.keys.product_key import KeyType, mint
from kmsemu.klp.envelope import DEFAULT_SECRET
from mak.api import create_app
from mak.client import MakClient
from mak.portal import DEFAULT_REDEEM_RATE
from mak.server import MakServer, bind, executor_for, open_store, uvicorn_config
from mak.service import MakService
from mak.store.base import Store

START_TIMEOUT = 20.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (the standard loop answers kept-alive requests 40 ms late
    here)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class BackgroundMak:
    def __init__(self, *, db: str | Path | None = ":memory:", store: Store | None = None,
                 secret: str = DEFAULT_SECRET, admin_token: str | None = None,
                 clock: Clock | None = None, catalog: Catalog | None = None,
                 redeem_rate: int = DEFAULT_REDEEM_RATE) -> None:
        self.store = store if store is not None else open_store(str(db), Path("."))
        self.secret = secret
        self.admin_token = admin_token or secrets.token_urlsafe(16)
        self.clock = clock or SystemClock()
        self.catalog = catalog or default_catalog()
        self.redeem_rate = redeem_rate
        self.service = MakService(self.store, now=self.clock.now, secret=secret,
                                  catalog=self.catalog)
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: MakServer | None = None
        self._error: BaseException | None = None
        self._serial = 0

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def client(self, *, admin: bool = False) -> MakClient:
        return MakClient(self.url, token=self.admin_token if admin else None)

    def mint_key(self, *, limit: int | None = 3, key_type: KeyType = KeyType.MAK,
                 product: int = 0) -> str:
        """A fresh lab key of ``key_type``, registered with ``limit`` (None: the default)."""
        self._serial += 1
        key = mint(key_type, product, serial=secrets.randbits(30) << 10 | self._serial)
        self.service.register(str(key), limit=limit)
        return str(key)

    def start(self) -> BackgroundMak:
        executor = executor_for(self.store)
        app = create_app(self.service, admin_token=self.admin_token, executor=executor,
                         redeem_rate=self.redeem_rate)
        sockets = bind([("127.0.0.1", 0)])
        self.address = sockets[0].getsockname()[:2]
        self._server = MakServer(uvicorn_config(app), on_ready=lambda _: self._ready.set())

        def run() -> None:
            try:
                assert self._server is not None
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    runner.run(self._server.serve(sockets=sockets))
            except BaseException as exc:  # reported by start()
                self._error = exc
            finally:
                for sock in sockets:
                    sock.close()
                if executor is not None:
                    executor.shutdown(wait=False)
                self._ready.set()

        self._thread = threading.Thread(target=run, name="kmsemu-mak", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the MAK service did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)
            self._thread = None
        self.store.close()

    def __enter__(self) -> BackgroundMak:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
