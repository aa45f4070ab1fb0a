"""The event loop every server runs on: uvloop where installed, else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

CHOICES: Final = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str = "auto") -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop's name and a factory for it (``asyncio.Runner(loop_factory=...)``).

    ``auto`` takes uvloop when it imports; ``uvloop`` insists (ImportError otherwise).
    The standard loop answers kept-alive HTTP requests 40 ms late here, so auto matters.
    """
    if choice not in CHOICES:
        raise ValueError(f"loop must be one of {CHOICES}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run_on(choice: str, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a new loop of ``choice`` (a server's main loop)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)[1]) as runner:
        return runner.run(coroutine)


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """A new loop of ``choice`` (for a server on a background thread)."""
    return loop_factory(choice)[1]()
