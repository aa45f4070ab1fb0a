"""The pytest plugin (entry point ``pytest11``): a real KMS host as a fixture.

def test_my_provisioning_script(kms_host):
    kms_host.set_min_count(25)          # everyone activates at once
    run_my_script(kms=kms_host.host_port, secret=kms_host.secret)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kmsemu.testing.host import BackgroundHost


@pytest.fixture
def kms_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundHost]:
    """A KMS host on 127.0.0.1 (free port) with a fresh state directory and the lab secret."""
    state: Path = tmp_path_factory.mktemp("kms-host")
    with BackgroundHost(state) as host:
        yield host
