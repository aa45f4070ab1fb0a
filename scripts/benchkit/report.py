"""Reports: Markdown tables, figures, JSON output, sections of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchkit.env import REPO

BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or an em dash when there is none."""
    return "—" if value is None else format(value, spec)


def span(values: Sequence[float], spec: str, least: int = 1, single: str = "—") -> str:
    """``min–max`` of ``values`` (``single`` when there are fewer than ``least``)."""
    if len(values) < max(1, least):
        return single
    return f"{format(min(values), spec)}–{format(max(values), spec)}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def columns_of(columns: str | Sequence[str]) -> list[str]:
    """Column titles, from a list or from one string written as a Markdown header row."""
    if isinstance(columns, str):
        return [c.strip() for c in columns.strip().strip("|").split("|")]
    return list(columns)


def table(columns: str | Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table. A column title ending in ``>`` is right-aligned (the ``>`` is not
    shown); cells are shown with ``str``. ``columns``: see ``columns_of``."""
    columns = columns_of(columns)
    titles = [c.removesuffix(">") for c in columns]
    rule = ["---:" if c.endswith(">") else "---" for c in columns]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def repeat_table(
    results: Sequence[Any],
    columns: str | Sequence[str],
    row: Callable[[Any], list[Any]],
    span_columns: str | Sequence[str],
    spans: Callable[[Any], list[Any]],
    at: int | None = None,
) -> str:
    """``table`` of one ``row`` per result; when a result has several runs (``.runs``), the
    ``span_columns`` (``spans`` of each result) too, at column ``at`` (default: last)."""
    columns = columns_of(columns)
    rows = [row(r) for r in results]
    if any(len(r.runs) > 1 for r in results):
        where = len(columns) if at is None else at
        columns[where:where] = columns_of(span_columns)
        for result, cells in zip(results, rows, strict=True):
            cells[where:where] = spans(result)
    return table(columns, rows)


def perturbation_notes(name: str, result: Any, perturbed: float, before: str) -> list[str]:
    """What may have perturbed a measured ``result`` (``busy_before_percent``, ``attempts``,
    ``other_cpu_percent``), as report notes about ``name``."""
    notes = []
    busy = result.busy_before_percent
    if busy is not None and busy >= 10:
        notes.append(
            f"{name}: the machine was {busy:.0f}% busy before the {before} (other work); "
            "figures may be low"
        )
    if result.attempts > 1:
        notes.append(
            f"{name}: measured {result.attempts} times because other processes were busy; "
            "the least perturbed attempt is shown"
        )
    if result.other_cpu_percent >= perturbed:
        notes.append(
            f"{name}: {result.other_cpu_percent}% of a core went to other processes during the "
            "window; figures may be perturbed"
        )
    return notes


def write_json(document: Any, target: str | None, indent: int = 2) -> None:
    """``document`` as JSON to the file ``target`` ('-': stdout; None: nowhere)."""
    if not target:
        return
    text = json.dumps(document, indent=indent)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")


def emit(document: Any, text: Callable[[], str], target: str | None, indent: int = 2) -> None:
    """The report on stdout (and the JSON in ``target``), or with ``-`` the JSON alone."""
    if target == "-":
        json.dump(document, sys.stdout, indent=indent)
        print()
        return
    print(text())
    write_json(document, target, indent)


def update_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``) with ``body``,
    or add it at the end."""
    text = path.read_text() if path.exists() else ""
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
