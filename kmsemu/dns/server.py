"""The lab's DNS server: UDP and TCP on one port, on an asyncio loop, answers from ``Authority``.

TCP messages carry a 2-byte length; a peer gets ``idle_timeout`` seconds per
message and is cut off beyond that, or on a length over 65,535 bytes of
nonsense. UDP datagrams that do not parse are dropped (no reply to forged
garbage).

UDP does not go through asyncio's datagram transport: the loop watches the
socket (``add_reader``) and a ``kmsemu.dns.udp`` pump answers every datagram
waiting each time it is readable, with recvmmsg/sendmmsg on Linux, so a busy
server makes a few system calls per batch instead of two per query. Loops that
cannot watch a socket (Windows' proactor) get the datagram transport instead.
Everything stays on the loop's thread: the zones, the cache and the counters
are never touched from two threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, cast

from kmsemu.dns import UPDATE_POLICIES
from kmsemu.dns.authority import Authority
from kmsemu.dns.udp import Pump, new_pump

IDLE_TIMEOUT: Final = 10.0
#: TCP connections at once; a new one past it closes the one idle the longest (so that
#: idle or one-byte-a-second peers cannot keep a real client out).
MAX_TCP_CLIENTS: Final = 256
#: Datagrams answered per wake-up at most, before the loop's other callbacks get a turn.
UDP_PER_WAKEUP: Final = 256
#: The opcode in a header's third byte, and UPDATE's there (RFC 2136 section 2.2).
_OPCODE_BITS: Final = 0x78
_UPDATE_BITS: Final = 5 << 3
_log = logging.getLogger(__name__)


def loopback(address: str) -> bool:
    """Whether ``address`` (an IPv6 zone suffix allowed) is a loopback address."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class _Udp(asyncio.DatagramProtocol):
    """The datagram transport's way, for loops that cannot watch a socket (``add_reader``)."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._peer = addr[0]
        reply = self._server._respond(data, self._host)
        if reply is None:
            self._server._tally(0, 1)
            return
        self._server._tally(1, 0)
        if self._transport is not None:
            self._transport.sendto(reply, addr)

    def _host(self) -> str:
        return self._peer


async def _bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on the first address of ``host`` that binds (as
    ``create_datagram_endpoint(local_addr=...)`` would)."""
    try:  # an address needs no resolver thread (asyncio takes the same shortcut)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error or OSError(f"getaddrinfo({host!r}) returned nothing")


class DnsServer:
    """One ``Authority`` served over UDP and TCP on one port."""

    def __init__(
        self, authority: Authority, *, idle_timeout: float = IDLE_TIMEOUT, updates: str = "loopback"
    ) -> None:
        if updates not in UPDATE_POLICIES:
            raise ValueError(f"updates must be one of {UPDATE_POLICIES}")
        self.authority = authority
        self.idle_timeout = idle_timeout
        self.updates = updates
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_sock: socket.socket | None = None
        self._pump: Pump | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tcp: asyncio.Server | None = None
        #: Open TCP connections and when each last completed a message (monotonic): at
        #: ``MAX_TCP_CLIENTS`` the one idle the longest makes room for a new one.
        self._tcp_clients: dict[asyncio.StreamWriter, float] = {}
        #: Queries answered over ``udp`` and ``tcp``, and messages ``dropped`` unanswered.
        self.stats: Counter[str] = Counter()
        #: The kinds of internal error already logged with their traceback.
        self._logged: set[str] = set()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP and TCP; port 0 takes a free port for both."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port, reuse_address=True)
        bound = self._tcp.sockets[0].getsockname()
        try:
            sock = await _bind_udp(host, bound[1])
        except BaseException:
            self._tcp.close()
            raise
        self._udp_sock, self._loop = sock, loop
        self._pump = new_pump(sock, self._respond, self._tally)
        try:
            loop.add_reader(sock.fileno(), self._readable)
        except NotImplementedError:  # a proactor loop: the datagram transport it has
            self._pump.close()
            self._pump = self._udp_sock = None
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
            self._udp = transport
        self.address = (bound[0], bound[1])
        return self.address

    async def close(self) -> None:
        """Stop listening (UDP and TCP)."""
        if self._udp is not None:
            self._udp.close()
        if self._udp_sock is not None and self._loop is not None:
            self._loop.remove_reader(self._udp_sock.fileno())
            self._loop.remove_writer(self._udp_sock.fileno())
            self._udp_sock.close()
            self._udp_sock = None
        if self._pump is not None:
            self._pump.close()
            self._pump = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    def _readable(self) -> None:
        pump, sock, loop = self._pump, self._udp_sock, self._loop
        if pump is None or sock is None or loop is None:
            return
        pump.run(UDP_PER_WAKEUP)
        if pump.backlog:  # the socket took not all: the rest when it is writable
            loop.add_writer(sock.fileno(), self._writable)

    def _writable(self) -> None:
        pump, sock, loop = self._pump, self._udp_sock, self._loop
        if sock is not None and loop is not None and (pump is None or pump.flush_backlog()):
            loop.remove_writer(sock.fileno())

    def _tally(self, answered: int, dropped: int) -> None:
        if answered:
            self.stats["udp"] += answered
        if dropped:
            self.stats["dropped"] += dropped

    def _respond(self, data: bytes, peer: Callable[[], str]) -> bytes | None:
        """A datagram's reply; ``peer()`` names its sender."""
        # only an UPDATE needs the peer's trust; finding the peer costs more than the answer
        trusted = len(data) > 2 and data[2] & _OPCODE_BITS == _UPDATE_BITS and self._trusts(peer())
        return self._answer(data, udp=True, trusted=trusted)

    def _answer(self, data: bytes, *, udp: bool, trusted: bool) -> bytes | None:
        """The authority's reply; a bug for one message (an exception no parser should
        let out) must not stop the server for everyone: the message gets no answer, the
        error is counted (``errors``) and its traceback logged once per kind, with the
        stable code ``dns_internal_error``, so that a flood of such messages cannot flood
        the log."""
        try:
            return self.authority.answer(data, udp=udp, trusted=trusted)
        except Exception as exc:
            self.stats["errors"] += 1
            kind = type(exc).__qualname__
            if kind not in self._logged:
                self._logged.add(kind)
                _log.exception(
                    "dns_internal_error: no answer to a %d-byte %s message (%s; logged once "
                    "per kind, counted in errors)",
                    len(data),
                    "UDP" if udp else "TCP",
                    kind,
                )
            return None

    def _trusts(self, host: str) -> bool:
        return self.updates == "any" or (self.updates == "loopback" and loopback(host))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients = self._tcp_clients
        if len(clients) >= MAX_TCP_CLIENTS:  # full (idle or slow peers): evict, not refuse
            oldest = min(clients, key=clients.__getitem__)
            del clients[oldest]
            oldest.transport.abort()
            self.stats["evicted"] += 1
        clients[writer] = time.monotonic()
        peer = writer.get_extra_info("peername")
        trusted = self.updates == "any" or (
            self.updates == "loopback" and bool(peer) and loopback(peer[0])
        )
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                reply = self._answer(data, udp=False, trusted=trusted)
                if reply is None:
                    self.stats["dropped"] += 1
                    break
                self.stats["tcp"] += 1
                clients[writer] = time.monotonic()
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            clients.pop(writer, None)
            writer.close()
