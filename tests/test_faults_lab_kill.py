"""Faults survived, nothing lost (issue 17.3): the lab SIGKILLed during mixed load.

A real ``kmsemu lab`` process; one client activates new Windows 11 machines over KLP/1,
another activates new machines against the MAK service (each request with a
``request_id``, retried after a failure as a client would), both without pause. The lab is
killed with SIGKILL in the middle and started again on the same state. What must hold,
written out here, against what the clients were told:

- every KMS activation a client was answered has its row in the request log (durable
  answers), and the host's count is the number of distinct machines in the log;
- the MAK key's ``used`` equals the machines the MAK client was answered as counted, once
  it has asked again (with the same ``request_id``) the one whose answer the kill cut off;
- the database checks whole.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kmsemu.client.exchange import request_activation
from kmsemu.errors import ActivationError
from tests.conftest import kmsemu_command, mint_mak_key
from tests.httpraw import request
from tests.test_end_to_end import KEY, make_request
from tests.test_lab import TOKEN, Lab

#: Windows clients (the cache holds 50 once a client OS has asked): fewer than that, so
#: that the count is every distinct machine of the log.
KMS_MACHINES = 30


def test_sigkill_of_the_lab_under_mixed_load(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lab = Lab(home, "--admin-token", TOKEN, "--quiet")
    key = mint_mak_key()
    added = request(lab.http, "POST", "/v1/keys", {"key": key, "limit": 10_000}, token=TOKEN)
    assert added.status in (200, 201), added
    kms_answered: set[str] = set()
    mak_answered: list[dict[str, Any]] = []
    mak_pending: list[dict[str, Any]] = []  # a request the kill may have cut off
    killed = threading.Event()

    def kms_client() -> None:
        for _ in range(KMS_MACHINES):
            cmid = uuid.uuid4()
            try:
                request_activation(
                    ("127.0.0.1", lab.kms[1]),
                    make_request("windows-11-pro", cmid=cmid),
                    KEY,
                    timeout=5,
                )
            except ActivationError:  # the kill: no answer, nothing told
                return
            kms_answered.add(str(cmid))

    def mak_client() -> None:
        while not killed.is_set():
            body = {
                "key": key,
                "hardware_id": os.urandom(10).hex(),
                "request_id": str(uuid.uuid4()),
            }
            mak_pending[:] = [body]
            try:
                reply = request(lab.http, "POST", "/v1/activate", body)
            except (OSError, http.client.HTTPException):  # the kill (mid-body: IncompleteRead)
                return
            if reply.status != 200:
                return
            mak_answered.append(reply.body)
            mak_pending.clear()

    threads = [threading.Thread(target=kms_client), threading.Thread(target=mak_client)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(kms_answered) < KMS_MACHINES // 2 or len(mak_answered) < 10:
        assert time.monotonic() < deadline, (len(kms_answered), len(mak_answered))
        time.sleep(0.005)
    lab.process.send_signal(signal.SIGKILL)
    killed.set()
    assert lab.process.wait(10) == -signal.SIGKILL
    for thread in threads:
        thread.join(30)
    again = Lab(home, "--admin-token", TOKEN, "--quiet")
    try:
        for body in mak_pending:  # the one the kill cut off: asked again, the same request
            reply = request(again.http, "POST", "/v1/activate", body)
            assert reply.status == 200, reply
            mak_answered.append(reply.body)
        keys = request(again.http, "GET", "/v1/keys", token=TOKEN)
        [record] = keys.body["keys"]
        assert record["used"] == len(mak_answered)  # every answered machine, once
        # each a new machine counted; the one asked again is a replay when the kill fell
        # after its commit and before its answer (docs/architecture.md: counted once)
        assert all(a["counted"] or (a["replayed"] and a["verdict"] == "new") for a in mak_answered)
        assert sum(a["replayed"] for a in mak_answered) <= len(mak_pending)
    finally:
        assert again.stop() == 0
    with sqlite3.connect(home / "lab.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {
            str(uuid.UUID(bytes_le=row[0]))
            for row in db.execute("SELECT client_machine_id FROM requests")
        }
    assert kms_answered <= logged  # every answer the clients got is in the log
    assert len(logged) - len(kms_answered) <= 1  # at most the one the kill cut off
    status = subprocess.run(
        kmsemu_command("host", "status", "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KMSEMU_HOME": str(home)},
        check=True,
    )
    assert json.loads(status.stdout)["counts"]["Windows"] == len(logged)  # the log's machines
