"""Malformed traffic to the KMS, HTTP and DNS ports, and idle connections held open."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from benchkit.stats import percentile
from benchkit.traffic.dns import SRV_NAME, U16, dns_query
from benchkit.traffic.kms import (
    PTYPE_BIND_ACK,
    PTYPE_FAULT,
    PTYPE_RESPONSE,
    answer,
    bind_pdu,
    bound,
    read_pdu,
)
from benchkit.traffic.streams import (
    REQUEST_TIMEOUT,
    close_writer,
    error_name,
    http_request,
    read_http,
    read_to_eof,
)
from kmsemu.rpc.ndr import encode_request_stub
from kmsemu.rpc.pdu import MAX_FRAG, encode_request

if TYPE_CHECKING:
    from benchkit.traffic.mixed import Mix

#: The KMS host's idle timeout (kmsemu.host.server.DEFAULT_IDLE_TIMEOUT): a stalled
#: connection must be closed between 0.9x and 1.25x of it (+ slack).
HOST_IDLE_TIMEOUT = 30.0
STALL_SLACK = 10.0
MAX_STALLS = 64
#: Idle connections the lab closed are opened again after a random delay up to this (s).
REOPEN_JITTER = 1.0
#: A hostile connection that should be closed at once gets this long.
HOSTILE_WAIT = 5.0

#: What each variant may end in; anything else is reported as unexpected.
HOSTILE_EXPECTED: dict[str, tuple[str, ...]] = {
    "kms-garbage": ("closed",),
    "kms-short-garbage": ("closed",),
    "kms-truncated": ("closed",),
    "kms-oversized": ("closed",),
    # REQUEST before BIND and a stub that is no NDR: FAULT, the connection stays usable.
    "kms-no-bind": ("FAULT, open", "FAULT, closed"),
    "kms-bad-ndr": ("FAULT, open", "FAULT, closed"),
    # An envelope that does not open is a request: answered 0x8007000D, and logged.
    "kms-bad-envelope": ("response 0x8007000D, open", "response 0x8007000D, closed"),
    "kms-stall-header": ("closed at the idle timeout", "cut short by the end of the run"),
    "kms-stall-body": ("closed at the idle timeout", "cut short by the end of the run"),
    "http-garbage": ("HTTP 400", "closed"),
    "http-bad-json": ("HTTP 400",),
    "http-bad-key": ("HTTP 400", "HTTP 404", "HTTP 422"),
    # uvicorn with httptools sets no limit on header size: a 70-200 KB header is served.
    "http-huge-header": ("HTTP 200", "HTTP 400", "HTTP 413", "HTTP 431", "closed"),
    "http-truncated-body": ("closed", "HTTP 400"),
    # uvicorn has no timeout for a request that never completes: the lab may keep it.
    "http-stall": (
        "still open when given up",
        "closed",
        "HTTP 400",
        "HTTP 408",
        "cut short by the end of the run",
    ),
    "dns-junk-udp": ("no reply",),
    "dns-truncated-udp": ("no reply",),
    "dns-junk-tcp": ("closed",),
}


class Hostile:
    """Malformed traffic, one variant after the other, each judged by what the lab did."""

    KMS_VARIANTS = (
        "kms-garbage",
        "kms-short-garbage",
        "kms-truncated",
        "kms-oversized",
        "kms-no-bind",
        "kms-bad-ndr",
        "kms-bad-envelope",
        "kms-stall-header",
        "kms-stall-body",
    )
    HTTP_VARIANTS = (
        "http-garbage",
        "http-bad-json",
        "http-bad-key",
        "http-huge-header",
        "http-truncated-body",
        "http-stall",
    )
    DNS_VARIANTS = ("dns-junk-udp", "dns-truncated-udp", "dns-junk-tcp")

    def __init__(
        self,
        gen: Mix,
        kms: tuple[str, int],
        http: tuple[str, int],
        http_base: str,
        dns: tuple[str, int],
    ) -> None:
        self.gen = gen
        self.rec = gen.rec
        self.kms = kms
        self.http = http
        self.http_base = http_base
        self.dns = dns
        # KMS variants most often, then HTTP, then DNS.
        weighted = [*self.KMS_VARIANTS * 2, *self.HTTP_VARIANTS, *self.DNS_VARIANTS]
        self.cycle = itertools.cycle(weighted)
        self.stalls = 0
        self.bind = bind_pdu()
        self.srv = dns_query(SRV_NAME, "SRV")
        self.stall_closed_after: list[float] = []
        self.udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_sock.setblocking(False)
        self.udp_sock.connect(dns)

    def close(self) -> None:
        # A reply to junk would sit in this socket's buffer: read what is there.
        replies = 0
        with contextlib.suppress(OSError):
            while self.udp_sock.recv(4096):
                replies += 1
        self.rec.counters["DNS replies to junk or truncated datagrams"] += replies
        self.udp_sock.close()

    def request(self, request_line: str, body: bytes = b"", extra: str = "") -> bytes:
        return http_request(request_line, f"{self.http[0]}:{self.http[1]}", body, extra)

    async def run(self, due: float) -> None:
        variant = next(self.cycle)
        if variant.startswith(("kms-stall", "http-stall")):
            if self.stalls >= MAX_STALLS:
                variant = "kms-garbage"
            else:
                self.stalls += 1
        self.rec.counters[f"malformed sent: {variant}"] += 1
        try:
            await getattr(self, variant.replace("-", "_"))(variant)
        except Exception as exc:
            self.rec.outcome(variant, f"generator error {error_name(exc)}", repr(exc))
        finally:
            if variant.startswith(("kms-stall", "http-stall")):
                self.stalls -= 1

    async def _send_and_judge(
        self,
        variant: str,
        address: tuple[str, int],
        data: bytes,
        *,
        half_close: bool = False,
        bind: bool = False,
        http: bool = False,
        limit: float = HOSTILE_WAIT,
    ) -> None:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), REQUEST_TIMEOUT
            )
            if bind:
                writer.write(self.bind)
                ack = await asyncio.wait_for(read_pdu(reader), REQUEST_TIMEOUT)
                if ack[2] != PTYPE_BIND_ACK:
                    self.rec.outcome(variant, f"BIND answered by type {ack[2]}")
                    return
            writer.write(data)
            if half_close and writer.can_write_eof():
                writer.write_eof()
            if http:
                try:
                    status, _, body = await asyncio.wait_for(read_http(reader), limit)
                except (asyncio.IncompleteReadError, ConnectionResetError):
                    self.rec.outcome(variant, "closed")
                    return
                except TimeoutError:
                    self.rec.outcome(variant, "still open")
                    return
                if b'"counted":true' in body:
                    self.rec.outcome(variant, "COUNTED an activation", body[:200].decode())
                self.rec.outcome(
                    variant,
                    f"HTTP {status}",
                    "" if status < 500 else body[:200].decode(errors="replace"),
                )
                return
            how, got, _ = await read_to_eof(reader, limit)
        finally:
            close_writer(writer)
        self._judge_rpc(variant, how, got)

    def _judge_rpc(self, variant: str, how: str, got: bytes) -> None:
        """A KMS connection's end: the PDUs the lab answered, then closed or still open."""
        parts = []
        at = 0
        while at + 16 <= len(got):
            frag = got[at + 8] | got[at + 9] << 8
            if frag < 16 or at + frag > len(got):
                parts.append(f"{len(got) - at} bytes that are no PDU")
                break
            pdu = got[at : at + frag]
            if pdu[2] == PTYPE_RESPONSE:
                self.gen.kms.answered += 1  # logged by the host
                try:
                    parts.append(f"response 0x{answer(pdu)[1]:08X}")
                except Exception as exc:
                    parts.append(f"unparsable response {exc!r}")
            elif pdu[2] == PTYPE_FAULT:
                parts.append("FAULT")
            else:
                parts.append(f"PDU type {pdu[2]}")
            at += frag
        parts.append("open" if how == "open" else "closed")
        if how == "reset":
            self.rec.counters[f"{variant}: closed by a reset"] += 1
        self.rec.outcome(variant, ", ".join(parts))

    # -- KMS port

    async def kms_garbage(self, variant: str) -> None:
        data = bytearray(os.urandom(self.gen.rng.randrange(16, 2000)))
        data[0] = self.gen.rng.choice([0, 4, 6, 0xFF])  # never DCE/RPC version 5
        await self._send_and_judge(variant, self.kms, bytes(data))

    async def kms_short_garbage(self, variant: str) -> None:
        data = os.urandom(self.gen.rng.randrange(1, 16))
        await self._send_and_judge(variant, self.kms, data, half_close=True)

    async def kms_truncated(self, variant: str) -> None:
        pdu = self.gen.kms.build(2).pdu
        cut = pdu[: self.gen.rng.randrange(17, len(pdu) - 1)]
        await self._send_and_judge(variant, self.kms, cut, half_close=True, bind=True)

    async def kms_oversized(self, variant: str) -> None:
        pdu = bytearray(self.gen.kms.build(2).pdu)
        struct.pack_into("<H", pdu, 8, self.gen.rng.randrange(MAX_FRAG + 1, 0x10000))
        await self._send_and_judge(variant, self.kms, bytes(pdu) + os.urandom(2000), bind=True)

    async def kms_no_bind(self, variant: str) -> None:
        await self._send_and_judge(variant, self.kms, self.gen.kms.build(2).pdu)

    async def kms_bad_ndr(self, variant: str) -> None:
        stub = struct.pack("<II", 100, 99) + os.urandom(100)  # size != max_count
        pdu = encode_request(2, 0, 0, stub, MAX_FRAG)
        await self._send_and_judge(variant, self.kms, pdu, bind=True, limit=1.0)

    async def kms_bad_envelope(self, variant: str) -> None:
        pdu = encode_request(2, 0, 0, encode_request_stub(os.urandom(120)), MAX_FRAG)
        await self._send_and_judge(variant, self.kms, pdu, bind=True, limit=1.0)

    async def _stall(self, variant: str, address: tuple[str, int], data: bytes) -> None:
        # Stalls end with the soak at the latest, so that the after phase starts clean.
        end = min(time.monotonic() + HOST_IDLE_TIMEOUT * 1.25 + STALL_SLACK, self.gen.soak_end)
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), REQUEST_TIMEOUT
            )
            writer.write(data)
            how, got, waited = await read_to_eof(reader, max(0.0, end - time.monotonic()))
        finally:
            close_writer(writer)
        if how == "open":
            if end >= self.gen.soak_end - 0.5:
                self.rec.outcome(variant, "cut short by the end of the run")
            else:
                self.rec.outcome(variant, "still open when given up", f"after {waited:.1f} s")
            return
        if variant.startswith("http"):
            status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/") else ""
            self.rec.outcome(
                variant, f"HTTP {status}" if status else "closed", f"after {waited:.1f} s"
            )
            return
        if HOST_IDLE_TIMEOUT * 0.9 <= waited <= HOST_IDLE_TIMEOUT * 1.25 + STALL_SLACK:
            self.stall_closed_after.append(waited)
            self.rec.outcome(variant, "closed at the idle timeout")
        else:
            self.rec.outcome(variant, f"closed after {waited:.0f} s", f"{how} {got[:40].hex()}")

    async def kms_stall_header(self, variant: str) -> None:
        await self._stall(variant, self.kms, self.bind[: self.gen.rng.randrange(1, 16)])

    async def kms_stall_body(self, variant: str) -> None:
        await self._stall(variant, self.kms, self.bind[: self.gen.rng.randrange(16, 71)])

    # -- HTTP port

    async def http_garbage(self, variant: str) -> None:
        junk = os.urandom(self.gen.rng.randrange(10, 800)).replace(b"\r\n", b"..")
        await self._send_and_judge(variant, self.http, junk + b"\r\n\r\n", http=True)

    async def http_bad_json(self, variant: str) -> None:
        data = self.request(f"POST {self.http_base}/v1/activate HTTP/1.1", b'{"key": nope')
        await self._send_and_judge(variant, self.http, data, http=True)

    async def http_bad_key(self, variant: str) -> None:
        body = json.dumps(
            {"key": "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY", "hardware_id": os.urandom(10).hex()}
        ).encode()
        data = self.request(f"POST {self.http_base}/v1/activate HTTP/1.1", body)
        await self._send_and_judge(variant, self.http, data, http=True)

    async def http_huge_header(self, variant: str) -> None:
        big = "x" * self.gen.rng.randrange(70_000, 200_000)
        data = self.request(f"GET {self.http_base}/v1/health HTTP/1.1", extra=f"x-big: {big}\r\n")
        await self._send_and_judge(variant, self.http, data, http=True)

    async def http_truncated_body(self, variant: str) -> None:
        data = self.request(f"POST {self.http_base}/v1/activate HTTP/1.1", b'{"key": "ABC')
        data = data.replace(b"content-length: 12", b"content-length: 400")
        await self._send_and_judge(variant, self.http, data, http=True, half_close=True)

    async def http_stall(self, variant: str) -> None:
        await self._stall(
            variant,
            self.http,
            f"POST {self.http_base}/v1/activate HTTP/1.1\r\ncontent-length: 50\r\n".encode(),
        )

    # -- DNS port

    async def dns_junk_udp(self, variant: str) -> None:
        with contextlib.suppress(OSError):
            self.udp_sock.send(os.urandom(self.gen.rng.randrange(1, 600)))
        self.rec.outcome(variant, "no reply")  # replies, if any, are counted in close()

    async def dns_truncated_udp(self, variant: str) -> None:
        with contextlib.suppress(OSError):
            self.udp_sock.send(self.srv[: self.gen.rng.randrange(1, len(self.srv) - 1)])
        self.rec.outcome(variant, "no reply")

    async def dns_junk_tcp(self, variant: str) -> None:
        junk = os.urandom(self.gen.rng.randrange(1, 300))
        data = U16.pack(len(junk)) + junk
        await self._send_and_judge(variant, self.dns, data, limit=HOSTILE_WAIT)


