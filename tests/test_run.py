"""The runtime layer (``kmsemu.run``): signals before readiness, state of a failed start,
servers on background threads, the loop choice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kmsemu.run.background import ServerThread
from kmsemu.run.loop import loop_factory
from kmsemu.run.state import discarded_on_failure

SIGNAL_AT_READY = """
import asyncio, os, signal
from kmsemu.run.signals import serve_until_signal

def announce():
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIG{name})  # the very moment readiness is announced

got = asyncio.run(serve_until_signal(announce))
print("stopped by", got.name, flush=True)
"""


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_signal_sent_as_ready_is_announced_stops_cleanly(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_READY.format(name=name)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (0, f"ready\nstopped by SIG{name}\n"), done.stderr


def test_sighup_calls_reload_and_keeps_serving() -> None:
    code = """
import asyncio, os, signal
from kmsemu.run.signals import until_signal

async def main():
    reloads = []
    with until_signal(reload=lambda: reloads.append(1)) as stopper:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0)  # the loop runs the handler
        while not reloads:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        print(len(reloads), (await stopper.wait()).name)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "1 SIGTERM\n"), done.stderr


def test_a_failed_start_takes_away_what_it_made_and_nothing_else(tmp_path: Path) -> None:
    kept = tmp_path / "old.sqlite3"
    kept.write_text("old")
    new = tmp_path / "home" / "host" / "host.sqlite3"
    with pytest.raises(OSError), discarded_on_failure(new, kept):
        new.parent.mkdir(parents=True)
        new.write_text("new")
        Path(f"{new}-wal").write_text("wal")
        kept.write_text("changed")
        raise OSError("address in use")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite3"]  # home/ is gone
    assert kept.read_text() == "changed"  # what existed is never removed


def test_a_start_that_succeeds_keeps_its_state(tmp_path: Path) -> None:
    new = tmp_path / "host" / "host.sqlite3"
    with discarded_on_failure(new):
        new.parent.mkdir()
        new.write_text("new")
    assert new.read_text() == "new"


class _Echo(ServerThread):
    """A server whose start fails when told to; it counts what ``call`` runs on its loop."""

    name = "echo"

    def __init__(self, fail: bool = False) -> None:
        super().__init__(loop="asyncio")
        self.fail = fail
        self.loop_thread: str | None = None

    async def serve(self, ready: Callable[[], None]) -> None:
        if self.fail:
            raise OSError("cannot bind")
        self.loop_thread = threading.current_thread().name
        ready()
        await self.stopping.wait()


def test_a_background_server_runs_calls_on_its_own_loop_and_stops() -> None:
    with _Echo() as server:
        assert server.running
        assert server.call(lambda: threading.current_thread().name) == "echo"
        assert server.call(lambda: asyncio.get_running_loop().is_running())
    assert not server.running


def test_a_background_server_that_cannot_start_says_why() -> None:
    with pytest.raises(OSError, match="cannot bind"):
        _Echo(fail=True).start()


def test_the_loop_choice() -> None:
    assert loop_factory("asyncio")[0] == "asyncio"
    name, factory = loop_factory("auto")
    loop = factory()
    try:
        assert name in ("uvloop", "asyncio")
        assert (type(loop).__module__.startswith("uvloop")) == (name == "uvloop")
    finally:
        loop.close()
    with pytest.raises(ValueError):
        loop_factory("trio")


def test_stop_signals_are_the_two_a_process_manager_sends() -> None:
    from kmsemu.run.signals import STOP_SIGNALS

    assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGINT}
