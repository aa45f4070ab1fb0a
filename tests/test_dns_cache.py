"""The lab DNS's index and reply cache: the same bytes as uncached, fresh after every change."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Callable, Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest
from dnslib import CLASS, EDNS0, QTYPE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.dns import cache as cache_module
from kmsemu.dns.authority import Authority
from kmsemu.dns.cache import CACHE_BYTES, ReplyCache, query_key
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.host.publish import Publication, Publisher


def lab_zones() -> list[Zone]:
    """lab.test (with SRV sets of 2, 12 and 40, so UDP answers fit, truncate or need EDNS)
    and branch.test."""
    lab = Zone.build(
        "lab.test",
        srv=[SrvTarget("kms1", 1688, 0, 10), SrvTarget("kms2", 1689, 10, 0)],
        addresses=[("kms1", "127.0.0.1"), ("kms2", "::1")],
    )
    lines = ["$ORIGIN lab.test.", 'txt 300 IN TXT "hello" "world"']
    for set_name, count in (("twelve", 12), ("forty", 40)):
        for i in range(count):
            lines.append(f"_vlmcs._tcp.{set_name} 300 IN SRV 0 {i} 1688 h{i}.{set_name}.lab.test.")
            lines.append(f"h{i}.{set_name} 300 IN A 10.0.{count}.{i}")
    lab.add_zone_text("\n".join(lines) + "\n")
    branch = Zone.build("branch.test", srv=[SrvTarget("kms")], addresses=[("kms", "10.1.1.1")])
    return [lab, branch]


NAMES = [
    "lab.test",
    "_vlmcs._tcp.lab.test",
    "_tcp.lab.test",
    "kms1.lab.test",
    "kms2.lab.test",
    "nothere.lab.test",
    "txt.lab.test",
    "_vlmcs._tcp.twelve.lab.test",
    "_vlmcs._tcp.forty.lab.test",
    "h3.forty.lab.test",
    "branch.test",
    "_vlmcs._tcp.branch.test",
    "kms.branch.test",
    "example.com",
    "test",
    ".",
]
QTYPES = [QTYPE.SRV, QTYPE.A, QTYPE.AAAA, QTYPE.SOA, QTYPE.NS, QTYPE.ANY, QTYPE.TXT]


def random_case(name: str, mask: int) -> str:
    return "".join(c.upper() if mask >> (i % 64) & 1 else c for i, c in enumerate(name))


labels = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)
cases = st.sampled_from([0, 2**64 - 1]) | st.integers(0, 2**64 - 1)
names = st.one_of(
    st.builds(random_case, st.sampled_from(NAMES), cases),
    st.builds(random_case, st.sampled_from(NAMES), cases),
    st.builds(lambda a, b: f"{a}.{b}", labels, st.sampled_from([*NAMES[:-1], "nowhere"])),
)
#: Flags of a plain query (RD, CD, AD, Z, TC, even RCODE bits), or any 16 bits at all
#: (responses, UPDATE, NOTIFY: those bypass the cache, with the same answers).
flags = st.one_of(st.integers(0, 0x07FF), st.integers(0, 0xFFFF))
edns = st.none() | st.tuples(
    st.sampled_from([0, 512, 1000, 1232, 1500, 4096, 65535]),  # UDP size
    st.booleans(),  # DO
    st.integers(0, 2),  # version
    st.lists(st.tuples(st.sampled_from([3, 10, 12]), st.binary(max_size=12)), max_size=2),
)


@st.composite
def queries(draw: st.DrawFn) -> list[bytes]:
    """A query as clients send it, or (one time in five) one with a byte broken; with EDNS,
    the same query with several UDP sizes, asked one after the other."""
    question = DNSQuestion(
        draw(names),
        draw(st.sampled_from(QTYPES * 4) | st.integers(0, 65535)),
        draw(st.sampled_from([CLASS.IN] * 6 + [255, CLASS.CH])),
    )
    header = DNSHeader(id=draw(st.integers(0, 0xFFFF)), bitmap=draw(flags))
    opt = draw(edns)
    variants = []
    for size in [None] if opt is None else [opt[0], 512, 1232, 4096]:
        record = DNSRecord(header, q=question)
        if opt is not None:
            _, do, version, options = opt
            record.add_ar(
                EDNS0(
                    udp_len=size,
                    flags="do" if do else "",
                    version=version,
                    opts=[EDNSOption(code, data) for code, data in options],
                )
            )
        variants.append(bytearray(record.pack()))
    mutation = draw(st.integers(0, 9))
    if mutation == 0 and len(variants[0]) > 2:
        at, flip = draw(st.integers(2, len(variants[0]) - 1)), draw(st.integers(1, 255))
        for data in variants:
            data[at] ^= flip
    elif mutation == 1:
        cut = draw(st.integers(0, len(variants[0])))
        variants = [data[:cut] for data in variants]
    elif mutation == 2:
        junk = draw(st.binary(min_size=1, max_size=4))
        variants = [data + junk for data in variants]
    return [bytes(data) for data in variants]


def outcome(authority: Authority, data: bytes, udp: bool) -> bytes | str | None:
    """The reply's bytes, or the exception's type when answering raises."""
    try:
        reply = authority.answer(data, udp=udp)
    except Exception as exc:  # the cache must not change which inputs raise either
        return type(exc).__name__
    return None if reply is None else bytes(reply)


ZONES = lab_zones()
UNCACHED = Authority(ZONES, cache_entries=0)
CACHED = Authority(ZONES)  # shared across examples: entries from earlier ones are hit too


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(queries(), st.integers(0, 0xFFFF)), min_size=1, max_size=4))
def test_cached_answers_are_byte_identical(mix: list[tuple[list[bytes], int]]) -> None:
    assert UNCACHED.cache is None and CACHED.cache is not None
    for variants, other_id in mix:
        for data in variants:  # UDP sizes in turn, each over UDP then TCP
            for udp in (True, False):
                expected = outcome(UNCACHED, data, udp)
                hits = CACHED.cache.hits
                assert outcome(CACHED, data, udp) == expected  # a miss, or a hit from before
                assert outcome(CACHED, data, udp) == expected  # from the cache, if it has a key
                if query_key(data, udp=udp) is not None and isinstance(expected, bytes):
                    assert CACHED.cache.hits > hits
                again = other_id.to_bytes(2, "big") + data[2:]  # the same query, another ID
                assert outcome(CACHED, again, udp) == outcome(UNCACHED, again, udp)


def test_cached_answers_are_byte_identical_over_a_grid() -> None:
    """Every name and type of the mix, with every variant of one asked in a row."""
    cached = Authority(ZONES)
    for name in [n for lower in NAMES for n in (lower, lower.upper())]:
        for qtype in QTYPES:
            for bitmap in (0x0000, 0x0100, 0x0110):  # RD off, on, and CD too
                for size in (None, 0, 512, 1232, 4096):
                    record = DNSRecord(DNSHeader(id=7, bitmap=bitmap), q=DNSQuestion(name, qtype))
                    if size is not None:
                        record.add_ar(EDNS0(udp_len=size))
                    data = bytes(record.pack())
                    for udp in (True, False):
                        expected = outcome(UNCACHED, data, udp)
                        assert outcome(cached, data, udp) == outcome(cached, data, udp) == expected


def test_what_the_key_keeps_and_what_it_ignores() -> None:
    def packed(name: str = "kms1.lab.test", *, qid: int = 1, bitmap: int = 0x0100) -> DNSRecord:
        return DNSRecord(DNSHeader(id=qid, bitmap=bitmap), q=DNSQuestion(name, QTYPE.A))

    def key(record: DNSRecord, udp: bool = True) -> bytes | None:
        return query_key(bytes(record.pack()), udp=udp)

    plain = key(packed())
    assert plain is not None and key(packed(qid=999)) == plain
    assert key(packed("KMS1.lab.test")) != plain  # the reply echoes the case
    assert key(packed(bitmap=0)) != plain  # RD is echoed
    assert key(packed(), udp=False) != plain
    with_do, without_do, big = packed(), packed(), packed()
    with_do.add_ar(EDNS0(udp_len=1232, flags="do", opts=[EDNSOption(10, b"cookie!!")]))
    without_do.add_ar(EDNS0(udp_len=1232))
    big.add_ar(EDNS0(udp_len=4096))
    assert key(with_do) == key(without_do) != plain  # DO and options change nothing
    assert key(big) != key(without_do)  # the UDP size decides truncation...
    assert key(big, udp=False) == key(without_do, udp=False)  # ...over UDP only
    response = packed(bitmap=0x8100)
    notify = packed(bitmap=0x2000)
    assert key(response) is None and key(notify) is None
    data = bytes(packed().pack())
    assert query_key(data + b"\x00", udp=True) is None  # trailing bytes
    assert query_key(data[:12] + b"\xc0\x0c\x00\x01\x00\x01", udp=True) is None  # pointer
    assert query_key(bytes(with_do.pack())[:-1], udp=True) is None  # a cut option
    update = dns.update.UpdateMessage("lab.test")
    update.add("x", 300, "A", "10.0.0.1")
    assert query_key(update.to_wire(), udp=True) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(queries(), min_size=1, max_size=8), st.booleans())
def test_the_remembered_keys_are_the_computed_ones(mix: list[list[bytes]], clear: bool) -> None:
    if clear:
        cache_module._seen.clear()
    for variants in mix:
        for data in variants:
            for udp in (True, False):
                expected = cache_module._query_key(data, udp=udp)
                assert query_key(data, udp=udp) == query_key(data, udp=udp) == expected
                assert query_key(bytearray(data), udp=udp) == expected
    assert len(cache_module._seen) <= cache_module._SEEN_ENTRIES
    big = bytes(DNSRecord.question("a" * 60 + ".lab.test", "A").pack()) + bytes(600)
    assert query_key(big, udp=True) is None and b"u" + big[2:] not in cache_module._seen


def scan(zone: Zone, name: DNSLabel, qtype: int) -> tuple[list[RR], bool]:
    """What ``Zone.lookup`` did before the index: a scan of every record."""
    matches = [rr for rr in zone.records if rr.rname == name]
    exists = bool(matches) or any(rr.rname.matchSuffix(name) for rr in zone.records)
    return [rr for rr in matches if rr.rtype == qtype], exists


INDEX_NAMES = ["lab.test", "a.lab.test", "b.a.lab.test", "C.B.A.lab.test", "_x._tcp.lab.test"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "replace", "serial"]),
            st.sampled_from(INDEX_NAMES),
            st.sampled_from([QTYPE.A, QTYPE.TXT]),
            st.integers(0, 3),
        ),
        max_size=12,
    )
)
def test_the_index_answers_what_a_scan_would(ops: list[tuple[str, str, int, int]]) -> None:
    zone = Zone.build("lab.test")
    for op, owner, rtype, n in ops:
        before, gone = zone.generation, []
        if op == "add":
            text = f"10.0.0.{n}" if rtype == QTYPE.A else f'"t{n}"'
            zone.add_zone_text(f"{owner}. 300 IN {QTYPE[rtype]} {text}\n")
        elif op == "remove":
            gone = [r for r in zone.records if r.rname == DNSLabel(owner) and r.rtype == rtype][:n]
            zone.remove(gone)
        elif op == "replace":
            zone.replace_records(zone.records[: n + 2])  # keeps SOA and NS
        else:
            zone.bump_serial()
        assert zone.generation > before or (op == "remove" and not gone)
        for name in [*INDEX_NAMES, "other.lab.test", "A.LAB.TEST"]:
            for qtype in (QTYPE.A, QTYPE.TXT, QTYPE.SOA, QTYPE.NS):
                assert zone.lookup(DNSLabel(name), qtype) == scan(zone, DNSLabel(name), qtype)


def test_replace_records_rejects_names_outside_the_zone() -> None:
    zone = Zone.build("lab.test")
    other = Zone.build("other.test")
    with pytest.raises(ValueError, match="not in zone"):
        zone.replace_records(other.records)
    assert len(zone.records) == 2  # unchanged


def test_set_zones_and_a_changed_zone_empty_the_cache() -> None:
    lab, branch = lab_zones()
    authority = Authority([lab])
    query = bytes(DNSRecord.question("kms.branch.test", "A").pack())
    refused = DNSRecord.parse(authority.answer(query, udp=True))
    assert refused.header.rcode == 5 and authority.answer(query, udp=True) is not None
    authority.set_zones([lab, branch])
    assert str(DNSRecord.parse(authority.answer(query, udp=True)).rr[0].rdata) == "10.1.1.1"
    branch.add_address("kms", "10.1.1.2")  # any change through Zone's methods
    assert len(DNSRecord.parse(authority.answer(query, udp=True)).rr) == 2


def test_the_cache_stays_bounded_and_keeps_answers_through_a_flood() -> None:
    authority = Authority(lab_zones(), cache_entries=64)
    cache = authority.cache
    assert cache is not None
    srv = bytes(DNSRecord.question("_vlmcs._tcp.lab.test", "SRV").pack())
    authority.answer(srv, udp=True)
    rng = random.Random(15)
    for _ in range(3000):  # NXDOMAIN and REFUSED for names nobody asked before
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
        suffix = rng.choice(["lab.test", "branch.test", "example.com"])
        authority.answer(bytes(DNSRecord.question(f"{label}.{suffix}", "A").pack()), udp=True)
        assert len(cache) <= 1 + 64
    hits = cache.hits
    authority.answer(srv, udp=True)
    assert cache.hits == hits + 1  # the flood churned the other LRU only
    for i in range(3000):  # answers, each case of the name a key of its own
        case = random_case("kms1.lab.test", rng.getrandbits(13))
        authority.answer(bytes(DNSRecord.question(case, "A").pack()), udp=i % 2 == 0)
        assert len(cache) <= 2 * 64 and cache.size <= 2 * CACHE_BYTES
    assert len(cache) == 2 * 64

    small = ReplyCache(max_entries=1000, max_bytes=2000)
    small.get(b"k", 0, b"")
    for i in range(200):
        small.put(b"k%d" % i, 0, bytes(12) + bytes(200))
    assert small.size <= 2000 and 0 < len(small) <= 10


# -- through the real server: RFC 2136 updates and replace_records ---------------------------


@pytest.fixture
def served() -> Iterator[tuple[Zone, Authority, tuple[str, int]]]:
    zone = lab_zones()[0]
    authority = Authority([zone])
    loop = asyncio.new_event_loop()
    server = DnsServer(authority, idle_timeout=2)
    address = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield zone, authority, address
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def srv_ports(address: tuple[str, int], *, tcp: bool = False) -> list[int]:
    query = dns.message.make_query("_vlmcs._tcp.lab.test", "SRV")
    send = dns.query.tcp if tcp else dns.query.udp
    reply = send(query, address[0], port=address[1], timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    return sorted(rd.port for rrset in reply.answer for rd in rrset)


def addresses(address: tuple[str, int], name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), address[0], port=address[1], timeout=5)
    return [rd.address for rrset in reply.answer for rd in rrset]


def test_an_update_shows_in_the_very_next_answer(
    served: tuple[Zone, Authority, tuple[str, int]],
) -> None:
    zone, authority, address = served
    assert authority.cache is not None
    for tcp in (False, True):
        assert srv_ports(address, tcp=tcp) == srv_ports(address, tcp=tcp) == [1688, 1689]
    hits = authority.cache.hits
    assert srv_ports(address) == [1688, 1689] and authority.cache.hits == hits + 1  # cached
    publisher = Publisher(address, "kms9", "127.0.0.9", 1699)  # as host serve --dns-publish
    assert publisher.publish(Publication("lab.test", 5, 5)) == (0, "")
    assert srv_ports(address) == [1688, 1689, 1699]
    assert srv_ports(address, tcp=True) == [1688, 1689, 1699]
    assert addresses(address, "kms9.lab.test") == ["127.0.0.9"]
    assert Publisher(address, "kms9", "127.0.0.10", 1699).publish(Publication("lab.test"))[0] == 0
    assert addresses(address, "kms9.lab.test") == ["127.0.0.10"]  # replaced
    delete = dns.update.UpdateMessage("lab.test")
    delete.delete("_vlmcs._tcp", "SRV")
    assert dns.query.tcp(delete, address[0], port=address[1], timeout=5).rcode() == 0
    reply = dns.query.udp(
        dns.message.make_query("_vlmcs._tcp.lab.test", "SRV"), address[0], port=address[1]
    )
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer  # nothing left there
    assert zone.soa().rdata.times[0] == 4  # three updates


def test_replace_records_shows_in_the_very_next_answer(
    served: tuple[Zone, Authority, tuple[str, int]],
) -> None:
    zone, _, address = served
    assert srv_ports(address) == srv_ports(address) == [1688, 1689]
    zone.replace_records(Zone.build("lab.test", srv=[SrvTarget("kms3", 1700)]).records)
    assert srv_ports(address) == [1700]
    assert srv_ports(address, tcp=True) == [1700]


@pytest.fixture
def serving() -> Iterator[Callable[[Authority, str], DnsServer]]:
    """Start a ``DnsServer`` (the given updates policy) on a loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[DnsServer] = []

    def start(authority: Authority, updates: str) -> DnsServer:
        server = DnsServer(authority, idle_timeout=2, updates=updates)
        servers.append(server)
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(5)
        return server

    yield start
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def exchange(address: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes | None:
    """One datagram to ``address``, and its reply (None when none came within ``timeout``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_udp_answers_are_the_authoritys_byte_for_byte(
    serving: Callable[[Authority, str], DnsServer],
) -> None:
    """A mix over UDP, each asked twice (the second from the cache): the server sends what
    ``Authority.answer`` gives, nothing for what it drops, and counts both."""
    authority = Authority(lab_zones())
    server = serving(authority, "loopback")
    rng = random.Random(4)
    mix = [
        bytes(DNSRecord(DNSHeader(id=rng.getrandbits(16), bitmap=bitmap), q=q).pack())
        for q in (DNSQuestion(name, qtype) for name in NAMES for qtype in QTYPES[:4])
        for bitmap in (0x0000, 0x0100)
    ]
    with_edns = DNSRecord(DNSHeader(id=9), q=DNSQuestion("_vlmcs._tcp.forty.lab.test", QTYPE.SRV))
    with_edns.add_ar(EDNS0(udp_len=1232, flags="do"))
    notify = DNSRecord(DNSHeader(id=10, bitmap=0x2000), q=DNSQuestion("lab.test", QTYPE.SOA))
    response = DNSRecord(DNSHeader(id=11, bitmap=0x8100), q=DNSQuestion("lab.test", QTYPE.SOA))
    mix += [bytes(with_edns.pack()), bytes(notify.pack()), bytes(response.pack())]
    garbage = [
        b"\x00\x01\x02",
        bytes(12),
        b"\x12\x34" + bytes(rng.getrandbits(8) for _ in range(40)),
    ]
    answered = dropped = 0
    for data in mix + garbage:
        expected = UNCACHED.answer(data, udp=True)
        for _ in range(2):
            assert exchange(server.address, data, timeout=2.0 if expected else 0.2) == expected
        answered += 2 * (expected is not None)
        dropped += 2 * (expected is None)
    assert dropped >= 4  # the response, and garbage
    assert authority.cache is not None and authority.cache.hits >= len(mix) - 2
    assert dict(server.stats) == {"udp": answered, "dropped": dropped}


@pytest.mark.parametrize("updates", ["loopback", "none", "any"])
def test_udp_updates_follow_the_policy(
    serving: Callable[[Authority, str], DnsServer], updates: str
) -> None:
    zone = lab_zones()[0]
    server = serving(Authority([zone]), updates)
    query = bytes(DNSRecord.question("kms1.lab.test", "A").pack())
    assert exchange(server.address, query) is not None
    update = dns.update.UpdateMessage("lab.test")
    update.add("new", 300, "A", "10.9.9.9")
    reply = exchange(server.address, update.to_wire())
    assert reply is not None
    rcode = dns.message.from_wire(reply).rcode()
    added, _ = zone.lookup(DNSLabel("new.lab.test"), QTYPE.A)
    if updates == "none":
        assert rcode == dns.rcode.REFUSED and not added
    else:
        assert rcode == dns.rcode.NOERROR and [str(rr.rdata) for rr in added] == ["10.9.9.9"]
    assert dict(server.stats) == {"udp": 2}