class IdleConnections:
    """Connections opened at the start of the soak and held silent; reopened when closed."""

    def __init__(
        self, gen: Mix, count: int, ports: dict[str, tuple[str, int]], health: str
    ) -> None:
        self.gen, self.rec, self.count, self.ports = gen, gen.rec, count, ports
        http = ports["http"]
        self.health = f"GET {health} HTTP/1.1\r\nhost: {http[0]}:{http[1]}\r\n\r\n".encode()
        self.open_now = 0
        self.peak = 0
        self.held: dict[str, list[float]] = collections.defaultdict(list)
        self.reopened: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()

    @staticmethod
    def style(index: int) -> str:
        if index % 10 == 9:
            return "http-silent" if index % 20 == 9 else "http-after-request"
        return "kms-bound" if index % 2 else "kms-silent"

    async def _open(
        self, style: str, address: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if style == "kms-bound":
            return await asyncio.wait_for(bound(address, self.gen.kms.bind), REQUEST_TIMEOUT)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), REQUEST_TIMEOUT)
        if style == "http-after-request":
            try:
                writer.write(self.health)
                status, _, _ = await asyncio.wait_for(read_http(reader), REQUEST_TIMEOUT)
                if status != 200:
                    raise ConnectionError(f"health answered HTTP {status}")
            except BaseException:
                close_writer(writer)
                raise
        return reader, writer

    async def hold(self, index: int, end: float) -> None:
        style = self.style(index)
        address = self.ports["http" if style.startswith("http") else "kms"]
        first = True
        while time.monotonic() < end:
            try:
                reader, writer = await self._open(style, address)
            except Exception as exc:
                self.failures[f"{style}: {error_name(exc)}"] += 1
                self.rec.error("idle", time.monotonic(), f"cannot open ({style})", repr(exc))
                await asyncio.sleep(1.0)
                continue
            if not first:
                self.reopened[style] += 1
            first = False
            self.open_now += 1
            self.peak = max(self.peak, self.open_now)
            opened = time.monotonic()
            try:
                how, got, waited = await read_to_eof(reader, max(0.0, end - opened))
            finally:
                self.open_now -= 1
                close_writer(writer)
            if how == "open":
                return  # the soak is over
            if got:
                self.rec.counters[f"idle {style}: data from the lab before the close"] += 1
            self.held[style].append(waited)
            self.rec.counters[f"idle {style}: closed by the lab ({how})"] += 1
            # Reopen soon, not all in the same millisecond (the lab closes them together).
            await asyncio.sleep(self.gen.rng.uniform(0.0, REOPEN_JITTER))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "peak_open": self.peak,
            "reopened": dict(self.reopened),
            "open_failures": dict(self.failures),
            "held_s": {},
        }
        for style, values in self.held.items():
            ordered = sorted(values)
            out["held_s"][style] = {
                "closed_by_lab": len(ordered),
                "min": round(ordered[0], 2),
                "median": round(percentile(ordered, 50) or 0, 2),
                "max": round(ordered[-1], 2),
            }
        return out
