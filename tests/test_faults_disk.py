"""Faults survived, nothing lost (issue 17.3): the disk fills under a real MAK service
process. The state lives on a 4 MiB tmpfs; a file then takes the rest of the space.

What must hold, written out here: a clear error (503 ``unavailable`` naming the full disk,
never a 500), ``/readyz`` 503 naming the database while ``/healthz`` stays 200, service
again without a restart once space returns, and a database that checks whole with every
answered activation counted once.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mint_mak_key, start_mak_process
from tests.httpraw import request

TOKEN = "disk-test-token"
KEY_LIMIT = 1000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at ``tmp_path/disk`` (root only: mount(2) needs it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk`` with one file; the file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def stored_counts(db: Path) -> tuple[int, int]:
    """The one key's ``used`` and its machines, from a database that checks whole."""
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (used,) = check.execute("SELECT used FROM mak_keys").fetchone()
        (machines,) = check.execute("SELECT count(*) FROM mak_machines").fetchone()
    return used, machines


def machine() -> str:
    """A new machine's hardware ID (random: IDs that share 7 of 10 bytes are one machine)."""
    return os.urandom(10).hex()


def test_a_full_disk_under_the_mak_service(small_disk: Path, tmp_path: Path) -> None:
    db = small_disk / "mak.sqlite3"
    mak = start_mak_process(tmp_path / "home", "--db", f"sqlite:///{db}", "--admin-token", TOKEN)
    lines, address = mak.stderr_lines, mak.address
    key = mint_mak_key()
    counted: list[str] = []
    try:
        added = request(address, "POST", "/v1/keys", {"key": key, "limit": KEY_LIMIT}, token=TOKEN)
        assert added.status in (200, 201), added

        def activate(hardware_id: str) -> int:
            reply = request(
                address,
                "POST",
                "/v1/activate",
                {"key": key, "hardware_id": hardware_id, "machine_name": "M" * 60},
            )
            if reply.status == 200:
                counted.append(hardware_id)
            else:
                assert reply.status == 503, reply  # never a 500
                assert reply.body["error"]["code"] == "unavailable"
                assert "database or disk is full" in reply.body["error"]["message"]
            return reply.status

        for _ in range(3):
            assert activate(machine()) == 200
        filler = fill(small_disk)
        refused = [activate(machine()) for _ in range(40)]
        assert 503 in refused  # the disk is full: some, at least, are refused
        ready = request(address, "GET", "/readyz")
        assert ready.status == 503 and ready.body["ready"] is False
        assert "database or disk is full" in ready.body["problems"]["database"]
        assert request(address, "GET", "/healthz").status == 200  # alive, not ready
        filler.unlink()  # space returns: service again, without a restart
        assert activate(machine()) == 200
        assert request(address, "GET", "/readyz").body == {
            "ready": True,
            "components": {"database": True},
        }
        assert not any("Traceback" in line for line in lines)
    finally:
        assert mak.stop() == 0
    used, machines = stored_counts(db)
    assert used == machines == len(counted)  # every answered activation counted, once


