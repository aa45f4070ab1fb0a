"""The lab DNS: authoritative answers (pure), the UDP/TCP server, dig, exports."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from click.testing import CliRunner
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.cli import main
from kmsemu.dns.authority import Authority
from kmsemu.dns.export import export
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone, ZoneError


def lab_zone(hosts: int = 2) -> Zone:
    return Zone.build(
        "lab.test",
        srv=[SrvTarget("kms1", 1688, 0, 10), SrvTarget("kms2.lab.test.", 1689, 10, 0)]
        + [SrvTarget(f"extra{i}", 1688, 20, 1) for i in range(hosts - 2)],
        addresses=[("kms1", "127.0.0.1"), ("kms2", "::1")]
        + [(f"extra{i}", f"127.0.1.{i + 1}") for i in range(hosts - 2)],
    )


AUTHORITY = Authority([lab_zone()])


def ask(
    name: str,
    qtype: str,
    *,
    udp: bool = True,
    authority: Authority = AUTHORITY,
    edns: int | None = None,
) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    if edns is not None:
        query.add_ar(EDNS0(udp_len=edns))
    data = authority.answer(query.pack(), udp=udp)
    assert data is not None
    return DNSRecord.parse(data)


def test_srv_answer_with_addresses_in_additional() -> None:
    reply = ask("_vlmcs._tcp.lab.test", "SRV")
    assert RCODE[reply.header.rcode] == "NOERROR"
    assert (reply.header.aa, reply.header.ra, reply.header.ad) == (1, 0, 0)
    srv = sorted(
        (rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in reply.rr
    )
    assert srv == [(0, 10, 1688, "kms1.lab.test."), (10, 0, 1689, "kms2.lab.test.")]
    assert sorted(QTYPE[rr.rtype] for rr in reply.ar) == ["A", "AAAA"]


def test_names_are_case_insensitive() -> None:
    assert len(ask("_VLMCS._Tcp.LAB.test", "SRV").rr) == 2


@pytest.mark.parametrize(
    "name, qtype, rcode, soa",
    [
        ("nothere.lab.test", "A", "NXDOMAIN", True),  # nothing at or below it
        ("_tcp.lab.test", "SRV", "NOERROR", True),  # an empty non-terminal
        ("kms1.lab.test", "AAAA", "NOERROR", True),  # exists, not that type
        ("lab.test", "SOA", "NOERROR", False),
    ],
)
def test_negative_answers_carry_the_soa(name: str, qtype: str, rcode: str, soa: bool) -> None:
    reply = ask(name, qtype)
    assert RCODE[reply.header.rcode] == rcode and reply.header.aa == 1
    assert [QTYPE[rr.rtype] for rr in reply.auth] == (["SOA"] if soa else [])


def test_out_of_zone_is_refused_never_recursed() -> None:
    reply = ask("example.com", "A")
    assert RCODE[reply.header.rcode] == "REFUSED" and reply.header.aa == 0 and not reply.rr


def test_any_gets_one_small_record() -> None:
    reply = ask("_vlmcs._tcp.lab.test", "ANY")
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["HINFO"]


def test_udp_truncation_at_512_or_the_edns_size() -> None:
    big = Authority([lab_zone(hosts=40)])
    plain = ask("_vlmcs._tcp.lab.test", "SRV", authority=big)
    assert plain.header.tc == 1 and not plain.rr and plain.q.qname == "_vlmcs._tcp.lab.test."
    medium = Authority([lab_zone(hosts=12)])
    assert ask("_vlmcs._tcp.lab.test", "SRV", authority=medium).header.tc == 1
    edns = ask("_vlmcs._tcp.lab.test", "SRV", authority=medium, edns=4096)
    assert edns.header.tc == 0 and len(edns.rr) == 12  # fits in 1232
    assert ask("_vlmcs._tcp.lab.test", "SRV", authority=big, udp=False).header.tc == 0


def test_garbage_responses_and_other_opcodes() -> None:
    assert AUTHORITY.answer(b"\x00\x01garbage", udp=True) is None
    response = DNSRecord.question("lab.test", "SOA").reply()
    assert AUTHORITY.answer(response.pack(), udp=True) is None  # never answer an answer
    notify = DNSRecord.question("lab.test", "SOA")
    notify.header.opcode = 4
    reply = DNSRecord.parse(AUTHORITY.answer(notify.pack(), udp=True))
    assert RCODE[reply.header.rcode] == "NOTIMP"


def test_compression_loop_is_dropped() -> None:
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    assert AUTHORITY.answer(header + b"\xc0\x0c\x00\x01\x00\x01", udp=True) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_get_no_reply_or_a_small_one(data: bytes) -> None:
    reply = AUTHORITY.answer(data, udp=True)
    assert reply is None or len(reply) <= 1232


def test_zone_file_and_bad_input() -> None:
    zone = lab_zone()
    zone.add_zone_text("$ORIGIN lab.test.\nextra 300 IN A 10.9.9.9\n")
    assert any(str(rr.rname) == "extra.lab.test." for rr in zone.records)
    with pytest.raises(ZoneError, match="must end with"):
        zone.add_zone_text("_vlmcs._tcp.lab.test. 300 IN SRV 0 0 1688 relative\n")
    with pytest.raises(ZoneError):
        zone.add_address("x", "not-an-ip")
    with pytest.raises(ZoneError):
        zone.add_zone_text("host.other.test. 300 IN A 10.0.0.1\n")
    with pytest.raises(ZoneError):
        SrvTarget.parse("kms1:1688,0")


def test_exports() -> None:
    zone = Zone.build(
        "lab.test", srv=[SrvTarget("kms1", 1688, 0, 10)], addresses=[("kms1", "127.0.0.1")]
    )
    bind = export(zone, "bind")
    assert "_vlmcs._tcp.lab.test." in bind and "SRV" in bind and "0 10 1688 kms1.lab.test." in bind
    ps = export(zone, "powershell")
    assert 'Add-DnsServerResourceRecord -ZoneName "lab.test" -Name "_vlmcs._tcp" -Srv' in ps
    assert "-Priority 0 -Weight 10 -Port 1688" in ps and '-IPv4Address "127.0.0.1"' in ps
    nsupdate = export(zone, "nsupdate", server="10.0.0.53").splitlines()
    assert nsupdate[0] == "server 10.0.0.53" and nsupdate[-1] == "send"
    assert "update add _vlmcs._tcp.lab.test. 3600 SRV 0 10 1688 kms1.lab.test." in nsupdate
    result = CliRunner().invoke(
        main, ["dns", "export", "--zone", "lab.test", "--srv", "kms1:1688,0,10", "--format", "bind"]
    )
    assert result.exit_code == 0 and "SRV" in result.stdout


# -- the server on real sockets --------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[str, int]]:
    loop = asyncio.new_event_loop()
    server = DnsServer(Authority([lab_zone()]), idle_timeout=0.5)
    address = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield address
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_dnspython_over_udp_and_tcp(dns_server: tuple[str, int]) -> None:
    host, port = dns_server
    query = dns.message.make_query("_vlmcs._tcp.lab.test", "SRV")
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(query, host, port=port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        assert sorted(r.port for r in reply.answer[0]) == [1688, 1689]


def test_tcp_peer_that_stalls_is_cut_off(dns_server: tuple[str, int]) -> None:
    with socket.create_connection(dns_server, timeout=5) as sock:
        sock.sendall(b"\x00")  # half a length prefix, then nothing
        assert sock.recv(10) == b""  # closed by the server's idle timeout
    test_dnspython_over_udp_and_tcp(dns_server)  # others are still served


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)")
def test_dig_sees_the_srv(dns_server: tuple[str, int]) -> None:
    host, port = dns_server
    out = subprocess.run(
        [
            "dig",
            f"@{host}",
            "-p",
            str(port),
            "_vlmcs._tcp.lab.test",
            "SRV",
            "+norecurse",
            "+time=3",
            "+tries=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "status: NOERROR" in out and "flags: qr aa" in out
    assert "SRV\t0 10 1688 kms1.lab.test." in out and "SRV\t10 0 1689 kms2.lab.test." in out
    tcp = subprocess.run(
        [
            "dig",
            f"@{host}",
            "-p",
            str(port),
            "_vlmcs._tcp.lab.test",
            "SRV",
            "+tcp",
            "+short",
            "+time=3",
            "+tries=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split("\n")
    assert "0 10 1688 kms1.lab.test." in tcp


@pytest.mark.skipif(shutil.which("nslookup") is None, reason="nslookup not installed")
def test_nslookup_sees_the_srv(dns_server: tuple[str, int]) -> None:
    host, port = dns_server
    out = subprocess.run(
        ["nslookup", f"-port={port}", "-type=srv", "_vlmcs._tcp.lab.test", host],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "service = 0 10 1688 kms1.lab.test." in out


def test_dns_serve_as_a_process(tmp_path: Path) -> None:
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kmsemu",
            "dns",
            "serve",
            "--port",
            "0",
            "--zone",
            "lab.test",
            "--srv",
            "kms1",
            "--a",
            "kms1=127.0.0.1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("ready dns 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        reply = dns.query.udp(
            dns.message.make_query("_vlmcs._tcp.lab.test", "SRV"), "127.0.0.1", port=port, timeout=5
        )
        assert reply.answer[0][0].port == 1688
        assert dns.rdatatype.to_text(reply.answer[0].rdtype) == "SRV"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_several_zones_and_a_zone_file_routed_to_them(tmp_path: Path) -> None:
    from kmsemu.cli.dns import build_zones

    zone_file = tmp_path / "extra.zone"
    zone_file.write_text(
        "$ORIGIN branch.test.\n_vlmcs._tcp 300 IN SRV 0 0 1688 kms.branch.test.\n"
        "kms 300 IN A 10.1.1.1\n"
    )
    zones = build_zones(
        ("lab.test", "branch.test"), ("kms1",), ("kms1=127.0.0.1",), zone_file, 3600
    )
    authority = Authority(zones)
    assert len(ask("_vlmcs._tcp.branch.test", "SRV", authority=authority).rr) == 1
    assert len(ask("_vlmcs._tcp.lab.test", "SRV", authority=authority).rr) == 1
    assert RCODE[ask("other.test", "A", authority=authority).header.rcode] == "REFUSED"
    stray = tmp_path / "stray.zone"
    stray.write_text("host.elsewhere.test. 300 IN A 10.0.0.1\n")
    with pytest.raises(Exception, match="none of the served zones"):
        build_zones(("lab.test",), (), (), stray, 3600)


def test_tcp_length_over_what_follows_then_silence(dns_server: tuple[str, int]) -> None:
    with socket.create_connection(dns_server, timeout=5) as sock:
        sock.sendall(b"\xff\xff" + b"\x00" * 100)  # claims 65,535 bytes, sends 100, stalls
        assert sock.recv(10) == b""  # cut off by the idle timeout, nothing answered
    with socket.create_connection(dns_server, timeout=5) as sock:
        sock.sendall(struct.pack("!H", 12) + b"\x00" * 12)  # a query with no question
        length = struct.unpack("!H", sock.recv(2))[0]
        reply = DNSRecord.parse(sock.recv(length))
        assert RCODE[reply.header.rcode] == "FORMERR" and not reply.rr and length == 12
    test_dnspython_over_udp_and_tcp(dns_server)


def test_updates_are_refused_unless_trusted() -> None:
    import dns.update

    zone = Zone.build("lab.test")
    authority = Authority([zone])
    update = dns.update.UpdateMessage("lab.test")
    update.add("_vlmcs._tcp", 300, "SRV", "0 0 1688 kms.lab.test.")
    refused = dns.message.from_wire(authority.answer(update.to_wire(), udp=True))
    assert refused.rcode() == dns.rcode.REFUSED
    assert RCODE[ask("_vlmcs._tcp.lab.test", "SRV", authority=authority).header.rcode] == "NXDOMAIN"
    accepted = dns.message.from_wire(authority.answer(update.to_wire(), udp=True, trusted=True))
    assert accepted.rcode() == dns.rcode.NOERROR
    assert len(ask("_vlmcs._tcp.lab.test", "SRV", authority=authority).rr) == 1
    assert zone.soa().rdata.times[0] == 2  # serial bumped
    other = dns.update.UpdateMessage("other.test")
    other.add("x", 300, "A", "10.0.0.1")
    assert (
        dns.message.from_wire(authority.answer(other.to_wire(), udp=True, trusted=True)).rcode()
        == dns.rcode.NOTAUTH
    )


def test_a_negative_answer_may_be_cached_for_the_soa_minimum() -> None:
    """RFC 2308 section 3: the SOA of an NXDOMAIN or NODATA answer has TTL min(TTL,
    minimum) — 300 s here, not the record's 3600 (as BIND answers)."""
    for name in ("nothere.lab.test", "kms1.lab.test"):  # NXDOMAIN; NODATA (no TXT)
        reply = ask(name, "TXT")
        assert [(QTYPE[rr.rtype], rr.ttl) for rr in reply.auth] == [("SOA", 300)]
    assert lab_zone().soa().ttl == 3600  # the SOA itself keeps its TTL


