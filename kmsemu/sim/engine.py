"""The fleet simulator's engine: a scenario's clients, hosts and MAK keys on a virtual clock.

Every client runs the real licence state machine (``kmsemu.client.licence``)
and reads a host's answer with the client's own rule (``kms_answer``); the
host side is the real ``HostRules`` (count cache, thresholds, clock skew) and
a MAK activation the real ``mak.rules.decide``. What carries a request is a
``Backend``: ``FastBackend`` calls the rules directly (no sockets, the fast
mode); ``kmsemu.sim.network`` sends real KLP/1 and HTTP to real servers on
loopback. The engine decides everything else the same way in both modes, in
the same order, with one seeded random source, so one seed gives one outcome.

Events sit in a heap ordered by virtual time: arrivals, attempts (renewals
and retries, when the licence schedules them), licence timers (validity or
grace ending) and hardware changes. At the end of every day the engine
records a ``Day`` (``kmsemu.sim.timeline``).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.client.discovery import Srv, rfc2782_order
from kmsemu.client.licence import (
    Activated,
    ActivationFailed,
    Event,
    HardwareChanged,
    KeyInstalled,
    Licence,
    PermanentlyActivated,
    Policy,
    TimePassed,
    apply,
    kms_answer,
)
from kmsemu.clock import as_datetime
from kmsemu.errors import SERVICE_ERRORS, HResult
from kmsemu.host.rules import CountCache, HostRules, HostSettings, new_identity
from kmsemu.keys.product_key import KeyType
from kmsemu.klp.messages import LicenseStatus, RequestFields
from kmsemu.sim.scenario import DAY, Group, Host, MakKey, Scenario
from kmsemu.sim.timeline import Day, Timeline
from kmsemu.wire import EPOCH_AS_FILETIME, FILETIME_MAX, FILETIME_PER_SECOND, filetime_from_unix
from mak.rules import KeyRecord, MachineRecord, decide
from mak.rules import Verdict as MakVerdict

_NIL = bytes(16)
ARRIVE, HARDWARE, ATTEMPT, TIMER = range(4)  # order of events at the same instant
_STATES = tuple(s.name.lower() for s in LicenseStatus)
# Enum members as module constants: reading ``LicenseStatus.LICENSED`` costs an enum lookup
# each time, and the code below runs for every request.
_LICENSED = LicenseStatus.LICENSED
_U32_MAX = 2**32 - 1
# RequestFields(...) and KmsReply(...) (NamedTuples) run a generated Python __new__;
# tuple.__new__ builds the same value without it (one of each per request).
_tuple_new = tuple.__new__
_DAY_STATS = ("activations", "renewals", "mak_activations", "lapsed", "notification")
_NO_KMS_HOST = HResult.NO_KMS_HOST


class KmsReply(NamedTuple):  # one per request: a NamedTuple is the cheapest value to build
    """What a host answered a simulated client: status, count and the two intervals."""

    status: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, which nothing here calls
    activation_interval: int
    renewal_interval: int


class Backend(Protocol):
    """How requests reach the hosts and the MAK service (fast: direct calls)."""

    def kms(self, host: str, request: RequestFields, now: float) -> KmsReply | None:
        """The host's answer at virtual time ``now``, or None when it cannot be reached."""
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


