"""The lab's DNS server: asyncio UDP and TCP on one port, answers from ``Authority``.

TCP messages carry a 2-byte length; a peer gets ``idle_timeout`` seconds per
message and is cut off beyond that, or on a length over 65,535 bytes of
nonsense. UDP datagrams that do not parse are dropped (no reply to forged
garbage).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections import Counter
from typing import Final, cast

from kmsemu.dns import UPDATE_POLICIES
from kmsemu.dns.authority import Authority

IDLE_TIMEOUT: Final = 10.0
MAX_TCP_CLIENTS: Final = 256
#: The opcode in a header's third byte, and UPDATE's there (RFC 2136 section 2.2).
_OPCODE_BITS: Final = 0x78
_UPDATE_BITS: Final = 5 << 3


def loopback(address: str) -> bool:
    """Whether ``address`` (an IPv6 zone suffix allowed) is a loopback address."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, authority: Authority, updates: str, stats: Counter[str]) -> None:
        self._authority = authority
        self._stats = stats
        self._updates = updates
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # only an UPDATE needs the peer's trust; parsing its address costs more than the answer
        trusted = len(data) > 2 and data[2] & _OPCODE_BITS == _UPDATE_BITS and self._trusts(addr[0])
        reply = self._authority.answer(data, udp=True, trusted=trusted)
        if reply is None:
            self._stats["dropped"] += 1
            return
        self._stats["udp"] += 1
        if self._transport is not None:
            self._transport.sendto(reply, addr)

    def _trusts(self, host: str) -> bool:
        return self._updates == "any" or (self._updates == "loopback" and loopback(host))


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
        self._tcp: asyncio.Server | None = None
        self._clients = 0
        #: Queries answered over ``udp`` and ``tcp``, and messages ``dropped`` unanswered.
        self.stats: Counter[str] = Counter()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP and TCP; port 0 takes a free port for both."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port, reuse_address=True)
        bound = self._tcp.sockets[0].getsockname()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.authority, self.updates, self.stats), local_addr=(host, bound[1])
        )
        self._udp = transport
        self.address = (bound[0], bound[1])
        return self.address

    async def close(self) -> None:
        """Stop listening (UDP and TCP)."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._clients += 1
        peer = writer.get_extra_info("peername")
        trusted = self.updates == "any" or (
            self.updates == "loopback" and bool(peer) and loopback(peer[0])
        )
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                reply = self.authority.answer(data, udp=False, trusted=trusted)
                if reply is None:
                    self.stats["dropped"] += 1
                    break
                self.stats["tcp"] += 1
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients -= 1
            writer.close()
