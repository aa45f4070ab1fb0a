"""Opening a MAK store of either backend, for the store tests of both MAK and portal."""

from __future__ import annotations

from pathlib import Path

import pytest

from mak.store.postgres import PostgresStore
from mak.store.sql import SqlStore
from mak.store.sqlite import SqliteStore

BACKENDS = ["sqlite", "postgres"]
OTHER = {"sqlite": "postgres", "postgres": "sqlite"}


def open_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, name: str = "mak.sqlite3"
) -> SqlStore:
    """A fresh store: SQLite in ``tmp_path``, or a throwaway PostgreSQL database (the
    ``postgres_db_url`` fixture, which skips with its reason where there is none)."""
    if backend == "sqlite":
        return SqliteStore(tmp_path / name)
    return PostgresStore(request.getfixturevalue("postgres_db_url"))
