"""The pytest plugin as an outside project uses it: the ``kms_host`` fixture."""

from __future__ import annotations

import subprocess
import sys
import uuid

from kmsemu.errors import HResult
from kmsemu.testing import BackgroundHost
from tests.test_end_to_end import KEY, make_request


def test_kms_host_counts_and_its_controls(kms_host: BackgroundHost) -> None:
    from kmsemu.client.exchange import request_activation

    first = request_activation(kms_host.address, make_request("windows-11-pro"), KEY).response
    assert (first.status, first.current_count) == (0, 1)
    kms_host.set_min_count(25)
    assert (
        request_activation(
            kms_host.address, make_request("windows-11-pro"), KEY
        ).response.current_count
        == 25
    )
    kms_host.set_clock_offset(5 * 3600)
    skewed = request_activation(kms_host.address, make_request(), KEY).response
    assert skewed.status == HResult.TIMESTAMP_INVALID
    kms_host.flush()
    assert sum(" activation " in line for line in kms_host.log_lines) == 3
    assert kms_host.host_port == f"127.0.0.1:{kms_host.port}" and kms_host.secret == "kmsemu-lab"


def test_an_outside_script_activates_against_the_fixture(kms_host: BackgroundHost) -> None:
    """What docs/testing-with-kmsemu.md shows: drive the CLI like a provisioning script."""
    kms_host.set_min_count(5)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmsemu",
            "client",
            "activate",
            "--host",
            kms_host.host_port,
            "--product",
            "windows-server-2025-standard",
            "--cmid",
            str(uuid.uuid4()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "Product activated successfully." in out.stdout


def test_background_host_state_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kmsemu.client.exchange import request_activation

    with BackgroundHost(tmp_path) as host:
        request_activation(host.address, make_request(cmid=uuid.uuid4()), KEY)
    with BackgroundHost(tmp_path) as host:
        again = request_activation(host.address, make_request(cmid=uuid.uuid4()), KEY)
    assert again.response.current_count == 2


def test_the_doc_examples_run(kms_host: BackgroundHost) -> None:
    """docs/testing-with-kmsemu.md's two tests, executed as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "testing-with-kmsemu.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    namespace: dict[str, object] = {}
    exec(code.replace('["kmsemu",', f'[{sys.executable!r}, "-m", "kmsemu",'), namespace)
    for name, test in namespace.items():
        if name.startswith("test_") and callable(test):
            test(kms_host)
            kms_host.set_clock_offset(0)
            kms_host.set_min_count(0)


def test_kms_client_factory_with_the_cli(kms_host: BackgroundHost, kms_client) -> None:  # type: ignore[no-untyped-def]
    """Clients made by the fixture are the profiles the CLI (and scripts) use."""
    kms_host.set_min_count(25)
    pc = kms_client("pc1", product="windows-11-pro", host=kms_host)
    assert pc.machine.activate().hresult == 0
    pc.save()
    out = subprocess.run(
        [sys.executable, "-m", "kmsemu", "client", "--profile", "pc1", "dli"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "License Status: Licensed" in out.stdout
    other = kms_client("pc2", product="office-ltsc-2021-proplus", host=kms_host)
    assert other.machine.licence.status == 2  # initial grace until it activates
