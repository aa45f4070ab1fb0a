"""The fleet simulator's event queue: events in time order, one simulated day at a time.

An event is ``(when, kind, seq, client)``; events run in that tuple's order
(``seq`` counts pushes, so ties run first in, first out). One heap of every
pending event would do, but a year of a large fleet pushes millions of events
and pops each from a heap of one or two per client. Instead each day has a
bucket: an event for a later day is appended to its day's list, and when the
day comes the list is sorted once (mostly in order already: the renewals of
a day were pushed in the order of the day a renewal interval earlier). An
event pushed for the day being run (a retry two hours on) goes into a small
heap, merged with the sorted list as the day runs. Either way the order is
the heap's, event for event.

A day ends before ``start + (day + 1) * DAY``, computed as the engine computes it, so
an event sits in the bucket of the day whose loop would have taken it from the heap.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Iterator

from kmsemu.sim.scenario import DAY

Item = tuple[float, int, int, int]  # when, kind, seq, client index


class DayQueue:
    """Events for ``days`` days from ``start``; events after the last day are dropped."""

    def __init__(self, start: float, days: int) -> None:
        self.start = start
        self.days = days
        #: When each day ends (its events are earlier), and when it begins.
        self.ends = [start + (day + 1) * DAY for day in range(days)]
        self._begins = [-math.inf, *self.ends[:-1]]
        self._later: list[list[Item]] = [[] for _ in range(days)]
        self._today: list[Item] = []  # a heap: events pushed for the day being run
        self._day = -1  # the day being run
        self._seq = 0

    def push(self, when: float, kind: int, client: int) -> None:
        """An event at ``when``; of a given (when, kind), the first pushed runs first."""
        seq = self._seq = self._seq + 1
        day = int((when - self.start) / DAY)  # its day, but for rounding and the edge cases
        if self._day < day < self.days and self._begins[day] <= when < self.ends[day]:
            self._later[day].append((when, kind, seq, client))
        else:
            self._place((when, kind, seq, client))

    def _place(self, item: Item) -> None:
        """An event for the day being run, after the last day, or whose day the division
        in ``push`` got wrong (by rounding, or before the start)."""
        when = item[0]
        day = bisect_right(self.ends, when)  # the first day that ends after ``when``
        if day <= self._day:  # the day being run (nothing is pushed for a day that is over)
            heapq.heappush(self._today, item)
        elif day < self.days:  # else after the last day: never run
            self._later[day].append(item)

    def run(self, day: int) -> Iterator[Item]:
        """The events of ``day`` in order, including those pushed while it runs."""
        self._day = day
        due, self._later[day] = self._later[day], []
        due.sort()
        today, pop = self._today, heapq.heappop
        for item in due:
            while today and today[0] < item:
                yield pop(today)
            yield item
        while today:
            yield pop(today)
