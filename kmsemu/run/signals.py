"""Serve until a signal: handlers first, then ``ready``, then wait.

A process that prints ``ready`` before it handles SIGTERM dies of the default action
if the signal comes in between, skipping its final flush (and exiting -15). Here the
handlers are installed, then ``announce`` runs, then we wait. Keep the ``until_signal``
block around the shutdown too: a second signal while closing is then absorbed instead
of killing the process halfway through its last write.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Stopper:
    """What ``until_signal`` yields: ``stopped`` is set by SIGTERM/SIGINT (or ``stop()``)."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.signal: signal.Signals | None = None

    def stop(self, sig: signal.Signals | None = None) -> None:
        """Stop as a signal would (tests, and a server that fails while running)."""
        self.signal = sig
        self.stopped.set()

    async def wait(self) -> signal.Signals | None:
        """Until stopped; returns the signal that stopped us (None: ``stop()``)."""
        await self.stopped.wait()
        return self.signal


@contextmanager
def until_signal(reload: Callable[[], None] | None = None) -> Iterator[Stopper]:
    """Install SIGTERM/SIGINT (and SIGHUP → ``reload``) handlers on the running loop.

    Enter it *before* announcing readiness; ``await stopper.wait()`` inside.
    """
    loop = asyncio.get_running_loop()
    stopper = Stopper()
    installed: list[signal.Signals] = []
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopper.stop, sig)
            installed.append(sig)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
            installed.append(signal.SIGHUP)
        yield stopper
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve_until_signal(
    announce: Callable[[], None], reload: Callable[[], None] | None = None
) -> signal.Signals | None:
    """Install the handlers, then ``announce()`` readiness, then wait for a stop signal."""
    with until_signal(reload) as stopper:
        announce()
        return await stopper.wait()
