"""Counting is atomic in the store, on both backends: activations from 200 distinct
machines against a key with limit 100, fired by 64 threads at once, give exactly 100
successes and 100 ``mak_limit_exceeded``.

Threads in this process share one store object or each open their own (SQLite: a
connection per thread to one file; PostgreSQL: a connection per thread to one
database); then two processes (spawned), each with its own store on the same file or
database. (``test_mak_concurrency.py`` does the same through real HTTP services.)
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kmsemu.errors import ServiceError
from kmsemu.keys.activation_ids import equal_bytes
from kmsemu.keys.product_key import KeyType, mint
from mak.rules import KeyRecord
from mak.store.base import Store
from mak.store.postgres import PostgresStore
from mak.store.sqlite import SqliteStore

MACHINES = 200
LIMIT = 100
THREADS = 64
NOW = 1_700_000_000.0
#: Bounds on waiting for threads and processes; reached only when something hangs.
JOIN_TIMEOUT = 120.0


def distinct_machines(n: int, seed: int = 2024) -> list[bytes]:
    """``n`` random hardware IDs, pairwise differing in at least 4 bytes (each a new machine)."""
    rng = random.Random(seed)
    ids: list[bytes] = []
    while len(ids) < n:
        candidate = rng.randbytes(10)
        if all(equal_bytes(candidate, other) <= 6 for other in ids):
            ids.append(candidate)
    return ids


def open_store(target: tuple[str, str]) -> Store:
    backend, where = target
    return SqliteStore(where) if backend == "sqlite" else PostgresStore(where)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(backend, file or URL) of an empty store."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "mak.sqlite3")
    return "postgres", request.getfixturevalue("postgres_db_url")


@pytest.fixture
def key(target: tuple[str, str]) -> Iterator[tuple[Store, str]]:
    """The store (as the checking side opens it) and a MAK with limit 100 registered in it."""
    store = open_store(target)
    minted = mint(KeyType.MAK, 3, serial=100)
    store.add_key(KeyRecord(minted.fingerprint, minted.last5, KeyType.MAK, 3, LIMIT, NOW))
    try:
        yield store, minted.fingerprint
    finally:
        store.close()


def burst(
    store_for_thread: Callable[[], Store],
    fingerprint: str,
    machines: list[bytes],
    threads: int,
    start: Any = None,
) -> tuple[Counter[str], list[bytes]]:
    """Every machine activates once, ``threads`` at a time, all starting together; the
    outcomes ("counted", "free" or a refusal code) and the machines that counted."""
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for n in range(len(machines)):
        work.put(n)
    ready = threading.Barrier(threads)
    outcomes: list[str] = []
    counted: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            store = store_for_thread()
            if ready.wait(JOIN_TIMEOUT) == 0 and start is not None:
                start.wait(JOIN_TIMEOUT)  # the other process's threads are ready too
            ready.wait(JOIN_TIMEOUT)
            while True:
                try:
                    n = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = store.activate(
                        fingerprint, machines[n], NOW, route="online", machine_name=f"PC{n}"
                    )
                except ServiceError as exc:
                    outcomes.append(exc.code)
                else:
                    outcomes.append("counted" if answer.counted else "free")
                    if answer.counted:
                        counted.append(machines[n])
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            ready.abort()

    pool = [threading.Thread(target=worker, name=f"activate-{n}") for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(JOIN_TIMEOUT)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in pool), "activation threads hung"
    return Counter(outcomes), counted


def check_exact(
    store: Store, fingerprint: str, outcomes: Counter[str], counted: list[bytes]
) -> None:
    assert outcomes == {"counted": LIMIT, "mak_limit_exceeded": MACHINES - LIMIT}
    record = store.key(fingerprint)
    assert record is not None and (record.used, record.remaining) == (LIMIT, 0)
    rows = store.machines(fingerprint)
    assert len(rows) == LIMIT
    assert sorted(r.hardware_id for r in rows) == sorted(counted)


@pytest.mark.parametrize("sharing", ["shared-store", "store-per-thread"])
def test_threads_count_exactly(
    target: tuple[str, str], key: tuple[Store, str], sharing: str
) -> None:
    store, fingerprint = key
    opened: list[Store] = []
    lock = threading.Lock()

    def store_for_thread() -> Store:
        if sharing == "shared-store":
            return shared
        own = open_store(target)
        with lock:
            opened.append(own)
        return own

    shared = open_store(target)
    try:
        outcomes, counted = burst(
            store_for_thread, fingerprint, distinct_machines(MACHINES), THREADS
        )
    finally:
        for each in [shared, *opened]:
            each.close()
    check_exact(store, fingerprint, outcomes, counted)


def _process(
    target: tuple[str, str],
    fingerprint: str,
    machines: list[bytes],
    threads: int,
    start: Any,
    results: Any,
) -> None:
    """One spawned process: its own store on the shared file or database, its own threads."""
    try:
        store = open_store(target)
        try:
            outcomes, counted = burst(lambda: store, fingerprint, machines, threads, start)
        finally:
            store.close()
        results.put((dict(outcomes), counted, None))
    except BaseException as exc:
        results.put(({}, [], repr(exc)))


def test_two_processes_count_exactly(target: tuple[str, str], key: tuple[Store, str]) -> None:
    store, fingerprint = key
    machines = distinct_machines(MACHINES)
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)  # both processes' threads begin together
    results = spawn.Queue()
    processes = [
        spawn.Process(
            target=_process,
            name=f"mak-store-{n}",
            args=(target, fingerprint, machines[n::2], THREADS // 2, start, results),
        )
        for n in range(2)
    ]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=JOIN_TIMEOUT) for _ in processes]
    finally:
        for process in processes:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()
    assert [error for _, _, error in answers] == [None, None]
    assert [process.exitcode for process in processes] == [0, 0]
    outcomes: Counter[str] = Counter()
    counted: list[bytes] = []
    for part, part_counted, _ in answers:
        assert sum(part.values()) == MACHINES // 2
        outcomes.update(part)
        counted.extend(part_counted)
    check_exact(store, fingerprint, outcomes, counted)


def test_concurrent_retries_of_one_request_count_once(
    target: tuple[str, str], key: tuple[Store, str]
) -> None:
    """A client retrying one request (same request_id, same machine) from 16 threads at
    once: one activation counts, every other answer is its replay."""
    store, fingerprint = key
    hardware_id = distinct_machines(1, seed=7)[0]
    shared = open_store(target)
    answers: list[tuple[bool, bool, int]] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(16)

    def retry() -> None:
        try:
            ready.wait(JOIN_TIMEOUT)
            answer = shared.activate(
                fingerprint, hardware_id, NOW, route="online", request_id="retried-request"
            )
            answers.append((answer.counted, answer.replayed, answer.machine_id))
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    pool = [threading.Thread(target=retry) for _ in range(16)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(JOIN_TIMEOUT)
    finally:
        shared.close()
    assert not errors, errors[0]
    assert Counter((counted, replayed) for counted, replayed, _ in answers) == {
        (True, False): 1,
        (False, True): 15,
    }
    assert len({machine_id for _, _, machine_id in answers}) == 1
    record = store.key(fingerprint)
    assert record is not None and record.used == 1
