"""What a KMS host answers (klp-v1.md sections 4, 5 and 7), as pure code.

``HostRules.answer`` takes an opened request plaintext, the request nonce
and the host clock (FILETIME) and returns the response plus a log record;
the only state it touches is the in-memory ``CountCache``, which remembers
what changed so that the store can persist it in batches.

Counting (section 7): one cache per application id of CMID -> last time
answered, ordered by that time (oldest first). An entry is live while
``now - last_seen < 30 days``. Capacity is twice the highest
``required_client_count`` (clamped to 1..1000) among successful requests for
that application; it never shrinks; when full, the oldest entry goes first.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple

from kmsemu.catalog import Catalog
from kmsemu.errors import HResult
from kmsemu.klp.messages import (
    NAME_FIELD_SIZE,
    ActivationResponse,
    MessageError,
    RequestFields,
    echo_fields,
    pack_response,
    parse_request,
)
from kmsemu.wire import (
    FILETIME_PER_SECOND,
    NIL_GUID,
    encode_utf16_field,
)

LIVE_WINDOW: Final = 30 * 86_400 * FILETIME_PER_SECOND
MAX_SKEW: Final = 4 * 3_600 * FILETIME_PER_SECOND
DEFAULT_ACTIVATION_INTERVAL: Final = 120
DEFAULT_RENEWAL_INTERVAL: Final = 10_080
INTERVAL_RANGE: Final = (15, 43_200)
EPID_PATTERN: Final = re.compile(
    r"^\d{5}-\d{5}-\d{3}-\d{6}-03-\d{4,5}-\d{4,5}\.0000-"
    r"(00[1-9]|0[1-9]\d|[12]\d\d|3[0-5]\d|36[0-6])\d{4}$"
)
_NIL: Final = NIL_GUID.bytes_le
_tuple_new: Final = tuple.__new__


@dataclass(frozen=True, slots=True)
class HostSettings:
    """What an administrator may tune: the intervals handed to clients, the minimum count."""

    activation_interval: int = DEFAULT_ACTIVATION_INTERVAL
    renewal_interval: int = DEFAULT_RENEWAL_INTERVAL
    min_count: int = 0

    def __post_init__(self) -> None:
        low, high = INTERVAL_RANGE
        for name in ("activation_interval", "renewal_interval"):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} {value} is outside {low}..{high} minutes")
        if not 0 <= self.min_count <= 2**32 - 1:
            raise ValueError(f"min_count {self.min_count} is negative or too large")


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """What a host's state fixes for life: its 8-byte id and its extended PID."""

    host_id: bytes
    epid: str

    def __post_init__(self) -> None:
        if len(self.host_id) != 8:
            raise ValueError("host_id must be 8 bytes")
        if not EPID_PATTERN.match(self.epid):
            raise ValueError(f"ePID {self.epid!r} does not match the KLP/1 form")


def new_identity(rng: random.Random, now: datetime) -> HostIdentity:
    """A fresh host id and ePID (platform, group, key id, serial, 03, LCID, build, day+year)."""
    day = now.astimezone(UTC).timetuple().tm_yday
    epid = (
        f"06401-00206-{rng.randrange(1000):03d}-{rng.randrange(1_000_000):06d}-03-1033-"
        f"9600.0000-{day:03d}{now.year:04d}"
    )
    return HostIdentity(rng.randbytes(8), epid)


@dataclass
class CountCache:
    """Per application id: CMID -> last answered FILETIME, oldest first, plus capacities.

    Keys are GUIDs in ``bytes_le`` form. ``dirty`` names the applications whose
    entries or capacity changed since the store last took a snapshot of them;
    a snapshot is at most one capacity's worth of rows, however many requests
    came in, which is what keeps persisting the cache cheap.
    """

    entries: dict[bytes, OrderedDict[bytes, int]] = field(default_factory=dict)
    capacity: dict[bytes, int] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)

    @classmethod
    def restore(
        cls, rows: list[tuple[bytes, bytes, int]], capacity: dict[bytes, int]
    ) -> CountCache:
        """A cache rebuilt from stored rows (any order) and capacities; nothing dirty."""
        cache = cls(capacity=dict(capacity))
        for app, cmid, last_seen in sorted(rows, key=lambda r: r[2]):
            cache.entries.setdefault(app, OrderedDict())[cmid] = last_seen
        return cache

    def take_snapshot(self) -> dict[bytes, tuple[int, list[tuple[bytes, int]]]]:
        """``{application: (capacity, [(cmid, last_seen)...])}`` for what changed; clears it."""
        snapshot = {
            app: (self.capacity.get(app, 0), list(self.entries.get(app, {}).items()))
            for app in self.dirty
        }
        self.dirty = set()
        return snapshot

    def activate(self, app: bytes, cmid: bytes, previous: bytes, required: int, now: int) -> int:
        """Record a successful request and return the live count including it."""
        # The host's hot path (and the fleet simulator's, once per request): conditional
        # expressions rather than min()/max(), one lookup per step.
        entries = self.entries.get(app)
        if entries is None:
            entries = self.entries[app] = OrderedDict()
        self.dirty.add(app)
        wanted = 2 if required < 1 else 2000 if required > 1000 else 2 * required
        capacity = self.capacity.get(app, 0)
        if wanted > capacity:
            capacity = self.capacity[app] = wanted
        if previous != _NIL and previous != cmid:
            entries.pop(previous, None)
        in_order = not entries or entries[next(reversed(entries))] <= now  # the newest's time
        entries[cmid] = now
        entries.move_to_end(cmid)
        if not in_order:  # the host clock went back: keep the oldest-first invariant
            ordered = OrderedDict(sorted(entries.items(), key=lambda kv: kv[1]))
            entries = self.entries[app] = ordered
        while len(entries) > capacity:
            entries.popitem(last=False)
        while entries:  # expire from the oldest end
            oldest = next(iter(entries))  # no items view and (key, value) pair to build
            if now - entries[oldest] < LIVE_WINDOW:
                break
            del entries[oldest]
        return len(entries)

    def live(self, app: bytes, now: int) -> int:
        """CMIDs of ``app`` seen in the 30 days before ``now`` (without counting anyone)."""
        return sum(1 for seen in self.entries.get(app, {}).values() if now - seen < LIVE_WINDOW)


