"""The host's journal of answered requests: records, torn tails, recovery, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from kmsemu.errors import HResult
from kmsemu.host import journal
from kmsemu.host.events import EventLog
from kmsemu.host.rules import LogRecord
from kmsemu.host.server import KmsServer, _KmsProtocol
from kmsemu.host.store import HostStore, LoggedRequest
from tests.test_lean import (
    CATALOG,
    IDENTITY,
    NOW,
    PORT,
    SECRET,
    Transport,
    activation,
    bind_pdu,
    request_pdu,
)

APP = bytes(range(16))


def logged(status: int, cmid: int, when: int = NOW) -> LoggedRequest:
    record = LogRecord(when, status, 1, None, cmid.to_bytes(16, "little"), when - 5)
    return LoggedRequest(record, "127.0.0.1:50000", "" if status == 0 else "refused")


def entry(seq: int, request: LoggedRequest) -> bytes:
    return journal.record(seq, request.row(), None)


def test_records_read_back_in_order_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "host.sqlite3.answered"
    j = journal.Journal(path)
    j.append(entry(1, logged(0, 7)) + entry(2, logged(HResult.TIMESTAMP_INVALID, 8)))
    j.append(entry(3, logged(0, 9))[:-3])  # a write cut short by a full disk
    j.close(remove=False)
    read = list(journal.read(path))
    assert [seq for seq, _, _ in read] == [1, 2]
    _, row, previous = read[1]
    assert row[1] == 0xC004F06C and type(row[1]) is int  # HResult stored as a plain int
    assert row[4] == (8).to_bytes(16, "little") and row[14] == "refused" and previous is None


@pytest.mark.parametrize("fallocate", [True, False], ids=["posix_fallocate", "zeros written"])
def test_the_map_grows_and_the_file_keeps_just_the_records(
    tmp_path: Path, monkeypatch: Any, fallocate: bool
) -> None:
    """Records past the first allocation (64 KiB) are all read back; closed, the file is
    cut to its records; emptied, it reads as nothing, holds zeros where its records were,
    and takes new records from the start. The same where the system has no
    ``posix_fallocate`` (macOS: the blocks are zeros written)."""
    if not fallocate:
        monkeypatch.delattr(journal.os, "posix_fallocate", raising=False)
    path = tmp_path / "j"
    j = journal.Journal(path)
    records = [entry(seq, logged(0, seq)) for seq in range(1, 1001)]
    for record in records:
        j.append(record)
    assert path.stat().st_size >= 128 << 10  # grew past 64 KiB (about 200 bytes a record)
    assert [seq for seq, _, _ in journal.read(path)] == list(range(1, 1001))
    j.empty()
    assert list(journal.read(path)) == []
    assert path.read_bytes() == bytes(path.stat().st_size)  # records 1 to 1000 zeroed
    j.append(entry(1001, logged(0, 1001)))  # over record 1: zeros follow it
    assert [seq for seq, _, _ in journal.read(path)] == [1001]
    j.close(remove=False)
    assert path.stat().st_size == len(entry(1001, logged(0, 1001)))
    assert [seq for seq, _, _ in journal.read(path)] == [1001]
    again = journal.Journal(path)  # opened on records: appends after them
    again.append(entry(1002, logged(0, 1002)))
    again.close(remove=False)
    assert [seq for seq, _, _ in journal.read(path)] == [1001, 1002]


def test_add_frames_in_place_the_bytes_of_record(tmp_path: Path) -> None:
    """The host's ``add`` writes exactly what ``append(record(...))`` does: HResult
    statuses as plain ints, the previous CMID, every record followed by zeros only."""
    by_add, by_append = journal.Journal(tmp_path / "a"), journal.Journal(tmp_path / "b")
    requests = [
        (1, logged(0, 7), bytes(range(16))),
        (2, logged(HResult.TIMESTAMP_INVALID, 8), None),
    ]
    for seq, request, previous in requests:
        by_add.add(seq, request.row(), previous)
        by_append.append(journal.record(seq, request.row(), previous))
    data = (tmp_path / "a").read_bytes()
    assert data == (tmp_path / "b").read_bytes()
    ends = len(journal.record(1, requests[0][1].row(), bytes(range(16)))) + len(
        journal.record(2, requests[1][1].row(), None)
    )
    assert data[ends:] == bytes(len(data) - ends)
    read = list(journal.read(tmp_path / "a"))
    assert [(seq, row[1], previous) for seq, row, previous in read] == [
        (1, 0, bytes(range(16))),
        (2, 0xC004F06C, None),
    ]


def test_opened_over_a_torn_record_the_tail_is_zeroed(tmp_path: Path) -> None:
    """A record cut short by a killed process is dropped; the next process zeroes its
    bytes, so a shorter record appended over it is followed by zeros, not by its tail."""
    path = tmp_path / "j"
    j = journal.Journal(path)
    long_one = journal.record(2, logged(0, 8).row(), bytes(16))
    j.append(entry(1, logged(0, 7)) + long_one[:-3])  # killed mid-copy
    j.close(remove=False)
    again = journal.Journal(path)
    again.add(3, logged(0, 9).row(), None)  # shorter than the torn record
    data = path.read_bytes()
    ends = len(entry(1, logged(0, 7))) + len(entry(3, logged(0, 9)))
    assert data[ends:] == bytes(len(data) - ends)
    assert [seq for seq, _, _ in journal.read(path)] == [1, 3]
    again.close(remove=False)


def test_a_full_disk_is_an_oserror_and_nothing_half_written(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The blocks are allocated before the map covers them: a disk without room is
    ``OSError`` from ``append`` (never a SIGBUS), and no byte of the record is in."""
    path = tmp_path / "j"
    j = journal.Journal(path)
    j.append(entry(1, logged(0, 1)))

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal.os, "posix_fallocate", no_room)
    with pytest.raises(OSError, match="No space"):  # past the first allocation
        j.append(b"".join(entry(s, logged(0, s)) for s in range(2, 1000)))
    assert [seq for seq, _, _ in journal.read(path)] == [1]
    with pytest.raises(OSError, match="No space"):  # the host's path: one record at a time
        for seq in range(2, 1000):
            j.add(seq, logged(0, seq).row(), None)
    assert [seq for seq, _, _ in journal.read(path)] == list(range(1, seq))
    j.empty()  # its blocks stay the journal's: the room it has is still there
    j.append(entry(2, logged(0, 2)))
    j.close(remove=False)
    assert [seq for seq, _, _ in journal.read(path)] == [2]


