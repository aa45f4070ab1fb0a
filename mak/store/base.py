"""The MAK store interface, and what crosses it.

Two implementations share one contract test suite: SQLite (``sqlite.py``,
the default, embedded) and PostgreSQL (``postgres.py``, several service
processes on one database). Both are thin: the SQL and the use of
``mak.rules`` live once, in ``sql.py``, except PostgreSQL's activation,
which is one call of a server-side function (``pg_activate.py``) whose
answers are checked against ``mak.rules``.

Every method is synchronous. ``blocking_ok`` tells the service whether a
call may run on its event loop (SQLite: one connection, short transactions)
or must go to a worker thread (PostgreSQL: a network round trip). A store
that can decide several activations of one key in one call is a
``CombiningStore``.

Atomicity: ``activate`` reads the key, its candidate machines and any
earlier answer to the same ``request_id``, decides with ``mak.rules``, and
writes, all in one transaction that holds the key's row; concurrent
activations of one key are serialised by the database, in one process or
several (PostgreSQL may do several of one key's activations in one such
transaction, one after another). Nothing here ever sees a whole key: only
its fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kmsemu.errors import ServiceError
from mak.rules import KeyRecord, Verdict

EXPORT_FORMAT = "kmsemu-mak-export"
EXPORT_VERSION = 1


class Cursor(Protocol):
    """A DB-API cursor, as far as the stores read one."""

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...


class Executor(Protocol):
    """A DB-API connection as the stores use it (sqlite3's and psycopg's both fit)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor:
        """Run one statement with ``?`` placeholders; a cursor over its rows."""
        ...


@dataclass(frozen=True, slots=True)
class Activation:
    """A successful activation: what was decided and what the key has left."""

    key: KeyRecord
    verdict: Verdict
    machine_id: int
    #: True when this answer repeats an earlier request with the same ``request_id``.
    replayed: bool = False

    @property
    def counted(self) -> bool:
        """Whether this answer used one of the key's machines (a new one, not a replay)."""
        return self.verdict is Verdict.NEW and not self.replayed


@dataclass(frozen=True, slots=True)
class Pending:
    """One activation to decide, as a store that combines a key's activations takes it."""

    hardware_id: bytes
    now: float
    route: str
    machine_name: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class MachineRow:
    """A machine counted against a key, as listings and exports show it."""

    fingerprint: str
    hardware_id: bytes
    machine_name: str | None
    route: str
    first_at: float
    last_at: float
    reactivations: int


@dataclass(frozen=True, slots=True)
class Increase:
    """An increase granted to a key: how many machines, when, and why."""

    amount: int
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: keys and activations added, and those already known."""

    keys_added: int = 0
    keys_kept: int = 0
    activations_added: int = 0
    activations_kept: int = 0

    def to_json(self) -> dict[str, int]:
        """The report as the API answers it."""
        return {
            "keys_added": self.keys_added,
            "keys_kept": self.keys_kept,
            "activations_added": self.activations_added,
            "activations_kept": self.activations_kept,
        }


class WouldWait(Exception):
    """A write found the database locked inside a store's ``without_waiting`` block (SQLite,
    called on the event loop); nothing was written: run the call where waiting is fine."""


class Store(Protocol):
    """Keys, machines and increases, changed only inside transactions."""

    #: True when calls are quick enough to run on the event loop.
    blocking_ok: bool

    def add_key(self, record: KeyRecord) -> KeyRecord:
        """Register a key; ``ServiceError("key_exists")`` when its fingerprint is known."""
        ...

    def key(self, fingerprint: str) -> KeyRecord | None:
        """The key with that fingerprint, or None."""
        ...

    def keys(self) -> list[KeyRecord]:
        """Every registered key."""
        ...

    def increase(self, fingerprint: str, amount: int, now: float, reason: str) -> KeyRecord:
        """Grant ``amount`` more machines, recorded with ``reason``; ``key_unknown`` if none."""
        ...

    def increases(self, fingerprint: str) -> list[Increase]:
        """The key's increases, oldest first."""
        ...

    def set_blocked(self, fingerprint: str, blocked: bool) -> KeyRecord:
        """Block or unblock a key; the record as it is now."""
        ...

    def set_expires(self, fingerprint: str, expires: float | None) -> KeyRecord:
        """Set or clear a key's expiry; the record as it is now."""
        ...

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
        """Count (or not) one activation, atomically; ``ServiceError`` when refused."""
        ...

    def machines(self, fingerprint: str) -> list[MachineRow]:
        """The machines counted against a key."""
        ...

    def export(
        self, *, keys: bool = True, activations: bool = True, machine_names: bool = True
    ) -> dict[str, Any]:
        """Keys and activations as one document ``import_`` reads back."""
        ...

    def import_(self, document: dict[str, Any]) -> ImportReport:
        """Merge an export: new keys and machines are added, known ones kept; idempotent."""
        ...

    def close(self) -> None:
        """Close every connection the store opened."""
        ...

    def problem(self) -> str:
        """What keeps the database from serving ("" when it serves): the failure of the
        last write until a write succeeds again (a full disk lets reads through), else a
        read that fails now (``/readyz``)."""
        ...


@runtime_checkable
class CombiningStore(Store, Protocol):
    """A store that decides several activations of one key in one call (PostgreSQL: one
    round trip), so that the service can gather them where they arrive (``mak.web.combine``)."""

    def activate_many(
        self, fingerprint: str, batch: Sequence[Pending]
    ) -> list[Activation | ServiceError]:
        """Each activation of ``batch`` decided in order, as ``activate`` would one after
        another: its answer, or the refusal it met."""
        ...
