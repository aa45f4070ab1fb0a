"""The fleet simulator's engine: a scenario's clients, hosts and MAK keys on a virtual clock.

Every client runs the real licence state machine (``kmsemu.client.licence``)
and reads a host's answer with the client's own rule (``kms_answer``); the
host side is the real ``HostRules`` (count cache, thresholds, clock skew) and
a MAK activation the real ``mak.rules.decide``. What carries a request is a
``Backend``: ``kmsemu.sim.fast.FastBackend`` calls the rules directly (no
sockets, the fast mode); ``kmsemu.sim.network`` sends real KLP/1 and HTTP to real servers on
loopback. The engine decides everything else the same way in both modes, in
the same order, with one seeded random source, so one seed gives one outcome.

Events run in virtual-time order (``kmsemu.sim.queue``): arrivals, attempts
(renewals and retries, when the licence schedules them), licence timers
(validity or grace ending) and hardware changes. At the end of every day the
engine records a ``Day`` (``kmsemu.sim.timeline``).

A year of a large fleet is millions of attempts, nearly all a renewal that
succeeds, so in fast mode that path is a lean one (``Engine._renew``): what a
client never changes (its product ids, threshold, clock skew, offline days,
how it finds a host) is worked out once per client; after a success, the
engine knows what the next renewal on that host can change (the host's count
and the licence's times) and what it cannot (the product served, the clocks,
the intervals, a key moment), so a renewal counts the client in the host's
cache (the host rules' own ``CountCache.activate``), notes the time and queues the next one. The
licence itself is brought up to date (``renewed``) only when something else
reads it. Whatever is rare (arrivals, failures, a count below the threshold,
outages, DNS, timers) takes the general path, and tests/test_sim_fast.py
checks that a run with the lean path ends as one without, client for client.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, runtime_checkable

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.client.discovery import Srv, rfc2782_order
from kmsemu.client.licence import (
    TRANSITIONS,
    Activated,
    ActivationFailed,
    Event,
    Handler,
    HardwareChanged,
    KeyInstalled,
    Licence,
    PermanentlyActivated,
    Policy,
    TimePassed,
    apply,
    kms_answer,
)
from kmsemu.errors import SERVICE_ERRORS, HResult
from kmsemu.host.rules import CountCache, HostRules
from kmsemu.klp.messages import LicenseStatus, RequestFields
from kmsemu.sim.lean import VALIDITY_SECONDS, renewed, renews_in_place
from kmsemu.sim.queue import DayQueue
from kmsemu.sim.scenario import DAY, Group, Scenario, Window
from kmsemu.sim.timeline import Day, Timeline
from kmsemu.wire import EPOCH_AS_FILETIME, FILETIME_MAX, FILETIME_PER_SECOND

_NIL: Final = bytes(16)
ARRIVE, HARDWARE, ATTEMPT, TIMER = range(4)  # order of events at the same instant
_STATES: Final = tuple(s.name.lower() for s in LicenseStatus)
# Enum members as module constants: reading ``LicenseStatus.LICENSED`` costs an enum lookup
# each time, and the code below runs for every request.
_LICENSED: Final = LicenseStatus.LICENSED
_U32_MAX: Final = 2**32 - 1
# RequestFields(...) (a NamedTuple) runs a generated Python __new__; tuple.__new__ builds
# the same value without it (one per request).
_tuple_new: Final = tuple.__new__
_NO_KMS_HOST: Final = HResult.NO_KMS_HOST
#: What a host's "activated" does to a licence, by its status: the licence machine's own
#: rows (``TRANSITIONS``), looked up once rather than through ``apply`` per renewal.
_ON_ACTIVATED: Final[dict[LicenseStatus, Handler]] = {
    status: TRANSITIONS[status, Activated] for status in LicenseStatus
}
_FIRST_LICENCE: Final = Licence()  # immutable: every client starts from the same value

#: What a host answers: status, count and the two intervals (minutes).
Reply = tuple[int, int, int, int]


class KmsReply(NamedTuple):
    """A host's answer with its fields named (a ``Reply``; the network backend's)."""

    status: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, which nothing here calls
    activation_interval: int
    renewal_interval: int


class Backend(Protocol):
    """How requests reach the hosts and the MAK service (fast: direct calls)."""

    def kms(self, host: str, client: Client, now: float) -> Reply | None:
        """The host's answer to the client's request (``request(client, now)``) at virtual
        time ``now``, or None when it cannot be reached."""
        ...

    def mak(self, key: str, hardware_id: bytes, now: float) -> str | None:
        """None when the activation succeeded, else the service's error code."""
        ...

    def srv(self, day: int) -> list[Srv]:
        """The ``_vlmcs._tcp`` records DNS serves that day."""
        ...

    def counts(self, now: float) -> dict[str, dict[bytes, int]]:
        """Per host, per application id, its count at ``now``."""
        ...

    def mak_remaining(self) -> dict[str, int]:
        """Per MAK key, the activations it has left."""
        ...