def test_a_record_that_does_not_check_out_ends_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    body = b"not what was written"
    path.write_bytes(
        entry(1, logged(0, 1))
        + struct.pack("<II", len(body), zlib.crc32(body) ^ 1)
        + body
        + entry(3, logged(0, 3))
    )
    assert [seq for seq, _, _ in journal.read(path)] == [1]


def test_recovery_takes_only_what_the_store_has_not_got(tmp_path: Path) -> None:
    store = HostStore(tmp_path / "host")
    store.save({}, [logged(0, 1)], journal_seq=1)  # seq 1 is in the store already
    path = journal.journal_path(store.path)
    path.write_bytes(b"".join(entry(s, logged(0, s)) for s in (1, 2, 3)))
    taken = journal.recover(store, path)
    j = journal.Journal(path)
    assert taken == 2 and store.journal_seq() == 3 and path.stat().st_size == 0
    j.close(remove=True)
    assert not path.exists()
    db = sqlite3.connect(store.path)
    cmids = [r[0] for r in db.execute("SELECT client_machine_id FROM requests ORDER BY id")]
    assert cmids == [(s).to_bytes(16, "little") for s in (1, 2, 3)]


class FullDisk:
    """A journal whose disk is full."""

    def __init__(self) -> None:
        self.path = Path("/nonexistent")

    def add(self, seq: int, row: Any, previous: bytes | None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def empty(self) -> None:
        pass

    def close(self, *, remove: bool) -> None:
        pass


class Rows:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def save_rows(self, snapshot: Any, rows: Any, journal_seq: int | None = None) -> None:
        self.rows += list(rows)

    def journal_seq(self) -> int:
        return 0

    def not_waiting(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def test_an_answer_the_journal_cannot_take_never_leaves() -> None:
    asyncio.run(_full_disk())


async def _full_disk() -> None:
    from kmsemu.host.rules import CountCache, HostRules, HostSettings
    from kmsemu.host.service import KmsHost
    from kmsemu.klp.envelope import Keyring

    rules = HostRules(CATALOG, HostSettings(), IDENTITY, CountCache())
    host = KmsHost(rules, Keyring([SECRET]), lambda: NOW)
    stream = io.StringIO()
    rows = Rows()
    server = KmsServer(host, rows, EventLog(stream), now=lambda: NOW, journal=FullDisk())  # type: ignore[arg-type]
    protocol = _KmsProtocol(server, PORT)
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(bind_pdu())
    protocol.data_received(request_pdu(activation(1, NOW, "PC")))
    assert len(transport.written) == 1 and transport.closed  # the BIND_ACK; then dropped
    server.flush()
    assert "journal-failed" in stream.getvalue() and "No space left" in stream.getvalue()
    assert len(rows.rows) == 1  # the request is still logged (the host did count it)


def test_a_connection_dropped_for_the_journal_takes_no_more_of_its_chunk() -> None:
    """Two requests in one chunk, the journal refusing the first: the connection goes
    then, and the second is neither answered nor counted."""
    asyncio.run(_full_disk_pipelined())


async def _full_disk_pipelined() -> None:
    from kmsemu.host.rules import CountCache, HostRules, HostSettings
    from kmsemu.host.service import KmsHost
    from kmsemu.klp.envelope import Keyring

    rules = HostRules(CATALOG, HostSettings(), IDENTITY, CountCache())
    host = KmsHost(rules, Keyring([SECRET]), lambda: NOW)
    rows = Rows()
    server = KmsServer(host, rows, EventLog(io.StringIO()), now=lambda: NOW, journal=FullDisk())  # type: ignore[arg-type]
    protocol = _KmsProtocol(server, PORT)
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(bind_pdu())
    two = request_pdu(activation(1, NOW, "PC1")) + request_pdu(activation(2, NOW, "PC2"))
    protocol.data_received(two)
    assert len(transport.written) == 1 and transport.closed  # the BIND_ACK; then dropped
    server.flush()
    assert len(rows.rows) == 1  # the first request only
