"""Clocks: the only place kmsemu reads the time.

Code below the servers and the CLI never calls ``time.time()``; it is given
a ``Clock`` (or a ``now`` value) instead, so that a 180-day licence or a host
five hours off can be tested in a millisecond.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from kmsemu.wire import EPOCH_AS_FILETIME, FILETIME_MAX, FILETIME_PER_SECOND, filetime_from_unix


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


def filetime_reader(clock: Clock) -> Callable[[], int]:
    """``filetime_from_unix(clock.now())`` as a function, the fastest way ``clock`` allows:
    the host reads its clock for every request, and the system clock (shifted or not)
    needs no float seconds in between (the same time, to well under a microsecond)."""
    if type(clock) is SystemClock:
        return _system_filetime
    if type(clock) is OffsetClock and type(clock.base) is SystemClock:
        shifted = clock  # its offset read at each call: the lab's time travel moves it

        def shifted_filetime() -> int:
            offset = round(shifted.offset * FILETIME_PER_SECOND)
            return min(max(_system_filetime() + offset, 0), FILETIME_MAX)

        return shifted_filetime
    return lambda: filetime_from_unix(clock.now())


def _system_filetime() -> int:
    return EPOCH_AS_FILETIME + time.time_ns() // 100
