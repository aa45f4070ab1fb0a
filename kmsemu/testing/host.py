"""A real KMS host on 127.0.0.1 (port 0), served from a background thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog, default_catalog
from kmsemu.clock import Clock, OffsetClock, SystemClock
from kmsemu.host.events import EventLog
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import KmsServer, ServerOptions, build_host
from kmsemu.host.store import HostStore
from kmsemu.klp.envelope import DEFAULT_SECRET
from kmsemu.wire import filetime_from_unix

T = TypeVar("T")
START_TIMEOUT = 20.0


class _Lines:
    """A stream that keeps what the host logs, line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        pass


class BackgroundHost:
    """Start with ``start()`` or ``with BackgroundHost(dir) as host:``; stop with ``stop()``.

    ``address`` is ``(host, port)``; ``set_min_count`` and ``set_clock_offset``
    change the running host; ``log_lines`` holds what it logged (after ``flush``).
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        secrets: tuple[str, ...] | list[str] = (DEFAULT_SECRET,),
        settings: HostSettings | None = None,
        clock: Clock | None = None,
        clock_offset: float = 0.0,
        options: ServerOptions | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.secrets = tuple(secrets)
        self.clock = OffsetClock(clock or SystemClock(), clock_offset)
        self._settings = settings or HostSettings()
        self._options = options or ServerOptions()
        self._catalog = catalog or default_catalog()
        self._sink = _Lines()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self.server: KmsServer | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> BackgroundHost:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            store = HostStore(self.state_dir)
            try:
                kms = build_host(
                    store, self._catalog, self._settings, list(self.secrets), self.clock
                )
                self.server = KmsServer(
                    kms,
                    store,
                    EventLog(self._sink, "text"),
                    self._options,
                    now=lambda: filetime_from_unix(self.clock.now()),
                )
                self.address = (await self.server.start([("127.0.0.1", 0)]))[0]
                self._stopping = asyncio.Event()
            except BaseException as exc:
                failure.append(exc)
                store.close()
                raise
            finally:
                ready.set()
            await self._stopping.wait()
            await self.server.close()
            store.close()

        self._thread = threading.Thread(
            target=self._run, args=(main(),), daemon=True, name="kmsemu-host"
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the KMS host did not start")
        if failure:
            raise failure[0]
        return self

    def _run(self, main: object) -> None:
        try:
            self._loop.run_until_complete(main)  # type: ignore[arg-type]
        except BaseException:  # reported to start() already
            pass
        finally:
            self._loop.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> BackgroundHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use --------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def secret(self) -> str:
        return self.secrets[0]

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``, as ``kmsemu client activate --host`` and ``slmgr /skms`` take it."""
        return format_address(*self.address)

    @property
    def log_lines(self) -> list[str]:
        return self._sink.lines

    def set_min_count(self, count: int) -> None:
        """Report at least ``count`` from now on (0: the real count)."""

        def change() -> None:
            rules = self._server().host.rules
            rules.settings = dataclasses.replace(rules.settings, min_count=count)

        self._call(change)

    def set_clock_offset(self, seconds: float) -> None:
        """Run the host clock ``seconds`` off real time (5 * 3600: a host five hours ahead)."""
        self.clock.offset = seconds

    def flush(self) -> None:
        """Write pending state and log lines now."""
        self._call(lambda: self._server().flush())

    def _server(self) -> KmsServer:
        if self.server is None:
            raise RuntimeError("the host is not running")
        return self.server

    def _call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the host's event loop thread and return its result."""
        if self._thread is None:
            raise RuntimeError("the host is not running")
        done = threading.Event()
        result: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(func())
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the host did not answer")
        if errors:
            raise errors[0]
        return result[0]
