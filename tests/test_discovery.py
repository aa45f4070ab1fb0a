"""KMS host discovery through DNS: RFC 2782 order, failover, caching, HRESULTs."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.client.discovery import DiscoveryError, Srv, discover, rfc2782_order
from kmsemu.dns.authority import Authority
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.errors import HResult
from kmsemu.keys.product_key import setup_key
from kmsemu.testing import BackgroundHost

KEY = str(setup_key(6))  # windows-server-2022-standard


def test_priority_first_then_weights_within_5_points() -> None:
    rng = random.Random(7)
    records = [Srv(0, 10, 1, "a."), Srv(0, 30, 2, "b."), Srv(0, 60, 3, "c."), Srv(5, 100, 4, "z.")]
    firsts = Counter(rfc2782_order(records, rng)[0].target for _ in range(2000))
    for target, weight in (("a.", 10), ("b.", 30), ("c.", 60)):
        assert abs(firsts[target] / 2000 * 100 - weight) <= 5, firsts
    assert all(rfc2782_order(records, rng)[-1].target == "z." for _ in range(50))


def test_zero_weights_are_still_tried() -> None:
    order = rfc2782_order([Srv(0, 0, 1, "a."), Srv(0, 0, 2, "b.")], random.Random(1))
    assert sorted(r.target for r in order) == ["a.", "b."]


class Lab:
    """A DNS server for lab.test (and empty.test) on a background loop."""

    def __init__(self, srv: list[SrvTarget]) -> None:
        zone = Zone.build(
            "lab.test", srv=srv, addresses=[("kms1", "127.0.0.1"), ("kms2", "127.0.0.1")]
        )
        zone.add_zone_text(
            "$ORIGIN lab.test.\n_vlmcs._tcp.gone 300 IN SRV 0 0 0 .\n"
            '_vlmcs._tcp.nosrv 300 IN TXT "no srv here"\n'
        )
        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(Authority([zone]))
        host, port = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        self.address = f"{host}:{port}"
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[BackgroundHost, BackgroundHost]]:
    with BackgroundHost(tmp_path / "a") as first, BackgroundHost(tmp_path / "b") as second:
        first.set_min_count(5)
        second.set_min_count(5)
        yield first, second


@pytest.fixture
def lab(hosts: tuple[BackgroundHost, BackgroundHost]) -> Iterator[Lab]:
    first, second = hosts
    dns_lab = Lab([SrvTarget("kms1", first.port, 0, 0), SrvTarget("kms2", second.port, 10, 0)])
    yield dns_lab
    dns_lab.stop()


def test_discover_orders_by_priority(lab: Lab, hosts: tuple[BackgroundHost, ...]) -> None:
    found = discover(["lab.test"], [lab.address], random.Random(1))
    assert [c.address[1] for c in found] == [hosts[0].port, hosts[1].port]
    assert found[0].display == f"kms1.lab.test:{hosts[0].port}"


@pytest.mark.parametrize(
    "domain, hresult",
    [
        ("missing.test", HResult.DNS_SERVER_FAILURE),  # not our zone: REFUSED
        ("nothere.lab.test", HResult.DNS_NAME_DOES_NOT_EXIST),
        ("nosrv.lab.test", HResult.DNS_NO_RECORDS),
        ("gone.lab.test", HResult.DNS_NO_RECORDS),  # target "." : service not available
    ],
)
def test_dns_failures_map_to_windows_hresults(lab: Lab, domain: str, hresult: int) -> None:
    with pytest.raises(DiscoveryError) as info:
        discover([domain], [lab.address], random.Random(1), timeout=2)
    assert info.value.hresult == hresult


def test_suffix_search_list_moves_on(lab: Lab) -> None:
    found = discover(["nothere.lab.test", "lab.test"], [lab.address], random.Random(1))
    assert found


def client(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["client", *args], env={"KMSEMU_HOME": str(home)})


def test_a_profile_activates_through_dns_and_fails_over(
    tmp_path: Path, lab: Lab, hosts: tuple[BackgroundHost, BackgroundHost]
) -> None:
    home = tmp_path / "home"
    assert client(home, "ipk", KEY).exit_code == 0
    assert client(home, "dns", "--server", lab.address, "--suffix", "lab.test").exit_code == 0
    assert client(home, "ato").exit_code == 0
    dlv = client(home, "dlv").stdout
    assert f"KMS machine name from DNS: kms1.lab.test:{hosts[0].port}" in dlv
    hosts[0].stop()  # the preferred host goes down: the cached host fails, DNS gives the next
    result = client(home, "ato")
    assert result.exit_code == 0, result.output
    assert f"KMS machine name from DNS: kms2.lab.test:{hosts[1].port}" in client(home, "dlv").stdout
    events = json.loads(client(home, "events", "--json").stdout)["events"]
    sent = [e for e in events if e["id"] == 12288]
    assert sent[-2]["hresult"] == "0x800706BA" and sent[-1]["hresult"] == "0x00000000"


def test_skms_wins_and_skms_domain_restricts(
    tmp_path: Path, lab: Lab, hosts: tuple[BackgroundHost, BackgroundHost]
) -> None:
    home = tmp_path / "home"
    client(home, "ipk", KEY)
    client(home, "dns", "--server", lab.address, "--suffix", "lab.test")
    client(home, "skms", hosts[1].host_port)
    client(home, "ato")
    assert f"Registered KMS machine name: {hosts[1].host_port}" in client(home, "dlv").stdout
    client(home, "ckms")
    client(home, "ckhc")
    client(home, "skms-domain", "nothere.lab.test")
    failed = client(home, "ato")
    assert failed.exit_code == 1 and "Error: 0x8007232B" in failed.stderr
    events = json.loads(client(home, "events", "--json").stdout)["events"]
    assert events[-1]["hresult"] == "0x8007232B"
    client(home, "ckms-domain")
    assert client(home, "ato").exit_code == 0


def _wait_for(lines: list[str], text: str, proc) -> str:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [line for line in lines if text in line]
        if found:
            return found[0]
        assert proc.poll() is None, "\n".join(lines)
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in:\n" + "\n".join(lines))


def test_host_publishes_itself_and_a_client_finds_it(tmp_path: Path) -> None:
    from tests.conftest import start_host_process, stop_host_process

    dns_lab = Lab([])
    host = start_host_process(
        tmp_path / "host",
        "--min-count",
        "5",
        "--dns-publish",
        "lab.test,0,10",
        "--dns-server",
        dns_lab.address,
        "--dns-name",
        "kms9",
    )
    try:
        line = _wait_for(host.stderr_lines, "12294", host.process)
        assert f"0 10 {host.port} kms9.lab.test." in line
        found = discover(["lab.test"], [dns_lab.address], random.Random(1))
        assert [c.address for c in found] == [("127.0.0.1", host.port)]
        home = tmp_path / "home"
        client(home, "ipk", KEY)
        client(home, "dns", "--server", dns_lab.address, "--suffix", "lab.test")
        assert client(home, "ato").exit_code == 0
        assert "KMS machine name from DNS: kms9.lab.test" in client(home, "dlv").stdout
    finally:
        assert stop_host_process(host) == 0
        dns_lab.stop()
    status = CliRunner().invoke(main, ["host", "status", "--state", str(tmp_path / "host")])
    assert "DNS publishing enabled" in status.stdout


def test_publishing_failure_is_event_12293(tmp_path: Path) -> None:
    import socket

    from tests.conftest import start_host_process, stop_host_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    host = start_host_process(tmp_path / "host", "--dns-publish", "lab.test", "--dns-server", dead)
    try:
        line = _wait_for(host.stderr_lines, "12293", host.process)
        assert "0x8007232A" in line and "'lab.test' domain failed" in line
    finally:
        stop_host_process(host)
