"""The fast mode's lean path for renewals (``Engine._renew``) gives what the general path
gives: its licence step is the licence machine's, its count is ``CountCache.activate``'s,
and a whole run with it ends as a run without it, client for client and host for host,
for every built-in scenario and for random ones. And a run keeps no object per request."""

from __future__ import annotations

import dataclasses
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.client.licence import (
    MINUTE,
    Activated,
    KeyInstalled,
    Licence,
    Policy,
    apply,
)
from kmsemu.errors import HResult
from kmsemu.klp.messages import LicenseStatus
from kmsemu.sim.engine import Client, Engine
from kmsemu.sim.fast import FastBackend
from kmsemu.sim.lean import renewed, renews_in_place
from kmsemu.sim.scenario import Scenario, builtin_names, load_scenario, parse_scenario
from kmsemu.sim.timeline import Timeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchkit.sim import scenario_text  # the bench's own scenario

NIL = bytes(16)
INTERVALS = st.sampled_from([15, 120, 10_080, 43_200])
POLICIES = st.sampled_from([Policy.for_family("windows"), Policy.for_family("office")])
TIMES = st.floats(min_value=1e9, max_value=2e9, allow_nan=False)

# -- the licence step ----------------------------------------------------------------------


#: Every field of a licence, each with values of its own kind.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(list(LicenseStatus)),
    "key_installed": st.booleans(),
    "grace_ends": st.none() | TIMES,
    "valid_until": st.none() | TIMES,
    "next_attempt": st.none() | TIMES,
    "activation_interval": INTERVALS,
    "renewal_interval": INTERVALS,
    "rearms_left": st.none() | st.integers(0, 5),
    "bonus_rearm_given": st.booleans(),
    "reason": st.sampled_from([0, HResult.HARDWARE_OUT_OF_TOLERANCE]),
    "last_hresult": st.sampled_from([0, HResult.COUNT_INSUFFICIENT]),
    "last_activation": st.none() | TIMES,
    "policy": POLICIES,
    "kms_client": st.booleans(),
}


@st.composite
def near_renewals(draw: st.DrawFn) -> tuple[Licence, int, int, bool]:
    """A licence a renewal with the drawn intervals changes in its times alone, with (the
    last item True) or without one or two fields changed to any value of their kind: the
    cases either side of ``renews_in_place``'s line."""
    activation_interval, renewal_interval = draw(INTERVALS), draw(INTERVALS)
    policy = draw(POLICIES)
    lic = Licence(
        status=LicenseStatus.LICENSED,
        key_installed=draw(st.booleans()),
        valid_until=draw(TIMES),
        next_attempt=draw(st.none() | TIMES),
        activation_interval=activation_interval,
        renewal_interval=renewal_interval,
        rearms_left=draw(st.integers(0, 5)),
        bonus_rearm_given=policy.rearm_bonus_after_activation > 0 or draw(st.booleans()),
        last_activation=draw(st.none() | TIMES),
        policy=policy,
    )
    changed = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2, unique=True))
    lic = dataclasses.replace(lic, **{name: draw(FIELDS[name]) for name in changed})
    return lic, activation_interval, renewal_interval, bool(changed)


@settings(max_examples=1000)
@given(near_renewals(), TIMES)
def test_a_renewal_in_place_is_the_licence_machines_activation(
    case: tuple[Licence, int, int, bool], now: float
) -> None:
    lic, activation_interval, renewal_interval, changed = case
    if not renews_in_place(lic, activation_interval, renewal_interval):
        assert changed  # a licence as a renewal leaves it always renews in place
        return
    step = apply(lic, Activated(now, activation_interval, renewal_interval))
    assert renewed(lic, now, now + renewal_interval * MINUTE) == step.licence


@given(POLICIES, TIMES, INTERVALS, INTERVALS, st.integers(1, 5))
def test_after_a_kms_activation_every_renewal_is_in_place(
    policy: Policy, now: float, activation_interval: int, renewal_interval: int, renewals: int
) -> None:
    """Not a vacuous shortcut: from a client's first success on, it is the renewals' path
    (Office's rearm bonus comes with the first activation)."""
    lic = apply(Licence(), KeyInstalled(now, policy)).licence
    for n in range(renewals):
        now += n * renewal_interval * MINUTE
        lic = apply(lic, Activated(now, activation_interval, renewal_interval)).licence
        assert renews_in_place(lic, activation_interval, renewal_interval)


# -- whole runs -----------------------------------------------------------------------------


def run(scenario: Scenario, *, lean: bool) -> tuple[Timeline, Engine, FastBackend, int]:
    """The run, its engine and backend, and how many attempts the lean path made."""
    backend = FastBackend(scenario, lean=lean)
    engine = Engine(scenario, backend)
    renew, made = engine._renew, [0]

    def counted(c: Client, now: float) -> bool:
        done = renew(c, now)
        made[0] += done
        return done

    engine._renew = counted  # type: ignore[method-assign]
    return engine.run(), engine, backend, made[0]


