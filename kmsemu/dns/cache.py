"""The lab DNS's reply cache, pure: a query's key, and reply bytes by key.

Answering one query through dnslib (parse, resolve, pack) costs most of the
server's time, yet the lab asks the same few names over and over. So
``Authority`` keeps the bytes of each reply under a key made from the query,
and answers a query with the same key by copying those bytes with the new
query's ID written over the first two.

The key is everything the reply copies from or depends on in the query,
besides the ID: the flags word (dnslib's reply echoes it: RD, CD, the Z bit),
the counts (so EDNS or not), the question section byte for byte (the reply
echoes the name's case, and name compression in the reply depends on it),
UDP or TCP, and over UDP the EDNS size (it decides truncation). Nothing else
in the OPT record changes the reply: ``Authority`` answers EDNS with a fresh
OPT of its own, echoing neither DO nor options nor version. Should it ever
echo one, the key must grow with it; tests/test_dns_cache.py checks the
cached bytes against the uncached ones over random queries.

``query_key`` gives a key only for the plain shape: one question, no answer
or authority records, at most one additional record which must be an OPT at
the root with well-formed options, nothing after it, and opcode QUERY with QR
clear. Anything else (UPDATE, NOTIFY, responses, compression pointers in the
question, trailing bytes) has no key and takes the full path every time.
Working that out walks the question, so ``query_key`` remembers its result
for the last few thousand (short) queries' bytes past the ID: a memo of a
pure function, the same keys either way.

Each key is checked against a ``generation`` (``Authority`` passes its zones'
change counters): a different one empties the cache before the lookup.
Positive answers and answers without records (NXDOMAIN, NODATA, REFUSED,
truncated) are kept apart, each an LRU bounded in entries and bytes, so a
flood of random names churns only the second.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

#: Entries in each of the two LRUs (answers, answers without records).
CACHE_ENTRIES: Final = 1024
#: Bytes (keys and replies) in each of the two LRUs.
CACHE_BYTES: Final = 1 << 20
_PLAIN_COUNTS: Final = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_OPT: Final = b"\x00\x29"
_MAX_NAME: Final = 255  # RFC 1035 section 3.1, in wire bytes
#: ``query_key``'s memory: keys (or None) by transport and query bytes past the ID, for
#: queries of at most ``_SEEN_QUERY`` bytes (so at most a few MB).
_SEEN_ENTRIES: Final = 4096
_SEEN_QUERY: Final = 512
_seen: dict[bytes, bytes | None] = {}


def query_key(data: bytes, *, udp: bool) -> bytes | None:
    """The cache key of a plain query (see the module docstring), or None."""
    # The key depends on nothing but the transport and the bytes past the ID, and the lab
    # asks the same few queries over and over: remember the key for those bytes.
    if len(data) > _SEEN_QUERY:
        return _query_key(data, udp=udp)
    seen = (b"u" if udp else b"t") + data[2:]
    key = _seen.get(seen, b"")  # no key is empty: b"" means not seen
    if key == b"":
        if len(_seen) >= _SEEN_ENTRIES:
            _seen.clear()  # a flood of new queries: start over rather than track age
        key = _seen[seen] = _query_key(data, udp=udp)
    return key


def _query_key(data: bytes, *, udp: bool) -> bytes | None:
    n = len(data)
    # 17: header, the root name, type and class; 0xF8: QR and the opcode (QUERY is 0)
    if n < 17 or data[2] & 0xF8 or data[4:10] != _PLAIN_COUNTS or data[10] or data[11] > 1:
        return None
    i = 12
    try:  # past the end is an IndexError: cheaper than a bounds check per label
        while length := data[i]:
            if length > 63:  # a compression pointer or a reserved label type
                return None
            i += length + 1
    except IndexError:
        return None
    end = i + 5  # past the root label, QTYPE and QCLASS
    if i + 1 - 12 > _MAX_NAME or end > n:
        return None
    transport = b"u" if udp else b"t"  # first, so the key is bytes even from a bytearray
    if not data[11]:
        return transport + data[2:end] if end == n else None
    # the one additional record: root name, type OPT, class = UDP size, TTL, RDLENGTH
    j = end + 11
    if n < j or data[end] or data[end + 1 : end + 3] != _OPT:
        return None
    if j + (data[j - 2] << 8 | data[j - 1]) != n:
        return None
    while j < n:  # options: code, length, data; they must fill RDATA exactly
        if j + 4 > n:
            return None
        j += 4 + (data[j + 2] << 8 | data[j + 3])
    if j != n:
        return None
    return transport + data[2:end] + (data[end + 3 : end + 5] if udp else b"")


class _Lru:
    """Reply tails (the reply without its ID) by key, least recently used out first."""

    __slots__ = ("entries", "max_bytes", "max_entries", "size")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0

    def get(self, key: bytes) -> bytes | None:
        tail = self.entries.get(key)
        if tail is not None:
            self.entries.move_to_end(key)
        return tail

    def put(self, key: bytes, tail: bytes) -> None:
        cost = len(key) + len(tail)
        if cost > self.max_bytes or self.max_entries < 1:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(key) + len(old)
        self.entries[key] = tail
        self.size += cost
        while len(self.entries) > self.max_entries or self.size > self.max_bytes:
            gone, value = self.entries.popitem(last=False)
            self.size -= len(gone) + len(value)

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


class ReplyCache:
    """Reply bytes by ``query_key``, valid for one generation of the zones."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self._answers = _Lru(max_entries, max_bytes)
        self._empty = _Lru(max_entries, max_bytes)
        #: What the entries were computed from; ``get`` with another one empties the cache.
        self.generation: object = None
        #: Queries answered from the cache, and keyed queries that were not.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._answers.entries) + len(self._empty.entries)

    @property
    def size(self) -> int:
        """Bytes held, keys and replies."""
        return self._answers.size + self._empty.size

    def get(self, key: bytes, generation: object, query: bytes) -> bytes | None:
        """The cached reply for ``key`` with ``query``'s ID, or None (a miss)."""
        if generation != self.generation:
            self.clear()
            self.generation = generation
        # the LRUs' get, inlined: this is every cached answer's path
        entries = self._answers.entries
        tail = entries.get(key)
        if tail is None:
            entries = self._empty.entries
            tail = entries.get(key)
            if tail is None:
                self.misses += 1
                return None
        entries.move_to_end(key)
        self.hits += 1
        if type(query) is bytes:
            return query[:2] + tail
        return bytes(query[:2]) + tail  # a bytearray's slice would make the reply one too

    def put(self, key: bytes, generation: object, reply: bytes) -> None:
        """Keep ``reply`` under ``key``, unless the zones changed since ``generation``."""
        if generation != self.generation or len(reply) < 12:
            return
        lru = self._empty if reply[6:8] == b"\x00\x00" else self._answers  # ANCOUNT 0
        lru.put(key, bytes(reply[2:]))

    def clear(self) -> None:
        """Forget every reply."""
        self._answers.clear()
        self._empty.clear()
