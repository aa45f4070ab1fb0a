"""Clocks: the only place kmsemu reads the time.

Code below the servers and the CLI never calls ``time.time()``; it is given
a ``Clock`` (or a ``now`` value) instead, so that a 180-day licence or a host
five hours off can be tested in a millisecond.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time: real, shifted or fake."""

    def now(self) -> float:
        """POSIX seconds, UTC."""
        ...


class SystemClock:
    """The real time, from the operating system."""

    def now(self) -> float:
        """POSIX seconds, UTC, as the system clock reads now."""
        return time.time()


@dataclass
class OffsetClock:
    """Another clock shifted by ``offset`` seconds (a host five hours off, say)."""

    base: Clock
    offset: float = 0.0

    def now(self) -> float:
        """The base clock's time plus the offset."""
        return self.base.now() + self.offset


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    current: float = 1_700_000_000.0

    def now(self) -> float:
        """The time last set or advanced to."""
        return self.current

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` (back, if negative)."""
        self.current += seconds


def as_datetime(seconds: float) -> datetime:
    """POSIX seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=UTC)
