"""The host's request log in SQLite: what a logged request's row becomes, and reads back as."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kmsemu.host import journal
from kmsemu.host.rules import LogRecord
from kmsemu.host.store import REQUEST_LOG_COLUMNS, HostStore, LoggedRequest
from kmsemu.klp.messages import RequestFields

NOW = 133_000_000_000_000_000
APP = bytes(range(16))
SKU = bytes(range(16, 32))
KMS = bytes(range(32, 48))
CMID = bytes(range(48, 64))


def answered() -> LoggedRequest:
    request = RequestFields(1, 2, 43200, APP, SKU, KMS, CMID, 25, NOW - 5, bytes(16), "PC-1")
    return LoggedRequest(LogRecord(NOW, 0, 7, request, CMID, NOW - 5), "127.0.0.1:50000", "")


def test_a_rows_guids_are_blobs_that_read_back_as_bytes(tmp_path: Path) -> None:
    """Whatever the row hands the sqlite3 module for a GUID, the column holds a BLOB, a
    query by ``bytes`` finds it, and it reads back as ``bytes``."""
    store = HostStore(tmp_path / "host")
    store.save({}, [answered()])
    (row,) = store.request_log(client=CMID)
    got = dict(zip(REQUEST_LOG_COLUMNS, row, strict=True))
    assert got == {
        "id": 1, "time": NOW, "status": 0, "required_client_count": 25,
        "workstation_name": "PC-1", "client_machine_id": CMID, "request_time": NOW - 5,
        "virtual_machine": 1, "license_status": 2, "grace_minutes_remaining": 43200,
        "sku_id": SKU, "application_id": APP, "kms_count_id": KMS, "current_count": 7,
        "peer": "127.0.0.1:50000", "reason": "",
    }  # fmt: skip
    for column in ("client_machine_id", "sku_id", "application_id", "kms_count_id"):
        assert type(got[column]) is bytes
    db = sqlite3.connect(store.path)
    types = db.execute(
        "SELECT typeof(client_machine_id), typeof(sku_id), typeof(application_id),"
        " typeof(kms_count_id) FROM requests"
    ).fetchone()
    assert types == ("blob", "blob", "blob", "blob")


def test_a_journaled_row_is_recovered_as_the_same_row(tmp_path: Path) -> None:
    """The journal's record of a row (through ``Journal.add``, the host's path) comes back
    from recovery as the row the store would have been given."""
    store = HostStore(tmp_path / "host")
    path = journal.journal_path(store.path)
    j = journal.Journal(path)
    j.add(1, answered().row(), None)
    j.close(remove=False)
    ((seq, row, previous),) = journal.read(path)
    assert (seq, previous) == (1, None)
    assert row == (NOW, 0, 25, "PC-1", CMID, NOW - 5, 1, 2, 43200, SKU, APP, KMS, 7,
                   "127.0.0.1:50000", "")  # fmt: skip
    assert journal.recover(store, path) == 1
    assert store.request_log()[0][1:] == row
