"""Faults survived, nothing lost (issue 17.3): PostgreSQL restarts under MAK load.

A real ``kmsemu mak serve`` process on a PostgreSQL server of the test's own; four clients
activate new machines without pause, each retrying a refused activation with the same
``request_id`` (as ``kmsemu client ato`` would on a 503) until it is answered. The server
is restarted (fast shutdown: every session cut) in the middle. What must hold, written out
here: the service recovers without a restart of its own (activations succeed after the
restart), it never answers 500, and the key's ``used`` equals the machines answered as
counted: none counted twice, none lost.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import mint_mak_key, start_mak_process
from tests.conftest_postgres import PgServer
from tests.httpraw import request

TOKEN = "pg-restart-token"
CLIENTS = 4
AFTER_RESTART = 20  # activations that must succeed after the restart


def test_postgres_restarted_under_mak_load(restartable_postgres: PgServer, tmp_path: Path) -> None:
    mak = start_mak_process(
        tmp_path / "home", "--db", restartable_postgres.url, "--admin-token", TOKEN
    )
    proc, lines, address = mak.process, mak.stderr_lines, mak.address
    key = mint_mak_key()
    answered: list[dict[str, Any]] = []
    statuses: list[int] = []
    stop = threading.Event()
    restarted = threading.Event()
    after = threading.Semaphore(0)
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            body = {
                "key": key,
                "hardware_id": os.urandom(10).hex(),
                "request_id": str(uuid.uuid4()),
            }
            deadline = time.monotonic() + 60
            while True:  # the same request until it is answered
                try:
                    reply = request(address, "POST", "/v1/activate", body)
                    status = reply.status
                except OSError:  # the service closed the connection: ask again
                    status = 0
                with lock:
                    statuses.append(status)
                if status == 200:
                    with lock:
                        answered.append(reply.body)
                    if restarted.is_set():
                        after.release()
                    break
                assert status in (0, 503), reply
                assert time.monotonic() < deadline, "the service never recovered"
                time.sleep(0.05)

    try:
        added = request(address, "POST", "/v1/keys", {"key": key, "limit": 100_000}, token=TOKEN)
        assert added.status in (200, 201), added
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 20:  # load is running
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads)
            time.sleep(0.01)
        restartable_postgres.restart()
        restarted.set()
        for _ in range(AFTER_RESTART):  # service again, without its own restart
            assert after.acquire(timeout=60), "no activation succeeded after the restart"
        stop.set()
        for thread in threads:
            thread.join(90)
        assert not any(t.is_alive() for t in threads)
        keys = request(address, "GET", "/v1/keys", token=TOKEN)
        assert keys.status == 200, keys
        [record] = keys.body["keys"]
        counted = sum(1 for a in answered if a.get("counted"))
        assert record["used"] == counted == len(answered)  # once each: none twice, none lost
        assert 500 not in statuses
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert not any("Traceback" in line for line in lines), "\n".join(lines[-40:])
