"""Durations as the CLI takes them: ``90m``, ``5h``, ``30d``, ``+181d``, ``-5h``, ``45s``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_PATTERN = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)([smhdw])$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a sign is allowed (offsets may be negative)."""
    match = _PATTERN.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90m, 5h, 30d or -5h")
    sign, number, unit = match.groups()
    seconds = float(number) * _UNITS[unit]
    return -seconds if sign == "-" else seconds
