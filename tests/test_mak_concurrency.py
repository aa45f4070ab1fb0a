"""Counting is atomic in the database: 64 concurrent activations from 200 machines
against a key with limit 100 give exactly 100 successes, whatever serves them.

Real ``kmsemu mak serve`` processes over HTTP: one on SQLite, two sharing one
SQLite file, and two sharing one PostgreSQL database.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kmsemu.keys.activation_ids import equal_bytes
from kmsemu.keys.product_key import KeyType, mint
from mak.client import MakClient, RemoteError
from tests.conftest import RunningMak, start_mak_process

pytestmark = pytest.mark.slow

MACHINES = 200
LIMIT = 100
THREADS = 64
TOKEN = "concurrency-token"


def distinct_machines(n: int) -> list[bytes]:
    """Hardware IDs that pairwise share at most 6 bytes: every one is a new machine."""
    ids = [hashlib.sha256(b"machine %d" % i).digest()[:10] for i in range(n)]
    assert all(equal_bytes(a, b) < 7 for i, a in enumerate(ids) for b in ids[i + 1 :])
    return ids


def burst(urls: list[str], key: str) -> Counter[str]:
    """Every machine activates once, 64 at a time, spread over the services."""
    local = threading.local()
    start = threading.Barrier(THREADS)
    machines = distinct_machines(MACHINES)

    def one(n: int) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = MakClient(urls[n % len(urls)])
            start.wait(30)  # every thread begins at once
        try:
            answer = client.activate(key, machines[n].hex(), machine_name=f"PC{n}")
        except RemoteError as exc:
            return exc.code
        return "counted" if answer["counted"] else "free"

    with ThreadPoolExecutor(THREADS) as pool:
        # the first 64 calls go one per thread (the barrier needs all of them)
        return Counter(pool.map(one, range(MACHINES)))


def register(url: str) -> tuple[str, str]:
    key = mint(KeyType.MAK, 0, serial=4242)
    MakClient(url, token=TOKEN).add_key(str(key), limit=LIMIT)
    return str(key), key.fingerprint


def check_exact(services: list[RunningMak], key: str, fingerprint: str) -> None:
    outcomes = burst([s.url for s in services], key)
    assert outcomes == {"counted": LIMIT, "mak_limit_exceeded": MACHINES - LIMIT}
    for service in services:  # every service sees the same, exact state
        shown = MakClient(service.url, token=TOKEN).key(fingerprint)
        assert (shown["used"], shown["remaining"]) == (LIMIT, 0)
        assert len(shown["machines"]) == LIMIT
        assert len({m["hardware_id"] for m in shown["machines"]}) == LIMIT


def serve(tmp_path: Path, name: str, db: str) -> RunningMak:
    return start_mak_process(tmp_path / name, "--db", db, "--admin-token", TOKEN)


def stop_all(services: list[RunningMak]) -> None:
    for service in services:
        assert service.stop() == 0


def test_one_service_on_sqlite(tmp_path: Path) -> None:
    services = [serve(tmp_path, "a", f"sqlite:///{tmp_path}/mak.sqlite3")]
    try:
        check_exact(services, *register(services[0].url))
    finally:
        stop_all(services)


def test_two_services_on_one_sqlite_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/shared.sqlite3"
    services = [serve(tmp_path, "a", db), serve(tmp_path, "b", db)]
    try:
        check_exact(services, *register(services[0].url))
    finally:
        stop_all(services)


def test_two_services_on_one_postgresql(tmp_path: Path, postgres_db_url: str) -> None:
    services = [serve(tmp_path, "a", postgres_db_url), serve(tmp_path, "b", postgres_db_url)]
    try:
        check_exact(services, *register(services[0].url))
    finally:
        stop_all(services)
