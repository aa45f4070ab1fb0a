"""Finding KMS hosts the way Windows does (behaviour.md "Discovery").

``skms`` wins; otherwise ``_vlmcs._tcp`` SRV records are looked up in the
``skms-domain`` only, or else in each of the machine's DNS suffixes in turn.
Hosts are tried in RFC 2782 order: ascending priority, weighted random
within a priority (``rng`` is passed in); a target of ``.`` means "no
service here"; targets are resolved from the additional section, or by A/AAAA
queries. DNS failures map to the HRESULTs Windows reports.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from kmsemu.addresses import format_address, parse_address
from kmsemu.errors import ActivationError, HResult

SERVICE = "_vlmcs._tcp"
DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class Candidate:
    """One KMS host to try: where to connect and the name DNS gave for it."""

    address: tuple[str, int]
    name: str

    @property
    def display(self) -> str:
        """The host as DNS named it, ``name:port``, for messages and the cached name."""
        return f"{self.name.rstrip('.')}:{self.address[1]}"


class DiscoveryError(ActivationError):
    """DNS found no KMS host: a DNS HRESULT (0x8007232A, 0x8007232B, 0x8007251D)."""


@dataclass(frozen=True, slots=True)
class Srv:
    """One _vlmcs._tcp SRV record, as RFC 2782 ordering needs it."""

    priority: int
    weight: int
    port: int
    target: str


def rfc2782_order(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """Ascending priority; within one, repeatedly pick by running weight sum (RFC 2782)."""
    ordered: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        pool = [r for r in records if r.priority == priority]
        pool.sort(key=lambda r: r.weight)  # zero weights first, as the RFC suggests
        while pool:
            total = sum(r.weight for r in pool)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(pool):
                running += record.weight
                if running >= pick:
                    ordered.append(pool.pop(index))
                    break
    return ordered


def _resolver(servers: Sequence[str], timeout: float) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    parsed = [parse_address(s, DNS_PORT) for s in servers]
    resolver.nameservers = [host for host, _ in parsed]
    resolver.port = parsed[0][1]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def discover(
    domains: Sequence[str], servers: Sequence[str], rng: random.Random, *, timeout: float = 3.0
) -> list[Candidate]:
    """The KMS hosts to try, in order, from the first domain that has any."""
    if not servers:
        raise DiscoveryError(
            HResult.DNS_SERVER_FAILURE, "no DNS server configured (kmsemu client dns --server ADDR)"
        )
    if not domains:
        raise DiscoveryError(
            HResult.DNS_NAME_DOES_NOT_EXIST,
            "no DNS suffix to search (kmsemu client dns --suffix DOMAIN)",
        )
    try:
        resolver = _resolver(servers, timeout)
    except ValueError as exc:  # AddressError, or a name where dnspython wants an address
        raise DiscoveryError(
            HResult.DNS_SERVER_FAILURE, f"DNS servers {', '.join(servers)}: {exc}"
        ) from None
    last = DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, "no domain searched")
    for domain in domains:
        qname = f"{SERVICE}.{domain.strip('.')}."
        try:
            answer = resolver.resolve(qname, "SRV", raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN:
            last = DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, f"{qname} does not exist")
            continue
        except dns.resolver.NoAnswer:
            last = DiscoveryError(HResult.DNS_NO_RECORDS, f"{qname} has no SRV records")
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            last = DiscoveryError(HResult.DNS_SERVER_FAILURE, f"{qname}: {exc}")
            continue
        except dns.exception.DNSException as exc:  # a name DNS cannot carry (label too long)
            last = DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, f"{qname}: {exc}")
            continue
        records = [Srv(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]
        usable = [r for r in records if r.target != "."]
        if not usable:
            last = DiscoveryError(HResult.DNS_NO_RECORDS, f"{qname}: service not available")
            continue
        glue = _glue(answer.response)
        candidates = []
        for srv in rfc2782_order(usable, rng):
            for ip in glue.get(srv.target.lower()) or _addresses(resolver, srv.target):
                candidates.append(Candidate((ip, srv.port), srv.target))
        if candidates:
            return candidates
        last = DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, f"{qname}: targets have no address")
    raise last


def _glue(response: dns.message.Message) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            found.setdefault(rrset.name.to_text().lower(), []).extend(r.address for r in rrset)
    return found


def _addresses(resolver: dns.resolver.Resolver, target: str) -> list[str]:
    addresses: list[str] = []
    for kind in ("A", "AAAA"):
        try:
            addresses += [r.address for r in resolver.resolve(target, kind)]
        except dns.exception.DNSException:
            continue
    return addresses


def describe(candidate: Candidate) -> str:
    """The candidate's address as ``HOST:PORT`` (IPv6 in brackets)."""
    return format_address(*candidate.address)
