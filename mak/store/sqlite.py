"""The MAK store in SQLite: the default, embedded, nothing to install.

WAL journal with ``synchronous=NORMAL``: a commit is in the WAL file before
``activate`` returns, so a killed process loses nothing it answered (a power
cut may lose the last commits; the lab accepts that). Writes take the
database lock first (``BEGIN IMMEDIATE``), which serialises activations in
one process or several; a writer waits up to ``busy_timeout`` for it and
then answers ``unavailable``.

Each thread gets its own connection to a file; ``:memory:`` (tests) is one
connection behind a lock.

The service calls the store on its event loop (SQLite answers in microseconds), inside
``without_waiting``: there a write that finds the file locked by another connection (a
second service, a backup, an administrator's sqlite3) does not wait for it, which would
stall every request, but raises ``WouldWait`` having done nothing, and the service runs the
call again in a worker thread, where it waits up to ``busy_timeout``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from kmsemu.errors import ServiceError
from mak.store.base import Executor, WouldWait
from mak.store.sql import SCHEMA, SCHEMA_VERSION, SqlStore

BUSY_TIMEOUT_MS = 10_000


class SqliteStore(SqlStore):
    """The MAK store in one SQLite file (or ``:memory:``), a connection per thread."""

    blocking_ok = True

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._local = threading.local()
        self._lock = threading.RLock()
        self._all: list[sqlite3.Connection] = []
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        schema = SCHEMA.format(serial="INTEGER PRIMARY KEY", blob="BLOB", real="REAL")
        with self._lock:
            self._connection().executescript(
                f"BEGIN IMMEDIATE;\n{schema}\nINSERT OR IGNORE INTO mak_meta VALUES ('schema',"
                f" '{SCHEMA_VERSION}');\nCOMMIT;"
            )

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None and self._memory and self._all:
            return self._all[0]
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if not self._memory:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._local.db = db
            self._all.append(db)
        return db

    @contextlib.contextmanager
    def without_waiting(self) -> Iterator[None]:
        """Calls on this thread inside the block do not wait for another connection's lock:
        a write that would wait raises ``WouldWait`` instead, as long as no write of the
        block has committed (after one it waits as usual, so that a call run again cannot
        do anything twice)."""
        local = self._local
        local.nowait, local.wrote = True, False
        try:
            yield
        finally:
            local.nowait = False

    def _wait_for_locks(self, db: sqlite3.Connection, wait: bool) -> None:
        """Set the connection's busy timeout (0: do not wait) when it is not that already."""
        timeout = BUSY_TIMEOUT_MS if wait else 0
        if getattr(self._local, "timeout", BUSY_TIMEOUT_MS) != timeout:
            db.execute(f"PRAGMA busy_timeout={timeout}")
            self._local.timeout = timeout

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Executor]:
        db = self._connection()
        local = self._local
        nowait = getattr(local, "nowait", False) and not local.wrote and not self._memory
        with self._lock if self._memory else contextlib.nullcontext():
            try:
                if write and not self._memory:
                    self._wait_for_locks(db, not nowait)
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:  # locked (past the busy timeout)
                if nowait and exc.sqlite_errorname.startswith("SQLITE_BUSY"):
                    raise WouldWait from None
                if write:
                    self._failure = str(exc)
                raise _unavailable(exc) from None
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(db)
                if not _out_of_service(exc):
                    raise  # a bug (no such table...): the service log shows it
                if write:
                    self._failure = str(exc)  # /readyz says so until a write succeeds
                raise _unavailable(exc) from None
            except BaseException:
                _rollback(db)
                raise
            if write:
                self._failure = ""
                local.wrote = True

    def close(self) -> None:
        """Close the connection of every thread."""
        for db in self._all:
            db.close()
        self._all.clear()
        self._local = threading.local()


#: SQLite's primary result codes that say the database cannot serve now, not that the SQL
#: is wrong: a full disk, an I/O error, a lock held past the busy timeout, a file that
#: cannot be opened or written.
_OUT_OF_SERVICE: Final = frozenset(
    {"SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN",
     "SQLITE_READONLY", "SQLITE_PROTOCOL"}
)  # fmt: skip


def _out_of_service(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is the database being unable to serve (503), not a bug (500)."""
    extended = getattr(exc, "sqlite_errorname", "") or ""  # SQLITE_IOERR_WRITE...
    return "_".join(extended.split("_")[:2]) in _OUT_OF_SERVICE


def _unavailable(exc: sqlite3.Error) -> ServiceError:
    """The ``unavailable`` error (503) naming what the database said."""
    return ServiceError("unavailable", str(exc))


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is open (SQLite has already rolled back after a full disk or an I/O
    error: then there is nothing to roll back, and saying so would hide the real error)."""
    if db.in_transaction:
        db.execute("ROLLBACK")
