"""A host killed under load keeps every activation it answered (issue 15: durable answers).

Four clients activate distinct machines against a real ``kmsemu host serve`` process;
it is SIGKILLed while they are at it. After a restart on the same state, every answer a
client received has its row in the request log (same count, same status), no request is
there twice, and the count cache is what the log makes of it. The model of the cache
here is klp-v1.md section 7, written out: per application the newest distinct CMIDs,
at most twice the threshold, all within 30 days.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from kmsemu.catalog import default_catalog
from kmsemu.client.exchange import ActivationError, request_activation
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import ActivationRequest
from kmsemu.wire import filetime_from_unix
from tests.conftest import start_host_process, stop_host_process

PRODUCT = default_catalog().find("windows-11-pro")
KEY = LabKey.derive("kmsemu-lab")
CLIENTS = 4
#: Answers received before the kill (the clients keep going until the host is gone).
BEFORE_KILL = 400
THRESHOLD = 25


def answered_then_killed(host_address: tuple[str, int], kill: object) -> dict[bytes, int]:
    """Run the clients until the host dies; CMID (wire form) -> count each one was told."""
    received: dict[bytes, int] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def client(index: int) -> None:
        for _ in range(100_000):  # bounded: the host is killed long before
            cmid = uuid.uuid4()
            request = ActivationRequest(
                application_id=PRODUCT.application_id,
                sku_id=PRODUCT.sku_id,
                kms_count_id=PRODUCT.kms_count_id,
                client_machine_id=cmid,
                request_time=filetime_from_unix(time.time()),
                required_client_count=THRESHOLD,
                workstation_name=f"PC-{index}",
            )
            try:
                exchange = request_activation(host_address, request, KEY, timeout=5)
            except ActivationError:
                return  # the host is gone
            with lock:
                received[cmid.bytes_le] = exchange.response.current_count
                if len(received) >= BEFORE_KILL:
                    enough.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    assert enough.wait(60), "the clients did not get their answers"
    kill()  # type: ignore[operator]
    for thread in threads:
        thread.join(30)
    return received


def test_every_answer_survives_a_sigkill(tmp_path: Path) -> None:
    state = tmp_path / "host"
    host = start_host_process(state)
    assert host.process is not None
    process = host.process
    received = answered_then_killed(host.address, lambda: os.kill(process.pid, signal.SIGKILL))
    assert process.wait(10) == -signal.SIGKILL
    assert (state / "host.sqlite3.answered").exists()  # the journal was not cleaned up

    again = start_host_process(state)  # takes the journal in
    assert stop_host_process(again) == 0
    assert not (state / "host.sqlite3.answered").exists()  # all in the store: gone

    db = sqlite3.connect(state / "host.sqlite3")
    rows = db.execute(
        "SELECT client_machine_id, status, current_count, time, application_id"
        " FROM requests ORDER BY id"
    ).fetchall()
    logged: dict[bytes, list[tuple[int, int]]] = {}
    for cmid, status, count, _, _ in rows:
        logged.setdefault(cmid, []).append((status, count))
    missing = [cmid for cmid in received if cmid not in logged]
    assert not missing, f"{len(missing)} of {len(received)} answered requests lost"
    assert all(len(v) == 1 for v in logged.values()), "a request was logged twice"
    for cmid, count in received.items():
        assert logged[cmid] == [(0, count)]

    # the count cache: the newest 2 x 25 distinct clients, in the order the log has them
    expected: OrderedDict[bytes, int] = OrderedDict()
    for cmid, status, _, when, app in rows:
        if status == 0:
            assert app == PRODUCT.application_id.bytes_le
            expected[cmid] = when
            expected.move_to_end(cmid)
            while len(expected) > 2 * THRESHOLD:
                expected.popitem(last=False)
    cached = dict(
        db.execute(
            "SELECT cmid, last_seen FROM clients WHERE application = ?",
            (PRODUCT.application_id.bytes_le,),
        ).fetchall()
    )
    assert cached == dict(expected)
