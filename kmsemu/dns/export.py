"""The lab's records in the forms an administrator feeds their own DNS."""

from __future__ import annotations

from dnslib import QTYPE, RR

from kmsemu.dns import EXPORT_FORMATS
from kmsemu.dns.zone import Zone


def export(zone: Zone, fmt: str, *, server: str = "127.0.0.1") -> str:
    """SRV and address records (not SOA/NS, which the admin's zone has) as text."""
    records = [rr for rr in zone.records if rr.rtype in (QTYPE.SRV, QTYPE.A, QTYPE.AAAA)]
    if fmt == "bind":
        lines = [f"$ORIGIN {zone.origin}", f"$TTL {zone.ttl}"]
        lines += [rr.toZone() for rr in records]
        return "\n".join(lines) + "\n"
    if fmt == "powershell":
        return "\n".join(_powershell(zone, rr) for rr in records) + "\n"
    if fmt == "nsupdate":
        lines = [f"server {server}", f"zone {zone.origin}"]
        lines += [
            f"update add {rr.rname} {rr.ttl} {QTYPE[rr.rtype]} {rr.rdata.toZone()}"
            for rr in records
        ]
        return "\n".join([*lines, "send"]) + "\n"
    raise ValueError(f"format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")


def _relative(zone: Zone, rr: RR) -> str:
    name = str(rr.rname)
    suffix = "." + str(zone.origin)
    return name[: -len(suffix)] if name.endswith(suffix) else "@"


def _powershell(zone: Zone, rr: RR) -> str:
    origin = str(zone.origin).rstrip(".")
    ttl = f"(New-TimeSpan -Seconds {rr.ttl})"
    head = f'Add-DnsServerResourceRecord -ZoneName "{origin}" -Name "{_relative(zone, rr)}"'
    if rr.rtype == QTYPE.SRV:
        d = rr.rdata
        return (
            f'{head} -Srv -DomainName "{str(d.target).rstrip(".")}" -Priority {d.priority} '
            f"-Weight {d.weight} -Port {d.port} -TimeToLive {ttl}"
        )
    flag = "-A -IPv4Address" if rr.rtype == QTYPE.A else "-AAAA -IPv6Address"
    return f'{head} {flag} "{rr.rdata}" -TimeToLive {ttl}'
