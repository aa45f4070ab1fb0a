"""Client machines for tests: a profile in a store, ready to talk to a test host."""

from __future__ import annotations

import random
from pathlib import Path

from kmsemu.catalog import default_catalog
from kmsemu.client.machine import Machine
from kmsemu.client.profile import ProfileStore
from kmsemu.clock import SystemClock
from kmsemu.keys.product_key import setup_key
from kmsemu.klp import DEFAULT_SECRET


class LabClient:
    """A client machine whose profile lives in ``store`` (what ``kmsemu client`` reads).

    Use ``machine`` for the verbs (``ato``, ``tick``…: ``activate()``, ``tick()``),
    then ``save()`` so that CLI calls and scripts see the result.
    """

    def __init__(self, store: ProfileStore, name: str, *, secret: str = DEFAULT_SECRET) -> None:
        self.store = store
        self.name = name
        self.machine = Machine(
            store.load(name, random.SystemRandom()),
            default_catalog(),
            real_now=SystemClock().now,
            secret=secret,
        )

    def save(self) -> None:
        """Write the profile, so CLI calls and scripts see the machine as it is now."""
        self.store.save(self.machine.profile)

    def install_setup_key(self, product: str) -> None:
        """Install a catalog product's KMS client setup key (RuntimeError if refused); saved."""
        number = default_catalog().find(product).number
        result = self.machine.install_key(str(setup_key(number)))
        if result.hresult:
            raise RuntimeError(f"setup key of {product}: 0x{result.hresult:08X}")
        self.save()

    def use_host(self, host_port: str) -> None:
        """Point the machine at a KMS host ``HOST:PORT`` (slmgr /skms); saved."""
        self.machine.set_kms_host(host_port)
        self.save()


def make_client(
    home: str | Path,
    name: str,
    *,
    product: str | None = None,
    host_port: str | None = None,
    secret: str = DEFAULT_SECRET,
) -> LabClient:
    """A client in ``home/clients``; with ``product`` its setup key is installed, with
    ``host_port`` it is pointed at that KMS host (slmgr /skms)."""
    client = LabClient(ProfileStore(Path(home) / "clients"), name, secret=secret)
    if product is not None:
        client.install_setup_key(product)
    if host_port is not None:
        client.use_host(host_port)
    client.save()
    return client
