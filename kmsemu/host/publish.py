"""Publishing the KMS host in DNS (behaviour.md "DNS publishing"), by RFC 2136 update.

For each zone of the publish list the host adds its ``_vlmcs._tcp`` SRV record
(priority, weight, port, its name) and replaces its own A/AAAA record, on a
DNS server that accepts dynamic updates: ``kmsemu dns serve`` or an existing
server such as BIND (optionally signed with TSIG). The server re-publishes
every 24 hours by default; results are events 12294 (published) and 12293
(failed, with the HRESULT).

dnspython loads with the first update: a host that publishes nothing never imports it
(it is most of an idle host's memory otherwise).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kmsemu.addresses import AddressError, parse_address
from kmsemu.errors import HResult

if TYPE_CHECKING:
    import dns.update

SERVICE = "_vlmcs._tcp"
DEFAULT_TTL = 3600


@dataclass(frozen=True, slots=True)
class Publication:
    """One zone of the publish list with the priority and weight the host asks for."""

    zone: str
    priority: int = 0
    weight: int = 0

    @classmethod
    def parse(cls, text: str) -> Publication:
        """``ZONE[,PRIORITY,WEIGHT]``."""
        zone, *rest = [part.strip() for part in text.split(",")]
        try:
            if rest and len(rest) != 2:
                raise ValueError
            priority, weight = (int(rest[0]), int(rest[1])) if rest else (0, 0)
        except ValueError:
            raise ValueError(f"{text!r}: use ZONE[,PRIORITY,WEIGHT]") from None
        if not zone or not (0 <= priority <= 65535 and 0 <= weight <= 65535):
            raise ValueError(f"{text!r}: a zone, and priority and weight 0-65535")
        return cls(zone.strip(".").lower(), priority, weight)


@dataclass(frozen=True, slots=True)
class Publisher:
    """Where and how to publish: the DNS server, the host's name, address and port."""

    server: tuple[str, int]
    host_name: str
    address: str
    port: int
    ttl: int = DEFAULT_TTL
    tsig: tuple[str, str] | None = None  # (key name, base64 secret), hmac-sha256
    timeout: float = 5.0

    def update(self, publication: Publication) -> dns.update.UpdateMessage:
        """The RFC 2136 message for one zone."""
        import dns.tsigkeyring
        import dns.update

        keyring = None
        if self.tsig is not None:
            keyring = dns.tsigkeyring.from_text({self.tsig[0]: self.tsig[1]})
        message = dns.update.UpdateMessage(
            publication.zone + ".", keyring=keyring, keyalgorithm="hmac-sha256"
        )
        target = f"{self.host_name}.{publication.zone}."
        message.add(
            SERVICE,
            self.ttl,
            "SRV",
            f"{publication.priority} {publication.weight} {self.port} {target}",
        )
        kind = "A" if ipaddress.ip_address(self.address).version == 4 else "AAAA"
        message.replace(self.host_name, self.ttl, kind, self.address)
        return message

    def publish(self, publication: Publication) -> tuple[int, str]:
        """Send one update; ``(0, "")`` or ``(HRESULT, why)`` (never raises for DNS trouble)."""
        import dns.exception
        import dns.query
        import dns.rcode

        try:
            reply = dns.query.tcp(
                self.update(publication), self.server[0], port=self.server[1], timeout=self.timeout
            )
        except (OSError, dns.exception.DNSException) as exc:
            return HResult.DNS_SERVER_FAILURE, f"{type(exc).__name__}: {exc}"
        if reply.rcode() != dns.rcode.NOERROR:
            return (
                HResult.DNS_SERVER_FAILURE,
                f"the server answered {dns.rcode.to_text(reply.rcode())}",
            )
        return 0, ""


def parse_server(text: str) -> tuple[str, int]:
    """A DNS server as ``HOST[:PORT]`` (port 53 by default); a bad one is a ValueError."""
    try:
        return parse_address(text, 53)
    except AddressError as exc:
        raise ValueError(str(exc)) from exc
