"""A real server on a background thread: its own event loop, started and stopped from
the caller's thread (tests, the pytest plugin, the simulator's network mode).

A subclass writes ``serve(ready)``: start the server, call ``ready()``, then
``await self.stopping.wait()`` and close. ``start()`` returns once ``ready()`` ran
and re-raises whatever stopped the start; ``stop()`` ends ``serve`` and joins the
thread; ``call(func)`` runs ``func`` on the server's loop and returns its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self, TypeVar

from kmsemu.run.loop import new_event_loop

T = TypeVar("T")
#: Seconds to wait for a start, a stop, or a ``call``.
TIMEOUT: Final = 20.0


class ServerThread:
    """Base of the background servers; use as a context manager or ``start()``/``stop()``."""

    name = "kmsemu-server"

    def __init__(self, loop: str = "auto") -> None:
        self._loop = new_event_loop(loop)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.stopping = asyncio.Event()  # set through the loop, from the caller's thread

    async def serve(self, ready: Callable[[], None]) -> None:
        """Start the server, call ``ready()``, wait for ``self.stopping``, close."""
        raise NotImplementedError

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Run ``serve`` on a new thread; return once it is ready, or raise why it is not."""
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError(f"{self.name} did not start within {TIMEOUT:.0f} s")
        if self._failure is not None:
            self._thread.join(TIMEOUT)
            self._thread = None
            raise self._failure
        return self

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self.serve(self._ready.set)
            except BaseException as exc:
                if not self._ready.is_set():
                    self._failure = exc  # start() raises it
                raise
            finally:
                self._ready.set()

        try:
            self._loop.run_until_complete(main())
        except BaseException:  # a start failure reaches start(); a later one ends the thread
            pass
        finally:
            self._loop.close()

    def stop(self) -> None:
        """End ``serve`` (it closes its server) and wait for the thread."""
        if self._thread is None:
            return
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stopping.set)
        self._thread.join(TIMEOUT)
        self._thread = None

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._thread is not None

    def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the server's loop thread and return its result (or raise)."""
        if self._thread is None:
            raise RuntimeError(f"{self.name} is not running")
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
        if not done.wait(TIMEOUT):
            raise RuntimeError(f"{self.name} did not answer")
        if errors:
            raise errors[0]
        return result[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
