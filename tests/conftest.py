"""Shared fixtures: golden vectors, a host in this process, a host as a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kmsemu.clock import Clock
from kmsemu.host.options import ServerOptions
from kmsemu.host.rules import HostSettings
from kmsemu.keys.product_key import ALPHABET, normalise
from kmsemu.testing import BackgroundHost

#: ``postgres_url`` and ``postgres_db_url``: a throwaway PostgreSQL server (tests/ is on sys.path)
pytest_plugins = ["conftest_postgres"]

VECTORS = Path(__file__).parent / "vectors"
READY_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def klp_vectors() -> dict[str, Any]:
    return json.loads((VECTORS / "klp-v1.json").read_text())


@dataclass
class RunningHost:
    """A KMS host serving on 127.0.0.1 (port chosen by the OS)."""

    address: tuple[str, int]
    state_dir: Path
    background: BackgroundHost | None = None
    process: subprocess.Popen[str] | None = None
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.address[1]

    def flush(self) -> None:
        """Persist pending state and log lines now (in-process hosts only)."""
        assert self.background is not None
        self.background.flush()


def start_inprocess_host(
    state_dir: Path,
    *,
    secrets: list[str] | None = None,
    settings: HostSettings | None = None,
    clock_offset: float = 0.0,
    options: ServerOptions | None = None,
    clock: Clock | None = None,
) -> tuple[RunningHost, Callable[[], None]]:
    """A real server on a background event-loop thread (the package's ``BackgroundHost``)."""
    background = BackgroundHost(
        state_dir,
        secrets=secrets or ["kmsemu-lab"],
        settings=settings,
        clock=clock,
        clock_offset=clock_offset,
        options=options,
    ).start()
    host = RunningHost(
        background.address, state_dir, background=background, stderr_lines=background.log_lines
    )
    return host, background.stop


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``KMSEMU_HOME`` for CLI calls in this process (no secret or profile from the
    environment). A test module may define its own ``home``; it then wins."""
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KMSEMU_SECRET", raising=False)
    monkeypatch.delenv("KMSEMU_PROFILE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def inprocess_host(tmp_path: Path) -> Iterator[RunningHost]:
    host, stop = start_inprocess_host(tmp_path / "host")
    try:
        yield host
    finally:
        stop()


def kmsemu_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmsemu", *args]


def start_until_ready(
    command: list[str],
    ready: str,
    env: dict[str, str] | None = None,
    *,
    cwd: Path | None = None,
    base_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Start a server process (environment: ``base_env``, default ours, plus ``env``);
    return it, the rest of its ``ready <what>`` line, and its stderr lines (kept up to date
    by a thread that drains the pipe)."""
    base = dict(os.environ) if base_env is None else base_env
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    timer = threading.Timer(READY_TIMEOUT, proc.kill)
    timer.start()
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(ready + " "):
                rest = line[len(ready) + 1 :].strip()
                break
        else:
            raise RuntimeError(f"{command[3:5]} exited before it was ready:\n" + "\n".join(lines))
    finally:
        timer.cancel()
    # keep draining stderr so the server never blocks on a full pipe
    threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
    return proc, rest, lines


def start_host_process(
    state_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> RunningHost:
    """``kmsemu host serve`` as a real process; returns once it prints its ready line."""
    proc, rest, lines = start_until_ready(
        kmsemu_command(
            "host", "serve", "--listen", "127.0.0.1:0", "--state", str(state_dir), *extra
        ),
        "ready kms-host",
        env,
    )
    host_text, _, port = rest.split()[0].rpartition(":")
    return RunningHost((host_text, int(port)), state_dir, process=proc, stderr_lines=lines)


def mint_mak_key(product: str = "windows-11-pro") -> str:
    """A lab MAK of a catalog product (the same one for every call: each test has a store
    of its own)."""
    from kmsemu.catalog import default_catalog
    from kmsemu.keys.product_key import KeyType, mint

    return str(mint(KeyType.MAK, default_catalog().find(product).number, 1))


@dataclass
class RunningMak:
    """``kmsemu mak serve`` as a real process."""

    url: str
    process: subprocess.Popen[str]
    stderr_lines: list[str]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of ``url``."""
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def start_mak_process(
    home: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> RunningMak:
    """``kmsemu mak serve --port 0`` with ``KMSEMU_HOME=home``, once it is ready."""
    proc, rest, lines = start_until_ready(
        kmsemu_command("mak", "serve", "--port", "0", "--quiet", *extra),
        "ready mak",
        {"KMSEMU_HOME": str(home), **(env or {})},
    )
    return RunningMak(rest.split()[0], proc, lines)


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))


def stop_host_process(host: RunningHost, timeout: float = 10.0) -> int:
    assert host.process is not None
    if host.process.poll() is None:
        host.process.terminate()
    return host.process.wait(timeout)


@pytest.fixture
def host_process(tmp_path: Path) -> Iterator[RunningHost]:
    host = start_host_process(tmp_path / "host", "--idle-timeout", "5")
    try:
        yield host
    finally:
        stop_host_process(host)


def mistype_key(key: str, position: int = 13) -> str:
    """The key with the symbol at ``position`` (1-based, no dashes) replaced by its
    neighbour in the alphabet: what a slip of the finger or the eye gives."""
    symbols = normalise(key)
    i = position - 1
    neighbour = ALPHABET[(ALPHABET.index(symbols[i]) + 1) % len(ALPHABET)]
    typed = symbols[:i] + neighbour + symbols[i + 1 :]
    return "-".join(typed[n : n + 5] for n in range(0, 25, 5))


def closed_url() -> tuple[socket.socket, str]:
    """A port that refuses connections (bound, never listening) while the socket lives."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_into_a_taken_port(
    argv: Callable[[int], list[str]], home: Path
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the kmsemu command ``argv(port)`` (``KMSEMU_HOME=home``) while something else
    listens on ``port`` of 127.0.0.1; the finished process and the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            kmsemu_command(*argv(port)),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "KMSEMU_HOME": str(home)},
        )
    return done, port
