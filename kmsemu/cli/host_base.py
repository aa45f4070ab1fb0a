"""The ``kmsemu host`` group and what its commands share: where the host's state is.

``serve`` and ``status`` live in ``kmsemu.cli.host``, ``requests`` in
``kmsemu.cli.host_requests``, ``fault`` in ``kmsemu.cli.host_fault``; each registers on
``host`` here, and ``kmsemu.cli.host`` imports the other two.
"""

from __future__ import annotations

from pathlib import Path

import click

from kmsemu.cli.common import kmsemu_home
from kmsemu.errors import LocalError
from kmsemu.host.store import LAB_DB, HostStore, database_path

STATE_HELP = "State directory or SQLite file (default: $KMSEMU_HOME/host)."


def default_state_dir() -> Path:
    """The host's state without ``--state``: ``$KMSEMU_HOME/host``."""
    return kmsemu_home() / "host"


@click.group()
def host() -> None:
    """The KMS host: serve KLP/1 activations and report counts."""


def open_store(state_dir: Path | None, *, read_only: bool = False) -> HostStore:
    """The host's store as ``host status`` finds it: ``--state``, else ``$KMSEMU_HOME/host``,
    else the lab's database when only ``kmsemu lab`` ran (``no_state`` when none is there)."""
    state = state_dir or default_state_dir()
    lab_db = kmsemu_home() / LAB_DB
    if state_dir is None and not database_path(state).exists() and lab_db.exists():
        state = lab_db
    try:
        return HostStore(state, create=False, read_only=read_only)
    except OSError as exc:  # FileNotFoundError; a name too long, a directory not readable
        raise LocalError("no_state", f"looked in {state}") from exc
