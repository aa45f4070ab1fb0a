"""The bench kit's pure parts (scripts/benchkit): statistics, the git state, report tables."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from benchkit import instructions, machine, options, report, stats

# -- statistics -------------------------------------------------------------------------


def test_median_of_odd_and_even_counts() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 11)]  # 1..10
    assert stats.percentile(ordered, 50) == 5.0
    assert stats.percentile(ordered, 90) == 9.0
    assert stats.percentile(ordered, 99) == 10.0
    assert stats.percentile(ordered, 0) == 1.0
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([], 50) is None


def test_ratio() -> None:
    assert stats.ratio(0.5, 0.05) == pytest.approx(10.0)
    assert stats.ratio(None, 1.0) is None
    assert stats.ratio(1.0, 0.0) is None


def test_latency_stats_in_milliseconds() -> None:
    out = stats.latency_stats([0.004, 0.001, 0.002, 0.003])
    assert out == {
        "n": 4,
        "p50_ms": 2.0,
        "p90_ms": 4.0,
        "p99_ms": 4.0,
        "max_ms": 4.0,
        "mean_ms": 2.5,
    }
    assert stats.latency_stats([])["p99_ms"] is None


def test_slope_per_minute() -> None:
    # One MiB more every 30 s: 2 MiB a minute.
    assert stats.slope_per_minute([(0, 10.0), (30, 11.0), (60, 12.0)]) == pytest.approx(2.0)
    assert stats.slope_per_minute([(0, 1.0), (1, 2.0)]) is None


@dataclass
class _Run:
    value: float
    problems: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


def test_median_carrying_every_run() -> None:
    runs = [_Run(30.0), _Run(10.0, ["slow"]), _Run(20.0), _Run(40.0)]
    chosen = stats.median_carrying(runs, lambda r: r.value, lambda r: {"v": r.value})
    assert chosen is runs[2]  # the lower middle of four
    assert chosen.runs == [{"v": 20.0}, {"v": 30.0}, {"v": 10.0}, {"v": 40.0}]
    assert chosen.problems == ["(another run) slow"]


def test_interleaved_rounds() -> None:
    order: list[str] = []

    def measure(name: str) -> int:
        order.append(name)
        return len(order)

    runs = stats.interleaved(2, ["a", "b"], measure)
    assert order == ["a", "b", "a", "b"]
    assert runs == {"a": [1, 3], "b": [2, 4]}


# -- the git state ------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_state_sees_changes_outside_kmsemu(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "bench@example.invalid")
    _git(tmp_path, "config", "user.name", "bench")
    for name in ("kmsemu/a.py", "mak/b.py", "scripts/c"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    clean = machine.git_state(tmp_path)
    assert clean and "uncommitted" not in clean and clean != "?"
    (tmp_path / "mak" / "b.py").write_text("x = 2\n")
    assert machine.git_state(tmp_path) == f"{clean} + uncommitted changes"
    _git(tmp_path, "checkout", "-q", "--", "mak/b.py")
    (tmp_path / "scripts" / "new").write_text("")  # untracked counts too
    assert machine.git_state(tmp_path).endswith("+ uncommitted changes")


def test_changed_note() -> None:
    same = {"git": "abc1234", "git_after": "abc1234"}
    assert machine.changed_note(same) == []
    moved = {"git": "abc1234", "git_after": "def5678"}
    assert machine.changed_note(moved, "- ") == [
        "- the code changed during the run: abc1234 -> def5678"
    ]


# -- report tables ----------------------------------------------------------------------


def test_table_alignment_and_cells() -> None:
    text = report.table("| name | count> | share %> |", [["a", 1, "50.0"], ["b", 12, "—"]])
    assert text.splitlines() == [
        "| name | count | share % |",
        "|---|---:|---:|",
        "| a | 1 | 50.0 |",
        "| b | 12 | — |",
    ]
    assert report.table(["x", "y>"], []) == "| x | y |\n|---|---:|"


def test_repeat_table_adds_span_columns_only_for_repeated_runs() -> None:
    def row(r: _Run) -> list[Any]:
        return [r.value]

    def spans(r: _Run) -> list[Any]:
        return [report.span([x["v"] for x in r.runs], ".0f")]

    single = _Run(1.0, runs=[{"v": 1.0}])
    assert report.repeat_table([single], "| v> |", row, "| runs> |", spans) == (
        "| v |\n|---:|\n| 1.0 |"
    )
    repeated = _Run(2.0, runs=[{"v": 2.0}, {"v": 1.0}, {"v": 3.0}])
    assert report.repeat_table([repeated], "| v> |", row, "| runs> |", spans, at=0) == (
        "| runs | v |\n|---:|---:|\n| 1–3 | 2.0 |"
    )


def test_figures() -> None:
    assert report.fmt(None) == "—"
    assert report.fmt(1.23456, ".3f") == "1.235"
    assert report.mib(31 * 1024 + 512) == "31.5"
    assert report.span([3.0, 1.0, 2.0], ",.0f") == "1–3"
    assert report.span([5.0], ".0f", least=2, single="") == ""


def test_update_section_replaces_or_appends(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nb\n")
    report.update_section("A", "new a\n\n| x |\n|---|", doc)
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nnew a\n\n| x |\n|---|\n\n## B\n\nb\n"
    report.update_section("C (`tool`)", "c", doc)
    assert doc.read_text().endswith("## B\n\nb\n\n## C (`tool`)\n\nc\n")
    report.update_section("C (`tool`)", "c2", doc)
    assert doc.read_text().endswith("## B\n\nb\n\n## C (`tool`)\n\nc2\n")


# -- options ------------------------------------------------------------------------------


def test_choices_from_a_comma_list() -> None:
    allowed = ("new", "persistent")
    assert options.choices("--modes", " persistent, new,,persistent ", allowed) == [
        "persistent",
        "new",
    ]
    with pytest.raises(ValueError) as wrong:
        options.choices("--modes", "new,bogus,x", allowed)
    assert str(wrong.value) == "--modes: bogus, x (choose from new, persistent)"
    with pytest.raises(ValueError) as empty:
        options.choices("--modes", " , ", allowed)
    assert str(empty.value) == "--modes: none given (choose from new, persistent)"


# -- instructions per request (bench-instructions) --------------------------------------

CALLGRIND_STDERR = """\
==123== Callgrind, a call-graph generating cache profiler
==123== Command: python scripts/benchkit/instructions.py
==123==
==123== Events    : Ir
==123== Collected : 2365919662
==123==
==123== I   refs:      2,365,919,662
"""
FAILED_STDERR = """\
==124== Command: python scripts/benchkit/instructions.py
Traceback (most recent call last):
  File "scripts/benchkit/instructions.py", line 1, in <module>
