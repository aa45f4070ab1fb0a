"""The host's state in SQLite: identity, count cache, request log, settings in use.

The only module of the host that touches the database. The server keeps the
count cache in memory and hands this store batches of changes and log rows
(``save``), each batch one transaction, so a request costs no fsync of its
own; ``close`` writes whatever is pending. WAL mode lets ``kmsemu host
status`` read while the host writes.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

from kmsemu.host.rules import LIVE_WINDOW, CountCache, HostIdentity, LogRecord, new_identity

DB_NAME: Final = "host.sqlite3"
#: ``kmsemu lab``'s one database under ``$KMSEMU_HOME``: the host's tables beside the MAK's.
LAB_DB: Final = "lab.sqlite3"
#: How long a write waits for another connection's lock on the file (milliseconds).
BUSY_TIMEOUT_MS: Final = 5000
SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS capacity (
    application BLOB PRIMARY KEY, capacity INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    application BLOB NOT NULL, cmid BLOB NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (application, cmid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    status INTEGER NOT NULL,
    required_client_count INTEGER,
    workstation_name TEXT,
    client_machine_id BLOB NOT NULL,
    request_time INTEGER NOT NULL,
    virtual_machine INTEGER,
    license_status INTEGER,
    grace_minutes_remaining INTEGER,
    sku_id BLOB,
    application_id BLOB,
    kms_count_id BLOB,
    current_count INTEGER NOT NULL,
    peer TEXT NOT NULL,
    reason TEXT NOT NULL);
"""

