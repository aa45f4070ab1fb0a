"""RFC 2136 dynamic updates to a lab zone (what a KMS host sends to publish itself).

dnslib cannot read UPDATE messages (their delete records carry no data), so
they are read with dnspython and applied to the zone's dnslib records.
Supported: the zone section, and in the update section add (class IN),
delete an RRset (class ANY), delete all RRsets of a name (class ANY, type
ANY) and delete one record (class NONE). Prerequisites are not evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
from dnslib import QTYPE, RR, DNSError, DNSLabel
from dnslib.label import DNSLabelError

from kmsemu.dns.zone import Zone

#: Types an update may not add (RFC 2136 section 3.4.1.2: meta types are FORMERR).
_NOT_ADDABLE: Final = frozenset(
    {
        dns.rdatatype.ANY,
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.MAILA,
        dns.rdatatype.MAILB,
        dns.rdatatype.OPT,
        dns.rdatatype.NONE,
    }
)


class _Malformed(Exception):
    """An update record this server cannot read: the whole update is FORMERR."""


class _Change(NamedTuple):
    """One update record, read: delete an RRset (``rr`` None), delete or add ``rr``."""

    deleting: int | None
    name: DNSLabel
    rtype: int
    rr: RR | None


def apply_update(zones: Sequence[Zone], data: bytes, *, trusted: bool) -> bytes | None:
    """The response to an UPDATE message; the zone is changed, wholly, when it is accepted.

    Every record is read and checked before any is applied, so a refused update leaves
    the zone as it was (RFC 2136 section 3.4.1.2: FORMERR; 3.4.1.3: NOTZONE).
    """
    try:
        message = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    if not isinstance(message, dns.update.UpdateMessage) or message.flags & dns.flags.QR:
        return None
    response = dns.message.make_response(message)
    zone = _zone(zones, message) if trusted else None
    if not trusted:
        response.set_rcode(dns.rcode.REFUSED)
    elif zone is None:
        response.set_rcode(dns.rcode.NOTAUTH)
    else:
        try:
            changes = [change for rrset in message.update for change in _read(rrset)]
        except _Malformed:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            if all(zone.contains(change.name) for change in changes):
                for change in changes:
                    _apply(zone, change)
                zone.bump_serial()
            else:
                response.set_rcode(dns.rcode.NOTZONE)
    wire: bytes = response.to_wire()
    return wire


def _label(name: dns.name.Name) -> DNSLabel:
    try:
        return DNSLabel(name.to_text())
    except (UnicodeError, DNSLabelError) as exc:  # a byte the IDNA codec refuses
        raise _Malformed(str(exc)) from None


def _zone(zones: Sequence[Zone], message: dns.update.UpdateMessage) -> Zone | None:
    if len(message.zone) != 1:
        return None
    try:
        name = _label(message.zone[0].name)
    except _Malformed:
        return None  # not a name any of our zones has
    return next((z for z in zones if z.origin == name), None)


def _read(rrset: dns.rrset.RRset) -> list[_Change]:
    """The changes one update RRset asks for, or ``_Malformed``."""
    name = _label(rrset.name)
    deleting = rrset.deleting  # dnspython keeps the update's class ANY/NONE here
    if deleting == dns.rdataclass.ANY:
        return [_Change(deleting, name, rrset.rdtype, None)]
    if deleting is None and rrset.rdclass != dns.rdataclass.IN:
        raise _Malformed(f"class {rrset.rdclass} is not the zone's")
    if rrset.rdtype in _NOT_ADDABLE:
        raise _Malformed(f"type {rrset.rdtype} cannot be added or deleted")
    text_type = dns.rdatatype.to_text(rrset.rdtype)
    try:
        rrs = [RR.fromZone(f"{name} {rrset.ttl} IN {text_type} {r.to_text()}")[0] for r in rrset]
    except (DNSError, DNSLabelError, ValueError, IndexError) as exc:
        raise _Malformed(f"{text_type} record: {exc}") from None
    return [_Change(deleting, name, rrset.rdtype, rr) for rr in rrs]


def _apply(zone: Zone, change: _Change) -> None:
    deleting, name, rtype, rr = change
    if rr is None:  # class ANY: the RRset, or (type ANY) every RRset of the name
        zone.remove(
            r
            for r in zone.records
            if r.rname == name
            and r.rtype != QTYPE.SOA
            and (rtype == dns.rdatatype.ANY or r.rtype == rtype)
        )
        return
    if rtype == dns.rdatatype.SOA:
        return  # the server keeps its own SOA and serial: adding or deleting one is ignored
    found, _ = zone.lookup(name, rtype)
    same = [r for r in found if r.rdata.toZone() == rr.rdata.toZone()]
    if deleting == dns.rdataclass.NONE:
        zone.remove(same)
    elif not same:
        zone.add(rr)
