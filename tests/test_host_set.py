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
    assert (
        "give --activation-interval, --renewal-interval, --port or --[no-]dns-publish"
        in nothing.stderr
    )
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
        (b'{"dns_publish": 1}', "dns_publish 1: true or false"),
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
    cdns = Overrides(60, None, 1689, False)
    assert cdns.merged(Overrides(None, 30)) == Overrides(60, 30, 1689, False)  # /cdns kept
    assert cdns.merged(Overrides(dns_publish=True)) == Overrides(60, None, 1689, True)
    assert Overrides.from_bytes(b'{"dns_publish": false}') == Overrides(dns_publish=False)


def lab(home: Path, *kms_listen: str) -> tuple[subprocess.Popen[str], int, int]:
    """``kmsemu lab`` on free ports but for KMS (``kms_listen``); the process, its KMS port
    and its DNS port."""
    proc, rest, _ = start_until_ready(
        kmsemu_command(
            "lab", "--quiet", *kms_listen, "--dns-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--min-count", "25",
        ),
        "ready lab",
        {"KMSEMU_HOME": str(home)},
    )  # fmt: skip
    fields = dict(item.split("=", 1) for item in rest.split())
    kms, dns = (int(fields[k].rsplit(":", 1)[1]) for k in ("kms", "dns"))
    return proc, kms, dns


def test_the_lab_starts_with_what_slmgr_set_for_its_host(tmp_path: Path) -> None:
    """slmgr /sprt and /sai on a machine where only the lab ran change the lab's host
    (``lab.settings.json``): its next start listens on the port set and answers with the
    interval set, unless the command line says otherwise."""
    home = tmp_path / "home"
    proc, port, _ = lab(home, "--kms-listen", "127.0.0.1:0")
    assert stop(proc) == 0
    new_port = free_port()
    sprt = run("slmgr", "/sprt", str(new_port), home=home)
    assert (sprt.returncode, sprt.stdout) == (0, "KMS port set successfully.\n")
    assert run("slmgr", "/sai", "60", home=home).returncode == 0
    assert json.loads((home / "lab.settings.json").read_text()) == {
        "activation_interval": 60,
        "port": new_port,
    }
    proc, port, _ = lab(home, "--kms-listen", "127.0.0.1")  # no port given: the one set
    try:
        assert port == new_port
        assert intervals(port, home) == (60, 10080)
    finally:
        assert stop(proc) == 0
    proc, port, _ = lab(home, "--kms-listen", "127.0.0.1:0", "--activation-interval", "45")
    try:
        assert port != new_port and intervals(port, home) == (45, 10080)
    finally:
        assert stop(proc) == 0


def status_says(home: Path, text: str) -> None:
    """Wait (bounded) until ``host status`` has the line ``text``."""
    deadline = time.monotonic() + 10
    while True:
        shown = run("host", "status", home=home).stdout.splitlines()
        if text in shown:
            return
        assert time.monotonic() < deadline, "\n".join(shown)
        time.sleep(0.05)


def test_cdns_and_sdns_stop_and_resume_publishing_on_a_running_host(tmp_path: Path) -> None:
    """slmgr /cdns on a publishing host: the host stops publishing at once and `host status`
    says so; /sdns publishes again at once (the refresh is 24 h: only the wake-up can do
    it); a later start keeps /cdns and publishes nothing, though a DNS server is given."""
    home = tmp_path / "home"
    dns, rest, _ = start_until_ready(
        kmsemu_command("dns", "serve", "--zone", "lab.test", "--listen", "127.0.0.1:0"),
        "ready dns",
        {"KMSEMU_HOME": str(home)},
    )
    try:
        server = rest.split()[0]
        proc, _, lines = serve(
            home, "--listen", "127.0.0.1:0", "--dns-publish", "lab.test", "--dns-server", server
        )
        try:
            wait_for_line(lines, " 12294 ", 0)
            status_says(home, "    DNS publishing enabled")
            mark = len(lines)
            cdns = run("slmgr", "/cdns", home=home)
            assert (cdns.returncode, cdns.stdout) == (0, "DNS publishing disabled successfully.\n")
            wait_for_line(lines, " dns_publish=off", mark)
            status_says(home, "    DNS publishing disabled")
            mark = len(lines)
            sdns = run("slmgr", "-SDNS", home=home)
            assert (sdns.returncode, sdns.stdout) == (0, "DNS publishing enabled successfully.\n")
            wait_for_line(lines, " 12294 ", mark)
            status_says(home, "    DNS publishing enabled")
            assert run("slmgr", "/cdns", home=home).returncode == 0
        finally:
            assert stop(proc) == 0
        proc, _, lines = serve(home, "--listen", "127.0.0.1:0", "--dns-server", server)
        try:
            status_says(home, "    DNS publishing disabled")
            assert not any(" 12294 " in line or " 12293 " in line for line in lines)
        finally:
            assert stop(proc) == 0
    finally:
        dns.terminate()
        assert dns.wait(10) == 0


def srv_targets(dns_port: int) -> list[str]:
    """The lab zone's ``_vlmcs._tcp`` SRV records, as the lab's DNS answers now."""
    import dns.message
    import dns.query

    query = dns.message.make_query("_vlmcs._tcp.lab.test", "SRV")
    reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=5)
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def wait_for_srv(dns_port: int, wanted: bool) -> list[str]:
    deadline = time.monotonic() + 10
    while bool(found := srv_targets(dns_port)) != wanted:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def test_cdns_takes_the_lab_s_srv_record_out_of_its_dns_and_sdns_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, kms_port, dns_port = lab(home, "--kms-listen", "127.0.0.1:0")
    try:
        assert srv_targets(dns_port) == [f"0 0 {kms_port} kms.lab.test."]
        assert run("slmgr", "/cdns", home=home).returncode == 0
        wait_for_srv(dns_port, False)
        status_says(home, "    DNS publishing disabled")
        assert run("slmgr", "/sdns", home=home).returncode == 0
        assert wait_for_srv(dns_port, True) == [f"0 0 {kms_port} kms.lab.test."]
        status_says(home, "    DNS publishing enabled")
        assert run("slmgr", "/cdns", home=home).returncode == 0
        wait_for_srv(dns_port, False)
    finally:
        assert stop(proc) == 0
    proc, _, dns_port = lab(home, "--kms-listen", "127.0.0.1:0")  # a restart keeps /cdns
    try:
        assert srv_targets(dns_port) == []
        status_says(home, "    DNS publishing disabled")
    finally:
        assert stop(proc) == 0
