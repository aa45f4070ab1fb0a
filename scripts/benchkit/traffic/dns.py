"""DNS: queries over UDP and TCP checked against what the lab zone should answer
(``DnsTraffic``, the soak; ``check_answers``, one query each; ``compare_answers``, two servers
asked the same), and dnsperf (bench-dns)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct
from typing import TYPE_CHECKING, Any

from dnslib import QTYPE, RCODE, DNSRecord

from benchkit.env import ensure_tool, tool_version
from benchkit.traffic.streams import error_name, one_shot

if TYPE_CHECKING:
    from benchkit.traffic.mixed import Mix

ZONE = "lab.test"
SRV_NAME = f"_vlmcs._tcp.{ZONE}"
UDP_TIMEOUT = 3.0
U16 = struct.Struct("!H")


def dns_query(name: str, qtype: str) -> bytes:
    return bytes(DNSRecord.question(name, qtype).pack())


def dns_check(expect: str, reply: bytes) -> str:
    """'' when ``reply`` is what ``expect`` asks for, else what is wrong."""
    if len(reply) < 12:
        return f"reply of {len(reply)} bytes"
    flags, ancount = reply[2] << 8 | reply[3], reply[6] << 8 | reply[7]
    rcode = flags & 0xF
    if not flags & 0x8000:
        return "not a response"
    if expect == "srv":
        if rcode or not ancount or flags & 0x0200:
            return f"rcode {rcode} answers {ancount} tc {bool(flags & 0x0200)}"
    elif expect == "nxdomain":
        if rcode != 3:
            return f"rcode {rcode}, expected NXDOMAIN"
    elif expect == "refused":
        if rcode != 5:
            return f"rcode {rcode}, expected REFUSED"
    elif expect == "any" and (rcode or ancount != 1):
        return f"rcode {rcode} answers {ancount}, expected one HINFO"
    return ""


def check_answers(address: tuple[str, int], queries: list[tuple[str, str, int]]) -> list[str]:
    """Ask each query ("NAME TYPE", expected rcode, expected number of answers) once; the
    problems found (none expected)."""
    problems = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for line, rcode, answers in queries:
            name, qtype = line.split()
            query = DNSRecord.question(name, qtype)
            try:
                sock.sendto(query.pack(), address)
                reply = DNSRecord.parse(sock.recv(4096))
            except (OSError, ValueError) as exc:
                problems.append(f"{line}: {exc!r}")
                continue
            got = RCODE.get(reply.header.rcode)
            kinds = {QTYPE.get(rr.rtype) for rr in reply.rr}
            if reply.header.id != query.header.id or got != rcode or len(reply.rr) != answers:
                problems.append(
                    f"{line}: {got} with {len(reply.rr)} answers, expected {rcode} with {answers}"
                )
            elif answers and kinds != {qtype}:
                problems.append(f"{line}: answers of type {sorted(kinds)}")
            elif not answers and not any(QTYPE.get(rr.rtype) == "SOA" for rr in reply.auth):
                problems.append(f"{line}: no SOA in the authority section")
            elif not reply.header.aa:
                problems.append(f"{line}: AA not set")
    return problems


def ask(address: tuple[str, int], line: str, timeout: float = 2.0) -> tuple[DNSRecord, int]:
    """One query ("NAME TYPE", no EDNS, as dnsperf sends it) over UDP; (the parsed reply,
    its size in bytes)."""
    name, qtype = line.split()
    query = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query.pack(), address)
        data = sock.recv(4096)
    reply = DNSRecord.parse(data)
    if reply.header.id != query.header.id:
        raise ValueError(f"reply id {reply.header.id}, query id {query.header.id}")
    return reply, len(data)


def _records(rrs: list[Any]) -> list[str]:
    """Records as sorted "name type rdata" (names lower-cased; no TTL, no order)."""
    return sorted(
        f"{str(rr.rname).lower()} {QTYPE.get(rr.rtype)} {rr.rdata.toZone()}" for rr in rrs
    )


def _ttls(rrs: list[Any]) -> list[str]:
    return sorted(f"{str(rr.rname).lower()} {QTYPE.get(rr.rtype)} {rr.ttl}" for rr in rrs)


def compare_answers(
    ours: tuple[str, int], theirs: tuple[str, int], lines: list[str], names: tuple[str, str]
) -> tuple[list[str], list[str]]:
    """Ask both servers each query; (differences in rcode, AA, TC or the records of the
    answer, authority and additional sections, TTLs apart; notes: the reply sizes, and
    the TTLs where they differ). ``names`` name the two servers in the text."""
    problems: list[str] = []
    notes: list[str] = []
    for line in lines:
        try:
            (a, a_size), (b, b_size) = ask(ours, line), ask(theirs, line)
        except (OSError, ValueError) as exc:
            problems.append(f"{line}: {exc!r}")
            continue
        notes.append(f"{line}: reply {a_size} B from {names[0]}, {b_size} B from {names[1]}")
        for what, x, y in [
            ("rcode", RCODE.get(a.header.rcode), RCODE.get(b.header.rcode)),
            ("AA", a.header.aa, b.header.aa),
            ("TC", a.header.tc, b.header.tc),
        ]:
            if x != y:
                problems.append(f"{line}: {what} {names[0]} {x} != {names[1]} {y}")
        for what, xs, ys in [
            ("answer", a.rr, b.rr),
            ("authority", a.auth, b.auth),
            ("additional", a.ar, b.ar),
        ]:
            if _records(xs) != _records(ys):
                problems.append(
                    f"{line}: {what} section {names[0]} {_records(xs)} != {names[1]} {_records(ys)}"
                )
            elif _ttls(xs) != _ttls(ys):
                notes.append(f"{line}: {what} TTLs {names[0]} {_ttls(xs)}, {names[1]} {_ttls(ys)}")
    return problems, notes


# -- open loop over UDP and TCP (the soak) ---------------------------------------------------


class _DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, traffic: DnsTraffic) -> None:
        self.traffic = traffic

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.traffic.udp_reply(data)

    def error_received(self, exc: Exception) -> None:
        self.traffic.rec.counters[f"DNS UDP socket error {error_name(exc)}"] += 1


class DnsTraffic:
    """SRV queries over UDP (one socket, replies matched by id) and TCP (a connection each),
    and hostile queries over UDP."""

    def __init__(self, gen: Mix, address: tuple[str, int]) -> None:
        self.gen = gen
        self.rec = gen.rec
        self.address = address
        self.srv = dns_query(SRV_NAME, "SRV")
        self.transport: asyncio.DatagramTransport | None = None
        #: id -> (kind, due, expect, timer)
        self.pending: dict[int, tuple[str, float, str, asyncio.TimerHandle]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsUdp(self), remote_addr=self.address
        )
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def close(self) -> None:
        for _, _, _, timer in self.pending.values():
            timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def _free_id(self) -> int:
        while True:
            qid = self.gen.rng.randrange(1, 0x10000)
            if qid not in self.pending:
                return qid

    def send_udp(self, kind: str, due: float, query: bytes, expect: str) -> None:
        if self.transport is None:
            return
        qid = self._free_id()
        timer = asyncio.get_running_loop().call_later(UDP_TIMEOUT, self._expire, qid)
        self.pending[qid] = (kind, due, expect, timer)
        self.transport.sendto(U16.pack(qid) + query[2:])

    def _expire(self, qid: int) -> None:
        entry = self.pending.pop(qid, None)
        if entry is not None:
            kind, due, _, _ = entry
            self.rec.error(kind, due, "no UDP reply", f"within {UDP_TIMEOUT:g} s")

    def udp_reply(self, data: bytes) -> None:
        if len(data) < 2:
            self.rec.counters["DNS UDP replies too short"] += 1
            return
        entry = self.pending.pop(U16.unpack_from(data)[0], None)
        if entry is None:
            self.rec.counters["DNS UDP replies matching no query"] += 1
            return
        kind, due, expect, timer = entry
        timer.cancel()
        self._judge(kind, due, dns_check(expect, data))

    def _judge(self, kind: str, due: float, problem: str) -> None:
        if problem:
            self.rec.error(kind, due, "wrong DNS answer", problem)
        else:
            self.rec.ok(kind, due)

    def udp_srv(self, due: float) -> None:
        self.send_udp("dns-udp", due, self.srv, "srv")

    def hostile(self, due: float) -> None:
        rng = self.gen.rng
        label = "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(3, 40))
        )
        choice = rng.random()
        if choice < 0.45:
            self.send_udp("dns-hostile", due, dns_query(f"{label}.{ZONE}", "A"), "nxdomain")
        elif choice < 0.75:
            self.send_udp("dns-hostile", due, dns_query(f"{label}.example", "SRV"), "refused")
        else:
            self.send_udp("dns-hostile", due, dns_query(ZONE, "ANY"), "any")

    async def tcp_srv(self, due: float) -> None:
        """One SRV query on a TCP connection of its own."""
        qid = self.gen.rng.randrange(1, 0x10000)
        query = U16.pack(qid) + self.srv[2:]

        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            writer.write(U16.pack(len(query)) + query)
            (length,) = U16.unpack(await reader.readexactly(2))
            return await reader.readexactly(length)

        reply = await one_shot(self.rec, "dns-tcp", due, self.address, talk)
        if reply is not None:
            wrong_id = reply[:2] != U16.pack(qid)
            self._judge(
                "dns-tcp", due, "reply to another id" if wrong_id else dns_check("srv", reply)
            )


# -- dnsperf (bench-dns) -------------------------------------------------------------------


def ensure_dnsperf() -> str:
    """dnsperf's path; installs it with apt-get (as root) when missing, or exits."""
    return ensure_tool(
        lambda: shutil.which("dnsperf"), "dnsperf", "dnsperf",
        "Debian/Ubuntu: apt-get install dnsperf; or build https://github.com/DNS-OARC/dnsperf",
    )  # fmt: skip