def client_hresult(status: int, count: int, required: int) -> int:
    """What a client ends with after an answer: the host's status, or 0xC004F038 when the
    host answered with a count below the client's threshold (the client decides that)."""
    return HResult.COUNT_INSUFFICIENT if status == 0 and count < required else status


class LogRecord(NamedTuple):
    """One processed request: what Windows event 12290 records, and what was answered.

    ``request`` is None when the plaintext could not be read; GUIDs stay in
    wire form (``bytes_le``) until something needs their text.
    """

    time: int
    status: int
    current_count: int
    request: RequestFields | None
    client_machine_id: bytes
    request_time: int

    @classmethod
    def bare(cls, now: int, status: int) -> LogRecord:
        """A record for a request whose envelope could not be opened."""
        return cls(now, status, 0, None, _NIL, 0)


class Answer(NamedTuple):
    """What the rules decided: the response plaintext, its log record, why it failed."""

    plaintext: bytes
    log: LogRecord
    reason: str = ""

    @property
    def response(self) -> ActivationResponse:
        """The plaintext decoded again, for tests and tools that read the answer."""
        return ActivationResponse.from_bytes(self.plaintext)


class HostRules:
    """Decides responses; holds the count cache and the host's settings and identity."""

    def __init__(
        self,
        catalog: Catalog,
        settings: HostSettings,
        identity: HostIdentity,
        cache: CountCache | None = None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        #: FILETIME units the lab clock was moved by (``kmsemu lab``'s time travel moves the
        #: whole lab network: a client's request time counts as moved with it, so only a
        #: client's own offset shows as clock skew).
        self.travel = 0
        self.identity = identity
        self.cache = cache if cache is not None else CountCache()
        self._epid_field = encode_utf16_field(identity.epid, NAME_FIELD_SIZE)

    def count(self, app: bytes, now: int) -> int:
        """The count this host reports for ``app`` at host time ``now`` (FILETIME)."""
        return max(self.cache.live(app, now), self.settings.min_count)

    def answer(self, plaintext: bytes, nonce: bytes, now: int) -> Answer:
        """The response to one opened request plaintext at host time ``now`` (FILETIME)."""
        try:
            request = parse_request(plaintext)
        except MessageError as exc:
            cmid, when = echo_fields(plaintext)
            log = LogRecord(now, HResult.INVALID_DATA, 0, None, cmid, when)
            return Answer(self._pack(log, nonce), log, str(exc))
        log, reason = self.decide(request, now)
        return Answer(self._pack(log, nonce), log, reason)

    def decide(self, request: RequestFields, now: int) -> tuple[LogRecord, str]:
        """What the host answers to a parsed request at host time ``now`` (FILETIME), and
        why when it refuses; counts the client when it does not (the fleet simulator calls
        this directly, without the bytes around it)."""
        status, reason, count = 0, "", 0
        # unpacked, not read field by field: each NamedTuple field by name is a lookup
        _, _, _, app, _, kms_count_id, cmid, required, request_time, previous, _ = request
        if not self.catalog.serves(app, kms_count_id):
            status, reason = HResult.PRODUCT_NOT_SERVED, "product not in the catalog"
        elif abs(request_time + self.travel - now) > MAX_SKEW:
            skew = (request_time + self.travel - now) / FILETIME_PER_SECOND / 3600
            status, reason = HResult.TIMESTAMP_INVALID, f"client clock {skew:+.1f} h off"
        else:
            count = self.cache.activate(app, cmid, previous, required, now)
            min_count = self.settings.min_count
            if count < min_count:  # max() without the call: this is the host's hot path
                count = min_count
        # tuple.__new__: LogRecord(...) would run the NamedTuple's generated Python __new__
        return _tuple_new(LogRecord, (now, status, count, request, cmid, request_time)), reason

    def _pack(self, log: LogRecord, nonce: bytes) -> bytes:
        return pack_response(
            log.status,
            nonce,
            log.client_machine_id,
            log.request_time,
            log.time,
            log.current_count,
            self.settings.activation_interval,
            self.settings.renewal_interval,
            self.identity.host_id,
            self._epid_field,
        )
