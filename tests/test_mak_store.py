"""The MAK store contract, once, against both stores: SQLite (a file) and PostgreSQL
(a fresh database on the session's throwaway server; see ``conftest_postgres.py``).

Keys and their bookkeeping (duplicates, increases, blocking, expiry), what an
activation counts (a new machine, the same machine with at least 7 of 10 hardware-ID
bytes equal, the recorded ID kept across free reactivations), the per-type limits
(MAK and its extension, retail, KMS host reactivations), request replays, machine
listings, and export/import between the two backends. A Hypothesis property checks
the count against a model for arbitrary sequences of activations and increases.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsemu.errors import ServiceError
from kmsemu.keys.activation_ids import equal_bytes, same_machine
from kmsemu.keys.product_key import KeyType, mint
from mak import rules
from mak.rules import KeyRecord, Verdict
from mak.store.base import EXPORT_FORMAT, EXPORT_VERSION, Activation, Increase, Store
from tests.stores import BACKENDS, OTHER, open_store

#: Whole seconds: exports carry times to the second, so round trips compare exactly.
NOW = 1_700_000_000.0
PRODUCT = 7
_serials = itertools.count(1)


# -- stores ------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(backend, request, tmp_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of the other backend."""
    opened = open_store(OTHER[backend], request, tmp_path, "other.sqlite3")
    try:
        yield opened
    finally:
        opened.close()


# -- helpers -------------------------------------------------------------------------------------


def new_record(
    key_type: KeyType = KeyType.MAK, limit: int | None = None, **extra: Any
) -> KeyRecord:
    key = mint(key_type, PRODUCT, serial=next(_serials))
    if limit is None:
        limit = rules.default_limit(key_type) or 5
    return KeyRecord(
        key.fingerprint,
        key.last5,
        key_type,
        PRODUCT,
        limit,
        NOW,
        reactivations=rules.default_reactivations(key_type),
        **extra,
    )


def add(
    store: Store, key_type: KeyType = KeyType.MAK, limit: int | None = None, **extra: Any
) -> str:
    return store.add_key(new_record(key_type, limit, **extra)).fingerprint


def machine(n: int) -> bytes:
    """Hardware ID number ``n``: any two of ``MACHINES`` differ in at least 8 bytes (checked),
    so one with up to 4 bytes changed is still far from every other."""
    return hashlib.sha256(b"machine %d" % n).digest()[:10]


MACHINES = [machine(n) for n in range(12)]
assert all(equal_bytes(a, b) <= 2 for a, b in itertools.combinations(MACHINES, 2))


def change(hardware_id: bytes, *positions: int) -> bytes:
    """``hardware_id`` with the bytes at ``positions`` changed."""
    changed = bytearray(hardware_id)
    for p in positions:
        changed[p] ^= 0xFF
    return bytes(changed)


def activate(
    store: Store, fingerprint: str, hardware_id: bytes, at: float = NOW, **options: Any
) -> Activation:
    return store.activate(
        fingerprint, hardware_id, at, route=options.pop("route", "online"), **options
    )


def refused(
    store: Store, fingerprint: str, hardware_id: bytes, at: float = NOW, **options: Any
) -> str:
    """The refusal code of an activation that must fail."""
    with pytest.raises(ServiceError) as info:
        activate(store, fingerprint, hardware_id, at, **options)
    return info.value.code


def fingerprints(store: Store) -> list[str]:
    """The store's keys, as ``keys()`` lists them."""
    listed = store.keys()
    return [record.fingerprint for record in listed]


def counts(store: Store) -> dict[str, int]:
    listed = store.keys()
    return {record.fingerprint: record.used for record in listed}


def used(store: Store, fingerprint: str) -> int:
    record = store.key(fingerprint)
    assert record is not None
    return record.used


# -- keys ------------------------------------------------------------------------------------------


def test_added_keys_read_back(store: Store) -> None:
    records = [
        new_record(),
        new_record(KeyType.RETAIL),
        new_record(KeyType.KMS_HOST),
        new_record(limit=2, expires=NOW + 3600, blocked=True),
    ]
    for record in records:
        assert store.add_key(record) == record
    for record in records:
        assert store.key(record.fingerprint) == record
    assert sorted(store.keys(), key=lambda k: k.fingerprint) == sorted(
        records, key=lambda k: k.fingerprint
    )
    assert store.key("0" * 16) is None