@dataclass(frozen=True, slots=True)
class FastHost:
    """A scenario host in fast mode (``kmsemu.sim.fast.FastBackend``): its rules, and what
    every request reads of it (a lean renewal too)."""

    name: str
    rules: HostRules
    cache: CountCache  # the rules' own
    clock_offset: float
    down: frozenset[int]  # the days of its outages
    min_count: int
    #: What it answers besides status and count (the settings' intervals).
    activation_interval: int
    renewal_interval: int
    renewal_seconds: float  # the renewal interval as a licence adds it to ``now``


@runtime_checkable
class LeanBackend(Backend, Protocol):
    """A backend that can hand the engine a host for its lean renewals (``Engine._renew``)."""

    #: False turns the lean path off: every request then goes through ``kms``.
    lean: bool

    def renewal_host(self, host: str, client: Client) -> FastHost | None:
        """The host, when nothing it checks before counting can refuse ``client``; else None."""
        ...


def whole_days(windows: tuple[Window, ...]) -> frozenset[int]:
    """The days the windows cover: ``covers(day)`` is ``int(day) in`` this for a day >= 0
    (a window's bounds are whole days)."""
    return frozenset(day for w in windows for day in range(w.from_day, w.to_day))


@dataclass(slots=True)
class DayCounts:
    """What happened so far on the day being run (fields as ``Day``'s)."""

    activations: int = 0
    renewals: int = 0
    mak_activations: int = 0
    lapsed: int = 0
    notification: int = 0


@dataclass(slots=True)
class Client:
    """One simulated client machine: identity, product ids, licence and pending events.

    The fields after ``name`` are fixed for the run; the ones read by every request are
    copied from the group (``for_group``) so that a request reads them in one step.
    """

    index: int
    group: Group
    number: int  # within its group
    name: str
    cmid: bytes
    hardware_id: bytes
    flags: int  # the request's flags: 1 for a VM
    app: bytes  # the product's application, SKU and KMS count ids (bytes_le)
    sku: bytes
    count_id: bytes
    threshold: int
    clock_skew: float
    offline: frozenset[int]  # the days the group is offline
    kms_host: str | None  # set by hand: the only host asked
    asks_cached: bool  # host caching on: the cached host first
    caches: bool  # the host that activated it is remembered
    licence: Licence = _FIRST_LICENCE
    cached_host: str | None = None
    attempt_at: float | None = None  # the attempt the queue holds for this client
    timer_at: float | None = None
    arrived: bool = False
    activated_ever: bool = False
    #: The host a renewal goes to by the lean path (``Engine._renew``), or None: set after
    #: a success on that host, cleared (``Engine._settle``) before anything else reads or
    #: changes the licence. While it is set, ``licence`` lags: it is the one of that
    #: success, and ``renewed_at`` the time of the last renewal since (the renewals change
    #: nothing but the licence's times, which follow from it).
    lean: FastHost | None = None
    renewed_at: float = 0.0

    @property
    def vm(self) -> bool:
        """Whether the client is a virtual machine."""
        return self.flags == 1


