"""The MAK store's SQL, once, for SQLite and PostgreSQL.

Subclasses supply a transaction (``_transaction``), the schema's column
types and how a key's row is locked; queries are written with ``?``
placeholders and translated by ``_q`` where the driver wants ``%s``.
Booleans are stored as 0/1 integers and times as POSIX seconds, the same
on both databases. ``activate`` here is SQLite's (PostgreSQL's store does it
in one round trip: ``pg_activate``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from kmsemu.errors import ServiceError
from kmsemu.keys.activation_ids import same_machine
from kmsemu.keys.product_key import KeyType
from mak import rules
from mak.rules import KeyRecord, MachineRecord, Verdict
from mak.store.base import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    Activation,
    Cursor,
    Executor,
    ImportReport,
    Increase,
    MachineRow,
)
from mak.store.portal import PORTAL_SCHEMA, PortalSql

SCHEMA_VERSION = 1

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS mak_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mak_keys (
    fingerprint TEXT PRIMARY KEY,
    last5 TEXT NOT NULL,
    key_type INTEGER NOT NULL,
    product INTEGER NOT NULL,
    key_limit INTEGER NOT NULL,
    increased INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0,
    expires {real},
    reactivations INTEGER NOT NULL DEFAULT 0,
    created {real} NOT NULL);
CREATE TABLE IF NOT EXISTS mak_increases (
    id {serial},
    fingerprint TEXT NOT NULL REFERENCES mak_keys (fingerprint),
    amount INTEGER NOT NULL,
    at {real} NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mak_machines (
    id {serial},
    fingerprint TEXT NOT NULL REFERENCES mak_keys (fingerprint),
    hardware_id {blob} NOT NULL,
    g0 {blob} NOT NULL, g1 {blob} NOT NULL, g2 {blob} NOT NULL, g3 {blob} NOT NULL,
    machine_name TEXT,
    route TEXT NOT NULL,
    first_at {real} NOT NULL,
    last_at {real} NOT NULL,
    reactivations INTEGER NOT NULL DEFAULT 0,
    UNIQUE (fingerprint, hardware_id));
CREATE INDEX IF NOT EXISTS mak_machines_g0 ON mak_machines (fingerprint, g0);
CREATE INDEX IF NOT EXISTS mak_machines_g1 ON mak_machines (fingerprint, g1);
CREATE INDEX IF NOT EXISTS mak_machines_g2 ON mak_machines (fingerprint, g2);
CREATE INDEX IF NOT EXISTS mak_machines_g3 ON mak_machines (fingerprint, g3);
CREATE TABLE IF NOT EXISTS mak_requests (
    request_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    machine_id INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    at {real} NOT NULL);
"""
    + PORTAL_SCHEMA
)

KEY_COLUMNS = (
    "fingerprint, last5, key_type, product, key_limit, increased, used, blocked,"
    " expires, reactivations, created"
)
#: One indexed search per group (an OR of the four would scan the key's machines).
_CANDIDATES = (
    " UNION ".join(
        "SELECT id, hardware_id, reactivations FROM mak_machines "
        f"WHERE fingerprint = ? AND g{n} = ?"
        for n in range(4)
    )
    + " ORDER BY 1"
)
_INSERT_MACHINE = (
    "INSERT INTO mak_machines (fingerprint, hardware_id, g0, g1, g2, g3, machine_name, route,"
    " first_at, last_at, reactivations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (fingerprint, hardware_id) DO NOTHING RETURNING id"
)
_EARLIER_REQUEST = (
    "SELECT r.fingerprint, r.machine_id, r.verdict, m.hardware_id"
    " FROM mak_requests r JOIN mak_machines m ON m.id = r.machine_id"
    " WHERE r.request_id = ?"
)
MAX_MACHINE_NAME = 63


def key_record(row: Sequence[Any]) -> KeyRecord:
    """A key from its row of ``mak_keys`` (the columns of ``KEY_COLUMNS``, in order)."""
    return KeyRecord(
        fingerprint=row[0],
        last5=row[1],
        type=KeyType(row[2]),
        product=row[3],
        limit=row[4],
        increased=row[5],
        used=row[6],
        blocked=bool(row[7]),
        expires=row[8],
        reactivations=row[9],
        created=row[10],
    )