def test_keys_listed_oldest_first(store: Store) -> None:
    late, early = new_record(), new_record()
    store.add_key(KeyRecord(**{**_fields(late), "created": NOW + 10}))
    store.add_key(early)
    assert fingerprints(store) == [early.fingerprint, late.fingerprint]


def test_duplicate_key_refused(store: Store) -> None:
    record = new_record(limit=3)
    store.add_key(record)
    with pytest.raises(ServiceError) as info:
        store.add_key(KeyRecord(**{**_fields(record), "limit": 50}))
    assert info.value.code == "key_exists"
    assert store.keys() == [record]


def test_increases_recorded(store: Store) -> None:
    fingerprint = add(store, limit=2)
    after = store.increase(fingerprint, 5, NOW + 1, "pilot")
    assert (after.increased, after.total, after.remaining) == (5, 7, 7)
    store.increase(fingerprint, 3, NOW + 2, "rollout")
    assert store.increases(fingerprint) == [
        Increase(5, NOW + 1, "pilot"),
        Increase(3, NOW + 2, "rollout"),
    ]
    record = store.key(fingerprint)
    assert record is not None and (record.increased, record.total) == (8, 10)
    assert store.increases(add(store)) == []


def test_changing_an_unknown_key_refused(store: Store) -> None:
    for change_key in (
        lambda f: store.increase(f, 1, NOW, "x"),
        lambda f: store.set_blocked(f, True),
        lambda f: store.set_expires(f, NOW),
    ):
        with pytest.raises(ServiceError) as info:
            change_key("0123456789abcdef")
        assert info.value.code == "key_unknown"
    assert store.keys() == []


def test_blocked_key_refused_until_unblocked(store: Store) -> None:
    fingerprint = add(store)
    assert store.set_blocked(fingerprint, True).blocked
    assert refused(store, fingerprint, MACHINES[0]) == "key_blocked"
    assert (used(store, fingerprint), store.machines(fingerprint)) == (0, [])
    assert not store.set_blocked(fingerprint, False).blocked
    assert activate(store, fingerprint, MACHINES[0]).counted
    assert used(store, fingerprint) == 1


def test_expired_key_refused(store: Store) -> None:
    fingerprint = add(store)
    assert activate(store, fingerprint, MACHINES[0]).counted
    assert store.set_expires(fingerprint, NOW - 1).expires == NOW - 1
    assert refused(store, fingerprint, MACHINES[1]) == "key_expired"
    assert refused(store, fingerprint, MACHINES[0]) == "key_expired"  # known machines too
    store.set_expires(fingerprint, NOW + 60)
    assert refused(store, fingerprint, MACHINES[1], NOW + 60) == "key_expired"  # at the moment
    assert activate(store, fingerprint, MACHINES[1], NOW + 59).counted
    store.set_expires(fingerprint, None)
    assert activate(store, fingerprint, MACHINES[2], NOW + 10**6).counted
    assert used(store, fingerprint) == 3


def test_unknown_key_refused(store: Store) -> None:
    assert refused(store, "0123456789abcdef", MACHINES[0]) == "key_unknown"


@pytest.mark.parametrize("length", [0, 9, 11])
def test_hardware_id_is_ten_bytes(store: Store, length: int) -> None:
    fingerprint = add(store)
    assert refused(store, fingerprint, bytes(length)) == "invalid_field"
    assert used(store, fingerprint) == 0


def test_key_of_a_non_activating_type_refused(store: Store) -> None:
    fingerprint = add(store, KeyType.KMS_CLIENT, limit=5)
    assert refused(store, fingerprint, MACHINES[0]) == "key_wrong_type"


# -- what an activation counts ----------------------------------------------------------------


def test_new_machine_counted(store: Store) -> None:
    fingerprint = add(store, limit=5)
    first = activate(store, fingerprint, MACHINES[0], machine_name="PC-1", route="phone")
    assert (first.verdict, first.counted, first.replayed) == (Verdict.NEW, True, False)
    assert (first.key.used, first.key.remaining) == (1, 4)
    [row] = store.machines(fingerprint)
    assert (row.fingerprint, row.hardware_id, row.machine_name, row.route) == (
        fingerprint,
        MACHINES[0],
        "PC-1",
        "phone",
    )
    assert (row.first_at, row.last_at, row.reactivations) == (NOW, NOW, 0)
    second = activate(store, fingerprint, MACHINES[1], NOW + 1)
    assert second.counted and second.key.used == 2 and second.machine_id != first.machine_id


