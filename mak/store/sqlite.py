"""The MAK store in SQLite: the default, embedded, nothing to install.

WAL journal with ``synchronous=NORMAL``: a commit is in the WAL file before
``activate`` returns, so a killed process loses nothing it answered (a power
cut may lose the last commits; the lab accepts that). Writes take the
database lock first (``BEGIN IMMEDIATE``), which serialises activations in
one process or several; a writer waits up to ``busy_timeout`` for it and
then answers ``unavailable``.

Each thread gets its own connection to a file; ``:memory:`` (tests) is one
connection behind a lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from kmsemu.errors import ServiceError
from mak.store.base import Executor
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
    def _transaction(self, write: bool) -> Iterator[Executor]:
        db = self._connection()
        with self._lock if self._memory else contextlib.nullcontext():
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise ServiceError("unavailable", str(exc)) from None
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                db.execute("ROLLBACK")
                raise ServiceError("unavailable", str(exc)) from None

    def close(self) -> None:
        """Close the connection of every thread."""
        for db in self._all:
            db.close()
        self._all.clear()
        self._local = threading.local()
