"""A real MAK service on 127.0.0.1 (port 0), served from a background thread.

    with BackgroundMak() as service:           # SQLite in memory, a fresh token
        key = service.mint_key(limit=3)          # a registered MAK, as text
        client = service.client(admin=True)      # mak.client.MakClient
        client.activate(key, "00112233445566778899")

``clock`` lets a test move the service's time (a key's expiry, say).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.clock import Clock, SystemClock
from kmsemu.keys.product_key import KeyType, mint
from kmsemu.klp import DEFAULT_SECRET
from kmsemu.run.mak import MakConfig, MakThread
from mak.client import MakClient
from mak.defaults import DEFAULT_REDEEM_RATE
from mak.server import open_store
from mak.service import MakService
from mak.store.base import Store


class BackgroundMak(MakThread):
    """The service with a fresh admin token (``admin_token``) and what tests need of it."""

    def __init__(
        self,
        *,
        db: str | Path | None = ":memory:",
        store: Store | None = None,
        secret: str = DEFAULT_SECRET,
        admin_token: str | None = None,
        clock: Clock | None = None,
        catalog: Catalog | None = None,
        redeem_rate: int = DEFAULT_REDEEM_RATE,
    ) -> None:
        self.secret = secret
        self.admin_token = admin_token or secrets.token_urlsafe(16)
        self.clock = clock or SystemClock()
        self.catalog = catalog or default_catalog()
        self.redeem_rate = redeem_rate
        self._serial = 0
        super().__init__(
            MakConfig(
                Path("."),
                secret,
                self.clock,
                self.catalog,
                store=store if store is not None else open_store(str(db), Path(".")),
                admin_token=self.admin_token,
                redeem_rate=redeem_rate,
            )
        )

    @property
    def store(self) -> Store:
        """The service's store."""
        return self.mak.store

    @property
    def service(self) -> MakService:
        """The service the app calls (register keys directly with it)."""
        return self.mak.service

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address[0]}:{self.address[1]}"

    def client(self, *, admin: bool = False) -> MakClient:
        """An HTTP client of the service, with the admin token if ``admin``."""
        return MakClient(self.url, token=self.admin_token if admin else None)

    def mint_key(
        self, *, limit: int | None = 3, key_type: KeyType = KeyType.MAK, product: int = 0
    ) -> str:
        """A fresh lab key of ``key_type``, registered with ``limit`` (None: the default)."""
        self._serial += 1
        key = mint(key_type, product, serial=secrets.randbits(30) << 10 | self._serial)
        self.service.register(str(key), limit=limit)
        return str(key)

    def stop(self) -> None:
        """Stop serving and close the store."""
        super().stop()
        self.mak.close()