def dnsperf_version(dnsperf: str) -> str:
    """dnsperf's version from ``dnsperf -h`` ('?' when it cannot tell)."""
    return tool_version(dnsperf, "-h", r"Version\s+(\S+)")


def _float(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def _int(pattern: str, text: str) -> int | None:
    value = _float(pattern, text)
    return None if value is None else int(value)


def parse_dnsperf(text: str) -> dict[str, Any]:
    """The figures of dnsperf's "Statistics" block (None where missing)."""
    latency = re.search(
        r"Average Latency \(s\):\s+([0-9.]+) \(min ([0-9.]+), max ([0-9.]+)\)", text
    )
    codes = {}
    match = re.search(r"Response codes:\s+(.*)", text)
    if match:
        for name, count in re.findall(r"([A-Z]+) (\d+)", match.group(1)):
            codes[name] = int(count)
    stddev = _float(r"Latency StdDev \(s\):\s+([0-9.]+)", text)
    return {
        "sent": _int(r"Queries sent:\s+(\d+)", text),
        "completed": _int(r"Queries completed:\s+(\d+)", text),
        "lost": _int(r"Queries lost:\s+(\d+)", text),
        "qps": _float(r"Queries per second:\s+([0-9.]+)", text),
        "run_seconds": _float(r"Run time \(s\):\s+([0-9.]+)", text),
        "latency_avg_ms": float(latency.group(1)) * 1e3 if latency else None,
        "latency_min_ms": float(latency.group(2)) * 1e3 if latency else None,
        "latency_max_ms": float(latency.group(3)) * 1e3 if latency else None,
        "latency_stddev_ms": stddev * 1e3 if stddev is not None else None,
        "response_codes": codes,
    }
