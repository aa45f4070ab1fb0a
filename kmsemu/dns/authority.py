"""Authoritative answers for lab zones, pure: DNS message bytes in, bytes (or None) out.

Owns ``Authority``: the zones one server answers for, the answer to a query,
and the dispatch of UPDATE messages to ``kmsemu.dns.update``. Zones and their
records are ``kmsemu.dns.zone``'s; the reply cache in front of the answer is
``kmsemu.dns.cache``'s.

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

from collections.abc import Iterable
from typing import Final

from dnslib import (
    CLASS,
    EDNS0,
    OPCODE,
    QTYPE,
    RCODE,
    RD,
    RR,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

from kmsemu.dns.cache import CACHE_ENTRIES, ReplyCache, query_key
from kmsemu.dns.update import apply_update
from kmsemu.dns.zone import Zone

UDP_LIMIT: Final = 512
EDNS_CAP: Final = 1232
#: The longest label and name (wire bytes) there are (RFC 1035 section 2.3.4): dnslib
#: reads longer ones, but a query naming one is FORMERR, since its question cannot be
#: echoed.
MAX_LABEL: Final = 63
MAX_NAME: Final = 255
#: HINFO "RFC8482" "": the whole answer to ANY (RFC 8482 section 4.2).
_HINFO_RFC8482: Final = RD(b"\x07RFC8482\x00")
_CLASS_ANY: Final = 255


class Authority:
    """The zones one server answers for, and a cache of its replies.

    ``cache_entries`` bounds each of the cache's two LRUs (see
    ``kmsemu.dns.cache``); 0 turns the cache off. The cache is emptied whenever
    a served zone's ``generation`` moves (an RFC 2136 update, ``replace_records``,
    any change through ``Zone``'s methods) and when ``set_zones`` changes the
    zones served.
    """

    def __init__(self, zones: Iterable[Zone], *, cache_entries: int = CACHE_ENTRIES) -> None:
        self._zones: tuple[Zone, ...] = ()
        #: None when the cache is off.
        self.cache = ReplyCache(cache_entries) if cache_entries > 0 else None
        self.set_zones(zones)

    @property
    def zones(self) -> tuple[Zone, ...]:
        """The zones served, deepest origin first."""
        return self._zones

    def set_zones(self, zones: Iterable[Zone]) -> None:
        """Serve these zones from now on (adding or removing one is calling this)."""
        self._zones = tuple(sorted(zones, key=lambda z: -len(z.origin.label)))
        if self.cache is not None:
            self.cache.clear()

    def zone_for(self, name: DNSLabel) -> Zone | None:
        """The deepest served zone that contains ``name``, or None."""
        return next((z for z in self._zones if z.contains(name)), None)

    def answer(self, data: bytes, *, udp: bool, trusted: bool = False) -> bytes | None:
        """The reply to one message, or None when it does not deserve one.

        UPDATE messages (RFC 2136) change a zone only when ``trusted`` (the server
        decides: by default, a peer on loopback); others get REFUSED. A plain
        query is answered from the cache when it can be, byte for byte what
        ``answer_uncached`` would give.
        """
        cache = self.cache
        key = None if cache is None else query_key(data, udp=udp)
        if cache is None or key is None:
            return self.answer_uncached(data, udp=udp, trusted=trusted)
        # read before answering: a change meanwhile moves it, so the reply is not kept (one
        # zone, the lab's case, needs no tuple: set_zones empties the cache anyway)
        zones = self._zones
        generation = (
            zones[0].generation if len(zones) == 1 else tuple([z.generation for z in zones])
        )
        reply = cache.get(key, generation, data)
        if reply is None:
            reply = self.answer_uncached(data, udp=udp, trusted=trusted)
            if reply is not None:
                cache.put(key, generation, reply)
        return reply

    def answer_uncached(self, data: bytes, *, udp: bool, trusted: bool = False) -> bytes | None:
        """``answer`` computed afresh, cache untouched."""
        if len(data) >= 4 and (data[2] >> 3) & 0xF == OPCODE.UPDATE:
            return apply_update(self._zones, data, trusted=trusted)
        try:
            request = DNSRecord.parse(data)
        except (DNSError, IndexError, ValueError, UnicodeDecodeError):
            return None  # unparseable: silence (no reflection of garbage)
        if request.header.qr:
            return None  # a response, not a query
        if (
            request.header.opcode != OPCODE.QUERY
            or len(request.questions) != 1
            or not _encodable(request.q.qname)
        ):
            # dnslib's reply() would invent a question; answer with the header alone
            rcode = RCODE.NOTIMP if request.header.opcode != OPCODE.QUERY else RCODE.FORMERR
            bare = DNSRecord(
                DNSHeader(
                    id=request.header.id,
                    qr=1,
                    opcode=request.header.opcode,
                    rd=request.header.rd,
                    rcode=rcode,
                )
            )
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
            reply.add_auth(negative_soa(zone.soa()))
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


def _encodable(name: DNSLabel) -> bool:
    labels = name.label
    return all(len(label) <= MAX_LABEL for label in labels) and (
        sum(map(len, labels)) + len(labels) + 1 <= MAX_NAME
    )


def negative_soa(soa: RR) -> RR:
    """The SOA a negative answer carries: its TTL is the smaller of the record's TTL and
    the SOA's minimum field, how long the "no" may be cached (RFC 2308 section 3)."""
    minimum = soa.rdata.times[4]
    if soa.ttl <= minimum:
        return soa
    return RR(soa.rname, QTYPE.SOA, soa.rclass, minimum, soa.rdata)
