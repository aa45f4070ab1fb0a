"""Lab zones and their records, pure: what a zone holds, not how it is asked.

Owns ``Zone`` (SOA, NS, one SRV per KMS host, A/AAAA and zone-file records,
the serial, an index by owner name and type so a lookup never scans, and a
``generation`` counting changes), ``SrvTarget`` (one ``TARGET[:PORT][,PRIORITY,WEIGHT]``), zone-file
loading and ``ZoneError``. Answering queries is ``kmsemu.dns.authority``'s;
changing a zone by RFC 2136 is ``kmsemu.dns.update``'s; both import this
module, never the other way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from dnslib import AAAA, NS, QTYPE, RR, SOA, SRV, A, DNSError, DNSLabel

from kmsemu.errors import ConfigError

DEFAULT_TTL: Final = 3600
#: RFC 2181 section 8: a TTL is at most 2**31 - 1 seconds.
MAX_TTL: Final = 2**31 - 1
SERVICE: Final = "_vlmcs._tcp"


class ZoneError(ConfigError, ValueError):
    """A zone, record, SRV target or zone file that cannot be served."""

    code = "zone_invalid"


def _label(name: str) -> DNSLabel:
    """A DNS name, or ZoneError for one DNS cannot carry (a label empty or over 63)."""
    try:
        return DNSLabel(name)
    except UnicodeError:
        raise ZoneError(f"{name!r} is not a DNS name") from None


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


#: A name as the index compares it: its labels, lower-cased.
Key = tuple[bytes, ...]


def name_key(name: DNSLabel) -> Key:
    """``name``'s labels lower-cased: how the index compares names (RFC 4343)."""
    return tuple(part.lower() for part in name.label)


class _Index:
    """A zone's records in order, by (name key, type), and every name at or above one.

    ``names`` holds each record's name and the names above it (its suffixes), so
    "does anything exist at or below this name" is one set lookup, empty
    non-terminals included.
    """

    __slots__ = ("names", "records", "rrsets")

    def __init__(self, records: Iterable[RR] = ()) -> None:
        self.records: list[RR] = []
        self.rrsets: dict[tuple[Key, int], list[RR]] = {}
        self.names: set[Key] = set()
        for rr in records:
            self.add(rr)

    def add(self, rr: RR) -> None:
        self.records.append(rr)
        key = name_key(rr.rname)
        self.rrsets.setdefault((key, rr.rtype), []).append(rr)
        self.names.update(key[i:] for i in range(len(key) or 1))


class Zone:
    """One zone's records, indexed by owner name and type.

    Records change only through the methods below (``add``, ``remove``,
    ``replace_records``, ``bump_serial``). Each keeps the index in step and then
    adds one to ``generation``, which ``Authority`` compares before it trusts a
    cached reply: bumping after the change means a reply computed from the old
    records is never stored under the new generation. ``replace_records``
    swaps in a whole new index in one assignment, so a server on another thread
    sees the old records or the new ones, never a mix.
    """

    def __init__(self, origin: DNSLabel, ttl: int = DEFAULT_TTL, records: Iterable[RR] = ()):
        self.origin = origin
        self.ttl = ttl
        #: One more after every change to the records.
        self.generation = 0
        self._index = _Index()
        for rr in records:
            self.add(rr)

    def __repr__(self) -> str:
        return f"Zone({str(self.origin)!r}, ttl={self.ttl}, {len(self._index.records)} records)"

    @property
    def records(self) -> tuple[RR, ...]:
        """The records in the order they were added (a copy: change them with the methods)."""
        return tuple(self._index.records)

    @classmethod
    def build(
        cls,
        origin: str,
        *,
        srv: Iterable[SrvTarget] = (),
        addresses: Iterable[tuple[str, str]] = (),
        ttl: int = DEFAULT_TTL,
        serial: int = 1,
    ) -> Zone:
        """A zone with SOA and NS, one SRV per KMS host, and the given A/AAAA records."""
        if not 0 <= ttl <= MAX_TTL:
            raise ZoneError(f"TTL {ttl} is outside 0..{MAX_TTL}")
        zone = cls(_label(origin.rstrip(".") + "."), ttl)
        ns = zone.fqdn("ns1")
        zone.add(
            RR(
                zone.origin,
                QTYPE.SOA,
                rdata=SOA(ns, zone.fqdn("hostmaster"), (serial, 3600, 600, 86400, 300)),
                ttl=ttl,
            )
        )
        zone.add(RR(zone.origin, QTYPE.NS, rdata=NS(ns), ttl=ttl))
        for host in srv:
            zone.add(
                RR(
                    zone.fqdn(SERVICE),
                    QTYPE.SRV,
                    rdata=SRV(host.priority, host.weight, host.port, zone.fqdn(host.target)),
                    ttl=ttl,
                )
            )
        for name, ip in addresses:
            zone.add_address(name, ip)
        return zone

    def fqdn(self, name: str) -> DNSLabel:
        """A name relative to the origin, unless it ends with a dot (or is ``@``)."""
        if name == "@":
            return self.origin
        if name.endswith("."):
            return _label(name)
        return _label(f"{name}.{self.origin}")

    def add(self, rr: RR) -> None:
        """Add one record; it must be at or below the origin."""
        self._check(rr)
        self._index.add(rr)
        self.generation += 1

    def remove(self, rrs: Iterable[RR]) -> None:
        """Remove these records (the very objects, as ``records`` gives them)."""
        gone = {id(rr) for rr in rrs}
        if gone:
            self._index = _Index(rr for rr in self._index.records if id(rr) not in gone)
            self.generation += 1

    def replace_records(self, records: Iterable[RR]) -> None:
        """All the zone's records at once (for instance another ``Zone.build``'s)."""
        records = list(records)
        for rr in records:
            self._check(rr)
        self._index = _Index(records)
        self.generation += 1

    def _check(self, rr: RR) -> None:
        if not self.contains(rr.rname):
            raise ZoneError(f"{rr.rname} is not in zone {self.origin}")

    def add_address(self, name: str, ip: str) -> None:
        """An A or AAAA record (by the address's version) at ``name``."""
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
        """Whether ``name`` is at or below the origin."""
        return bool(name.matchSuffix(self.origin))

    def bump_serial(self) -> None:
        """Add one to the SOA serial (modulo 2**32), as after an update."""
        soa = self.soa()
        times = list(soa.rdata.times)
        times[0] = (times[0] + 1) % 2**32
        soa.rdata.times = tuple(times)
        self.generation += 1

    def soa(self) -> RR:
        """The zone's SOA record (the first, should a zone file have added another)."""
        found = self._index.rrsets.get((name_key(self.origin), QTYPE.SOA))
        if not found:
            raise ZoneError(f"zone {self.origin} has no SOA record")
        return found[0]

    def lookup(self, name: DNSLabel, qtype: int) -> tuple[list[RR], bool]:
        """(records of that type at ``name``, whether ``name`` exists or has names below it)."""
        index = self._index  # one read: a concurrent replace_records swaps the whole index
        key = name_key(name)
        return list(index.rrsets.get((key, qtype), ())), key in index.names


def load_zone_text(zones: list[Zone], text: str) -> None:
    """Records in zone-file syntax, each added to the zone that contains it.

    SRV targets must be fully qualified: dnslib does not complete a relative
    target with $ORIGIN, so one would silently point at a top-level name.
    """
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split(";", 1)[0].split()
        if "SRV" in (f.upper() for f in fields[:4]) and not fields[-1].endswith("."):
            raise ZoneError(f"zone file line {number}: SRV target {fields[-1]} must end with '.'")
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