def test_the_sqlite_file_locked_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database's write lock. While it holds it the service stays
    responsive (the loop does not wait for the lock: /healthz answers while an activation
    waits in a worker thread) and the activation completes once the lock goes; held past the
    busy timeout (10 s) the activation is 503 ``unavailable`` naming the lock, /readyz says
    so, and service resumes once the lock goes, every answer counted once."""
    import threading

    import tests.httpraw

    monkeypatch.setattr(tests.httpraw, "TIMEOUT", 30.0)  # longer than the busy timeout
    db = tmp_path / "mak.sqlite3"
    mak = start_mak_process(tmp_path / "home", "--db", f"sqlite:///{db}", "--admin-token", TOKEN)
    lines, address = mak.stderr_lines, mak.address
    key = mint_mak_key()
    statuses: list[int] = []

    def activate() -> None:
        reply = request(address, "POST", "/v1/activate", {"key": key, "hardware_id": machine()})
        statuses.append(reply.status)
        if reply.status != 200:
            assert reply.status == 503 and reply.body["error"]["code"] == "unavailable", reply
            assert "database is locked" in reply.body["error"]["message"]

    try:
        added = request(address, "POST", "/v1/keys", {"key": key, "limit": KEY_LIMIT}, token=TOKEN)
        assert added.status in (200, 201), added
        locker = sqlite3.connect(db, isolation_level=None)  # the other process's connection
        locker.execute("BEGIN IMMEDIATE")  # holds the write lock
        waiting = threading.Thread(target=activate)
        waiting.start()
        assert request(address, "GET", "/healthz").status == 200  # the loop is not stuck
        assert waiting.is_alive() and statuses == []  # the activation waits for the lock
        locker.execute("COMMIT")
        waiting.join(15)
        assert statuses == [200]
        locker.execute("BEGIN IMMEDIATE")  # and now past the busy timeout
        activate()
        assert statuses == [200, 503]
        ready = request(address, "GET", "/readyz")
        assert ready.status == 503 and "database is locked" in ready.body["problems"]["database"]
        locker.execute("COMMIT")
        locker.close()
        activate()
        assert statuses == [200, 503, 200]
        assert request(address, "GET", "/readyz").status == 200
        assert not any("Traceback" in line for line in lines)
    finally:
        assert mak.stop() == 0
    used, machines = stored_counts(db)
    assert used == machines == statuses.count(200)


def test_a_full_disk_under_the_lab_s_kms_host(small_disk: Path) -> None:
    """The lab's state on the small disk, then the disk full: an activation the host cannot
    make durable is not answered (once the journal's allocated blocks are used up: the
    client sees 0xC004F074, nothing is told that could be lost), /readyz names the
    database, and once space returns the host answers again; every answer a client got
    is in the request log, and the database checks whole."""
    import uuid

    from kmsemu.client.exchange import request_activation
    from kmsemu.errors import ActivationError
    from tests.test_end_to_end import KEY, make_request
    from tests.test_lab import Lab

    lab = Lab(small_disk, "--quiet")
    answered: list[str] = []

    def activate() -> bool:
        cmid = uuid.uuid4()
        try:
            request_activation(("127.0.0.1", lab.kms[1]), make_request(cmid=cmid), KEY, timeout=5)
        except ActivationError as exc:
            assert exc.hresult == 0xC004F074, exc
            return False
        answered.append(str(cmid))
        return True

    try:
        assert activate()
        filler = fill(small_disk)
        # answered (durably) while the journal's allocated blocks last, then refused
        refused_after = next((n for n in range(3000) if not activate()), None)
        assert refused_after is not None, "never refused with the disk full"
        deadline = time.monotonic() + 10
        while (ready := request(lab.http, "GET", "/readyz")).status != 503:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert ready.body["problems"]["database"]
        filler.unlink()
        deadline = time.monotonic() + 10
        while not activate():  # the journal and the store take writes again
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while request(lab.http, "GET", "/readyz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not any("Traceback" in line for line in lab.lines)
    finally:
        code = lab.stop()
        assert code == 0, "\n".join(lab.lines[-20:])
    with sqlite3.connect(small_disk / "lab.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {
            str(uuid.UUID(bytes_le=row[0]))
            for row in db.execute("SELECT client_machine_id FROM requests")
        }
    assert set(answered) <= logged


def test_the_lab_s_file_locked_by_another_process(tmp_path: Path) -> None:
    """Another process holds the write lock of the lab's database. The KMS host goes on
    answering at once (each answer in the journal; the store's flush does not wait for the
    lock, it fails and waits for the next), /readyz names the lock meanwhile, and when the
    lock goes the rows reach the log: every answer, once."""
    import uuid

    from kmsemu.client.exchange import request_activation
    from tests.test_end_to_end import KEY, make_request
    from tests.test_lab import Lab

    home = tmp_path / "home"
    lab = Lab(home, "--quiet")
    answered = []
    try:
        locker = sqlite3.connect(home / "lab.sqlite3", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process's write lock, held
        for _ in range(5):  # answered while it is held: none waits for it
            cmid = uuid.uuid4()
            request_activation(("127.0.0.1", lab.kms[1]), make_request(cmid=cmid), KEY, timeout=3)
            answered.append(str(cmid))
        deadline = time.monotonic() + 10
        while (ready := request(lab.http, "GET", "/readyz")).status != 503:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert "database is locked" in ready.body["problems"]["database"]
        locker.execute("COMMIT")
        locker.close()
        while request(lab.http, "GET", "/readyz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        code = lab.stop()
        assert code == 0, "\n".join(lab.lines[-20:])
    with sqlite3.connect(home / "lab.sqlite3") as db:
        logged = [
            str(uuid.UUID(bytes_le=row[0]))
            for row in db.execute("SELECT client_machine_id FROM requests")
        ]
    assert sorted(logged) == sorted(answered)
