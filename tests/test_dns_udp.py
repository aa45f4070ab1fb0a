"""The lab DNS's UDP pumps: batches, the peer's address, a socket that refuses, shutdown."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dnslib import EDNS0, DNSRecord

from kmsemu.dns import server as server_module
from kmsemu.dns import udp
from kmsemu.dns.authority import Authority
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.run.dns import DnsThread

PUMPS = [udp.PlainPump] + ([udp.MmsgPump] if udp._MMSG is not None else [])


def lab_zone() -> Zone:
    return Zone.build(
        "lab.test",
        srv=[SrvTarget("kms1", 1688, 0, 10), SrvTarget("kms2", 1689, 10, 0)],
        addresses=[("kms1", "127.0.0.1"), ("kms2", "127.0.0.2")],
    )


UNCACHED = Authority([lab_zone()], cache_entries=0)


def query(name: str, qtype: str, qid: int, edns: int | None = None) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns))
    return bytes(record.pack())


def mix(count: int) -> list[bytes]:
    """Queries with distinct IDs, with junk (no reply) between them, every few."""
    names = [("_vlmcs._tcp.lab.test", "SRV"), ("kms1.lab.test", "A"), ("nothere.lab.test", "A")]
    out = []
    for i in range(count):
        if i % 7 == 3:
            out.append(b"\x12\x34" + bytes([i % 256]) * (i % 20))  # junk: dropped
        elif i % 11 == 5:
            out.append(b"")  # an empty datagram: dropped
        else:
            name, qtype = names[i % 3]
            out.append(query(name, qtype, i, edns=1232 if i % 5 == 0 else None))
    return out


def sockets(family: socket.AddressFamily) -> tuple[socket.socket, socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    pair = []
    for _ in range(2):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((host, 0))
        sock.setblocking(False)
        pair.append(sock)
    return pair[0], pair[1]


def drain(sock: socket.socket, timeout: float = 0.5) -> list[bytes]:
    sock.settimeout(timeout)
    got = []
    try:
        while True:
            got.append(sock.recv(65535))
    except TimeoutError:
        pass
    return got


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


FAMILIES = [socket.AF_INET] + ([socket.AF_INET6] if has_ipv6() else [])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pump_class", PUMPS)
def test_a_burst_gets_every_reply_once_and_in_order(
    pump_class: type[udp.PlainPump], family: socket.AddressFamily
) -> None:
    """More datagrams than a batch, junk among them: each query gets ``Authority``'s reply,
    in order, junk gets none, and the tally counts both."""
    authority = Authority([lab_zone()])
    server, client = sockets(family)
    peers: list[str] = []
    counts = [0, 0]

    def respond(data: bytes, peer: Callable[[], str]) -> bytes | None:
        peers.append(peer())
        return authority.answer(data, udp=True)

    def tally(answered: int, dropped: int) -> None:
        counts[0] += answered
        counts[1] += dropped

    pump = pump_class(server, respond, tally)
    try:
        for _ in range(2):  # the second time from the cache
            datagrams = mix(3 * udp.BATCH + 5)
            for data in datagrams:
                client.sendto(data, server.getsockname())
            assert pump.run(10_000) == len(datagrams)
            expected = [r for d in datagrams if (r := UNCACHED.answer(d, udp=True)) is not None]
            assert drain(client) == expected
            assert not pump.backlog
        assert counts == [2 * len(expected), 2 * (len(datagrams) - len(expected))]
        assert set(peers) == {client.getsockname()[0]}
        assert pump.run(10) == 0  # nothing waiting: nothing done, no error
    finally:
        pump.close()
        server.close()
        client.close()


@pytest.mark.skipif(udp._MMSG is None, reason="recvmmsg/sendmmsg: Linux only")
@pytest.mark.parametrize("family", FAMILIES)
def test_the_peer_address_is_the_one_recvfrom_gives(family: socket.AddressFamily) -> None:
    server, client = sockets(family)
    seen: list[tuple[Any, ...]] = []
    pump = udp.MmsgPump(server, lambda data, peer: data, lambda a, d: None)

    def respond(data: bytes, peer: Callable[[], str]) -> bytes:
        seen.append(pump._address(pump._slot))
        return data

    pump._respond = respond
    try:
        client.sendto(b"echo", server.getsockname())
        assert pump.run(10) == 1
        assert drain(client) == [b"echo"]
        assert seen == [client.getsockname()]
    finally:
        pump.close()
        server.close()
        client.close()


def fail_once(code: int, real: Callable[..., int]) -> Callable[..., int]:
    """A sendmmsg that fails with ``code`` the first time, then is ``real``."""
    calls = []

    def sendmmsg(*args: Any) -> int:
        calls.append(args)
        if len(calls) == 1:
            ctypes.set_errno(code)
            return -1
        return real(*args)

    return sendmmsg


@pytest.mark.skipif(udp._MMSG is None, reason="recvmmsg/sendmmsg: Linux only")
def test_replies_the_socket_refuses_for_now_wait_and_keep_their_order() -> None:
    server, client = sockets(socket.AF_INET)
    pump = udp.MmsgPump(server, lambda data, peer: data[::-1], lambda a, d: None)
    pump._sendmmsg = fail_once(errno.EAGAIN, pump._sendmmsg)
    try:
        for data in (b"ab", b"cd", b"ef"):
            client.sendto(data, server.getsockname())
        pump.run(10)
        assert [reply for reply, _ in pump.backlog] == [b"ba", b"dc", b"fe"]
        assert {address for _, address in pump.backlog} == {client.getsockname()}
        client.sendto(b"gh", server.getsockname())
        pump.run(10)  # behind the backlog, not before it
        assert len(pump.backlog) == 4 and drain(client, 0.1) == []
        assert pump.flush_backlog() and not pump.backlog
        assert drain(client) == [b"ba", b"dc", b"fe", b"hg"]
    finally:
        pump.close()
        server.close()
        client.close()


@pytest.mark.skipif(udp._MMSG is None, reason="recvmmsg/sendmmsg: Linux only")
def test_a_reply_refused_for_good_is_dropped_and_the_rest_go() -> None:
    server, client = sockets(socket.AF_INET)
    pump = udp.MmsgPump(server, lambda data, peer: data, lambda a, d: None)
    pump._sendmmsg = fail_once(errno.EPERM, pump._sendmmsg)
    try:
        for data in (b"1", b"2", b"3"):
            client.sendto(data, server.getsockname())
        pump.run(10)
        assert not pump.backlog and drain(client) == [b"2", b"3"]
    finally:
        pump.close()
        server.close()
        client.close()


class Refusing:
    """A socket whose first ``sendto`` would block."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.refused = False

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self.sock.recvfrom(size)

    def sendto(self, data: bytes, address: Any) -> int:
        if not self.refused:
            self.refused = True
            raise BlockingIOError(errno.EAGAIN, "would block")
        return self.sock.sendto(data, address)


