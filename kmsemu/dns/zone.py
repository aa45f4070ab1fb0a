"""Authoritative answers for lab zones, pure: DNS message bytes in, bytes (or None) out.

Built on dnslib's codec with our own resolver, because the answers must be
exactly those of an authoritative server (implementation-notes.md): AA set,
RA and AD clear, never recursive (REFUSED outside our zones), NXDOMAIN only
when nothing exists at or below the name, NOERROR with the SOA in the
authority section when the name exists without the asked type, names
compared case-insensitively, and UDP answers cut to 512 bytes or the query's
EDNS size (at most 1232) with TC set. ANY gets one small HINFO (RFC 8482),
so the server is no amplifier.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    NS,
    OPCODE,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    SRV,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

DEFAULT_TTL: Final = 3600
UDP_LIMIT: Final = 512
EDNS_CAP: Final = 1232
SERVICE: Final = "_vlmcs._tcp"
#: HINFO "RFC8482" "": the whole answer to ANY (RFC 8482 section 4.2).
_HINFO_RFC8482: Final = RD(b"\x07RFC8482\x00")
_CLASS_ANY: Final = 255


class ZoneError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """One KMS host in a zone: its SRV record's fields."""

    target: str
    port: int = 1688
    priority: int = 0
    weight: int = 0

    @classmethod
    def parse(cls, text: str) -> SrvTarget:
        """``TARGET[:PORT][,PRIORITY,WEIGHT]``."""
        head, _, rest = text.partition(",")
        target, _, port = head.rpartition(":") if ":" in head else (head, "", "")
        try:
            values = [int(v) for v in rest.split(",")] if rest else [0, 0]
            if len(values) != 2:
                raise ValueError
            srv = cls(target.strip(), int(port) if port else 1688, values[0], values[1])
        except ValueError:
            raise ZoneError(f"{text!r}: use TARGET[:PORT][,PRIORITY,WEIGHT]") from None
        if not srv.target or not 0 <= srv.port <= 65535:
            raise ZoneError(f"{text!r}: bad target or port")
        if not (0 <= srv.priority <= 65535 and 0 <= srv.weight <= 65535):
            raise ZoneError(f"{text!r}: priority and weight are 0-65535")
        return srv


@dataclass
class Zone:
    """One zone's records, keyed by owner name and type."""

    origin: DNSLabel
    ttl: int = DEFAULT_TTL
    records: list[RR] = field(default_factory=list)

    @classmethod
    def build(cls, origin: str, *, srv: Iterable[SrvTarget] = (),
              addresses: Iterable[tuple[str, str]] = (), ttl: int = DEFAULT_TTL,
              serial: int = 1) -> Zone:
        """A zone with SOA and NS, one SRV per KMS host, and the given A/AAAA records."""
        zone = cls(DNSLabel(origin.rstrip(".") + "."), ttl)
        ns = zone.fqdn("ns1")
        zone.add(RR(zone.origin, QTYPE.SOA, rdata=SOA(ns, zone.fqdn("hostmaster"),
                                                      (serial, 3600, 600, 86400, 300)), ttl=ttl))
        zone.add(RR(zone.origin, QTYPE.NS, rdata=NS(ns), ttl=ttl))
        for host in srv:
            zone.add(RR(zone.fqdn(SERVICE), QTYPE.SRV,
                        rdata=SRV(host.priority, host.weight, host.port, zone.fqdn(host.target)),
                        ttl=ttl))
        for name, ip in addresses:
            zone.add_address(name, ip)
        return zone

    def fqdn(self, name: str) -> DNSLabel:
        """A name relative to the origin, unless it ends with a dot (or is ``@``)."""
        if name == "@":
            return self.origin
        if name.endswith("."):
            return DNSLabel(name)
        return DNSLabel(f"{name}.{self.origin}")

    def add(self, rr: RR) -> None:
        if not self.contains(rr.rname):
            raise ZoneError(f"{rr.rname} is not in zone {self.origin}")
        self.records.append(rr)

    def add_address(self, name: str, ip: str) -> None:
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            raise ZoneError(f"{ip!r} is not an IP address") from None
        rdata = A(str(parsed)) if parsed.version == 4 else AAAA(str(parsed))
        qtype = QTYPE.A if parsed.version == 4 else QTYPE.AAAA
        self.add(RR(self.fqdn(name), qtype, rdata=rdata, ttl=self.ttl))

    def add_zone_text(self, text: str) -> None:
        """Records in zone-file syntax (relative names are in this zone)."""
        load_zone_text([self], text)

    def contains(self, name: DNSLabel) -> bool:
        return bool(name.matchSuffix(self.origin))

    def bump_serial(self) -> None:
        soa = self.soa()
        times = list(soa.rdata.times)
        times[0] = (times[0] + 1) % 2**32
        soa.rdata.times = tuple(times)

    def soa(self) -> RR:
        return next(rr for rr in self.records if rr.rtype == QTYPE.SOA)

    def lookup(self, name: DNSLabel, qtype: int) -> tuple[list[RR], bool]:
        """(records of that type at ``name``, whether ``name`` exists or has names below it)."""
        matches = [rr for rr in self.records if rr.rname == name]
        exists = bool(matches) or any(rr.rname.matchSuffix(name) for rr in self.records)
        return [rr for rr in matches if rr.rtype == qtype], exists


