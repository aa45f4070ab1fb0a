"""What a failed discovery shows (issue 16.3): the DNS code itself, as slmgr does; an skms
name resolved through the machine's own DNS servers; why 0xC004F039 and 0xC004F051 never
come from kmsemu.

A real DNS server (the project's, on 127.0.0.1 port 0) and real KMS hosts; every
expectation is written out here, never read from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.client.discovery import failure
from kmsemu.dns.authority import Authority
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.errors import lookup
from kmsemu.testing import BackgroundHost

SERVER_KEY = "BBM3H-6QTVJ-B6C8Y-938GG-M3BVT"  # Windows Server 2022 Standard's setup key
SERVER_ACTIVATING = (
    "Activating Windows Server 2022 Standard (be497d04-241c-55ed-80a5-ec5561d80d71) ..."
)


class Dns:
    """The project's DNS server for lab.test on a background loop, 127.0.0.1 port 0."""

    def __init__(self, zone: Zone) -> None:
        self.loop = asyncio.new_event_loop()
        server = DnsServer(Authority([zone]))
        host, port = self.loop.run_until_complete(server.start("127.0.0.1", 0))
        self.address = f"{host}:{port}"
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[BackgroundHost]:
    with BackgroundHost(tmp_path / "host") as running:
        running.set_min_count(5)
        yield running


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def events() -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(run("client", "events", "--json").stdout)["events"]
    return listed


def machine(dns_server: str) -> None:
    assert run("client", "ipk", SERVER_KEY).exit_code == 0
    assert run("client", "dns", "--server", dns_server, "--suffix", "lab.test").exit_code == 0


# -- no SRV record: 0x8007232B ---------------------------------------------------------------


def test_a_zone_without_the_srv_record_shows_0x8007232B(home: Path) -> None:
    dns_lab = Dns(Zone.build("lab.test", addresses=[("kms1", "127.0.0.1")]))
    try:
        machine(dns_lab.address)
        failed = run("client", "ato")
        assert failed.exit_code == 1
        assert failed.stdout == SERVER_ACTIVATING + "\n"
        assert failed.stderr.splitlines() == [
            "Error: 0x8007232B DNS name does not exist. (_vlmcs._tcp.lab.test. does not exist)",
            "No _vlmcs._tcp record exists for the client's DNS suffix.",
        ]
        sent = events()[-1]
        assert (sent["id"], sent["hresult"], sent["server"]) == (12288, "0x8007232B", None)
        assert [e["id"] for e in events()] == [12288]  # no response: no 12289

        by_slmgr = run("slmgr", "/ato")
        assert by_slmgr.exit_code == 1 and by_slmgr.stderr == ""
        assert by_slmgr.stdout.splitlines()[:2] == [
            SERVER_ACTIVATING,
            "Error: 0x8007232B DNS name does not exist. (_vlmcs._tcp.lab.test. does not exist)",
        ]
        assert [(e["id"], e["hresult"]) for e in events()] == [
            (12288, "0x8007232B"),
            (12288, "0x8007232B"),
        ]

        as_json = json.loads(run("client", "ato", "--json").stdout)
        assert as_json["error"] == {
            "code": "dns_name_does_not_exist",
            "message": "DNS name does not exist. (_vlmcs._tcp.lab.test. does not exist)",
            "hint": "No _vlmcs._tcp record exists for the client's DNS suffix.",
            "hresult": "0x8007232B",
        }
        assert as_json["last_hresult"] == "0x8007232B"
    finally:
        dns_lab.stop()


# -- a DNS server that never answers: 0x800705B4 -------------------------------------------------


