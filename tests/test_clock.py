"""Clocks read as FILETIMEs: ``filetime_reader`` against ``filetime_from_unix``."""

from __future__ import annotations

import time

from kmsemu.clock import FakeClock, OffsetClock, SystemClock, filetime_reader
from kmsemu.wire import FILETIME_MAX, filetime_from_unix

#: A microsecond, in FILETIME units: the float seconds of ``filetime_from_unix`` round.
SLACK = 10


def test_the_system_clock_reads_as_filetime_from_unix_would() -> None:
    read = filetime_reader(SystemClock())
    before = filetime_from_unix(time.time())
    got = read()
    after = filetime_from_unix(time.time())
    assert before - SLACK <= got <= after + SLACK


def test_a_shifted_system_clock_follows_its_offset_as_it_moves() -> None:
    """The lab's time travel changes the offset of the clock the host was given."""
    clock = OffsetClock(SystemClock(), 5 * 3600.0)
    read = filetime_reader(clock)
    for offset in (5 * 3600.0, -90 * 60.0, 180 * 86400.5, 0.0):
        clock.offset = offset
        before = filetime_from_unix(time.time() + offset)
        got = read()
        after = filetime_from_unix(time.time() + offset)
        assert before - SLACK <= got <= after + SLACK


def test_an_absurd_offset_is_clamped_as_filetime_from_unix_clamps() -> None:
    clock = OffsetClock(SystemClock(), 1e30)
    read = filetime_reader(clock)
    assert read() == FILETIME_MAX
    clock.offset = -1e30
    assert read() == 0


def test_any_other_clock_reads_exactly_as_filetime_from_unix() -> None:
    fake = FakeClock(1_700_000_000.25)
    assert filetime_reader(fake)() == filetime_from_unix(1_700_000_000.25)
    shifted = OffsetClock(fake, -3600.0)
    assert filetime_reader(shifted)() == 133_444_700_002_500_000
    fake.advance(10.0)
    assert filetime_reader(shifted)() == 133_444_700_102_500_000
