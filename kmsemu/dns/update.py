"""RFC 2136 dynamic updates to a lab zone (what a KMS host sends to publish itself).

dnslib cannot read UPDATE messages (their delete records carry no data), so
they are read with dnspython and applied to the zone's dnslib records.
Supported: the zone section, and in the update section add (class IN),
delete an RRset (class ANY), delete all RRsets of a name (class ANY, type
ANY) and delete one record (class NONE). Prerequisites are not evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update
from dnslib import QTYPE, RR, DNSLabel

from kmsemu.dns.zone import Zone, ZoneError


def apply_update(zones: Sequence[Zone], data: bytes, *, trusted: bool) -> bytes | None:
    """The response to an UPDATE message (the zone is changed when it is accepted)."""
    try:
        message = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    if not isinstance(message, dns.update.UpdateMessage) or message.flags & dns.flags.QR:
        return None
    response = dns.message.make_response(message)
    zone = _zone(zones, message)
    if not trusted:
        response.set_rcode(dns.rcode.REFUSED)
    elif zone is None:
        response.set_rcode(dns.rcode.NOTAUTH)
    else:
        try:
            for rrset in message.update:
                _apply(zone, rrset)
        except ZoneError:
            response.set_rcode(dns.rcode.NOTZONE)
        else:
            zone.bump_serial()
    wire: bytes = response.to_wire()
    return wire


def _zone(zones: Sequence[Zone], message: dns.update.UpdateMessage) -> Zone | None:
    if len(message.zone) != 1:
        return None
    name = DNSLabel(message.zone[0].name.to_text())
    return next((z for z in zones if z.origin == name), None)


def _apply(zone: Zone, rrset: dns.rrset.RRset) -> None:
    name = DNSLabel(rrset.name.to_text())
    if not zone.contains(name):
        raise ZoneError(f"{name} is outside {zone.origin}")
    rtype = rrset.rdtype
    deleting = rrset.deleting  # dnspython keeps the update's class ANY/NONE here
    if deleting == dns.rdataclass.ANY:
        zone.remove(
            rr
            for rr in zone.records
            if rr.rname == name
            and rr.rtype != QTYPE.SOA
            and (rtype == dns.rdatatype.ANY or rr.rtype == rtype)
        )
        return
    if rtype == dns.rdatatype.SOA:
        return  # the server keeps its own SOA and serial: adding or deleting one is ignored
    text_type = dns.rdatatype.to_text(rtype)
    for rdata in rrset:
        rr = RR.fromZone(f"{name} {rrset.ttl} IN {text_type} {rdata.to_text()}")[0]
        found, _ = zone.lookup(name, rtype)
        same = [r for r in found if r.rdata.toZone() == rr.rdata.toZone()]
        if deleting == dns.rdataclass.NONE:
            zone.remove(same)
        elif not same:
            zone.add(rr)