def end_state(engine: Engine, backend: FastBackend) -> list[Any]:
    """Everything a run leaves behind that a later day could read."""
    clients = [
        (c.licence, c.cached_host, c.attempt_at, c.timer_at, c.arrived, c.activated_ever)
        for c in engine.clients
    ]
    caches = [
        (name, {app: list(e.items()) for app, e in rules.cache.entries.items()})
        for name, (_, rules) in backend.hosts.items()
    ]
    capacities = [rules.cache.capacity for _, rules in backend.hosts.values()]
    return [clients, caches, capacities, engine.rng.getstate(), dict(engine.states)]


def assert_alike(scenario: Scenario) -> int:
    """The run with the lean path and without it end alike; how many renewals it made."""
    fast, fast_engine, fast_backend, made = run(scenario, lean=True)
    slow, slow_engine, slow_backend, none = run(scenario, lean=False)
    assert none == 0
    assert fast.to_json() == slow.to_json()
    assert end_state(fast_engine, fast_backend) == end_state(slow_engine, slow_backend)
    return made


@pytest.mark.parametrize("name", [*builtin_names(), "bench"])
def test_a_run_with_the_lean_path_ends_as_one_without(name: str) -> None:
    if name == "bench":
        scenario = parse_scenario(scenario_text(500, 200), "bench")
        assert assert_alike(scenario) > 10_000  # nearly every request takes the lean path
    else:
        assert_alike(load_scenario(name))


@st.composite
def scenarios(draw: st.DrawFn) -> str:
    """A small scenario with what the built-ins leave out: clock offsets and skews (some
    beyond 4 h), minimum counts, odd intervals, hosts set by hand, no host caching,
    outages and offline days, hardware changes."""
    days = draw(st.integers(5, 40))
    hosts = []
    for n in range(draw(st.integers(1, 3))):
        outage = draw(st.integers(0, days - 1))
        hosts.append(
            f"[[hosts]]\nname = 'h{n}'\nmin_count = {draw(st.sampled_from([0, 0, 3, 30]))}\n"
            f"activation_interval = {draw(st.sampled_from([15, 120, 600]))}\n"
            f"renewal_interval = {draw(st.sampled_from([15, 240, 1440, 10080]))}\n"
            f"clock_offset = '{draw(st.sampled_from(['0h', '0h', '1h', '-5h']))}'\n"
            f"outages = [{{ from_day = {outage}, to_day = {outage + draw(st.integers(1, 5))} }}]\n"
        )
    names = [f"h{n}" for n in range(len(hosts))]
    groups = []
    for n in range(draw(st.integers(1, 3))):
        product = draw(
            st.sampled_from(
                ["windows-11-pro", "windows-server-2022-standard", "office-ltsc-2021-proplus"]
            )
        )
        text = (
            f"[[clients]]\nname = 'g{n}'\ncount = {draw(st.integers(1, 15))}\n"
            f"product = '{product}'\narrive_over_days = {draw(st.integers(0, days))}\n"
            f"clock_skew = '{draw(st.sampled_from(['0h', '0h', '1h', '5h']))}'\n"
            f"host_caching = {draw(st.sampled_from(['true', 'true', 'false']))}\n"
        )
        if draw(st.booleans()):
            text += f"kms_host = '{draw(st.sampled_from(names))}'\n"
        if draw(st.booleans()):
            start = draw(st.integers(0, days - 1))
            text += f"offline = [{{ from_day = {start}, to_day = {start + 3} }}]\n"
        if draw(st.booleans()):
            text += f"hardware_change_day = {draw(st.integers(0, days))}\n"
        groups.append(text)
    seed = draw(st.integers(0, 1000))
    head = f"[scenario]\nname = 'random'\ndays = {days}\nseed = {seed}\n"
    return head + "".join(hosts) + "".join(groups)


@settings(max_examples=30, deadline=None)
@given(scenarios())
def test_a_random_scenario_ends_alike_with_the_lean_path_and_without(text: str) -> None:
    assert_alike(parse_scenario(text, "random"))


# -- memory -------------------------------------------------------------------------------


def peak_bytes(renewal_interval: int) -> tuple[int, int]:
    """Two months of a small fleet renewing every ``renewal_interval`` minutes: the run's peak
    of traced memory and how many requests it made."""
    text = scenario_text(100, 60)
    for host in ("kms1", "kms2"):
        text = text.replace(
            f'name = "{host}"\n', f'name = "{host}"\nrenewal_interval = {renewal_interval}\n'
        )
    scenario = parse_scenario(text, "memory")
    backend = FastBackend(scenario)
    engine = Engine(scenario, backend)
    tracemalloc.start()
    try:
        timeline = engine.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    requests = sum(d.activations + d.renewals + sum(d.failures.values()) for d in timeline.days)
    assert len(timeline.days) == 60
    return peak, requests


def test_fast_mode_keeps_nothing_per_request() -> None:
    """Thirty times the requests (renewals every 3 h rather than weekly) in the same
    memory: what a run holds grows with clients and days, not with requests (an object kept
    per request would show: the runs peak at about 150 KB)."""
    weekly, weekly_requests = peak_bytes(10_080)
    often, often_requests = peak_bytes(180)
    assert often_requests > 30 * weekly_requests
    assert often < 1.2 * weekly