@pytest.mark.parametrize("positions", [(), (0,), (9, 4), (0, 5, 9), (2, 3, 7)])
def test_same_machine_free(store: Store, positions: tuple[int, ...]) -> None:
    """At least 7 of 10 bytes equal: the same machine, not counted again."""
    fingerprint = add(store, limit=5)
    first = activate(store, fingerprint, MACHINES[0])
    again = activate(store, fingerprint, change(MACHINES[0], *positions), NOW + 5)
    assert (again.verdict, again.counted, again.machine_id) == (
        Verdict.SAME,
        False,
        first.machine_id,
    )
    assert again.key.used == 1 and used(store, fingerprint) == 1
    [row] = store.machines(fingerprint)
    assert (row.hardware_id, row.first_at, row.last_at, row.reactivations) == (
        MACHINES[0],
        NOW,
        NOW + 5,
        0,
    )


@pytest.mark.parametrize(
    "positions", [(0, 1, 2, 3), (0, 3, 6, 8), (1, 2, 4, 5, 7, 9), tuple(range(10))]
)
def test_six_of_ten_is_a_new_machine(store: Store, positions: tuple[int, ...]) -> None:
    fingerprint = add(store, limit=5)
    activate(store, fingerprint, MACHINES[0])
    again = activate(store, fingerprint, change(MACHINES[0], *positions))
    assert (again.verdict, again.counted) == (Verdict.NEW, True)
    assert used(store, fingerprint) == 2
    assert [m.hardware_id for m in store.machines(fingerprint)] == [
        MACHINES[0],
        change(MACHINES[0], *positions),
    ]


def test_free_reactivation_keeps_the_recorded_hardware_id(store: Store) -> None:
    """One byte more at a time: each step is the same machine as the one before, but the
    fourth changed byte makes it a new machine against the ID recorded when it counted."""
    fingerprint = add(store, limit=5)
    activate(store, fingerprint, MACHINES[0])
    for step in range(1, 4):
        drifted = change(MACHINES[0], *range(step))
        assert activate(store, fingerprint, drifted, NOW + step).verdict is Verdict.SAME
    drifted = change(MACHINES[0], *range(4))
    assert activate(store, fingerprint, drifted, NOW + 4).counted
    assert used(store, fingerprint) == 2
    assert [m.hardware_id for m in store.machines(fingerprint)] == [MACHINES[0], drifted]


def test_exact_match_preferred_over_a_similar_machine(store: Store) -> None:
    """Two recorded machines 4 bytes apart; an ID 3 bytes from the first but equal to the
    second is the second."""
    fingerprint = add(store, limit=5)
    first = activate(store, fingerprint, MACHINES[0])
    other_id = change(MACHINES[0], 0, 1, 2, 3)
    second = activate(store, fingerprint, other_id)
    assert second.counted and second.machine_id != first.machine_id
    assert activate(store, fingerprint, other_id).machine_id == second.machine_id
    assert activate(store, fingerprint, MACHINES[0]).machine_id == first.machine_id


def test_mak_limit_then_extension_limit(store: Store) -> None:
    fingerprint = add(store, limit=3)
    for n in range(3):
        assert activate(store, fingerprint, MACHINES[n]).counted
    assert refused(store, fingerprint, MACHINES[3]) == "mak_limit_exceeded"
    assert refused(store, fingerprint, MACHINES[3]) == "mak_limit_exceeded"
    # a counted machine still reactivates for free once the key is exhausted
    assert activate(store, fingerprint, change(MACHINES[1], 5)).verdict is Verdict.SAME
    store.increase(fingerprint, 2, NOW, "more")
    assert activate(store, fingerprint, MACHINES[3]).counted
    assert activate(store, fingerprint, MACHINES[4]).key.remaining == 0
    assert refused(store, fingerprint, MACHINES[5]) == "mak_extension_limit_exceeded"
    record = store.key(fingerprint)
    assert record is not None and (record.used, record.total) == (5, 5)
    assert [m.hardware_id for m in store.machines(fingerprint)] == MACHINES[:5]


def test_retail_key_one_machine(store: Store) -> None:
    fingerprint = add(store, KeyType.RETAIL)
    assert activate(store, fingerprint, MACHINES[0]).counted
    for _ in range(12):  # a retail key reactivates its own machine without limit
        assert activate(store, fingerprint, change(MACHINES[0], 4)).verdict is Verdict.SAME
    assert refused(store, fingerprint, MACHINES[1]) == "key_unlock_limit"
    assert used(store, fingerprint) == 1


