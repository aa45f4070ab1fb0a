"""Reading a simulator timeline, tolerantly: engines may leave optional parts out.

A timeline is the content of ``timeline.json`` (``scenario``, one entry per day
in ``days``, ``events``, ``summary``), as a plain dict. The helpers here read it
for the charts (``kmsemu.sim.charts``) and the HTML page (``kmsemu.sim.report``):
a missing or mistyped part reads as empty or zero, never as an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kmsemu.errors import HResult

__all__ = [
    "KNOWN_HRESULTS",
    "day_numbers",
    "days_of",
    "event_x",
    "events_of",
    "mak_keys",
    "num",
    "obj",
    "parse_hresult",
    "seq",
    "union",
]

#: HRESULTs this package names (the others are shown as bare codes).
KNOWN_HRESULTS = frozenset(int(h) for h in HResult)


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def seq(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def num(value: Any) -> int:
    """``value`` as an int (a float is truncated); anything else is 0."""
    return int(value) if isinstance(value, int | float) else 0


def days_of(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """The timeline's days, one dict each."""
    return [d for d in seq(timeline.get("days")) if isinstance(d, dict)]


def day_numbers(timeline: dict[str, Any]) -> list[int]:
    """The number of each day (its position when a day does not say)."""
    return [num(d.get("day", i)) for i, d in enumerate(days_of(timeline))]


def events_of(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """The timeline's events, one dict each, in the order recorded."""
    return [e for e in seq(timeline.get("events")) if isinstance(e, dict)]


def union(*groups: Iterable[Any]) -> list[str]:
    """Names in first-seen order, without duplicates."""
    seen: dict[str, None] = {}
    for group in groups:
        seen.update((str(n), None) for n in group)
    return list(seen)


def mak_keys(timeline: dict[str, Any]) -> list[str]:
    """MAK keys the scenario declares or any day counts, in first-seen order."""
    declared = seq(obj(timeline.get("scenario")).get("mak_keys"))
    return union(declared, *(obj(d.get("mak_remaining")) for d in days_of(timeline)))


def event_x(event: dict[str, Any]) -> float:
    """The event's day plus its time of day (``time`` is ISO 8601; without it, the day's start)."""
    try:
        t = datetime.fromisoformat(str(event.get("time")))
    except ValueError:
        return float(num(event.get("day")))
    return num(event.get("day")) + (t.hour * 3600 + t.minute * 60 + t.second) / 86400


def parse_hresult(code: str) -> int | None:
    """A failure code as written in a timeline (hex) as an int; None if it is not hex."""
    try:
        return int(code, 16)
    except ValueError:
        return None
