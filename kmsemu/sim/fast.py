"""The fast mode: the scenario's hosts and MAK keys as their rules, called directly.

``FastBackend`` is the engine's ``Backend`` with no sockets: ``HostRules`` with
their own count cache per host, ``mak.rules.decide`` per key. It also offers
the engine its lean path for renewals (``renewal_host``, ``kmsemu.sim.lean``).
``run_fast`` runs a scenario with it.
"""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Callable

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.client.discovery import Srv
from kmsemu.client.licence import MINUTE
from kmsemu.clock import as_datetime
from kmsemu.errors import HResult
from kmsemu.host.rules import MAX_SKEW, CountCache, HostRules, HostSettings, new_identity
from kmsemu.keys.product_key import KeyType
from kmsemu.sim.engine import Client, Engine, FastHost, Reply, filetime, whole_days
from kmsemu.sim.scenario import DAY, Host, MakKey, Scenario
from kmsemu.sim.timeline import Timeline
from kmsemu.wire import EPOCH_AS_FILETIME, FILETIME_MAX, FILETIME_PER_SECOND, filetime_from_unix
from mak.rules import KeyRecord, MachineRecord, decide
from mak.rules import Verdict as MakVerdict

_NIL = bytes(16)


class FastBackend:
    """The fast mode: host rules and MAK rules in memory, called directly.

    ``lean`` False turns the engine's lean path for renewals off (every request then
    goes through ``kms``): the tests compare the two."""

    def __init__(
        self, scenario: Scenario, catalog: Catalog | None = None, *, lean: bool = True
    ) -> None:
        catalog = catalog or default_catalog()
        self.scenario = scenario
        self.lean = lean
        rng = random.Random(f"{scenario.seed}-hosts")
        self.hosts: dict[str, tuple[Host, HostRules]] = {}
        self._fast: dict[str, FastHost] = {}
        for host in scenario.hosts:
            settings = HostSettings(host.activation_interval, host.renewal_interval, host.min_count)
            identity = new_identity(rng, as_datetime(scenario.start))
            rules = HostRules(catalog, settings, identity, CountCache())
            self.hosts[host.name] = (host, rules)
            self._fast[host.name] = FastHost(
                host.name,
                rules,
                rules.cache,
                host.clock_offset,
                whole_days(host.outages),
                settings.min_count,
                settings.activation_interval,
                settings.renewal_interval,
                settings.renewal_interval * MINUTE,
            )
        self.keys: dict[str, KeyRecord] = {}
        self.machines: dict[str, dict[bytes, MachineRecord]] = {}
        for key in scenario.mak_keys:
            self.keys[key.name] = _mak_record(key, scenario.start)
            self.machines[key.name] = {}
        self.apps = sorted({p.application_id.bytes_le for p in catalog.volume})
        self._srv: dict[int, list[Srv]] = {}
        #: The scenario's products that the hosts do not serve (by the catalog).
        self._unserved = set()
        for group in scenario.groups:
            ids = group.product.application_id.bytes_le, group.product.kms_count_id.bytes_le
            if not catalog.serves(*ids):
                self._unserved.add(ids)
        #: Whether some time of the scenario, on some clock, is out of FILETIME's range (a
        #: start before 1601): then FILETIMEs are clamped as ``filetime_from_unix`` does.
        clocks = [0.0, *(h.clock_offset for h in scenario.hosts)]
        clocks += [g.clock_skew for g in scenario.groups]
        first, last = scenario.start + min(clocks), scenario.start + max(clocks)
        last += (scenario.days + 1) * DAY
        self._clamps = filetime_from_unix(first) == 0 or filetime_from_unix(last) == FILETIME_MAX

    def kms(self, host: str, client: Client, now: float) -> Reply | None:
        """What the host's rules decide at its own (offset) clock; None during an outage.

        ``HostRules.decide`` reads a request tuple and returns a log record, which here
        would cost more than the decision itself: this is decide on the fields it reads,
        its checks in its order (the product served, the client's clock, then counting
        with the rules' own ``CountCache``), and tests/test_sim.py checks the two agree on
        every request of every built-in scenario.
        """
        fast = self._fast[host]
        # int(day) in the outage days is Host.down(day): times are never before the start
        if fast.down and int((now - self.scenario.start) / DAY) in fast.down:
            return None
        if self._unserved and (client.app, client.count_id) in self._unserved:
            return (HResult.PRODUCT_NOT_SERVED, 0, fast.activation_interval, fast.renewal_interval)
        # the host's clock and the client's (request_time) as FILETIME
        if self._clamps:
            at, sent = filetime(now + fast.clock_offset), filetime(now + client.clock_skew)
        else:  # filetime(), inline
            at = EPOCH_AS_FILETIME + round((now + fast.clock_offset) * FILETIME_PER_SECOND)
            if client.clock_skew == fast.clock_offset:
                sent = at
            else:
                sent = EPOCH_AS_FILETIME + round((now + client.clock_skew) * FILETIME_PER_SECOND)
        rules = fast.rules
        # (one clock, and no time travel: no skew to check)
        if (sent is not at or rules.travel) and abs(sent + rules.travel - at) > MAX_SKEW:
            return (HResult.TIMESTAMP_INVALID, 0, fast.activation_interval, fast.renewal_interval)
        count = rules.cache.activate(client.app, client.cmid, _NIL, client.threshold, at)
        if count < fast.min_count:
            count = fast.min_count
        return (0, count, fast.activation_interval, fast.renewal_interval)

    def renewal_host(self, host: str, client: Client) -> FastHost | None:
        """The host for the engine's lean path (``Engine._renew``), when what ``kms`` checks
        before counting cannot refuse this client there: its product is served, the two
        clocks are one (no time travel, no clamping). Else None: ``kms`` decides."""
        fast = self._fast[host]
        if (
            self._clamps
            or fast.rules.travel
            or client.clock_skew != fast.clock_offset
            or (client.app, client.count_id) in self._unserved
        ):
            return None
        return fast

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
        """The scenario's records whose window covers ``day``, on port 1688 (the same list
        for every lookup that day: the engine only reads it)."""
        records = self._srv.get(day)
        if records is None:
            records = self._srv[day] = [
                Srv(r.priority, r.weight, 1688, r.host)
                for r in self.scenario.records
                if r.window.covers(day)
            ]
        return records

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
    """The scenario in fast mode: no sockets.

    The cyclic garbage collector is paused meanwhile (as ``timeit`` does): a run makes no
    reference cycles for it to find, and with 100,000 clients its passes over every live
    licence cost a seventh of the run."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return Engine(scenario, FastBackend(scenario, catalog), catalog).run(progress)
    finally:
        if collecting:
            gc.enable()
