"""Command-line options from rows, and the options the benches share."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: (flag, type, default, help[, metavar]); type ``bool``: a flag that is off by default.
Row = tuple[Any, ...]


def add_options(parser: argparse.ArgumentParser, rows: Iterable[Row]) -> None:
    for flag, kind, default, text, *metavar in rows:
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=text)
        else:
            shown = metavar[0] if metavar else None
            parser.add_argument(flag, type=kind, default=default, help=text, metavar=shown)


def json_option() -> Row:
    text = "also write the results as JSON to FILE ('-': stdout, no table)"
    return ("--json", str, None, text, "FILE")


def no_pin_option(server: str = "the server", load: str = "the clients") -> Row:
    text = (
        f"don't pin {server} to the first CPU and {load} to the others (pinning is the "
        "default with 2 or more CPUs)"
    )
    return ("--no-pin", bool, False, text)


def py_spy_option(text: str) -> Row:
    return ("--py-spy", Path, None, text, "DIR")


def repeat_option(what: str, median_of: str) -> Row:
    text = (
        f"run every {what} this many times (interleaved rounds) and report the run with the "
        f"median {median_of} (default 1)"
    )
    return ("--repeat", int, 1, text)


def retries_option(what: str, perturbed: float) -> Row:
    text = (
        f"measure {what} again (keeping the least perturbed attempt) when other processes "
        f"used >= {perturbed:.0f}%% of a core during its window (default 2)"
    )
    return ("--retries", int, 2, text)


def quiet_wait_option(default: float, before: str) -> Row:
    text = (
        f"before each {before}, wait up to this many seconds for the machine to be idle "
        f"(<10%% busy for 1 s); 0: don't (default {default:g})"
    )
    return ("--quiet-wait", float, default, text)


def split_list(text: str) -> list[str]:
    """``a, b,,c`` as ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def choices(flag: str, text: str, allowed: Sequence[str]) -> list[str]:
    """The comma-separated values of ``flag`` (each once, in order), every one of
    ``allowed``; ValueError saying which are not, or that there are none."""
    values = list(dict.fromkeys(split_list(text)))
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        raise ValueError(
            f"{flag}: {', '.join(wrong) or 'none given'} (choose from {', '.join(allowed)})"
        )
    return values
