"""The PostgreSQL store's activation path: one round trip, and batches that change nothing.

Round trips are counted on the wire: libpq's trace of every connection the store opens,
where each ReadyForQuery the server sends ends one round trip. One activation of any
kind (new, free, a KMS host reactivation, a refusal, a replay) is one; 64 threads
activating one key together make at most one each (the key's waiting activations share
a call), and still count exactly.

``mak_activate`` takes the activations of one key that arrived together; a Hypothesis
property checks that such a call answers and records exactly what the same activations
one after another on SQLite do (``SqlStore.activate``, the rules in Python): similar
machines, repeats, KMS host reactivations, request replays and the limit inside one call.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from kmsemu.errors import ServiceError
from kmsemu.keys.product_key import KeyType, mint
from mak import rules
from mak.rules import KeyRecord
from mak.store.base import Activation, Pending
from mak.store.pg_activate import Combiner
from mak.store.postgres import PostgresStore
from mak.store.sqlite import SqliteStore

NOW = 1_700_000_000.0
PRODUCT = 7
THREADS = 64
_serials = itertools.count(1)


class TracedStore(PostgresStore):
    """A PostgreSQL store whose every connection is traced by libpq into a file."""

    def __init__(self, url: str, directory: Path) -> None:
        self._directory = directory
        self._traces: list[tuple[psycopg.Connection[Any], Path]] = []
        super().__init__(url)

    def _connection(self) -> psycopg.Connection[Any]:
        db = super()._connection()
        if not any(traced is db for traced, _ in self._traces):
            path = self._directory / f"trace-{len(self._traces)}.txt"
            with self._guard:
                self._traces.append((db, path))
            self._start(db, path)
        return db

    @staticmethod
    def _start(db: psycopg.Connection[Any], path: Path) -> None:
        # the connection owns the descriptor from here: untrace() flushes and closes it
        db.pgconn.trace(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        db.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def round_trips(self) -> int:
        """Round trips so far on every connection (each trace flushed, then resumed)."""
        total = 0
        for db, path in self._traces:
            db.pgconn.untrace()  # flushes the trace
            total += sum(1 for line in path.read_text().splitlines() if "\tReadyForQuery" in line)
            self._start(db, path)
        return total


@pytest.fixture
def store(postgres_db_url: str, tmp_path: Path) -> Iterator[TracedStore]:
    opened = TracedStore(postgres_db_url, tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def add(store: PostgresStore | SqliteStore, key_type: KeyType = KeyType.MAK, **extra: Any) -> str:
    key = mint(key_type, PRODUCT, serial=next(_serials))
    record = KeyRecord(
        key.fingerprint,
        key.last5,
        key_type,
        PRODUCT,
        extra.pop("limit", rules.default_limit(key_type) or 5),
        NOW,
        reactivations=rules.default_reactivations(key_type),
        **extra,
    )
    return store.add_key(record).fingerprint


def machine(n: int) -> bytes:
    return hashlib.sha256(b"machine %d" % n).digest()[:10]


def trips(store: TracedStore, fingerprint: str, hardware_id: bytes, **options: Any) -> int:
    """Round trips of one activation (refused or not)."""
    before = store.round_trips()
    with contextlib.suppress(ServiceError):
        store.activate(fingerprint, hardware_id, NOW, route="online", **options)
    return store.round_trips() - before


# -- round trips ---------------------------------------------------------------------------------


def test_every_kind_of_activation_is_one_round_trip(store: TracedStore) -> None:
    mak = add(store, limit=2)
    host = add(store, KeyType.KMS_HOST)
    blocked = add(store, blocked=True)
    store.round_trips()  # every connection opened and traced
    assert trips(store, mak, machine(0)) == 1  # new, counted
    assert trips(store, mak, machine(0)) == 1  # the same machine, free
    assert trips(store, mak, machine(1), request_id="r1") == 1  # new, with a request ID
    assert trips(store, mak, machine(1), request_id="r1") == 1  # replayed
    assert trips(store, mak, machine(2)) == 1  # refused: the limit
    assert trips(store, host, machine(3)) == 1
    assert trips(store, host, machine(3)) == 1  # a KMS host reactivation
    assert trips(store, blocked, machine(4)) == 1  # refused: blocked
    assert trips(store, "0123456789abcdef", machine(5)) == 1  # refused: unknown key
    record = store.key(mak)
    assert record is not None and record.used == 2
    assert [r.reactivations for r in store.machines(host)] == [1]


def test_concurrent_activations_share_round_trips_and_count_exactly(store: TracedStore) -> None:
    limit, machines = 100, [machine(n) for n in range(200)]
    fingerprint = add(store, limit=limit)
    start = threading.Barrier(THREADS)
    work = iter(range(len(machines)))
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            store.key(fingerprint)  # this thread's connection, opened and traced
            start.wait(60)
            while True:
                with lock:
                    n = next(work, None)
                if n is None:
                    return
                try:
                    done = store.activate(fingerprint, machines[n], NOW, route="online")
                except ServiceError as exc:
                    outcome = exc.code
                else:
                    outcome = "counted" if done.counted else "free"
                with lock:
                    outcomes[outcome] += 1
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    made = store.round_trips()
    assert outcomes == {"counted": limit, "mak_limit_exceeded": len(machines) - limit}
    record = store.key(fingerprint)
    assert record is not None and record.used == limit
    # each thread: one round trip for its store.key, then at most one per activation
    assert made - THREADS <= len(machines)


# -- a call of several activations equals them one after another ---------------------------------


def _outcome(result: Activation | ServiceError) -> tuple[Any, ...]:
    if isinstance(result, ServiceError):
        return ("refused", result.code, str(result))
    return (result.verdict, result.counted, result.replayed, result.key)


def _one_by_one(store: SqliteStore, fingerprint: str, batch: list[Pending]) -> list[Any]:
    outcomes = []
    for p in batch:
        try:
            outcomes.append(
                _outcome(
                    store.activate(
                        fingerprint,
                        p.hardware_id,
                        p.now,
                        route=p.route,
                        machine_name=p.machine_name,
                        request_id=p.request_id,
                    )
                )
            )
        except ServiceError as exc:
            outcomes.append(_outcome(exc))
    return outcomes


def _in_one_call(store: PostgresStore, fingerprint: str, batch: list[Pending]) -> list[Any]:
    return [_outcome(result) for result in store.activate_many(fingerprint, batch)]


@st.composite
def batches(draw: st.DrawFn) -> tuple[KeyType, int, list[Pending], list[int]]:
    """A key type and limit, then activations in one call: a few machines, some of them
    seen again with bytes changed (the same machine up to 3), some with request IDs."""
    key_type = draw(st.sampled_from([KeyType.MAK, KeyType.KMS_HOST, KeyType.RETAIL]))
    limit = draw(st.integers(0, 4))
    bases = [machine(n) for n in range(5)]
    one = st.tuples(
        st.integers(0, 4),
        st.dictionaries(st.integers(0, 9), st.integers(0, 255), max_size=5),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    )
    batch = []
    for n, (which, changes, request) in enumerate(draw(st.lists(one, min_size=1, max_size=12))):
        hardware_id = bytearray(bases[which])
        for position, value in changes.items():
            hardware_id[position] = value
        batch.append(Pending(bytes(hardware_id), NOW + n, "online", f"PC{n}", request))
    before = draw(st.lists(st.integers(0, 4), max_size=3))  # activated first, one by one
    return key_type, limit, batch, before


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=batches())
def test_one_call_equals_one_after_another(
    store: TracedStore, tmp_path: Path, scenario: tuple[KeyType, int, list[Pending], list[int]]
) -> None:
    key_type, limit, batch, before = scenario
    serial = next(_serials)
    # request IDs are the database's, across keys: this example's own
    batch = [replace(p, request_id=p.request_id and f"{serial}{p.request_id}") for p in batch]
    sqlite = SqliteStore(tmp_path / f"model-{serial}.sqlite3")
    try:
        key = mint(key_type, PRODUCT, serial=serial)
        record = KeyRecord(
            key.fingerprint,
            key.last5,
            key_type,
            PRODUCT,
            limit if key_type is not KeyType.RETAIL else 1,
            NOW,
            reactivations=rules.default_reactivations(key_type),
        )
        store.add_key(record)
        sqlite.add_key(record)
        for n in before:  # one by one on both
            pending = Pending(machine(n), NOW - 1, "phone", None, None)
            assert _in_one_call(store, key.fingerprint, [pending]) == _one_by_one(
                sqlite, key.fingerprint, [pending]
            )
        expected = _one_by_one(sqlite, key.fingerprint, batch)
        got = _in_one_call(store, key.fingerprint, batch)
        assert got == expected
        assert store.key(key.fingerprint) == sqlite.key(key.fingerprint)
        assert store.machines(key.fingerprint) == sqlite.machines(key.fingerprint)
    finally:
        sqlite.close()


def test_one_call_reaches_a_kms_hosts_reactivation_limit(
    store: TracedStore, tmp_path: Path
) -> None:
    """Eleven reactivations of one host in one call: nine count, then the limit, as one by one."""
    sqlite = SqliteStore(tmp_path / "model.sqlite3")
    try:
        key = mint(KeyType.KMS_HOST, PRODUCT, serial=next(_serials))
        record = KeyRecord(
            key.fingerprint, key.last5, KeyType.KMS_HOST, PRODUCT, 6, NOW, reactivations=9
        )
        first = Pending(machine(0), NOW, "online", None, None)
        again = [Pending(machine(0), NOW + n, "online", None, None) for n in range(1, 12)]
        store.add_key(record)
        sqlite.add_key(record)
        assert _in_one_call(store, key.fingerprint, [first]) == _one_by_one(
            sqlite, key.fingerprint, [first]
        )
        got = _in_one_call(store, key.fingerprint, again)
        assert got == _one_by_one(sqlite, key.fingerprint, again)
        assert [o[1] for o in got[8:]] == [False, "key_unlock_limit", "key_unlock_limit"]
        assert store.machines(key.fingerprint) == sqlite.machines(key.fingerprint)
    finally:
        sqlite.close()


# -- the combiner, alone -----------------------------------------------------------------------


def test_combiner_answers_every_item_and_never_overlaps_a_keys_calls() -> None:
    combiner: Combiner[int, int] = Combiner()
    lock = threading.Lock()
    running: Counter[str] = Counter()
    calls: list[tuple[str, list[int]]] = []
    overlaps: list[str] = []
    start = threading.Barrier(32)

    def run(key: str, items: list[int]) -> list[int]:
        with lock:
            running[key] += 1
            if running[key] > 1:
                overlaps.append(key)
            calls.append((key, items))
        threading.Event().wait(0.002)  # the call is out for a while: others queue up
        with lock:
            running[key] -= 1
        return [n * 10 for n in items]

    results: dict[int, int] = {}

    def worker(first: int) -> None:
        start.wait(30)
        for n in range(first, first + 20):
            key = "even" if n % 2 == 0 else "odd"
            results[n] = combiner.submit(key, n, partial(run, key))

    threads = [threading.Thread(target=worker, args=(t * 20,)) for t in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: n * 10 for n in range(640)}
    assert not overlaps
    assert all(all((n % 2 == 0) == (key == "even") for n in items) for key, items in calls)
    assert len(calls) < 640  # items shared calls
    assert not combiner._queues  # nothing left behind


def test_combiner_failure_reaches_every_item_of_the_call() -> None:
    combiner: Combiner[int, int] = Combiner()
    entered, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        entered.set()
        release.wait(30)
        return items

    def failing(items: list[int]) -> list[int]:
        raise ValueError(f"broken with {items}")

    first = threading.Thread(target=combiner.submit, args=("k", 0, slow))
    first.start()
    entered.wait(30)
    errors: list[BaseException] = []

    def waiting(n: int) -> None:
        try:
            combiner.submit("k", n, failing)
        except BaseException as exc:
            errors.append(exc)

    others = [threading.Thread(target=waiting, args=(n,)) for n in (1, 2, 3)]
    for thread in others:
        thread.start()
    while len(combiner._queues["k"].waiting) < 3:  # all three queued behind the first call
        threading.Event().wait(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    # one call for the three: its thread raises the error, the other two a RuntimeError from it
    kinds = sorted(type(e).__name__ for e in errors)
    assert kinds == ["RuntimeError", "RuntimeError", "ValueError"]
    assert all(isinstance(e.__cause__, ValueError) for e in errors if isinstance(e, RuntimeError))
    assert not combiner._queues


def test_a_call_of_several_refuses_a_short_hardware_id_alone(store: TracedStore) -> None:
    """A malformed item of a combined call is refused by itself; the others are decided."""
    key = mint(KeyType.MAK, PRODUCT, serial=next(_serials))
    store.add_key(KeyRecord(key.fingerprint, key.last5, KeyType.MAK, PRODUCT, 5, NOW))
    batch = [
        Pending(machine(0), NOW, "online", None, None),
        Pending(b"short", NOW, "online", None, None),
        Pending(machine(1), NOW, "online", None, None),
    ]
    first, short, third = store.activate_many(key.fingerprint, batch)
    assert isinstance(short, ServiceError) and short.code == "invalid_field"
    assert isinstance(first, Activation) and first.counted and first.key.used == 1
    assert isinstance(third, Activation) and third.counted and third.key.used == 2
    assert store.activate_many(key.fingerprint, [batch[1]])[0].code == "invalid_field"  # type: ignore[union-attr]