def iso(seconds: float | None) -> str | None:
    """POSIX seconds as ISO 8601 UTC to the second; None stays None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def parse_iso(text: str | None, field: str) -> float | None:
    """An ISO 8601 time as POSIX seconds (UTC if no zone); ``invalid_field`` otherwise."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # In UTC the date must stay within years 1..9999, or listings could not show it.
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ServiceError(
            "invalid_field",
            f"{field}: {text!r} is not an ISO 8601 time within years 1 to 9999",
            field=field,
        ) from None
    return moment.timestamp()


class SqlStore(PortalSql):
    """The ``Store`` in SQL: the queries, once; subclasses supply connections and transactions."""

    blocking_ok = True
    #: Why the last write failed, until one succeeds ("" : it did not); set by subclasses.
    _failure = ""

    def problem(self) -> str:
        """What keeps the database from serving ("" when it serves; see ``Store``)."""
        if self._failure:
            return self._failure
        try:
            with self._transaction(write=False) as db:
                db.execute("SELECT 1").fetchone()
        except ServiceError as exc:
            return exc.detail or exc.code
        return ""

    # -- what subclasses supply ------------------------------------------------------------

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Executor]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql

    def close(self) -> None:
        """Close every connection (the subclass's)."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------

    def _exec(self, db: Executor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return db.execute(self._q(sql), params)

    def _select_key(self, db: Executor, fingerprint: str, lock: bool = False) -> KeyRecord | None:
        row = self._exec(
            db,
            f"SELECT {KEY_COLUMNS} FROM mak_keys WHERE fingerprint = ?"
            + (self._lock_key if lock else ""),
            (fingerprint,),
        ).fetchone()
        return key_record(row) if row else None

    def _require_key(self, db: Executor, fingerprint: str) -> KeyRecord:
        record = self._select_key(db, fingerprint)
        if record is None:
            raise ServiceError("key_unknown", f"no key with fingerprint {fingerprint}")
        return record

    @contextlib.contextmanager
    def _update_key(self, fingerprint: str) -> Iterator[Executor]:
        with self._transaction(write=True) as db:
            self._require_key(db, fingerprint)
            yield db

    # -- keys ------------------------------------------------------------------------------

    def add_key(self, record: KeyRecord) -> KeyRecord:
        """Insert a new key with nothing used; ``key_exists`` when its fingerprint is known."""
        with self._transaction(write=True) as db:
            self._insert_key(db, record, used=0)
        return record

    def _insert_key(self, db: Executor, record: KeyRecord, used: int) -> bool:
        row = self._exec(
            db,
            f"INSERT INTO mak_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint",
            (
                record.fingerprint,
                record.last5,
                int(record.type),
                record.product,
                record.limit,
                record.increased,
                used,
                int(record.blocked),
                record.expires,
                record.reactivations,
                record.created,
            ),
        ).fetchone()
        if row is None:
            raise ServiceError("key_exists", f"fingerprint {record.fingerprint}")
        return True

    def key(self, fingerprint: str) -> KeyRecord | None:
        """The key with that fingerprint, or None."""
        with self._transaction(write=False) as db:
            return self._select_key(db, fingerprint)

    def keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        with self._transaction(write=False) as db:
            rows = self._exec(
                db, f"SELECT {KEY_COLUMNS} FROM mak_keys ORDER BY created, fingerprint"
            ).fetchall()
        return [key_record(row) for row in rows]

    def increase(self, fingerprint: str, amount: int, now: float, reason: str) -> KeyRecord:
        """Add ``amount`` to the key's increases and record why, in one transaction."""
        with self._update_key(fingerprint) as db:
            self._exec(
                db,
                "UPDATE mak_keys SET increased = increased + ? WHERE fingerprint = ?",
                (amount, fingerprint),
            )
            self._exec(
                db,
                "INSERT INTO mak_increases (fingerprint, amount, at, reason) VALUES (?, ?, ?, ?)",
                (fingerprint, amount, now, reason),
            )
            return self._require_key(db, fingerprint)

    def increases(self, fingerprint: str) -> list[Increase]:
        """The key's increases, oldest first."""
        with self._transaction(write=False) as db:
            rows = self._exec(
                db,
                "SELECT amount, at, reason FROM mak_increases WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [Increase(*row) for row in rows]

    def set_blocked(self, fingerprint: str, blocked: bool) -> KeyRecord:
        """Block or unblock the key; its record after the change."""
        with self._update_key(fingerprint) as db:
            self._exec(
                db,
                "UPDATE mak_keys SET blocked = ? WHERE fingerprint = ?",
                (int(blocked), fingerprint),
            )
            return self._require_key(db, fingerprint)

    def set_expires(self, fingerprint: str, expires: float | None) -> KeyRecord:
        """Set or clear the key's expiry; its record after the change."""
        with self._update_key(fingerprint) as db:
            self._exec(
                db, "UPDATE mak_keys SET expires = ? WHERE fingerprint = ?", (expires, fingerprint)
            )
            return self._require_key(db, fingerprint)

    # -- activation ----------------------------------------------------------------------------

    def activate(
        self,
        fingerprint: str,
        hardware_id: bytes,
        now: float,
        *,
        route: str,
        machine_name: str | None = None,
        request_id: str | None = None,
    ) -> Activation:
        """Decide and record one activation with the key's row held (a known request replays)."""
        if len(hardware_id) != rules.HARDWARE_ID_LENGTH:
            raise ServiceError("invalid_field", "a hardware ID is 10 bytes", field="hardware_id")
        with self._transaction(write=True) as db:
            key = self._select_key(db, fingerprint, lock=True)
            if request_id is not None and key is not None:
                earlier = self._exec(db, _EARLIER_REQUEST, (request_id,)).fetchone()
                if earlier is not None:
                    return replayed(key, earlier, fingerprint, hardware_id)
            groups = rules.hardware_groups(hardware_id)
            params = [v for group in groups for v in (fingerprint, group)]
            rows = self._exec(db, _CANDIDATES, params).fetchall() if key else []
            machines = [MachineRecord(row[0], bytes(row[1]), row[2]) for row in rows]
            decision = rules.decide(key, machines, hardware_id, now)
            if decision.verdict is None:
                assert decision.refusal is not None
                raise ServiceError(decision.refusal, decision.detail)
            assert key is not None
            if decision.machine is None:
                row = self._exec(
                    db,
                    _INSERT_MACHINE,
                    (
                        fingerprint,
                        hardware_id,
                        *groups,
                        short_name(machine_name),
                        route,
                        now,
                        now,
                        0,
                    ),
                ).fetchone()
                if row is None:  # cannot happen while the key's row is held; never count it
                    raise ServiceError("unavailable", "machine recorded concurrently")
                machine_id = int(row[0])
                self._exec(
                    db, "UPDATE mak_keys SET used = used + 1 WHERE fingerprint = ?", (fingerprint,)
                )
                key = dataclasses.replace(key, used=key.used + 1)
            else:
                machine_id = decision.machine.id
                bump = 1 if decision.verdict is Verdict.REACTIVATED else 0
                self._exec(
                    db,
                    "UPDATE mak_machines SET last_at = ?,"
                    " reactivations = reactivations + ? WHERE id = ?",
                    (now, bump, machine_id),
                )
            if request_id is not None:
                self._exec(
                    db,
                    "INSERT INTO mak_requests (request_id, fingerprint, machine_id,"
                    " verdict, at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id) DO NOTHING",
                    (request_id, fingerprint, machine_id, decision.verdict.value, now),
                )
        return Activation(key, decision.verdict, machine_id)

    def machines(self, fingerprint: str) -> list[MachineRow]:
        """The machines counted against a key, first recorded first."""
        with self._transaction(write=False) as db:
            rows = self._exec(
                db,
                "SELECT fingerprint, hardware_id, machine_name, route,"
                " first_at, last_at, reactivations FROM mak_machines"
                " WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [MachineRow(row[0], bytes(row[1]), *row[2:]) for row in rows]

    # -- export and import ------------------------------------------------------------------------

    def export(
        self, *, keys: bool = True, activations: bool = True, machine_names: bool = True
    ) -> dict[str, Any]:
        """Keys (with increases) and activations as one document, machine names optional."""
        document: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "machine_names": machine_names,
        }
        records = self.keys()
        if keys:
            document["keys"] = [
                {
                    **key_json(key),
                    "reactivations": key.reactivations,
                    "created": iso(key.created),
                    "increases": [
                        {"amount": i.amount, "at": iso(i.at), "reason": i.reason}
                        for i in self.increases(key.fingerprint)
                    ],
                }
                for key in records
            ]
        if activations:
            document["activations"] = [
                {
                    "fingerprint": m.fingerprint,
                    "hardware_id": m.hardware_id.hex(),
                    **({"machine_name": m.machine_name} if machine_names else {}),
                    "route": m.route,
                    "first_at": iso(m.first_at),
                    "last_at": iso(m.last_at),
                    "reactivations": m.reactivations,
                }
                for key in records
                for m in self.machines(key.fingerprint)
            ]
        return document

    def import_(self, document: dict[str, Any]) -> ImportReport:
        """Merge an export in one transaction: new keys and machines added, known ones kept."""
        keys, machines = parse_export(document)
        added = kept = machines_added = machines_kept = 0
        with self._transaction(write=True) as db:
            for record, increases in keys:
                if self._select_key(db, record.fingerprint) is not None:
                    kept += 1
                    continue
                self._insert_key(db, record, used=0)
                for increase in increases:
                    self._exec(
                        db,
                        "INSERT INTO mak_increases (fingerprint, amount, at, reason)"
                        " VALUES (?, ?, ?, ?)",
                        (record.fingerprint, increase.amount, increase.at, increase.reason),
                    )
                added += 1
            for m in machines:
                if self._select_key(db, m.fingerprint) is None:
                    raise ServiceError(
                        "invalid_field",
                        f"activation of unknown key {m.fingerprint}",
                        field="activations",
                    )
                row = self._exec(
                    db,
                    _INSERT_MACHINE,
                    (
                        m.fingerprint,
                        m.hardware_id,
                        *rules.hardware_groups(m.hardware_id),
                        m.machine_name,
                        m.route,
                        m.first_at,
                        m.last_at,
                        m.reactivations,
                    ),
                ).fetchone()
                if row is None:
                    machines_kept += 1
                    continue
                machines_added += 1
                self._exec(
                    db,
                    "UPDATE mak_keys SET used = used + 1 WHERE fingerprint = ?",
                    (m.fingerprint,),
                )
        return ImportReport(added, kept, machines_added, machines_kept)


def short_name(machine_name: str | None) -> str | None:
    """A machine name as recorded: at most ``MAX_MACHINE_NAME`` characters, "" as None."""
    return machine_name[:MAX_MACHINE_NAME] if machine_name else None


def replayed(
    key: KeyRecord, earlier: Sequence[Any], fingerprint: str, hardware_id: bytes
) -> Activation:
    """The answer to a repeated ``request_id`` (``earlier``: its key, machine, verdict and
    the machine's hardware ID); ``invalid_field`` when it named another key or machine."""
    if earlier[0] != fingerprint or not same_machine(bytes(earlier[3]), hardware_id):
        raise ServiceError(
            "invalid_field",
            "this request_id was used for another key or machine",
            field="request_id",
        )
    return Activation(key, Verdict(earlier[2]), earlier[1], replayed=True)


def key_json(key: KeyRecord) -> dict[str, Any]:
    """A key as listings show it (cli.md's ``mak keys`` fields, then more)."""
    return {
        "fingerprint": key.fingerprint,
        "last5": key.last5,
        "used": key.used,
        "limit": key.total,
        "remaining": key.remaining,
        "blocked": key.blocked,
        "expires": iso(key.expires),
        "type": key.type.label,
        "product": key.product,
        "base_limit": key.limit,
        "increased": key.increased,
    }


def _want(item: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = item.get(name)
    if (
        not isinstance(value, kind)
        or (isinstance(value, bool) and kind is int)
        or (isinstance(value, int) and not 0 <= value < 2**31)
    ):
        raise ServiceError(
            "invalid_field",
            f"{where}: {name!r} is missing or of the wrong type",
            field=f"{where}.{name}",
        )
    return value


def parse_export(document: Any) -> tuple[list[tuple[KeyRecord, list[Increase]]], list[MachineRow]]:
    """Validate an export document; every problem is an ``invalid_field`` naming where."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ServiceError("invalid_field", f"not a {EXPORT_FORMAT} document", field="format")
    if document.get("version") != EXPORT_VERSION:
        raise ServiceError(
            "invalid_field",
            f"version {document.get('version')!r} is not {EXPORT_VERSION}",
            field="version",
        )
    keys: list[tuple[KeyRecord, list[Increase]]] = []
    for where, item in _objects(document, "keys"):
        try:
            key_type = KeyType.from_label(_want(item, "type", str, where))
        except KeyError:
            raise ServiceError(
                "invalid_field", f"{where}: unknown type", field=f"{where}.type"
            ) from None
        increases = [
            Increase(
                _want(i, "amount", int, where),
                parse_iso(_want(i, "at", str, where), where) or 0.0,
                str(i.get("reason", "")),
            )
            for i in _list(item, "increases")
            if isinstance(i, dict)
        ]
        keys.append(
            (
                KeyRecord(
                    fingerprint=_fingerprint(_want(item, "fingerprint", str, where), where),
                    last5=_want(item, "last5", str, where),
                    type=key_type,
                    product=_want(item, "product", int, where),
                    limit=_want(item, "base_limit", int, where),
                    increased=sum(i.amount for i in increases),
                    blocked=_want({"blocked": False, **item}, "blocked", bool, where),
                    expires=parse_iso(item.get("expires"), f"{where}.expires"),
                    reactivations=_want({"reactivations": 0, **item}, "reactivations", int, where),
                    created=parse_iso(_want(item, "created", str, where), where) or 0.0,
                ),
                increases,
            )
        )
    machines: list[MachineRow] = []
    for where, item in _objects(document, "activations"):
        try:
            hardware_id = bytes.fromhex(_want(item, "hardware_id", str, where))
        except ValueError:
            hardware_id = b""
        if len(hardware_id) != rules.HARDWARE_ID_LENGTH:
            raise ServiceError(
                "invalid_field",
                f"{where}: hardware_id is 20 hex digits",
                field=f"{where}.hardware_id",
            )
        name = item.get("machine_name")
        machines.append(
            MachineRow(
                fingerprint=_fingerprint(_want(item, "fingerprint", str, where), where),
                hardware_id=hardware_id,
                machine_name=str(name)[:MAX_MACHINE_NAME] if name is not None else None,
                route=str(item.get("route", "import")),
                first_at=parse_iso(_want(item, "first_at", str, where), where) or 0.0,
                last_at=parse_iso(_want(item, "last_at", str, where), where) or 0.0,
                reactivations=_want({"reactivations": 0, **item}, "reactivations", int, where),
            )
        )
    return keys, machines


def _list(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name, [])
    if not isinstance(value, list):
        raise ServiceError("invalid_field", f"{name!r} is not a list", field=name)
    return value


def _objects(document: dict[str, Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects of list ``name``, each with where it is (``keys[3]``)."""
    for n, item in enumerate(_list(document, name)):
        where = f"{name}[{n}]"
        if not isinstance(item, dict):
            raise ServiceError("invalid_field", f"{where} is not an object", field=where)
        yield where, item


def _fingerprint(text: str, where: str) -> str:
    if len(text) != 16 or any(c not in "0123456789abcdef" for c in text):
        raise ServiceError(
            "invalid_field",
            f"{where}: a fingerprint is 16 lower-case hex digits",
            field=f"{where}.fingerprint",
        )
    return text