def test_an_update_cannot_delete_or_add_the_soa() -> None:
    import dns.update

    zone = Zone.build("lab.test")
    authority = Authority([zone])
    soa = zone.soa().rdata.toZone()
    delete = dns.update.UpdateMessage("lab.test")
    delete.delete("@", "SOA", soa)
    delete.add("@", 300, "SOA", "ns.lab.test. h.lab.test. 99 1 1 1 1")
    answer = dns.message.from_wire(authority.answer(delete.to_wire(), udp=True, trusted=True))
    assert answer.rcode() == dns.rcode.NOERROR
    assert [QTYPE[rr.rtype] for rr in ask("lab.test", "SOA", authority=authority).rr] == ["SOA"]
    assert zone.soa().rdata.times[0] == 2  # ours, bumped by the update; not the 99 sent
    assert RCODE[ask("gone.lab.test", "A", authority=authority).header.rcode] == "NXDOMAIN"


class _Broken(Authority):
    """An authority with a bug that every query meets (what a parser bug would look like)."""

    def answer(self, data: bytes, *, udp: bool, trusted: bool = False) -> bytes | None:
        raise KeyError("a bug")


def test_a_bug_for_one_message_is_counted_and_logged_once_and_others_still_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    server = DnsServer(_Broken([lab_zone()]), idle_timeout=0.5)
    host, port = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        query = dns.message.make_query("_vlmcs._tcp.lab.test", "SRV")
        for send in (dns.query.udp, dns.query.tcp, dns.query.udp):
            with pytest.raises((dns.exception.Timeout, EOFError, ConnectionError)):
                send(query, host, port=port, timeout=0.5)
        server.authority = Authority([lab_zone()])  # the bug fixed: served again
        reply = dns.query.udp(query, host, port=port, timeout=5)
        assert sorted(r.port for r in reply.answer[0]) == [1688, 1689]
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert server.stats["errors"] == 3
    logged = [r for r in caplog.records if r.getMessage().startswith("dns_internal_error")]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "(KeyError; logged once per kind" in logged[0].getMessage()


def test_idle_tcp_peers_at_the_limit_make_room_for_a_real_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The TCP connection limit full of idle peers (one half a length prefix in): a real
    client is still answered, and the peer idle the longest is the one closed."""
    import kmsemu.dns.server as server_module

    monkeypatch.setattr(server_module, "MAX_TCP_CLIENTS", 8)
    loop = asyncio.new_event_loop()
    server = DnsServer(Authority([lab_zone()]), idle_timeout=30)
    host, port = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    idle = []
    try:
        for _ in range(8):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"\x00")  # half a length prefix, then nothing
            idle.append(sock)
        query = dns.message.make_query("_vlmcs._tcp.lab.test", "SRV")
        for _ in range(3):
            reply = dns.query.tcp(query, host, port=port, timeout=5)
            assert sorted(r.port for r in reply.answer[0]) == [1688, 1689]
        try:  # the first idle peer made room: closed (reset, or an end of stream)
            closed = idle[0].recv(10)
        except ConnectionResetError:
            closed = b""
        assert closed == b""
        assert server.stats["evicted"] == 1  # then the real client's own slot is free again
    finally:
        for sock in idle:
            sock.close()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