_INSERT_REQUEST = (
    "INSERT INTO requests (time, status, required_client_count, workstation_name,"
    " client_machine_id, request_time, virtual_machine, license_status,"
    " grace_minutes_remaining, sku_id, application_id, kms_count_id, current_count, peer, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: The columns ``HostStore.request_log`` returns, in this order: all of a request row.
REQUEST_LOG_COLUMNS: Final = (
    "id",
    "time",
    "status",
    "required_client_count",
    "workstation_name",
    "client_machine_id",
    "request_time",
    "virtual_machine",
    "license_status",
    "grace_minutes_remaining",
    "sku_id",
    "application_id",
    "kms_count_id",
    "current_count",
    "peer",
    "reason",
)


class LoggedRequest(NamedTuple):
    """A log record as the server saw it: who sent it and why it failed, if it did."""

    record: LogRecord
    peer: str
    reason: str

    def row(self) -> tuple[Any, ...]:
        """The record as a row of the ``requests`` table (NULLs when it never parsed).

        Its GUIDs are ``bytearray``s: the ``sqlite3`` module binds those as BLOBs at once,
        where each ``bytes`` would first go through its adapter lookup (half a
        microsecond a GUID, four a row, on the host's busiest path). Read back, they are
        ``bytes`` as ever, and the journal marshals them the same as ``bytes``."""
        # Unpacked, not read field by field: each NamedTuple field by name is a lookup.
        (time, status, count, q, cmid, request_time), peer, reason = self
        if q is None:
            return (
                time,
                status,
                None,
                None,
                bytearray(cmid),
                request_time,
                None,
                None,
                None,
                None,
                None,
                None,
                count,
                peer,
                reason,
            )
        flags, licence, minutes, app, sku, kms, _, required, _, _, name = q
        return (
            time,
            status,
            required,
            name,
            bytearray(cmid),
            request_time,
            flags & 1,
            licence,
            minutes,
            bytearray(sku),
            bytearray(app),
            bytearray(kms),
            count,
            peer,
            reason,
        )


def database_path(state: str | Path) -> Path:
    """The SQLite file a ``--state`` value names: a directory's ``host.sqlite3``, or a file
    (``kmsemu lab`` keeps the host's tables in its one database, ``lab.sqlite3``)."""
    path = Path(state)
    return path if path.suffix in (".sqlite3", ".db") or path.is_file() else path / DB_NAME


class HostStore:
    """A host's state in one SQLite database, created on first use unless ``create`` is False."""

    def __init__(self, state: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        self.path = database_path(state)
        self.state_dir = self.path.parent
        if create:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no host state at {self.path}")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if read_only:  # a reader beside a running host (WAL): it can never write by mistake
            self._db.execute("PRAGMA query_only = ON")
        if create and not read_only:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            self.set_meta(schema_version=str(SCHEMA_VERSION))

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    # -- meta and identity ---------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """The ``meta`` table as a dict: schema version, identity, settings."""
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str) -> None:
        """Set ``meta`` entries in one transaction, replacing any already there."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items()
            )

    def identity(self, rng: random.Random, now: datetime) -> HostIdentity:
        """The host's identity, created on first use and fixed after that."""
        meta = self.meta()
        if "host_id" in meta and "epid" in meta:
            return HostIdentity(bytes.fromhex(meta["host_id"]), meta["epid"])
        identity = new_identity(rng, now)
        self.set_meta(
            host_id=identity.host_id.hex(),
            epid=identity.epid,
            created=now.isoformat(timespec="seconds"),
        )
        return identity

    # -- count cache ---------------------------------------------------------------

    def load_cache(self) -> CountCache:
        """The count cache as last saved."""
        rows = self._db.execute("SELECT application, cmid, last_seen FROM clients").fetchall()
        caps = dict(self._db.execute("SELECT application, capacity FROM capacity").fetchall())
        return CountCache.restore(rows, caps)

    def save(
        self,
        snapshot: dict[bytes, tuple[int, list[tuple[bytes, int]]]],
        requests: Iterable[LoggedRequest],
        journal_seq: int | None = None,
    ) -> None:
        """Write one batch in one transaction: per changed application its capacity and
        the whole of its cache (``CountCache.take_snapshot``), then the log rows, and the
        journal's sequence number they reach (``kmsemu.host.journal``) if given."""
        self.save_rows(snapshot, (r.row() for r in requests), journal_seq)

    @contextlib.contextmanager
    def not_waiting(self) -> Iterator[None]:
        """Writes inside the block do not wait for another connection's lock on the file:
        they fail at once (``sqlite3.OperationalError``, database is locked). A running
        host flushes so, on its event loop: a lock held elsewhere (an administrator's
        sqlite3, a backup) must not stall every activation; the rows wait for the next
        flush."""
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def save_rows(
        self,
        snapshot: dict[bytes, tuple[int, list[tuple[bytes, int]]]],
        rows: Iterable[tuple[Any, ...]],
        journal_seq: int | None = None,
    ) -> None:
        """``save`` with the log rows already made (``LoggedRequest.row``)."""
        with self._transaction():
            for app, (capacity, entries) in snapshot.items():
                self._db.execute("DELETE FROM clients WHERE application = ?", (app,))
                self._db.executemany(
                    "INSERT INTO clients (application, cmid, last_seen) VALUES (?, ?, ?)",
                    [(app, cmid, last_seen) for cmid, last_seen in entries],
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO capacity (application, capacity) VALUES (?, ?)",
                    (app, capacity),
                )
            self._db.executemany(_INSERT_REQUEST, rows)
            if journal_seq is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('journal_seq', ?)",
                    (str(journal_seq),),
                )

    def journal_seq(self) -> int:
        """The journal's highest sequence number the store holds (0: none)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_seq'").fetchone()
        return int(row[0]) if row else 0

    # -- reading for `host status` and the lab's dashboard -----------------------------

    def recent_requests(self, limit: int) -> list[tuple[Any, ...]]:
        """The newest ``limit`` log rows, oldest first: (id, time, status, workstation_name,
        client_machine_id, virtual_machine, license_status, sku_id, required_client_count,
        current_count, peer, reason)."""
        rows = self._db.execute(
            "SELECT id, time, status, workstation_name, client_machine_id, virtual_machine,"
            " license_status, sku_id, required_client_count, current_count, peer, reason"
            " FROM requests ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        rows.reverse()
        return rows

    def request_log(
        self, *, since: int | None = None, client: bytes | None = None, last: int | None = None
    ) -> list[tuple[Any, ...]]:
        """The log rows (``REQUEST_LOG_COLUMNS``) in the order they were logged, oldest
        first: those logged at ``since`` (FILETIME, host clock) or later, of the CMID
        ``client`` (``bytes_le``), the newest ``last`` of them (None: all)."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if client is not None:
            where.append("client_machine_id = ?")
            args.append(client)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM requests{clause}"
            " ORDER BY id DESC LIMIT ?",
            (*args, -1 if last is None else last),
        ).fetchall()
        rows.reverse()
        return rows

    def live_counts(self, now: int) -> dict[bytes, int]:
        """Per application, the clients seen in the last 30 days at ``now`` (FILETIME)."""
        rows = self._db.execute(
            "SELECT application, count(*) FROM clients"
            " WHERE ? - last_seen < ? GROUP BY application",
            (now, LIVE_WINDOW),
        ).fetchall()
        return dict(rows)

    def request_totals(self) -> tuple[int, int, dict[int, int]]:
        """(total, failed, {license status: count}) over the whole request log."""
        total, failed = self._db.execute(
            "SELECT count(*), coalesce(sum(status != 0), 0) FROM requests"
        ).fetchone()
        by_status = dict(
            self._db.execute(
                "SELECT license_status, count(*) FROM requests GROUP BY license_status"
            ).fetchall()
        )
        return total, failed, by_status

    def request_totals_by_application(self) -> dict[bytes | None, tuple[int, int, dict[int, int]]]:
        """``request_totals`` per application id (``bytes_le``; None: requests whose
        plaintext never parsed, so they name no application)."""
        totals: dict[bytes | None, tuple[int, int, dict[int, int]]] = {}
        for application, total, failed in self._db.execute(
            "SELECT application_id, count(*), coalesce(sum(status != 0), 0) FROM requests"
            " GROUP BY application_id"
        ):
            totals[application] = (total, failed, {})
        for application, status, count in self._db.execute(
            "SELECT application_id, license_status, count(*) FROM requests"
            " GROUP BY application_id, license_status"
        ):
            totals[application][2][status] = count
        return totals

    def below_threshold(self) -> int:
        """Requests answered with a count under the client's threshold (0xC004F038 for it)."""
        (count,) = self._db.execute(
            "SELECT count(*) FROM requests WHERE status = 0"
            " AND current_count < required_client_count"
        ).fetchone()
        return int(count)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