@dataclass(slots=True)
class Client:
    """One simulated client machine: identity, product ids, licence and pending events."""

    index: int
    group: Group
    number: int  # within its group
    name: str
    cmid: bytes
    hardware_id: bytes
    vm: bool
    ids: tuple[bytes, bytes, bytes]  # the product's application, SKU and KMS count ids
    licence: Licence = field(default_factory=Licence)
    cached_host: str | None = None
    attempt_at: float | None = None  # the attempt the heap holds for this client
    timer_at: float | None = None
    arrived: bool = False
    activated_ever: bool = False


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
        self.heap: list[tuple[float, int, int, int]] = []
        self.states: Counter[str] = Counter()
        self.day_stats = dict.fromkeys(_DAY_STATS, 0)  # a plain dict: cheaper than a Counter
        self.failures: Counter[str] = Counter()
        self.arrived: Counter[str] = Counter()  # per group
        self.timeline = Timeline(scenario, self.catalog)
        self._seq = 0
        self._threshold_seen: set[tuple[str, bytes]] = set()
        self._policies = {f: Policy.for_family(f) for f in ("windows", "office")}

    def _make_clients(self) -> list[Client]:
        clients: list[Client] = []
        for group in self.scenario.groups:
            product = group.product
            ids = (
                product.application_id.bytes_le,
                product.sku_id.bytes_le,
                product.kms_count_id.bytes_le,
            )
            clone = uuid.UUID(int=self.rng.getrandbits(128)).bytes_le
            for n in range(group.count):
                cmid = (
                    clone if n < group.cloned else uuid.UUID(int=self.rng.getrandbits(128)).bytes_le
                )
                clients.append(
                    Client(
                        index=len(clients),
                        group=group,
                        number=n,
                        name=f"{group.name}-{n + 1:04d}",
                        cmid=cmid,
                        hardware_id=self.rng.randbytes(10),
                        vm=self.rng.random() < group.vm_share,
                        ids=ids,
                    )
                )
        return clients

    # -- running ----------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> Timeline:
        """Every simulated day in order; ``progress`` hears each day done. The timeline."""
        s = self.scenario
        for c in self.clients:
            self._push(s.start + c.group.arrival(c.number) * DAY, ARRIVE, c)
            if c.group.hardware_change_day is not None:
                self._push(s.start + c.group.hardware_change_day * DAY, HARDWARE, c)
        self.timeline.start_events()
        heap, clients, handle = self.heap, self.clients, self._handle  # the loop of the run
        for day in range(s.days):
            end = s.start + (day + 1) * DAY
            self.timeline.day_events(day)
            while heap and heap[0][0] < end:
                when, kind, _, index = heapq.heappop(heap)
                handle(kind, clients[index], when)
            self._close_day(day, end)
            if progress is not None:
                progress(day + 1)
        return self.timeline

    def _push(self, when: float, kind: int, c: Client) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (when, kind, self._seq, c.index))

    def _handle(self, kind: int, c: Client, now: float) -> None:
        if kind == ATTEMPT:  # by far the most frequent: tested first
            if c.attempt_at == now:
                lic = c.licence  # what time alone changes first (validity or a grace ending):
                end = lic.valid_until if lic.status is _LICENSED else lic.grace_ends
                if end is not None and now >= end:
                    self._set(c, TimePassed(now), now, schedule=False)
                c.attempt_at = None
                self._kms(c, now)
        elif kind == ARRIVE:
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

    def _kms(self, c: Client, now: float) -> None:
        """One attempt. Hosts are tried in order: the one set by hand alone; else the cached
        host, then DNS's in RFC 2782 order (looked up only when the cached host fails, as a
        client with host caching does)."""
        group = c.group
        day = int((now - self.scenario.start) // DAY)
        cause: int = _NO_KMS_HOST
        if not (group.offline and group.offline_on(day)):  # most groups are never offline
            request = self._request(c, now)
            first = (
                group.kms_host
                if group.kms_host is not None
                else c.cached_host
                if group.host_caching
                else None
            )
            if first is not None:
                if self._ask(c, first, request, now):
                    return
                cause = HResult.RPC_SERVER_UNAVAILABLE
            if group.kms_host is None:
                for host in self._dns_order(day, first):
                    if self._ask(c, host, request, now):
                        return
                    cause = HResult.RPC_SERVER_UNAVAILABLE
                if not self.backend.srv(day):
                    cause = HResult.DNS_NAME_DOES_NOT_EXIST
        self._fail(c, ActivationFailed(now, HResult.NO_KMS_HOST), cause, now)

    def _dns_order(self, day: int, tried: str | None) -> Iterator[str]:
        """The hosts DNS publishes on ``day`` in RFC 2782 order, but the one already tried."""
        records = sorted(
            self.backend.srv(day), key=lambda r: (r.priority, r.weight, r.target, r.port)
        )
        for record in rfc2782_order(records, self.rng):
            if record.target != tried:
                yield record.target

    def _ask(self, c: Client, host: str, request: RequestFields, now: float) -> bool:
        """Send ``request`` to ``host``; False when it cannot be reached, else apply what it
        answered (activated, or refused) and True."""
        reply = self.backend.kms(host, request, now)
        if reply is None:
            if c.cached_host == host:
                c.cached_host = None
            return False
        group = c.group
        status, count, activation_interval, renewal_interval = reply
        event = kms_answer(
            now, status, count, group.product.threshold, activation_interval, renewal_interval
        )
        if not isinstance(event, Activated):
            self._fail(c, event, status or event.hresult, now)
            return True
        # status 0 and the count at the threshold: the first time on this host, a key moment
        if (host, c.ids[0]) not in self._threshold_seen:
            self._threshold(host, c, count, now)
        if group.host_caching and group.kms_host is None:
            c.cached_host = host
        self.day_stats["renewals" if c.licence.status is _LICENSED else "activations"] += 1
        c.activated_ever = True
        self._set(c, event, now)
        return True

    def _threshold(self, host: str, c: Client, count: int, now: float) -> None:
        """The first activation of the client's application on ``host``: a key moment."""
        self._threshold_seen.add((host, c.ids[0]))
        self.timeline.threshold(now, host, c.group.product.application, count)

    def _fail(self, c: Client, event: ActivationFailed, cause: int, now: float) -> None:
        self.failures[f"0x{cause:08X}"] += 1
        self._set(c, event, now)

    def _mak(self, c: Client, now: float) -> None:
        assert c.group.mak is not None
        refusal = self.backend.mak(c.group.mak, c.hardware_id, now)
        if refusal is None:
            self.day_stats["mak_activations"] += 1
            c.activated_ever = True
            self._set(c, PermanentlyActivated(now), now)
            return
        hresult = SERVICE_ERRORS[refusal].hresult or HResult.NO_KMS_HOST
        self.failures[f"0x{hresult:08X}"] += 1
        self._set(c, ActivationFailed(now, hresult), now)

    def _request(self, c: Client, now: float) -> RequestFields:
        lic = c.licence
        minutes = lic.minutes_remaining(now)
        app, sku, count_id = c.ids
        return _tuple_new(
            RequestFields,
            (
                int(c.vm),
                int(lic.status),
                minutes if minutes <= _U32_MAX else _U32_MAX,
                app,
                sku,
                count_id,
                c.cmid,
                c.group.product.threshold,
                _filetime(now + c.group.clock_skew),
                _NIL,
                c.name,
            ),
        )

    # -- the licence and what it schedules ----------------------------------------------

    def _set(self, c: Client, event: Event, now: float, *, schedule: bool = True) -> None:
        before = c.licence.status
        licence = apply(c.licence, event).licence
        c.licence = licence
        if licence.status is not before or isinstance(event, KeyInstalled):
            self._changed(c, before, licence.status, event)
        if not schedule:  # an attempt is being made now: it schedules what follows
            return
        due = licence.next_attempt
        if due is not None and due != c.attempt_at:
            c.attempt_at = due if due >= now else now
            self._push(c.attempt_at, ATTEMPT, c)
        elif due is None:
            c.attempt_at = None
        timer = licence.valid_until if licence.status is _LICENSED else licence.grace_ends
        # an attempt due first looks at the time itself (and reschedules): no timer needed
        if (
            timer is not None
            and timer != c.timer_at
            and timer > now
            and (c.attempt_at is None or timer < c.attempt_at)
        ):
            c.timer_at = timer
            self._push(timer, TIMER, c)

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
            self.day_stats["lapsed"] += 1
        if after is LicenseStatus.NOTIFICATION:
            self.day_stats["notification"] += 1

    def _close_day(self, day: int, end: float) -> None:
        offline = sum(self.arrived[g.name] for g in self.scenario.groups if g.offline_on(day))
        counts = self.backend.counts(end)
        self.timeline.close_day(
            Day(
                day=day,
                states={s: self.states.get(s, 0) for s in _STATES},
                offline=offline,
                counts=counts,
                activations=self.day_stats["activations"],
                renewals=self.day_stats["renewals"],
                mak_activations=self.day_stats["mak_activations"],
                failures=dict(self.failures),
                lapsed=self.day_stats["lapsed"],
                notification=self.day_stats["notification"],
                mak_remaining=self.backend.mak_remaining(),
            )
        )
        self.day_stats = dict.fromkeys(_DAY_STATS, 0)
        self.failures.clear()


def _filetime(seconds: float) -> int:
    """``wire.filetime_from_unix`` at half the cost (twice per request): the same value,
    clamped only when out of range, which a scenario's times never are."""
    value = EPOCH_AS_FILETIME + round(seconds * FILETIME_PER_SECOND)
    return value if 0 <= value <= FILETIME_MAX else min(max(value, 0), FILETIME_MAX)


# -- the fast mode's backend: the rules, called directly ------------------------------------


class FastBackend:
    """The fast mode: host rules and MAK rules in memory, called directly."""

    def __init__(self, scenario: Scenario, catalog: Catalog | None = None) -> None:
        catalog = catalog or default_catalog()
        self.scenario = scenario
        rng = random.Random(f"{scenario.seed}-hosts")
        self.hosts: dict[str, tuple[Host, HostRules]] = {}
        for host in scenario.hosts:
            settings = HostSettings(host.activation_interval, host.renewal_interval, host.min_count)
            identity = new_identity(rng, as_datetime(scenario.start))
            self.hosts[host.name] = (host, HostRules(catalog, settings, identity, CountCache()))
        self.keys: dict[str, KeyRecord] = {}
        self.machines: dict[str, dict[bytes, MachineRecord]] = {}
        for key in scenario.mak_keys:
            self.keys[key.name] = _mak_record(key, scenario.start)
            self.machines[key.name] = {}
        self.apps = sorted({p.application_id.bytes_le for p in catalog.volume})

    def kms(self, host: str, request: RequestFields, now: float) -> KmsReply | None:
        """The host's rules decide at its own (offset) clock; None during an outage."""
        spec, rules = self.hosts[host]
        if spec.outages and spec.down((now - self.scenario.start) / DAY):
            return None
        log, _ = rules.decide(request, _filetime(now + spec.clock_offset))
        settings = rules.settings
        return _tuple_new(
            KmsReply,
            (
                log.status,
                log.current_count,
                settings.activation_interval,
                settings.renewal_interval,
            ),
        )

    def mak(self, key: str, hardware_id: bytes, now: float) -> str | None:
        """``mak.rules.decide`` on the key's record; a new machine uses up one activation."""
        record = self.keys[key]
        machines = self.machines[key]
        known = machines.get(hardware_id)
        decision = decide(record, [known] if known else [], hardware_id, now)
        if decision.refusal is not None:
            return decision.refusal
        if decision.verdict is MakVerdict.NEW:
            machines[hardware_id] = MachineRecord(len(machines) + 1, hardware_id)
            self.keys[key] = dataclasses.replace(record, used=record.used + 1)
        return None

    def srv(self, day: int) -> list[Srv]:
        """The scenario's records whose window covers ``day``, on port 1688."""
        return [
            Srv(r.priority, r.weight, 1688, r.host)
            for r in self.scenario.records
            if r.window.covers(day)
        ]

    def counts(self, now: float) -> dict[str, dict[bytes, int]]:
        """Each host's count per volume application, at its own clock."""
        result: dict[str, dict[bytes, int]] = {}
        for name, (spec, rules) in self.hosts.items():
            at = filetime_from_unix(now + spec.clock_offset)
            result[name] = {app: rules.count(app, at) for app in self.apps}
        return result

    def mak_remaining(self) -> dict[str, int]:
        """The activations each MAK key has left."""
        return {name: record.remaining for name, record in self.keys.items()}


def _mak_record(key: MakKey, created: float) -> KeyRecord:
    return KeyRecord(
        fingerprint=key.name,
        last5="SIM00",
        type=KeyType.MAK,
        product=key.product.number,
        limit=key.limit,
        created=created,
    )


def run_fast(
    scenario: Scenario,
    catalog: Catalog | None = None,
    progress: Callable[[int], None] | None = None,
) -> Timeline:
    """The scenario in fast mode: no sockets."""
    return Engine(scenario, FastBackend(scenario, catalog), catalog).run(progress)
