"""Finding KMS hosts the way Windows does (behaviour.md "Discovery").

``skms`` wins; otherwise ``_vlmcs._tcp`` SRV records are looked up in the
``skms-domain`` only, or else in each of the machine's DNS suffixes in turn.
Hosts are tried in RFC 2782 order: ascending priority, weighted random
within a priority (``rng`` is passed in); a target of ``.`` means "no
service here"; targets are resolved from the additional section, or by A/AAAA
queries. DNS failures map to the HRESULTs Windows reports (``failure``: a
dnspython outcome in, the HRESULT out); slmgr shows that code itself when
discovery found no host, and 0xC004F074 only when hosts were found and none
answered.

``resolve_host`` resolves an ``skms`` name through the machine's own DNS
servers, as Windows does, rather than the operating system's resolver.
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
    """DNS found no KMS host: a DNS HRESULT (0x8007232A, 0x8007232B, 0x8007251D,
    0x800705B4)."""


class UnresolvedHost(DiscoveryError):
    """The ``skms`` name has no address through the machine's DNS servers: the DNS
    HRESULT goes in the 12288 event, the attempt fails with 0xC004F074."""


def failure(exc: dns.exception.DNSException, qname: str) -> DiscoveryError:
    """The HRESULT Windows reports for a failed query of ``qname`` (pure: the outcome in,
    the error out): no such name 0x8007232B, no records of the type 0x8007251D, no
    answer in time 0x800705B4, any other server failure (SERVFAIL, REFUSED) 0x8007232A."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, f"{qname} does not exist")
    if isinstance(exc, dns.resolver.NoAnswer):
        return DiscoveryError(HResult.DNS_NO_RECORDS, f"{qname} has no records of that type")
    if isinstance(exc, dns.exception.Timeout):
        return DiscoveryError(HResult.TIMEOUT, f"{qname}: no DNS server answered in time")
    if isinstance(exc, dns.resolver.NoNameservers):
        return DiscoveryError(HResult.DNS_SERVER_FAILURE, f"{qname}: {exc}")
    # a name DNS cannot carry (label too long, empty label)
    return DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, f"{qname}: {exc}")


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
        except dns.resolver.NoAnswer:
            last = DiscoveryError(HResult.DNS_NO_RECORDS, f"{qname} has no SRV records")
            continue
        except dns.exception.DNSException as exc:
            last = failure(exc, qname)
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


def resolve_host(name: str, servers: Sequence[str], *, timeout: float = 3.0) -> list[str]:
    """The A, then AAAA, addresses of ``name`` from the machine's DNS servers; raises
    ``UnresolvedHost`` with the DNS HRESULT when it has none (the A query's, unless
    that one only lacked records)."""
    qname = f"{name.rstrip('.')}."
    try:
        resolver = _resolver(servers, timeout)
    except ValueError as exc:
        raise UnresolvedHost(
            HResult.DNS_SERVER_FAILURE, f"DNS servers {', '.join(servers)}: {exc}"
        ) from None
    addresses: list[str] = []
    first: DiscoveryError | None = None
    for kind in ("A", "AAAA"):
        try:
            addresses += [r.address for r in resolver.resolve(qname, kind)]
        except dns.exception.DNSException as exc:
            error = failure(exc, qname)
            if first is None or first.hresult == HResult.DNS_NO_RECORDS:
                first = error
            if isinstance(exc, (dns.resolver.NXDOMAIN, dns.exception.Timeout)):
                break  # the AAAA query would answer the same, or as late
    if addresses:
        return addresses
    assert first is not None
    raise UnresolvedHost(first.hresult, first.detail)


def describe(candidate: Candidate) -> str:
    """The candidate's address as ``HOST:PORT`` (IPv6 in brackets)."""
    return format_address(*candidate.address)
