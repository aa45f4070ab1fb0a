"""Faults survived, nothing lost (issue 17.3): the KMS host's store fails again and again.

What must hold, written out here: the failure is logged once (not at every flush) with the
rows waiting, counted; the rows kept in memory are bounded: past the bound the host takes
no new connection and answers no request (a client sees 0xC004F074, nothing is counted);
when the store takes rows again the host says so and serves, and every request it answered
is in the request log once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import kmsemu.host.server as server_module
from kmsemu.cli import main
from kmsemu.host.options import ServerOptions
from kmsemu.host.store import HostStore
from kmsemu.testing import BackgroundHost

BOUND = 4


def activate(host: BackgroundHost) -> Result:
    return CliRunner().invoke(
        main,
        [
            "client", "activate", "--host", host.host_port, "--product", "windows-11-pro",
            "--required-count", "1", "--timeout", "2", "--json",
        ],
    )  # fmt: skip


def wait_until(what: Callable[[], bool], text: str) -> None:
    deadline = time.monotonic() + 10
    while not what():
        assert time.monotonic() < deadline, text
        time.sleep(0.01)


def test_a_store_that_keeps_failing_is_bounded_reported_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_PENDING_ROWS", BOUND)
    host = BackgroundHost(tmp_path / "host", options=ServerOptions(flush_interval=0.02))
    answered = 0
    with host:
        server = host.server
        assert server is not None and server.store is not None
        store: Any = server.store
        real_save = store.save_rows
        failing = True

        def save_rows(*args: Any) -> None:
            if failing:
                raise sqlite3.OperationalError("database or disk is full")
            real_save(*args)

        store.save_rows = save_rows
        for _ in range(BOUND):
            assert activate(host).exit_code == 0
            answered += 1
        wait_until(lambda: server.backlogged, "the host never reached its bound")
        refused = activate(host)
        assert refused.exit_code == 1
        assert json.loads(refused.stdout)["error"]["hresult"] == "0xC004F074"
        assert server.pending_rows == BOUND  # nothing more taken
        assert server.store_failure == "OperationalError: database or disk is full"
        wait_until(lambda: server.store_failures >= 3, "the flush loop stopped trying")
        failing = False  # space returns
        wait_until(lambda: not server.backlogged and not server.store_failure, "no recovery")
        assert activate(host).exit_code == 0
        answered += 1
    lines = list(host.log_lines)  # all of them: the stop flushed the log
    failed = [line for line in lines if " flush-failed " in line]
    assert len(failed) == 1, failed  # once, not at every flush
    assert "pending=" in failed[0] and "refusing=" in failed[0]
    assert sum(" flush-recovered " in line for line in lines) == 1
    assert sum('reason="store backlog"' in line for line in lines) >= 1
    stored = HostStore(tmp_path / "host", create=False, read_only=True)
    try:
        assert stored.request_totals()[0] == answered  # every answer in the log, once
    finally:
        stored.close()