def test_kms_host_key_six_hosts_nine_reactivations(store: Store) -> None:
    fingerprint = add(store, KeyType.KMS_HOST)
    hosts = [activate(store, fingerprint, MACHINES[n]) for n in range(6)]
    assert all(h.counted for h in hosts)
    assert refused(store, fingerprint, MACHINES[6]) == "key_unlock_limit"
    for n in range(1, 10):  # each reactivation of one host counts, up to 9
        again = activate(store, fingerprint, change(MACHINES[0], n % 10), NOW + n)
        assert (again.verdict, again.counted, again.machine_id) == (
            Verdict.REACTIVATED,
            False,
            hosts[0].machine_id,
        )
    assert refused(store, fingerprint, MACHINES[0], NOW + 10) == "key_unlock_limit"
    # the others still have theirs; hosts stay at 6
    assert activate(store, fingerprint, MACHINES[1]).verdict is Verdict.REACTIVATED
    assert used(store, fingerprint) == 6
    rows = store.machines(fingerprint)
    assert [r.reactivations for r in rows] == [9, 1, 0, 0, 0, 0]
    assert rows[0].hardware_id == MACHINES[0] and rows[0].last_at == NOW + 9


# -- request replays ---------------------------------------------------------------------------


def test_request_replayed_not_counted(store: Store) -> None:
    fingerprint = add(store, limit=1)
    first = activate(store, fingerprint, MACHINES[0], request_id="req-1")
    assert first.counted
    again = activate(store, fingerprint, MACHINES[0], NOW + 1, request_id="req-1")
    assert (again.replayed, again.counted, again.verdict, again.machine_id) == (
        True,
        False,
        Verdict.NEW,
        first.machine_id,
    )
    assert used(store, fingerprint) == 1
    # the key is exhausted, yet the replay still answers what was decided
    assert refused(store, fingerprint, MACHINES[1]) == "mak_limit_exceeded"
    assert activate(store, fingerprint, MACHINES[0], request_id="req-1").replayed
    # a free reactivation replays as one
    free = activate(store, fingerprint, change(MACHINES[0], 1), request_id="req-2")
    assert (
        activate(store, fingerprint, change(MACHINES[0], 1), request_id="req-2").verdict
        is free.verdict
        is Verdict.SAME
    )
    assert used(store, fingerprint) == 1 and len(store.machines(fingerprint)) == 1


def test_request_id_bound_to_its_key_and_machine(store: Store) -> None:
    fingerprint, other = add(store), add(store)
    activate(store, fingerprint, MACHINES[0], request_id="req-1")
    assert refused(store, fingerprint, MACHINES[1], request_id="req-1") == "invalid_field"
    assert refused(store, other, MACHINES[0], request_id="req-1") == "invalid_field"
    assert (used(store, fingerprint), used(store, other)) == (1, 0)


# -- listings ------------------------------------------------------------------------------------


def test_machines_listing(store: Store) -> None:
    fingerprint, other = add(store), add(store)
    activate(store, fingerprint, MACHINES[0], NOW, machine_name="alpha")
    activate(store, other, MACHINES[1], NOW, machine_name="elsewhere")
    activate(store, fingerprint, MACHINES[2], NOW + 1, route="proxy")
    activate(store, fingerprint, MACHINES[3], NOW + 2, machine_name="x" * 100)
    activate(store, fingerprint, change(MACHINES[0], 9), NOW + 3, machine_name="renamed")
    rows = store.machines(fingerprint)
    assert [(r.hardware_id, r.machine_name, r.route, r.first_at, r.last_at) for r in rows] == [
        (MACHINES[0], "alpha", "online", NOW, NOW + 3),
        (MACHINES[2], None, "proxy", NOW + 1, NOW + 1),
        (MACHINES[3], "x" * 63, "online", NOW + 2, NOW + 2),
    ]
    assert {r.fingerprint for r in rows} == {fingerprint}
    assert len(rows) == used(store, fingerprint)
    assert [r.machine_name for r in store.machines(other)] == ["elsewhere"]
    assert store.machines("0123456789abcdef") == []


# -- export and import ---------------------------------------------------------------------------


