"""Answered requests made durable before their answers leave: the host's journal.

The store takes request-log rows in batches (a transaction per fraction of a
second), which is what keeps a busy host cheap, but a process killed between
two batches would lose requests it had already answered. So once it has
handled a received chunk, the server appends the requests that chunk answered
to this append-only file in one ``os.write`` (a client's pipelined requests
share it), and only then writes their responses. Once ``write`` returns the rows are
the kernel's, so a SIGKILL or an out-of-memory kill loses nothing; a power
cut may (no fsync: the same promise as the store's ``synchronous = NORMAL``).

Every record carries a sequence number; the store remembers the highest it
has committed, and the journal is emptied whenever everything in it is in
the store. At start-up ``recover`` takes into the store, in order, whatever
the journal holds beyond that number: the rows, and their effect on the
count cache. A record cut short (a full disk, a power cut mid-write) was
never answered and is dropped.

Record: ``length u32 | crc32 u32 | marshal((seq, row, previous_cmid))``.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from kmsemu.host.store import HostStore

SUFFIX: Final = ".answered"
_FRAME = struct.Struct("<II")
#: Columns of a ``requests`` row (``LoggedRequest.row``) the count cache is rebuilt from.
_TIME, _STATUS, _REQUIRED, _CMID, _APP = 0, 1, 2, 4, 10


def journal_path(database: Path) -> Path:
    """The journal beside a host's database (``host.sqlite3.answered``)."""
    return database.with_name(database.name + SUFFIX)


def record(seq: int, row: tuple[Any, ...], previous: bytes | None) -> bytes:
    """One journal record: an answered request's ``requests`` row (``LoggedRequest.row``)
    and its previous CMID (the count cache needs it to be rebuilt)."""
    if type(row[_STATUS]) is not int:  # an HResult member: marshal takes plain ints only
        row = (row[0], int(row[_STATUS]), *row[2:])
    body = marshal.dumps((seq, row, previous))
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


class Journal:
    """The append-only file; ``append`` raises ``OSError`` when the disk refuses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._empty = os.fstat(self._fd).st_size == 0

    def append(self, records: bytes) -> None:
        """Write ``records`` (whole records, joined) in one call."""
        written = os.write(self._fd, records)
        self._empty = False
        if written != len(records):  # a short write: the disk filled up mid-record
            raise OSError(f"journal: {written} of {len(records)} bytes written")

    def empty(self) -> None:
        """Drop every record (the store holds them all now)."""
        if not self._empty:
            os.ftruncate(self._fd, 0)
            self._empty = True

    def close(self, *, remove: bool) -> None:
        """Close the file (again: nothing); ``remove`` it too when the store holds everything."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove:
            self.path.unlink(missing_ok=True)


def read(path: Path) -> Iterator[tuple[int, tuple[Any, ...], bytes | None]]:
    """``(seq, row, previous_cmid)`` of every whole record, in order; stops at a torn one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        body = data[at + _FRAME.size : at + _FRAME.size + length]
        if len(body) != length or zlib.crc32(body) != crc:
            return
        seq, row, previous = marshal.loads(body)
        yield seq, tuple(row), previous
        at += _FRAME.size + length


def recover(store: HostStore, path: Path) -> int:
    """Take into ``store`` the journal's records it has not committed, rows and count
    cache alike, in one transaction; the number taken. The journal is then emptied."""
    done = store.journal_seq()
    cache = store.load_cache()
    rows, last = [], done
    for seq, row, previous in read(path):
        if seq <= done:
            continue
        rows.append(row)
        last = max(last, seq)
        if row[_STATUS] == 0 and row[_APP] is not None:  # the host counted this client
            cache.activate(row[_APP], row[_CMID], previous or bytes(16), row[_REQUIRED],
                           row[_TIME])  # fmt: skip
    if rows:
        store.save_rows(cache.take_snapshot(), rows, last)
    if path.exists():
        os.truncate(path, 0)
    return len(rows)
