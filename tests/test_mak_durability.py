"""What the MAK service answered, it keeps: SIGKILL during a burst of activations.

A real ``kmsemu mak serve`` on a SQLite file counts a burst of activations from
eight client threads, each activation a new machine with its own request ID. Once
enough successes have reached the clients the process is SIGKILLed (no grace, no
flush). Restarted on the same database:

- every activation whose success reached a client is recorded, once; beyond those
  only requests that were in flight at the kill (no answer) may be recorded;
- retrying each unanswered request with its request ID and hardware ID counts it
  if it was lost and replays it (not counted again) if it had been committed, so
  afterwards ``used`` equals the machines that got a success and no hardware ID
  appears twice.

Three kills in a row, each round continuing on the restarted service.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningMak, start_mak_process  # tests/ is on sys.path (rootdir)

from kmsemu.keys.product_key import KeyType, mint
from mak.client import MakClient, RemoteError

pytestmark = pytest.mark.slow

TOKEN = "durability-token"
THREADS = 8
LIMIT = 10_000
#: Successes seen by the clients before each SIGKILL.
KILL_AFTER = (150, 300, 450)
#: Activations a round may send at most (a bound should the kill never come).
MAX_PER_ROUND = 3_000
WAIT = 30.0


@dataclass(frozen=True)
class Attempt:
    request_id: str
    hardware_id: str


@dataclass
class Burst:
    answered: list[tuple[Attempt, dict[str, Any]]] = field(default_factory=list)
    #: Requests that got no answer: in flight at the kill (or sent after it).
    unanswered: list[Attempt] = field(default_factory=list)
    unexpected: list[tuple[Attempt, str]] = field(default_factory=list)


def hardware(round_no: int, n: int) -> str:
    """A new machine per activation (two such IDs share 7 of 10 bytes one time in 2^50)."""
    return hashlib.sha256(f"durability {round_no} {n}".encode()).digest()[:10].hex()


def burst(url: str, key: str, round_no: int, kill_after: int, kill: Any) -> Burst:
    """Activate new machines from THREADS clients until ``kill_after`` successes have
    been seen, then ``kill()``; every thread stops at its first request without an answer."""
    result = Burst()
    lock = threading.Lock()
    enough = threading.Event()
    numbers = itertools.count()

    def client_thread() -> None:
        client = MakClient(url, timeout=WAIT)
        try:
            while (n := next(numbers)) < MAX_PER_ROUND:
                attempt = Attempt(f"round{round_no}-{n}", hardware(round_no, n))
                try:
                    answer = client.activate(
                        key, attempt.hardware_id, request_id=attempt.request_id
                    )
                except (RemoteError, http.client.HTTPException) as exc:
                    code = exc.code if isinstance(exc, RemoteError) else "no_answer"
                    with lock:
                        if code in ("unreachable", "no_answer"):
                            result.unanswered.append(attempt)
                        else:
                            result.unexpected.append((attempt, code))
                    return
                with lock:
                    result.answered.append((attempt, answer))
                    if len(result.answered) >= kill_after:
                        enough.set()
        finally:
            client.close()
            enough.set()  # a thread that stops early must not leave the test waiting

    threads = [
        threading.Thread(target=client_thread, name=f"burst-{n}", daemon=True)
        for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(WAIT), "the burst never reached its successes"
    finally:
        kill()
        for thread in threads:
            thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    return result


def serve(home: Path, db: str) -> RunningMak:
    return start_mak_process(home, "--db", db, "--admin-token", TOKEN)


def sigkill(service: RunningMak) -> None:
    service.process.send_signal(signal.SIGKILL)
    assert service.process.wait(WAIT) == -signal.SIGKILL


def recorded(url: str, fingerprint: str) -> tuple[int, list[str]]:
    shown = MakClient(url, token=TOKEN).key(fingerprint)
    return shown["used"], [m["hardware_id"] for m in shown["machines"]]


def test_sigkill_mid_burst_loses_no_answered_activation_and_counts_none_twice(
    tmp_path: Path,
) -> None:
    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'mak.sqlite3'}"
    key = mint(KeyType.MAK, 0, serial=0x5EED)
    service = serve(home, db)
    services = [service]
    try:
        MakClient(service.url, token=TOKEN).add_key(str(key), limit=LIMIT)
        succeeded: set[str] = set()  # machines whose success reached a client
        counted_used: list[int] = []  # "used" of every counted answer: one per increment
        committed_unanswered = 0  # counted before the kill, the answer lost with it

        for round_no, kill_after in enumerate(KILL_AFTER, 1):
            result = burst(
                service.url, str(key), round_no, kill_after, lambda s=service: sigkill(s)
            )
            assert result.unexpected == []
            assert len(result.answered) >= kill_after
            assert 1 <= len(result.unanswered) <= THREADS  # one per client at most
            for _, answer in result.answered:
                assert (answer["counted"], answer["replayed"]) == (True, False), answer
                counted_used.append(answer["used"])
            succeeded |= {attempt.hardware_id for attempt, _ in result.answered}

            service = serve(home, db)
            services.append(service)
            used, machines = recorded(service.url, key.fingerprint)
            assert len(machines) == len(set(machines)), "a machine recorded twice"
            assert used == len(machines)
            assert succeeded <= set(machines), "an answered activation was lost"
            in_flight = {attempt.hardware_id for attempt in result.unanswered}
            assert set(machines) - succeeded <= in_flight
            assert len(succeeded) <= used <= len(succeeded) + len(result.unanswered)

            # the clients retry what got no answer: counted if lost, replayed if kept
            client = MakClient(service.url)
            for attempt in result.unanswered:
                kept = attempt.hardware_id in machines
                answer = client.activate(
                    str(key), attempt.hardware_id, request_id=attempt.request_id
                )
                assert (answer["counted"], answer["replayed"]) == (not kept, kept), answer
                if answer["counted"]:
                    counted_used.append(answer["used"])
                committed_unanswered += kept
                succeeded.add(attempt.hardware_id)
            client.close()
            used, machines = recorded(service.url, key.fingerprint)
            assert len(machines) == len(set(machines))
            assert used == len(machines) == len(succeeded)
            assert set(machines) == succeeded

        # every counted answer reported its own increment: none was counted twice
        assert len(set(counted_used)) == len(counted_used)
        assert set(counted_used) <= set(range(1, len(succeeded) + 1))
        assert len(counted_used) + committed_unanswered == len(succeeded)
        assert MakClient(service.url).count(str(key))["remaining"] == LIMIT - len(succeeded)
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(WAIT) == 0
    finally:
        for running in services:
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait(WAIT)