ModuleNotFoundError: No module named 'tests.test_lean'
==124== Events    : Ir
"""


def test_callgrind_total_or_what_went_wrong() -> None:
    assert instructions.collected(CALLGRIND_STDERR) == 2365919662
    assert instructions.outcome(0, CALLGRIND_STDERR) == 2365919662
    assert instructions.collected(FAILED_STDERR) is None
    assert instructions.outcome(0, FAILED_STDERR) == (
        "no 'Collected' line: Traceback (most recent call last): / "
        '  File "scripts/benchkit/instructions.py", line 1, in <module> / '
        "ModuleNotFoundError: No module named 'tests.test_lean'"
    )
    assert instructions.outcome(1, CALLGRIND_STDERR) == (
        "exit 1: ==123== Events    : Ir / ==123== Collected : 2365919662 / "
        "==123== I   refs:      2,365,919,662"
    )
    assert instructions.outcome(-9, "") == "exit -9: (no output)"


def test_instructions_per_request_over_a_shared_baseline() -> None:
    Job = instructions.Job
    assert instructions.jobs({"current": ["core"]}, ["durable"], ["persistent", "new"], 10) == [
        Job("current", "core", "durable", "persistent", 0),
        Job("current", "core", "durable", "persistent", 10),
        Job("current", "core", "durable", "new", 10),
    ]
    assert instructions.per_request(1_000, 5_000, 4) == 1_000.0
    outcomes: dict[instructions.Job, instructions.Outcome] = {
        Job("current", "core", "durable", "persistent", 0): 1_000_000,
        Job("current", "core", "durable", "persistent", 10): 1_950_000,
        Job("current", "core", "durable", "new", 10): 2_200_000,
        Job("current", "pure", "durable", "persistent", 0): "exit 1: boom",
        Job("current", "pure", "durable", "persistent", 10): 3_000_000,
    }
    figure = instructions.figure
    assert figure(outcomes, Job("current", "core", "durable", "new", 10)) == 120_000
    assert figure(outcomes, Job("current", "pure", "durable", "persistent", 10)) is None
    assert figure(outcomes, Job("abc1234", "core", "durable", "new", 10)) is None
    rows = instructions.rows(outcomes, [("core", "persistent", "durable")], 10)
    assert rows == [instructions.Row("core", "persistent", "durable", 95_000.0, None)]
    assert instructions.failures(outcomes) == ["current pure durable persistent N=0: exit 1: boom"]


def test_instructions_table_and_derived_lines() -> None:
    Row = instructions.Row
    rows = [
        Row("core", "persistent", "durable", 94_812.4, 117_500.0),
        Row("core", "persistent", "batched", 90_000.0, 112_000.0),
        Row("core", "new", "durable", 120_000.0, None),
        Row("core", "new", "batched", None, 140_000.0),
    ]
    assert instructions.markdown_table(rows[:2]) == (
        "| build | mode | ack | instructions/request |\n"
        "|---|---|---|---:|\n"
        "| core | persistent | durable | 94,812 |\n"
        "| core | persistent | batched | 90,000 |"
    )
    assert instructions.markdown_table(rows, "abc1234") == (
        "| build | mode | ack | instructions/request | abc1234 instructions/request | ratio |\n"
        "|---|---|---|---:|---:|---:|\n"
        "| core | persistent | durable | 94,812 | 117,500 | 0.807 |\n"
        "| core | persistent | batched | 90,000 | 112,000 | 0.804 |\n"
        "| core | new | durable | 120,000 | — | — |\n"
        "| core | new | batched | — | 140,000 | — |"
    )
    assert instructions.derived_lines(rows, "abc1234") == [
        "core persistent: durable/batched 1.053 (the journal: 4,812 instructions/request); "
        "abc1234 1.049",
        "core new: durable/batched — (the journal: — instructions/request); abc1234 —",
        "core durable: a new connection costs 25,188 instructions (new − persistent); abc1234 —",
        "core batched: a new connection costs — instructions (new − persistent); abc1234 28,000",
    ]