def test_the_plain_pump_keeps_what_would_block_too() -> None:
    server, client = sockets(socket.AF_INET)
    pump = udp.PlainPump(Refusing(server), lambda data, peer: data, lambda a, d: None)  # type: ignore[arg-type]
    try:
        for data in (b"1", b"2"):
            client.sendto(data, server.getsockname())
        pump.run(10)
        assert [reply for reply, _ in pump.backlog] == [b"1", b"2"]
        assert pump.flush_backlog() and drain(client) == [b"1", b"2"]
    finally:
        pump.close()
        server.close()
        client.close()


# -- through the server ----------------------------------------------------------------------


@pytest.fixture(params=["batches", "plain", "transport"])
def served(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DnsServer, asyncio.AbstractEventLoop]]:
    """A server on a loop in a thread: with the platform's pump, the plain pump, or on a
    loop that cannot watch sockets (so asyncio's datagram transport)."""
    if request.param == "plain":
        monkeypatch.setattr(server_module, "new_pump", udp.PlainPump)
    loop: asyncio.AbstractEventLoop
    if request.param == "transport":

        class NoReaders(asyncio.SelectorEventLoop):
            def add_reader(self, *args: Any) -> None:
                raise NotImplementedError

        loop = NoReaders()
    else:
        loop = asyncio.new_event_loop()
    server = DnsServer(Authority([lab_zone()]), idle_timeout=2)
    loop.run_until_complete(server.start("127.0.0.1", 0))
    assert (server._pump is None) == (request.param == "transport")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server, loop
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def exchange(address: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_hostile_datagrams_get_what_they_got_before(
    served: tuple[DnsServer, asyncio.AbstractEventLoop],
) -> None:
    """Truncated, oversize and garbage datagrams: the reply ``Authority`` gives, or none."""
    server, _ = served
    srv = query("_vlmcs._tcp.lab.test", "SRV", 77)
    hostile = [
        b"",
        b"\x00",
        srv[:5],
        srv[:-1],
        srv + bytes(64_000),  # the largest datagrams: a query, then padding
        srv + b"\xff" * 65_000,
        b"\xab\xcd" + b"\x00\x00" + b"\xff" * 500,
        bytes(12),  # a header and nothing: FORMERR
    ]
    for data in hostile:
        expected = UNCACHED.answer(data, udp=True)
        got = exchange(server.address, data, timeout=2.0 if expected else 0.3)
        assert got == expected, len(data)
    assert exchange(server.address, srv) == UNCACHED.answer(srv, udp=True)


def test_a_burst_through_the_server(served: tuple[DnsServer, asyncio.AbstractEventLoop]) -> None:
    server, _ = served
    datagrams = mix(2 * udp.BATCH)
    expected = [r for d in datagrams if (r := UNCACHED.answer(d, udp=True)) is not None]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        for data in datagrams:
            sock.sendto(data, server.address)
        assert sorted(drain(sock)) == sorted(expected)
    assert dict(server.stats) == {
        "udp": len(expected),
        "dropped": len(datagrams) - len(expected),
    }


def test_an_answer_that_raises_costs_one_reply_only(
    served: tuple[DnsServer, asyncio.AbstractEventLoop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = served
    answer = server.authority.answer

    def broken(data: bytes, *, udp: bool, trusted: bool = False) -> bytes | None:
        if data[2:] == b"boom":
            raise RuntimeError("a bug")
        return answer(data, udp=udp, trusted=trusted)

    server.authority.answer = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="kmsemu.dns.server"):
        assert exchange(server.address, b"\x00\x01boom", timeout=0.3) is None
    assert any("no answer to a 6-byte UDP message" in r.getMessage() for r in caplog.records)
    srv = query("_vlmcs._tcp.lab.test", "SRV", 5)
    assert exchange(server.address, srv) == UNCACHED.answer(srv, udp=True)
    assert dict(server.stats) == {"udp": 1, "dropped": 1, "errors": 1}


@pytest.mark.skipif(udp._MMSG is None, reason="recvmmsg/sendmmsg: Linux only")
def test_the_server_sends_its_backlog_when_the_socket_is_writable() -> None:
    server = DnsServer(Authority([lab_zone()]))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start("127.0.0.1", 0))
    pump = server._pump
    assert isinstance(pump, udp.MmsgPump)
    pump._sendmmsg = fail_once(errno.EAGAIN, pump._sendmmsg)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        srv = query("_vlmcs._tcp.lab.test", "SRV", 9)
        assert exchange(server.address, srv) == UNCACHED.answer(srv, udp=True)

        async def backlog() -> int:  # read on the loop's thread, after the send that emptied it
            return len(pump.backlog)

        assert asyncio.run_coroutine_threadsafe(backlog(), loop).result(5) == 0
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_stopping_leaves_no_thread_socket_or_mapping_behind() -> None:
    before = set(threading.enumerate())
    server = DnsServer(Authority([lab_zone()]))
    with DnsThread(server) as running:
        srv = query("kms1.lab.test", "A", 3)
        assert exchange(running.address, srv) == UNCACHED.answer(srv, udp=True)
        pump = server._pump
        port = running.address[1]
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    assert server._pump is None and server._udp_sock is None
    if isinstance(pump, udp.MmsgPump):
        assert pump._mm.closed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # the port is free again: the socket is closed
