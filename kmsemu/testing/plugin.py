"""The pytest plugin (entry point ``pytest11``): a real KMS host as a fixture.

def test_my_provisioning_script(kms_host):
    kms_host.set_min_count(25)          # everyone activates at once
    run_my_script(kms=kms_host.host_port, secret=kms_host.secret)

def test_my_script_survives_a_refusing_host(kms_host):
    kms_host.fail("0xC004F042", times=1)     # or "reset", "stall", "slow" with delay=2.0...
    run_my_script(kms=kms_host.host_port, secret=kms_host.secret)
    kms_host.clear_faults()

def test_my_mak_provisioning(mak_service):
    key = mak_service.mint_key(limit=3)  # a registered MAK
    run_my_script(key=key, url=mak_service.url)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kmsemu.testing.client import LabClient, make_client
from kmsemu.testing.host import BackgroundHost

if TYPE_CHECKING:
    from kmsemu.testing.mak import BackgroundMak


@pytest.fixture
def kms_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundHost]:
    """A KMS host on 127.0.0.1 (free port) with a fresh state directory and the lab secret;
    ``kms_host.fail(KIND, times=..., product=..., client=..., duration=...)`` and
    ``kms_host.clear_faults()`` make it fail on demand."""
    state: Path = tmp_path_factory.mktemp("kms-host")
    with BackgroundHost(state) as host:
        yield host


@pytest.fixture
def kms_client(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., LabClient]:
    """A factory of client machines: ``kms_client(name, product=..., host=kms_host)``.

    Their profiles live in a temporary ``KMSEMU_HOME`` (set for the test), so
    ``kmsemu client --profile NAME ...`` run by the code under test sees them.
    """
    home = tmp_path_factory.mktemp("kmsemu-home")
    monkeypatch.setenv("KMSEMU_HOME", str(home))

    def factory(
        name: str = "pc", *, product: str | None = None, host: BackgroundHost | None = None
    ) -> LabClient:
        return make_client(
            home,
            name,
            product=product,
            host_port=host.host_port if host is not None else None,
            secret=host.secret if host is not None else "kmsemu-lab",
        )

    return factory


@pytest.fixture
def mak_service() -> Iterator[BackgroundMak]:
    """A MAK service on 127.0.0.1 (free port): in-memory SQLite, a fresh admin token
    (``mak_service.admin_token``), the lab secret; ``mint_key(limit=N)`` registers a MAK."""
    from kmsemu.testing.mak import BackgroundMak

    with BackgroundMak() as service:
        yield service
