"""A throwaway PostgreSQL cluster: initdb into a temporary directory, removed at the end.

The server preloads ``pg_stat_statements`` when the installation has it (Debian's
postgresql package does), so ``statements`` can count the statements a database was
sent: with autocommit and no pipelining, one statement is one round trip (BEGIN and
COMMIT count as statements of their own).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit.env import apt_install
from benchkit.procs import free_port, tree_cpu
from benchkit.waits import Cpus, pinned


def find_pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with postgres and initdb, else pg_config's."""

    def version(path: str) -> tuple[int, ...]:
        digits = re.findall(r"\d+", Path(path).parent.name)
        return tuple(int(d) for d in digits) or (0,)

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(candidate) / exe, os.X_OK) for exe in ("postgres", "initdb")):
            return Path(candidate)
    for exe in ("initdb", "postgres"):
        found = shutil.which(exe)
        if found and (Path(found).resolve().parent / "postgres").exists():
            return Path(found).resolve().parent
    return None


def ensure_postgres() -> Path | None:
    """PostgreSQL's bin directory; installed with apt-get (as root) when missing."""
    bindir = find_pg_bindir()
    if bindir is None and apt_install("postgresql", "PostgreSQL"):
        bindir = find_pg_bindir()
    return bindir


class PgCluster:
    """initdb into a temporary directory, postgres on 127.0.0.1:FREEPORT, removed in stop()."""

    def __init__(self, bindir: Path, cpus: Cpus) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mak-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.postmaster = 0
        self.numbered = 0
        #: Whether ``statements`` can count (pg_stat_statements loaded and created).
        self.counts_statements = False
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")  # KeyError: no postgres user
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        try:
            self._start(cpus)
        except BaseException:
            self.stop()
            raise

    def _start(self, cpus: Cpus) -> None:
        initdb = subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        preload = (
            ["-c", "shared_preload_libraries=pg_stat_statements"]
            if self._has_extension("pg_stat_statements")
            else []
        )
        self.proc = subprocess.Popen(
            [
                *self.as_user,
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.dir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                *preload,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=pinned(cpus),
        )
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as db:
                    db.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError("PostgreSQL did not start:\n" + log) from None
                time.sleep(0.1)
        self.postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        if preload:
            self._admin("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.counts_statements = True

    def _has_extension(self, name: str) -> bool:
        """Whether the installation ships extension ``name`` (pg_config --sharedir)."""
        try:
            share = subprocess.run(
                [str(self.bindir / "pg_config"), "--sharedir"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return False
        return (Path(share) / "extension" / f"{name}.control").exists()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, *statements: str) -> list[Any]:
        import psycopg

        out = []
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as db:
            for statement in statements:
                cursor = db.execute(statement)
                out.append(cursor.fetchall() if cursor.description else None)
        return out

    def create_database(self, fast: bool) -> str:
        self.numbered += 1
        name = f"bench_{self.numbered}"
        fast_too = [f"ALTER DATABASE {name} SET synchronous_commit = off"] if fast else []
        self._admin(f"CREATE DATABASE {name}", *fast_too)
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def settings(self) -> dict[str, str]:
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "shared_buffers",
            "max_connections",
            "wal_level",
        )
        rows = self._admin(*(f"SHOW {n}" for n in names))
        return {n: str(r[0][0]) for n, r in zip(names, rows, strict=True)}

    def statements(self, database: str) -> int | None:
        """Statements database ``database`` has run since the cluster started (its top-level
        ones, BEGIN and COMMIT included); None when pg_stat_statements is not there."""
        if not self.counts_statements:
            return None
        rows = self._admin(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s"
            f" JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{database}'"
        )
        return int(rows[0][0][0])

    def cpu_seconds(self) -> float:
        return tree_cpu(self.postmaster)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), then harder; the directory removed."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                target = self.postmaster or self.proc.pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