def populate(store: Store) -> list[str]:
    """Keys of every kind with machines, increases, a block, an expiry, reactivations."""
    mak = add(store, limit=2)
    store.increase(mak, 2, NOW + 10, "pilot")
    for n in range(3):
        activate(store, mak, MACHINES[n], NOW + n, machine_name=f"PC-{n}")
    activate(store, mak, change(MACHINES[0], 3), NOW + 20)
    retail = add(store, KeyType.RETAIL)
    activate(store, retail, MACHINES[3], NOW, machine_name="home", route="phone")
    store.set_blocked(retail, True)
    store.set_expires(retail, NOW + 86_400)
    host = add(store, KeyType.KMS_HOST)
    for n in range(2):
        activate(store, host, MACHINES[4 + n], NOW)
    activate(store, host, MACHINES[4], NOW + 30)
    unused = add(store, limit=9)
    return [mak, retail, host, unused]


def test_export_import_round_trip(store: Store, other_store: Store) -> None:
    fingerprints = populate(store)
    document = json.loads(json.dumps(store.export()))  # what travels is JSON
    assert (document["format"], document["version"]) == (EXPORT_FORMAT, EXPORT_VERSION)
    assert len(document["keys"]) == 4 and len(document["activations"]) == 6

    report = other_store.import_(document)
    assert report.to_json() == {
        "keys_added": 4,
        "keys_kept": 0,
        "activations_added": 6,
        "activations_kept": 0,
    }
    assert other_store.keys() == store.keys()  # used, limits, block, expiry, reactivations
    for fingerprint in fingerprints:
        assert other_store.increases(fingerprint) == store.increases(fingerprint)
        assert other_store.machines(fingerprint) == store.machines(fingerprint)
    assert other_store.export() == store.export()

    again = other_store.import_(document)
    assert again.to_json() == {
        "keys_added": 0,
        "keys_kept": 4,
        "activations_added": 0,
        "activations_kept": 6,
    }
    assert other_store.keys() == store.keys()
    assert other_store.export() == store.export()

    # and the imported machines count as before: known machines free, the limit holds
    mak = fingerprints[0]
    assert activate(other_store, mak, change(MACHINES[2], 0)).verdict is Verdict.SAME
    assert activate(other_store, mak, MACHINES[6]).counted
    assert refused(other_store, mak, MACHINES[7]) == "mak_extension_limit_exceeded"


def test_export_without_machine_names(store: Store, other_store: Store) -> None:
    fingerprints = populate(store)
    document = store.export(machine_names=False)
    assert document["machine_names"] is False
    assert document["activations"] and all("machine_name" not in a for a in document["activations"])
    assert "PC-1" not in json.dumps(document) and "home" not in json.dumps(document)
    other_store.import_(document)
    for fingerprint in fingerprints:
        rows = other_store.machines(fingerprint)
        assert [r.hardware_id for r in rows] == [r.hardware_id for r in store.machines(fingerprint)]
        assert all(r.machine_name is None for r in rows)
    assert counts(other_store) == counts(store)


def test_export_parts(store: Store) -> None:
    populate(store)
    assert "activations" not in store.export(activations=False)
    keys_only = store.export(activations=False)
    assert len(keys_only["keys"]) == 4
    assert "keys" not in store.export(keys=False)


def _valid_key(fingerprint: str = "0123456789abcdef") -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "last5": "ABCDE",
        "type": "mak",
        "product": 1,
        "base_limit": 5,
        "created": "2024-01-01T00:00:00+00:00",
    }


def _valid_activation(fingerprint: str = "0123456789abcdef") -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "hardware_id": "00" * 10,
        "first_at": "2024-01-01T00:00:00+00:00",
        "last_at": "2024-01-01T00:00:00+00:00",
    }


def _doc(**parts: Any) -> dict[str, Any]:
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **parts}


