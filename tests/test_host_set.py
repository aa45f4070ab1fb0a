"""slmgr /sai, /sri and /sprt on a KMS host (``kmsemu host set``, ``kmsemu slmgr /sai``):
a running host puts the new intervals in its next response, and its next start keeps them
and listens on the new port. Real ``kmsemu host serve`` processes; every expectation is
written out here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import kmsemu_command, start_until_ready

from kmsemu.errors import ConfigError
from kmsemu.host.overrides import Overrides
from kmsemu.host.rules import HostSettings


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kmsemu_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, "KMSEMU_HOME": str(home)},
        timeout=30,
        check=False,
    )


def serve(home: Path, *listen: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    """``kmsemu host serve`` on ``$KMSEMU_HOME/host``; the process, its port, its stderr."""
    proc, rest, lines = start_until_ready(
        kmsemu_command("host", "serve", "--min-count", "25", *listen),
        "ready kms-host",
        {"KMSEMU_HOME": str(home)},
    )
    return proc, int(rest.split()[0].rsplit(":", 1)[1]), lines


def stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    return proc.wait(10)


def intervals(port: int, home: Path) -> tuple[int, int]:
    """The activation and renewal intervals of one activation's response."""
    done = run(
        "client", "activate", "--host", f"127.0.0.1:{port}", "--product", "windows-11-pro",
        "--timeout", "2", "--json", home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return answer["activation_interval"], answer["renewal_interval"]


def wait_for_line(lines: list[str], text: str, start: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines[start:]):
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(lines)
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_intervals_change_on_a_running_host_and_the_port_at_its_next_start(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    proc, port, lines = serve(home, "--listen", "127.0.0.1:0")
    try:
        assert intervals(port, home) == (120, 10080)
        mark = len(lines)
        changed = run(
            "host", "set", "--activation-interval", "60", "--renewal-interval", "1440",
            home=home,
        )  # fmt: skip
        assert (changed.returncode, changed.stdout) == (
            0,
            "Volume activation interval set successfully.\n"
            "Volume renewal interval set successfully.\n",
        )
        wait_for_line(lines, " settings activation_interval=60 renewal_interval=1440", mark)
        assert intervals(port, home) == (60, 1440)
        mark = len(lines)
        sai = run("slmgr", "/sai", "30", home=home)  # slmgr's syntax, on this machine's host
        assert (sai.returncode, sai.stdout) == (
            0,
            "Volume activation interval set successfully.\n",
        )
        wait_for_line(lines, " settings activation_interval=30 renewal_interval=1440", mark)
        assert intervals(port, home) == (30, 1440)
    finally:
        assert stop(proc) == 0
    new_port = free_port()
    sprt = run("slmgr", "-SPRT", str(new_port), home=home)
    assert (sprt.returncode, sprt.stdout) == (0, "KMS port set successfully.\n")
    proc, port, lines = serve(home, "--listen", "127.0.0.1")  # no port given: the one set
    try:
        assert port == new_port
        assert intervals(port, home) == (30, 1440)  # kept across the restart
    finally:
        assert stop(proc) == 0
    # a flag given at start wins over what was set
    proc, port, lines = serve(home, "--listen", "127.0.0.1:0", "--activation-interval", "45")
    try:
        assert intervals(port, home) == (45, 1440)
    finally:
        assert stop(proc) == 0


def test_host_set_refusals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = run("host", "set", "--port", "1689", home=home)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: No KMS host state was found.")
    nothing = run("host", "set", home=home)
    assert nothing.returncode == 2
    assert "give --activation-interval, --renewal-interval or --port" in nothing.stderr
    low = run("host", "set", "--activation-interval", "14", home=home)
    assert low.returncode == 2 and "14 is not in the range 15<=x<=43200" in low.stderr
    low = run("slmgr", "/sri", "43201", home=home)
    assert low.returncode == 2 and "43201 is not in the range 15<=x<=43200" in low.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "the host settings file is not JSON"),
        (b'{"colour": 1}', "the host settings file holds ['colour']"),
        (b'{"port": 0}', "port 0: an integer from 1 to 65535"),
        (b'{"activation_interval": true}', "activation_interval True: an integer from 15"),
    ],
)
def test_a_damaged_settings_file_is_named(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Overrides.from_bytes(data)
    assert refused.value.detail.startswith(message)


def test_overrides_apply_the_intervals_only() -> None:
    started = HostSettings(120, 10080, 25)
    assert Overrides(60).applied(started) == HostSettings(60, 10080, 25)
    assert Overrides(None, 1440, 1689).applied(started) == HostSettings(120, 1440, 25)
    assert Overrides(60, None, 1689).merged(Overrides(None, 30, None)) == Overrides(60, 30, 1689)


def lab(home: Path, *kms_listen: str) -> tuple[subprocess.Popen[str], int]:
    """``kmsemu lab`` on free ports but for KMS (``kms_listen``); the process, its KMS port."""
    proc, rest, _ = start_until_ready(
        kmsemu_command(
            "lab", "--quiet", *kms_listen, "--dns-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--min-count", "25",
        ),
        "ready lab",
        {"KMSEMU_HOME": str(home)},
    )  # fmt: skip
    fields = dict(item.split("=", 1) for item in rest.split())
    return proc, int(fields["kms"].rsplit(":", 1)[1])


def test_the_lab_starts_with_what_slmgr_set_for_its_host(tmp_path: Path) -> None:
    """slmgr /sprt and /sai on a machine where only the lab ran change the lab's host
    (``lab.settings.json``): its next start listens on the port set and answers with the
    interval set, unless the command line says otherwise."""
    home = tmp_path / "home"
    proc, port = lab(home, "--kms-listen", "127.0.0.1:0")
    assert stop(proc) == 0
    new_port = free_port()
    sprt = run("slmgr", "/sprt", str(new_port), home=home)
    assert (sprt.returncode, sprt.stdout) == (0, "KMS port set successfully.\n")
    assert run("slmgr", "/sai", "60", home=home).returncode == 0
    assert json.loads((home / "lab.settings.json").read_text()) == {
        "activation_interval": 60,
        "port": new_port,
    }
    proc, port = lab(home, "--kms-listen", "127.0.0.1")  # no port given: the one set
    try:
        assert port == new_port
        assert intervals(port, home) == (60, 10080)
    finally:
        assert stop(proc) == 0
    proc, port = lab(home, "--kms-listen", "127.0.0.1:0", "--activation-interval", "45")
    try:
        assert port != new_port and intervals(port, home) == (45, 10080)
    finally:
        assert stop(proc) == 0
