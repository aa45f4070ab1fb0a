"""A throwaway PostgreSQL server for the tests (registered by ``conftest.py``).

``postgres_url`` (session): ``KMSEMU_TEST_POSTGRES_URL`` when set; otherwise a
private server started from the newest ``/usr/lib/postgresql/*/bin`` (``initdb``
into a temporary directory, in ``/dev/shm`` when there is room; trust
authentication for user ``kmsemu``; no fsync; listening on 127.0.0.1 on a free port
and in a private socket directory), stopped and removed when the session ends.
Tests using it skip when there are no server binaries (``apt-get install
postgresql``; ``scripts/test`` installs it).

PostgreSQL refuses to run as root: as root, ``initdb`` and ``postgres`` run as
the ``postgres`` system user, in a directory under ``/tmp`` owned by it
(pytest's own temporary directories are private to root).

``postgres_db_url`` (function): a fresh, empty database on that server, dropped
afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

URL_VARIABLE = "KMSEMU_TEST_POSTGRES_URL"
BINARIES = "/usr/lib/postgresql/*/bin"
USER = "kmsemu"
#: Upper bounds, never waited out when things go well (polling every 50 ms).
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
START_ATTEMPTS = 3
SCRATCH = "/dev/shm"
SCRATCH_ROOM = 512 << 20


def find_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``postgres`` and ``initdb``."""
    found = []
    for directory in glob.glob(BINARIES):
        path = Path(directory)
        if all(os.access(path / name, os.X_OK) for name in ("postgres", "initdb")):
            version = tuple(int(n) for n in re.findall(r"\d+", path.parent.name))
            found.append((version, path))
    return max(found)[1] if found else None


@dataclass
class _RunAs:
    """Who runs the server: this process, or (as root) the ``postgres`` system user."""

    uid: int | None = None
    gid: int | None = None

    def popen_args(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "running as root and there is no 'postgres' system user to run the "
            "PostgreSQL server as (apt-get install postgresql creates it)"
        )
    return _RunAs(account.pw_uid, account.pw_gid)


def _scratch_parent() -> str | None:
    """``/dev/shm`` when it has room: in memory, CREATE DATABASE takes 10 ms rather than
    300 ms on a disk even with fsync off. None: the usual temporary directory."""
    try:
        room = os.statvfs(SCRATCH)
    except OSError:
        return None
    if os.access(SCRATCH, os.W_OK | os.X_OK) and room.f_bavail * room.f_frsize >= SCRATCH_ROOM:
        return SCRATCH
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """True once a connection succeeds; False when the server exited (e.g. port taken)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process.poll() is not None:
            return False
        try:
            with psycopg.connect(url, connect_timeout=2) as db:
                db.execute("SELECT 1")
            return True
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError(
                    f"PostgreSQL not ready after {READY_TIMEOUT:.0f} s ({exc}):\n{_log_tail(log)}"
                ) from None
        time.sleep(0.05)


@contextlib.contextmanager
def throwaway_server(binaries: Path) -> Iterator[PgServer]:
    """initdb, start, yield the server (``url``: database ``postgres``); stop and remove on
    exit."""
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="kmsemu-pg-", dir=_scratch_parent()))
    try:
        run_as.own(base)
        data, sockets, log = base / "data", base / "sock", base / "postgres.log"
        sockets.mkdir()
        run_as.own(sockets)
        initdb = subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                USER,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
            **run_as.popen_args(),
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}"
            )
        server = PgServer(binaries, base, run_as)
        for _attempt in range(START_ATTEMPTS):  # the free port may be taken meanwhile
            if server.start(_free_port()):
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start:\n{_log_tail(log)}")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class PgServer:
    """A throwaway server's process: ``url`` while it runs; ``restart`` stops it (fast
    shutdown: sessions are cut) and starts it again on the same port and data."""

    binaries: Path
    base: Path
    run_as: _RunAs
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def start(self, port: int) -> bool:
        """Start on ``port``; False when it exited at once (the port taken)."""
        self.port = port
        log = self.base / "postgres.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    str(self.binaries / "postgres"), "-D", str(self.base / "data"),
                    "-k", str(self.base / "sock"), "-p", str(port),
                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                    "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=300",
                ],
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.run_as.popen_args(),
            )  # fmt: skip
        try:
            return _wait_ready(self.process, self.url, log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def restart(self) -> None:
        self.stop()
        if not self.start(self.port):
            raise RuntimeError(
                f"PostgreSQL did not restart:\n{_log_tail(self.base / 'postgres.log')}"
            )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this session: ``$KMSEMU_TEST_POSTGRES_URL`` or a throwaway one."""
    external = os.environ.get(URL_VARIABLE)
    if external:
        yield external
        return
    binaries = find_binaries()
    if binaries is None:
        pytest.skip(
            "PostgreSQL server binaries not found (apt-get install postgresql): "
            f"no {BINARIES}/postgres and initdb; or set {URL_VARIABLE}"
        )
    with throwaway_server(binaries) as server:
        yield server.url


@pytest.fixture
def restartable_postgres() -> Iterator[PgServer]:
    """A throwaway server of this test's own, so that it can be restarted under load."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    with throwaway_server(binaries) as server:
        yield server


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


_databases = itertools.count()


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped after the test."""
    # unique across runs too: an external server may outlive this session
    name = f"test_{next(_databases)}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_url, name)
    finally:
        # best effort: FORCE ends connections a test left open (PostgreSQL 13 and newer)
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(postgres_url, autocommit=True) as db,
        ):
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
