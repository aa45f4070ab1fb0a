"""Answered requests made durable before their answers leave: the host's journal.

The store takes request-log rows in batches (a transaction per fraction of a
second), which is what keeps a busy host cheap, but a process killed between
two batches would lose requests it had already answered. So the server
appends each request it answers to this append-only file as it records it,
and only then writes the response. The file is a shared memory map, so once the
copy is made the rows are the kernel's (its page cache), as after a ``write``:
a SIGKILL or an out-of-memory kill loses nothing; a power cut may (no fsync:
the same promise as the store's ``synchronous = NORMAL``).

Every record carries a sequence number; the store remembers the highest it
has committed, and the journal is emptied whenever everything in it is in
the store. At start-up ``recover`` takes into the store, in order, whatever
the journal holds beyond that number: the rows, and their effect on the
count cache. A record cut short (a power cut mid-write) was never answered
and is dropped. Past the last record the file holds zeros (emptying the journal zeroes
what it held), which read as a frame of length 0: the end.

Record: ``length u32 | crc32 u32 | marshal((seq, row, previous_cmid))``.
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from kmsemu.host.store import HostStore
from kmsemu.klp._fastcore import CORE

SUFFIX: Final = ".answered"
#: The journal's first allocation; it doubles when full (a flush empties it 4 times a
#: second: a busy host's settles at a few hundred KiB).
_GROWTH: Final = 64 << 10
_FRAME = struct.Struct("<II")
#: The compiled core's ``record`` framed into the map (the same bytes), when it is in use.
_core_add = CORE.journal_add if CORE is not None else None
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
    # Version 2: no table of shared references (a row has none worth one), a third faster.
    body = marshal.dumps((seq, row, previous), 2)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


class Journal:
    """The append-only file; ``append`` raises ``OSError`` when the disk refuses.

    Records go into a shared memory map of the file rather than through ``write``: the
    mapped pages are the kernel's page cache, so what ``append`` has copied in survives
    a SIGKILL as a written block would, without a system call per record. The
    file's blocks are allocated (``posix_fallocate``) before the map is extended over
    them, so a full disk is an ``OSError`` from ``append``, never a SIGBUS. Emptied,
    it takes the next records from the start again, in the same pages: in steady state
    a journal costs no system call, no page fault and no new block. Every byte past the
    last record is zero (allocated blocks are, and emptying zeroes the records), so
    ``read`` stops there with no end mark to write after each record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._map: mmap.mmap | None = None
        self._size = 0  # bytes mapped (allocated)
        self._at = 0  # bytes of records
        existing = os.fstat(self._fd).st_size
        if existing:  # records a recovery left (it empties the file): append after them
            self._at = _records_end(path.read_bytes())
            self._map = mmap.mmap(self._fd, existing)
            self._size = existing
            self._map[self._at :] = bytes(existing - self._at)  # a torn record's bytes

    def append(self, records: bytes) -> None:
        """Copy ``records`` (whole records, joined) in after the last."""
        at, end = self._at, self._at + len(records)
        if end + _FRAME.size > self._size:  # room for the zeros that end it, too
            self._extend(end + _FRAME.size)
        assert self._map is not None
        self._map[at:end] = records
        self._at = end

    def add(self, seq: int, row: tuple[Any, ...], previous: bytes | None) -> None:
        """Append ``record(seq, row, previous)``: the host's path, in one call with the core
        (it frames the record in place in the map, unless the map must grow first)."""
        if type(row[_STATUS]) is not int:
            row = (row[0], int(row[_STATUS]), *row[2:])
        if _core_add is not None and self._map is not None:
            end = _core_add(self._map, self._at, seq, row, previous)
            if end:
                self._at = end
                return
        body = marshal.dumps((seq, row, previous), 2)  # ``record``, inline: every request's path
        at = self._at
        end = at + _FRAME.size + len(body)
        if end + _FRAME.size > self._size:
            self._extend(end + _FRAME.size)
        assert self._map is not None
        self._map[at:end] = _FRAME.pack(len(body), zlib.crc32(body)) + body  # one slice: faster
        self._at = end

    def _extend(self, needed: int) -> None:
        size = max(_GROWTH, self._size * 2)
        while size < needed:
            size *= 2
        _allocate(self._fd, self._size, size)  # OSError (ENOSPC) here, not SIGBUS later
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, size)
        self._size = size

    def empty(self) -> None:
        """Drop every record (the store holds them all now), zeroing them: the next goes
        at the start, in the same pages (mapped and allocated: no system call, no new
        block, and the kernel writes back at most the file's size per interval)."""
        if self._at and self._map is not None:
            self._map[0 : self._at] = bytes(self._at)
            self._at = 0

    def close(self, *, remove: bool) -> None:
        """Close the file (again: nothing), cut to its records; ``remove`` it too when the
        store holds everything."""
        if self._fd >= 0:
            if self._map is not None:
                self._map.close()
                self._map, self._size = None, 0
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._at)
            os.close(self._fd)
            self._fd = -1
        if remove:
            self.path.unlink(missing_ok=True)


def _allocate(fd: int, start: int, end: int) -> None:
    """Give the file blocks from ``start`` to ``end`` (zeros), or ``OSError``."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, start, end - start)
        return
    zeros = bytes(min(end - start, _GROWTH))  # macOS has no posix_fallocate: write zeros
    for at in range(start, end, len(zeros)):
        if os.pwrite(fd, zeros[: end - at], at) != min(len(zeros), end - at):
            raise OSError(errno.ENOSPC, "journal: short write")


def _records_end(data: bytes) -> int:
    """Where the whole records at the start of ``data`` end."""
    at = 0
    for _, end in _frames(data):
        at = end
    return at


def _frames(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Each whole record's body and where it ends; stops at a torn record or the zeros
    past the last."""
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        body = data[at + _FRAME.size : at + _FRAME.size + length]
        if not length or len(body) != length or zlib.crc32(body) != crc:
            return
        at += _FRAME.size + length
        yield body, at


def read(path: Path) -> Iterator[tuple[int, tuple[Any, ...], bytes | None]]:
    """``(seq, row, previous_cmid)`` of every whole record, in order; stops at a torn one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for body, _ in _frames(data):
        seq, row, previous = marshal.loads(body)
        yield seq, tuple(row), previous


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