def test_a_dns_server_that_never_answers_shows_0x800705B4(home: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never read
        silent.bind(("127.0.0.1", 0))
        machine(f"127.0.0.1:{silent.getsockname()[1]}")
        failed = run("slmgr", "/ato")  # discovery gives up after 3 s
    assert failed.exit_code == 1
    assert failed.stdout.splitlines() == [
        SERVER_ACTIVATING,
        "Error: 0x800705B4 This operation returned because the timeout period expired. "
        "(_vlmcs._tcp.lab.test.: no DNS server answered in time)",
        "No DNS server answered in time; check 'kmsemu client dns --server' and that the "
        "server ('kmsemu dns serve') is running.",
    ]
    sent = events()[-1]
    assert (sent["id"], sent["hresult"]) == (12288, "0x800705B4")


# -- SRV found, every host unreachable: 0xC004F074 stays --------------------------------------


def test_hosts_found_but_none_answering_is_still_0xC004F074(home: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    dns_lab = Dns(
        Zone.build("lab.test", srv=[SrvTarget("kms1", dead)], addresses=[("kms1", "127.0.0.1")])
    )
    try:
        machine(dns_lab.address)
        failed = run("client", "ato")
    finally:
        dns_lab.stop()
    assert failed.exit_code == 1
    assert failed.stderr.splitlines()[0] == (
        "Error: 0xC004F074 No Key Management Service (KMS) could be contacted. "
        "(cannot connect: Connection refused)"
    )
    sent = events()[-1]
    assert (sent["id"], sent["hresult"], sent["server"]) == (
        12288,
        "0x800706BA",
        f"127.0.0.1:{dead}",
    )


# -- skms NAME through the machine's DNS servers ------------------------------------------------


def test_skms_name_resolves_through_the_machine_s_dns(home: Path, host: BackgroundHost) -> None:
    # kms1.lab.test exists only in this DNS server: the operating system cannot resolve it
    dns_lab = Dns(Zone.build("lab.test", addresses=[("kms1", "127.0.0.1")]))
    try:
        machine(dns_lab.address)
        assert run("client", "skms", f"kms1.lab.test:{host.port}").exit_code == 0
        activated = run("client", "ato")
        assert activated.exit_code == 0, activated.output
        assert activated.stdout.splitlines() == [
            SERVER_ACTIVATING,
            "Product activated successfully.",
        ]
        dlv = run("client", "dlv").stdout.splitlines()
        assert f"    Registered KMS machine name: kms1.lab.test:{host.port}" in dlv
        assert "    KMS machine IP address: 127.0.0.1" in dlv
        sent = events()[-2]
        assert (sent["id"], sent["hresult"], sent["server"]) == (
            12288,
            "0x00000000",
            f"127.0.0.1:{host.port}",
        )

        # a name the machine's DNS does not know: the DNS code in 12288, 0xC004F074 shown
        assert run("client", "skms", f"kms9.lab.test:{host.port}").exit_code == 0
        failed = run("client", "ato")
        assert failed.exit_code == 1
        assert failed.stderr.splitlines()[0] == (
            "Error: 0xC004F074 No Key Management Service (KMS) could be contacted. "
            "(kms9.lab.test. does not exist)"
        )
        sent = events()[-1]
        assert (sent["id"], sent["hresult"], sent["server"]) == (
            12288,
            "0x8007232B",
            f"kms9.lab.test:{host.port}",
        )
    finally:
        dns_lab.stop()


# -- the pure mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "hresult"),
    [
        (dns.resolver.NXDOMAIN(), 0x8007232B),
        (dns.resolver.NoAnswer(), 0x8007251D),
        (dns.exception.Timeout(), 0x800705B4),
        (dns.resolver.LifetimeTimeout(timeout=3.0, errors=[]), 0x800705B4),
        (dns.resolver.NoNameservers(), 0x8007232A),
    ],
)
def test_dns_outcomes_map_to_the_codes_windows_shows(
    outcome: dns.exception.DNSException, hresult: int
) -> None:
    assert failure(outcome, "_vlmcs._tcp.lab.test.").hresult == hresult


def entry(code: str) -> tuple[str, str, int | None]:
    info = lookup(code)
    assert info is not None, code
    return info.message, info.hint, info.hresult


# -- 0xC004F039 and 0xC004F051: the registry says why kmsemu never produces them ----------------


def test_the_registry_says_why_0xC004F039_and_0xC004F051_never_come_from_kmsemu() -> None:
    assert entry("kms_not_enabled") == (
        "The Key Management Service (KMS) is not enabled.",
        "kmsemu never decides it: a kmsemu KMS host is enabled while it serves, and a host "
        "that does not respond shows as 0xC004F074 with the cause (behaviour.md: every host "
        "failed). A host answers it only when forced ('kmsemu host fault set "
        "kms_not_enabled'), and a client shows that answer as 0xC004F074.",
        0xC004F039,
    )
    assert entry("product_key_blocked") == (
        "The Software Licensing Service reported that the product key is blocked.",
        "kmsemu never produces it: KMS client setup keys are public and never blocked, and a "
        "key blocked in the lab's MAK service ('kmsemu mak block') fails with the activation "
        "server's 0xC004C003 (mak_blocked), as a blocked MAK does.",
        0xC004F051,
    )
    assert entry("timeout") == (
        "This operation returned because the timeout period expired.",
        "No DNS server answered in time; check 'kmsemu client dns --server' and that the "
        "server ('kmsemu dns serve') is running.",
        0x800705B4,
    )