GARBAGE: dict[str, Any] = {
    "text": "garbage",
    "list": [],
    "empty": {},
    "format": {"format": "something-else", "version": EXPORT_VERSION},
    "version": {"format": EXPORT_FORMAT, "version": 2},
    "keys-not-list": _doc(keys={"a": 1}),
    "key-not-object": _doc(keys=["0123456789abcdef"]),
    "key-missing-limit": _doc(keys=[{k: v for k, v in _valid_key().items() if k != "base_limit"}]),
    "key-bad-fingerprint": _doc(keys=[_valid_key("0123456789ABCDEF")]),
    "key-bad-type": _doc(keys=[{**_valid_key(), "type": "volume"}]),
    "key-negative-limit": _doc(keys=[{**_valid_key(), "base_limit": -1}]),
    "key-bool-limit": _doc(keys=[{**_valid_key(), "base_limit": True}]),
    "key-bad-created": _doc(keys=[{**_valid_key(), "created": "yesterday"}]),
    "key-bad-expires": _doc(keys=[{**_valid_key(), "expires": 12345}]),
    "key-bad-increase": _doc(
        keys=[{**_valid_key(), "increases": [{"amount": "5", "at": "2024-01-01"}]}]
    ),
    "activation-unknown-key": _doc(
        keys=[_valid_key()], activations=[_valid_activation("fedcba9876543210")]
    ),
    "activation-short-id": _doc(
        keys=[_valid_key()], activations=[{**_valid_activation(), "hardware_id": "00" * 9}]
    ),
    "activation-not-hex": _doc(
        keys=[_valid_key()], activations=[{**_valid_activation(), "hardware_id": "zz" * 10}]
    ),
    "activation-not-object": _doc(keys=[_valid_key()], activations=[None]),
    "activation-bad-time": _doc(
        keys=[_valid_key()], activations=[{**_valid_activation(), "first_at": None}]
    ),
}


def test_valid_minimal_import(store: Store) -> None:
    report = store.import_(_doc(keys=[_valid_key()], activations=[_valid_activation()]))
    assert (report.keys_added, report.activations_added) == (1, 1)
    assert used(store, "0123456789abcdef") == 1


@pytest.mark.parametrize("document", GARBAGE.values(), ids=GARBAGE.keys())
def test_import_of_garbage_refused_whole(store: Store, document: Any) -> None:
    kept = add(store)
    with pytest.raises(ServiceError) as info:
        store.import_(document)
    assert info.value.code == "invalid_field"
    assert fingerprints(store) == [kept]  # nothing of it was added


# -- the count, as a property ---------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    """A key's limit, and steps: ``("activate", machine, changes, drift)`` (the machine's
    ID with some bytes replaced; with ``drift`` the changed ID is that machine from then
    on, so small changes can add up) or ``("increase", amount)``."""
    limit = draw(st.integers(1, 4))
    machines = draw(st.integers(1, 7))
    activation = st.tuples(
        st.just("activate"),
        st.integers(0, machines - 1),
        st.dictionaries(st.integers(0, 9), st.integers(0, 255), max_size=5),
        st.booleans(),
    )
    increase = st.tuples(st.just("increase"), st.integers(1, 2))
    steps = draw(st.lists(st.one_of(activation, activation, activation, increase), max_size=25))
    return limit, steps


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scenario=scenarios(),
    bases=st.lists(st.binary(min_size=10, max_size=10), min_size=7, max_size=7),
)
def test_count_matches_distinct_machines(
    store: Store, scenario: tuple[int, list[Any]], bases: list[bytes]
) -> None:
    """Each example registers its own key in the test's store."""
    limit, steps = scenario
    fingerprint = add(store, limit=limit)
    current = list(bases)
    counted: list[bytes] = []  # the model: hardware IDs recorded when they counted
    total = limit
    for n, step in enumerate(steps):
        if step[0] == "increase":
            total += step[1]
            store.increase(fingerprint, step[1], NOW, "more")
            continue
        _, which, changes, drift = step
        hardware_id = bytearray(current[which])
        for position, value in changes.items():
            hardware_id[position] = value
        hardware_id = bytes(hardware_id)
        if drift:
            current[which] = hardware_id
        known = any(same_machine(recorded, hardware_id) for recorded in counted)
        try:
            answer = activate(store, fingerprint, hardware_id, NOW + n)
        except ServiceError as exc:
            assert not known and len(counted) == total
            assert exc.code == (
                "mak_extension_limit_exceeded" if total > limit else "mak_limit_exceeded"
            )
        else:
            assert answer.counted is not known
            if not known:
                counted.append(hardware_id)
            assert answer.key.used == len(counted)
        record = store.key(fingerprint)
        assert record is not None
        assert record.used == len(counted) <= record.total == total
    machines = store.machines(fingerprint)
    assert [m.hardware_id for m in machines] == counted
    assert len(machines) == used(store, fingerprint)


def _fields(key: KeyRecord) -> dict[str, Any]:
    return {name: getattr(key, name) for name in KeyRecord.__slots__}


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_import_refuses_times_outside_the_calendar(store: Store, when: str) -> None:
    document = _doc(keys=[{**_valid_key(), "expires": when}])
    try:
        with pytest.raises(ServiceError) as info:
            store.import_(document)
        assert info.value.code == "invalid_field"
    finally:
        store.export()  # whatever was accepted can be listed and exported