class Engine:
    """Runs a scenario: its clients' events on a virtual clock, through one backend."""

    def __init__(
        self, scenario: Scenario, backend: Backend, catalog: Catalog | None = None
    ) -> None:
        self.scenario = scenario
        self.backend = backend
        self.catalog = catalog or default_catalog()
        self.rng = random.Random(scenario.seed)
        self.clients = self._make_clients()
        self.queue = DayQueue(scenario.start, scenario.days)
        self.states: Counter[str] = Counter()
        self.today = DayCounts()
        self.failures: Counter[str] = Counter()
        self.arrived: Counter[str] = Counter()  # per group
        self.timeline = Timeline(scenario, self.catalog)
        #: Per host, the applications it has activated (the first time is a key moment).
        self._threshold_seen: dict[str, set[bytes]] = {h.name: set() for h in scenario.hosts}
        self._policies = {f: Policy.for_family(f) for f in ("windows", "office")}
        #: The backend's lean path for renewals (``FastBackend.renewal_host``), if any.
        self._lean = (
            backend.renewal_host if isinstance(backend, LeanBackend) and backend.lean else None
        )

    def _make_clients(self) -> list[Client]:
        clients: list[Client] = []
        rng = self.rng
        for group in self.scenario.groups:
            product = group.product
            app, sku, count_id = (
                product.application_id.bytes_le,
                product.sku_id.bytes_le,
                product.kms_count_id.bytes_le,
            )
            offline = whole_days(group.offline)
            asks_cached = group.host_caching
            caches = group.host_caching and group.kms_host is None
            clone = _guid_le(rng.getrandbits(128))
            for n in range(group.count):
                cmid = clone if n < group.cloned else _guid_le(rng.getrandbits(128))
                hardware_id = rng.randbytes(10)
                vm = rng.random() < group.vm_share
                clients.append(
                    Client(
                        len(clients),
                        group,
                        n,
                        f"{group.name}-{n + 1:04d}",
                        cmid,
                        hardware_id,
                        1 if vm else 0,
                        app,
                        sku,
                        count_id,
                        product.threshold,
                        group.clock_skew,
                        offline,
                        group.kms_host,
                        asks_cached,
                        caches,
                    )
                )
        return clients

    # -- running ----------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> Timeline:
        """Every simulated day in order; ``progress`` hears each day done. The timeline."""
        s, queue = self.scenario, self.queue
        for c in self.clients:
            queue.push(s.start + c.group.arrival(c.number) * DAY, ARRIVE, c.index)
            if c.group.hardware_change_day is not None:
                queue.push(s.start + c.group.hardware_change_day * DAY, HARDWARE, c.index)
        self.timeline.start_events()
        # the loop of the run
        clients, renew, attempt, handle = self.clients, self._renew, self._attempt, self._handle
        for day in range(s.days):
            self.timeline.day_events(day)
            for when, kind, _, index in queue.run(day):
                c = clients[index]
                if kind == ATTEMPT:  # by far the most frequent: tested first
                    # (else a later schedule replaced it); a renewal the lean path cannot
                    # make goes the general way
                    if c.attempt_at == when and not renew(c, when):
                        attempt(c, when)
                else:
                    handle(kind, c, when)
            self._close_day(day, queue.ends[day])
            if progress is not None:
                progress(day + 1)
        for c in clients:  # every licence as it stands at the end
            self._settle(c)
        return self.timeline

    def _handle(self, kind: int, c: Client, now: float) -> None:
        """An arrival, a hardware change or a licence timer."""
        if kind == ARRIVE:
            c.arrived = True
            self.arrived[c.group.name] += 1
            product = c.group.product
            self._set(
                c,
                KeyInstalled(
                    now,
                    self._policies.get(product.family, self._policies["windows"]),
                    kms_client=c.group.mak is None,
                ),
                now,
            )
            if c.group.mak is not None:
                self._mak(c, now)
        elif kind == HARDWARE:
            if c.arrived:
                self._set(c, HardwareChanged(now), now)
                if c.number == 0:  # one line for the group in the narrative
                    self.timeline.add(
                        now,
                        "hardware_change",
                        f"{c.group.name}: a significant "
                        f"hardware change on {c.group.count} clients puts them "
                        "in out-of-tolerance grace",
                    )
                if c.group.mak is not None:
                    self._mak(c, now)
        elif c.timer_at == now:  # TIMER
            c.timer_at = None
            self._set(c, TimePassed(now), now)

    # -- one client's requests ----------------------------------------------------------

    def _attempt(self, c: Client, now: float) -> None:
        """One attempt (a renewal or a retry): ask the host set by hand, else the cached
        one; ``_discover`` does the rest when that host is not there or cannot be reached."""
        c.attempt_at = None
        self._settle(c)
        lic = c.licence  # what time alone changes first (validity or a grace ending):
        end = lic.valid_until if lic.status is _LICENSED else lic.grace_ends
        if end is not None and now >= end:
            self._set(c, TimePassed(now), now, schedule=False)
        if c.offline and self._day(now) in c.offline:
            self._fail(c, ActivationFailed(now, _NO_KMS_HOST), _NO_KMS_HOST, now)
            return
        host = c.kms_host if c.kms_host is not None else c.cached_host if c.asks_cached else None
        if host is None or (reply := self.backend.kms(host, c, now)) is None:
            found = self._discover(c, host, self._day(now), now)
            if found is None:
                return
            host, reply = found
        self._answered(c, host, reply, now)

    def _answered(self, c: Client, host: str, reply: Reply, now: float) -> None:
        """What the client makes of ``host``'s answer: a renewal or an activation, else a
        failure; after a success the lean path takes the next renewal if it can."""
        status, count, activation_interval, renewal_interval = reply
        event = kms_answer(now, status, count, c.threshold, activation_interval, renewal_interval)
        if type(event) is not Activated:
            assert isinstance(event, ActivationFailed)
            self._fail(c, event, status or event.hresult, now)
            return
        # status 0 and the count at the threshold: the first time on this host, a key moment
        # (not when the client's cached host answers: it activated the client's app before)
        if host != c.cached_host and c.app not in self._threshold_seen[host]:
            self._threshold(host, c, count, now)
        if c.caches:
            c.cached_host = host
        lic = c.licence
        before = lic.status
        if before is _LICENSED:
            self.today.renewals += 1
        else:
            self.today.activations += 1
        c.activated_ever = True
        # _set(c, event, now), with the handler looked up directly
        licence = c.licence = _ON_ACTIVATED[before](lic, event).licence
        if licence.status is not before:
            self._changed(c, before, licence.status, event)
        self._schedule(c, licence, now)
        c.lean = self._lean_host(c, host, licence)
        c.renewed_at = now

    # -- the lean path: a renewal that changes only the licence's times -----------------

    def _lean_host(self, c: Client, host: str, licence: Licence) -> FastHost | None:
        """The host, if the client's next renewal can take the lean path (``_renew``): the
        backend is the fast one and offers it, the client asks this host first next time,
        its application is no longer news there (no key moment), and a renewal would change
        the licence's times alone (``renews_in_place``)."""
        lean = self._lean
        if lean is None:
            return None
        asked = c.kms_host if c.kms_host is not None else c.cached_host if c.asks_cached else None
        if asked != host or c.app not in self._threshold_seen[host]:
            return None
        fast = lean(host, c)
        if fast is None or not renews_in_place(
            licence, fast.activation_interval, fast.renewal_interval
        ):
            return None
        return fast

    def _renew(self, c: Client, now: float) -> bool:
        """The attempt, if it is a renewal on the host the client renewed on last time that
        is in reach: the general path's steps (``_attempt``, ``FastBackend.kms``,
        ``_answered``) with what cannot differ from last time left out. False, having done
        nothing, when it is not (the general path then runs).

        Most of a year's requests come here; tests/test_sim_fast.py checks that a run with
        and without this path ends alike, client for client and host for host."""
        fast = c.lean
        if fast is None:
            return False
        if now >= c.renewed_at + VALIDITY_SECONDS:  # lapsed: the licence machine's TimePassed first
            return False
        if c.offline and int((now - self.scenario.start) // DAY) in c.offline:
            return False
        if fast.down and int((now - self.scenario.start) / DAY) in fast.down:
            return False
        at = EPOCH_AS_FILETIME + round((now + fast.clock_offset) * FILETIME_PER_SECOND)
        count = fast.cache.activate(c.app, c.cmid, _NIL, c.threshold, at)
        if count < fast.min_count:
            count = fast.min_count
        if count < c.threshold:  # the count fell: a failure, the general way
            c.attempt_at = None
            self._settle(c)
            reply = (0, count, fast.activation_interval, fast.renewal_interval)
            self._answered(c, fast.name, reply, now)
            return True
        self.today.renewals += 1
        c.renewed_at = now
        due = c.attempt_at = now + fast.renewal_seconds
        # a licence valid 180 days asks for no timer before a renewal due within 30 days
        self.queue.push(due, ATTEMPT, c.index)
        return True

    @staticmethod
    def _settle(c: Client) -> None:
        """Leave the lean path: the licence as the renewals since its success made it."""
        fast = c.lean
        if fast is not None:
            c.lean = None
            at = c.renewed_at
            c.licence = renewed(c.licence, at, at + fast.renewal_seconds)

    def _day(self, now: float) -> int:
        """The scenario day ``now`` falls on."""
        return int((now - self.scenario.start) // DAY)

    def _discover(
        self, c: Client, tried: str | None, day: int, now: float
    ) -> tuple[str, Reply] | None:
        """After the first host (``tried``: set by hand or cached, if any) did not answer:
        the hosts DNS publishes, in RFC 2782 order (looked up only now, as a client with
        host caching does); none for a host set by hand. A host that answers, and its
        answer; else the failure is recorded and None."""
        cause: int = _NO_KMS_HOST
        if tried is not None:
            if c.cached_host == tried:
                c.cached_host = None
            cause = HResult.RPC_SERVER_UNAVAILABLE
        if c.kms_host is None:
            for host in self._dns_order(day, tried):
                reply = self.backend.kms(host, c, now)
                if reply is not None:
                    return host, reply
                if c.cached_host == host:
                    c.cached_host = None
                cause = HResult.RPC_SERVER_UNAVAILABLE
            if not self.backend.srv(day):
                cause = HResult.DNS_NAME_DOES_NOT_EXIST
        self._fail(c, ActivationFailed(now, HResult.NO_KMS_HOST), cause, now)
        return None

    def _dns_order(self, day: int, tried: str | None) -> Iterator[str]:
        """The hosts DNS publishes on ``day`` in RFC 2782 order, but the one already tried."""
        records = sorted(
            self.backend.srv(day), key=lambda r: (r.priority, r.weight, r.target, r.port)
        )
        for record in rfc2782_order(records, self.rng):
            if record.target != tried:
                yield record.target

    def _threshold(self, host: str, c: Client, count: int, now: float) -> None:
        """The first activation of the client's application on ``host``: a key moment."""
        self._threshold_seen[host].add(c.app)
        self.timeline.threshold(now, host, c.group.product.application, count)

    def _fail(self, c: Client, event: ActivationFailed, cause: int, now: float) -> None:
        self.failures[f"0x{cause:08X}"] += 1
        self._set(c, event, now)

    def _mak(self, c: Client, now: float) -> None:
        assert c.group.mak is not None
        refusal = self.backend.mak(c.group.mak, c.hardware_id, now)
        if refusal is None:
            self.today.mak_activations += 1
            c.activated_ever = True
            self._set(c, PermanentlyActivated(now), now)
            return
        hresult = SERVICE_ERRORS[refusal].hresult or HResult.NO_KMS_HOST
        self.failures[f"0x{hresult:08X}"] += 1
        self._set(c, ActivationFailed(now, hresult), now)

    # -- the licence and what it schedules ----------------------------------------------

    def _set(self, c: Client, event: Event, now: float, *, schedule: bool = True) -> None:
        self._settle(c)  # until a success shows what the next renewal will be
        before = c.licence.status
        licence = apply(c.licence, event).licence
        c.licence = licence
        if licence.status is not before or isinstance(event, KeyInstalled):
            self._changed(c, before, licence.status, event)
        if schedule:  # else an attempt is being made now: it schedules what follows
            self._schedule(c, licence, now)

    def _schedule(self, c: Client, licence: Licence, now: float) -> None:
        """Queue the attempt the licence asks for, and a timer when time alone would change
        the licence before that attempt."""
        due = licence.next_attempt
        if due is not None and due != c.attempt_at:
            c.attempt_at = due if due >= now else now
            self.queue.push(c.attempt_at, ATTEMPT, c.index)
        elif due is None:
            c.attempt_at = None
        timer = licence.valid_until if licence.status is _LICENSED else licence.grace_ends
        # an attempt due first looks at the time itself (and reschedules): no timer needed
        if (
            timer is not None
            and (c.attempt_at is None or timer < c.attempt_at)
            and timer != c.timer_at
            and timer > now
        ):
            c.timer_at = timer
            self.queue.push(timer, TIMER, c.index)

    def _changed(
        self, c: Client, before: LicenseStatus, after: LicenseStatus, event: Event
    ) -> None:
        """Count a change of state (or a key installed) for the day."""
        if c.arrived and not isinstance(event, KeyInstalled):
            self.states[before.name.lower()] -= 1
        self.states[after.name.lower()] += 1
        if (
            before is LicenseStatus.LICENSED
            and after is LicenseStatus.OUT_OF_TOLERANCE_GRACE
            and isinstance(event, TimePassed)
        ):
            self.today.lapsed += 1
        if after is LicenseStatus.NOTIFICATION:
            self.today.notification += 1

    def _close_day(self, day: int, end: float) -> None:
        offline = sum(self.arrived[g.name] for g in self.scenario.groups if g.offline_on(day))
        counts = self.backend.counts(end)
        self.timeline.close_day(
            Day(
                day=day,
                states={s: self.states.get(s, 0) for s in _STATES},
                offline=offline,
                counts=counts,
                activations=self.today.activations,
                renewals=self.today.renewals,
                mak_activations=self.today.mak_activations,
                failures=dict(self.failures),
                lapsed=self.today.lapsed,
                notification=self.today.notification,
                mak_remaining=self.backend.mak_remaining(),
            )
        )
        self.today = DayCounts()
        self.failures.clear()


def request(c: Client, now: float) -> RequestFields:
    """What the client sends at ``now``: its licence's status and minutes left, its ids, its
    threshold and its clock (skew included). (For a backend without the lean path, where
    the licence is always current.)"""
    lic = c.licence
    return RequestFields(
        flags=c.flags,
        license_status=int(lic.status),
        grace_minutes_remaining=min(lic.minutes_remaining(now), _U32_MAX),
        application_id=c.app,
        sku_id=c.sku,
        kms_count_id=c.count_id,
        client_machine_id=c.cmid,
        required_client_count=c.threshold,
        request_time=filetime(now + c.clock_skew),
        previous_client_machine_id=_NIL,
        workstation_name=c.name,
    )


def _guid_le(value: int) -> bytes:
    """``uuid.UUID(int=value).bytes_le`` without building the UUID (once per client)."""
    b = value.to_bytes(16, "big")
    return b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:]


def filetime(seconds: float) -> int:
    """``wire.filetime_from_unix`` at half the cost (twice per request): the same value,
    clamped only when out of range, which a scenario's times never are."""
    value = EPOCH_AS_FILETIME + round(seconds * FILETIME_PER_SECOND)
    return value if 0 <= value <= FILETIME_MAX else min(max(value, 0), FILETIME_MAX)
