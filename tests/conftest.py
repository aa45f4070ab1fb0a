"""Shared fixtures: golden vectors, a host in this process, a host as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kmsemu.catalog import default_catalog
from kmsemu.clock import Clock, OffsetClock, SystemClock
from kmsemu.host.events import EventLog
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import KmsServer, ServerOptions, build_host
from kmsemu.host.store import HostStore
from kmsemu.wire import filetime_from_unix

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
    server: KmsServer | None = None
    process: subprocess.Popen[str] | None = None
    stderr_lines: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return self.address[1]

    def flush(self) -> None:
        """Persist pending state now (in-process hosts only)."""
        assert self.server is not None and self.loop is not None
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (self.server.flush(), done.set()))  # type: ignore[union-attr]
        done.wait(5)


class _LogSink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        pass


def start_inprocess_host(
    state_dir: Path,
    *,
    secrets: list[str] | None = None,
    settings: HostSettings | None = None,
    clock_offset: float = 0.0,
    options: ServerOptions | None = None,
    clock: Clock | None = None,
) -> tuple[RunningHost, Any]:
    """Run a real server on a background event loop thread; returns (host, stop)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}
    sink = _LogSink()
    clock = OffsetClock(clock or SystemClock(), clock_offset)

    async def main() -> None:
        store = HostStore(state_dir)
        kms = build_host(
            store, default_catalog(), settings or HostSettings(), secrets or ["kmsemu-lab"], clock
        )
        server = KmsServer(
            kms,
            store,
            EventLog(sink, "text"),
            options or ServerOptions(),
            now=lambda: filetime_from_unix(clock.now()),
        )
        bound = await server.start([("127.0.0.1", 0)])
        holder.update(server=server, address=bound[0], store=store, stop=asyncio.Event())
        ready.set()
        await holder["stop"].wait()
        await server.close()
        store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(READY_TIMEOUT):
        raise RuntimeError("in-process host did not start")
    host = RunningHost(holder["address"], state_dir, server=holder["server"], loop=loop)
    host.stderr_lines = sink.lines

    def stop() -> None:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)

    return host, stop


@pytest.fixture
def inprocess_host(tmp_path: Path) -> Iterator[RunningHost]:
    host, stop = start_inprocess_host(tmp_path / "host")
    try:
        yield host
    finally:
        stop()


def kmsemu_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmsemu", *args]


def start_host_process(
    state_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> RunningHost:
    """``kmsemu host serve`` as a real process; returns once it prints its ready line."""
    proc = subprocess.Popen(
        kmsemu_command(
            "host", "serve", "--listen", "127.0.0.1:0", "--state", str(state_dir), *extra
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    timer = threading.Timer(READY_TIMEOUT, proc.kill)
    timer.start()
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("ready kms-host "):
                host_text, _, port = line.split()[2].rpartition(":")
                break
        else:
            raise RuntimeError("host exited before it was ready:\n" + "\n".join(lines))
    finally:
        timer.cancel()
    host = RunningHost((host_text, int(port)), state_dir, process=proc, stderr_lines=lines)
    # keep draining stderr so the host never blocks on a full pipe
    threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
    return host


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