def load_zone_text(zones: list[Zone], text: str) -> None:
    """Records in zone-file syntax, each added to the zone that contains it.

    SRV targets must be fully qualified: dnslib does not complete a relative
    target with $ORIGIN, so one would silently point at a top-level name.
    """
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split(";", 1)[0].split()
        if "SRV" in (f.upper() for f in fields[:4]) and not fields[-1].endswith("."):
            raise ZoneError(f"zone file line {number}: SRV target {fields[-1]} must end "
                            "with '.'")
    try:
        rrs = RR.fromZone(text, origin=str(zones[0].origin), ttl=zones[0].ttl)
    except (DNSError, ValueError, IndexError, KeyError) as exc:
        raise ZoneError(f"zone file: {exc}") from exc
    by_depth = sorted(zones, key=lambda z: -len(z.origin.label))
    for rr in rrs:
        zone = next((z for z in by_depth if z.contains(rr.rname)), None)
        if zone is None:
            raise ZoneError(f"zone file: {rr.rname} is in none of the served zones")
        zone.add(rr)


class Authority:
    """The zones one server answers for."""

    def __init__(self, zones: Iterable[Zone]) -> None:
        self.zones = sorted(zones, key=lambda z: -len(z.origin.label))

    def zone_for(self, name: DNSLabel) -> Zone | None:
        return next((z for z in self.zones if z.contains(name)), None)

    def answer(self, data: bytes, *, udp: bool, trusted: bool = False) -> bytes | None:
        """The reply to one message, or None when it does not deserve one.

        UPDATE messages (RFC 2136) change a zone only when ``trusted`` (the server
        decides: by default, a peer on loopback); others get REFUSED.
        """
        if len(data) >= 4 and (data[2] >> 3) & 0xF == OPCODE.UPDATE:
            from kmsemu.dns.update import apply_update

            return apply_update(self.zones, data, trusted=trusted)
        try:
            request = DNSRecord.parse(data)
        except (DNSError, IndexError, ValueError, UnicodeDecodeError):
            return None  # unparseable: silence (no reflection of garbage)
        if request.header.qr:
            return None  # a response, not a query
        if request.header.opcode != OPCODE.QUERY or len(request.questions) != 1:
            # dnslib's reply() would invent a question; answer with the header alone
            rcode = RCODE.NOTIMP if request.header.opcode != OPCODE.QUERY else RCODE.FORMERR
            bare = DNSRecord(DNSHeader(id=request.header.id, qr=1, opcode=request.header.opcode,
                                       rd=request.header.rd, rcode=rcode))
            return self._pack(bare, request, udp)
        reply = request.reply(ra=0, aa=1)
        reply.header.ad = 0
        question = request.q
        zone = self.zone_for(question.qname)
        if zone is None or question.qclass not in (CLASS.IN, _CLASS_ANY):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return self._pack(reply, request, udp)
        if question.qtype == QTYPE.ANY:
            reply.add_answer(RR(question.qname, QTYPE.HINFO, rdata=_HINFO_RFC8482, ttl=zone.ttl))
            return self._pack(reply, request, udp)
        found, exists = zone.lookup(question.qname, question.qtype)
        if found:
            for rr in found:
                reply.add_answer(rr)
            for rr in found:
                if rr.rtype == QTYPE.SRV:
                    for kind in (QTYPE.A, QTYPE.AAAA):
                        extra, _ = zone.lookup(rr.rdata.target, kind)
                        for ar in extra:
                            reply.add_ar(ar)
        else:
            reply.header.rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
            reply.add_auth(zone.soa())
        return self._pack(reply, request, udp)

    @staticmethod
    def _pack(reply: DNSRecord, request: DNSRecord, udp: bool) -> bytes:
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=EDNS_CAP))  # we speak EDNS too: say how much we take
        data: bytes = reply.pack()
        if not udp:
            return data
        limit = UDP_LIMIT
        opt = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if opt:
            limit = min(max(opt[0].rclass, UDP_LIMIT), EDNS_CAP)
        if len(data) <= limit:
            return data
        truncated = DNSRecord(header=reply.header, q=reply.q)
        truncated.header.tc = 1
        if opt:
            truncated.add_ar(EDNS0(udp_len=EDNS_CAP))
        result: bytes = truncated.pack()
        return result
