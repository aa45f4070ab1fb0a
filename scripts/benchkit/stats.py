"""Statistics of a bench: medians, percentiles, ratios, slopes, rounds and re-measuring."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
S = TypeVar("S", bound=Hashable)


@dataclass(kw_only=True)
class Measured:
    """What every measured run carries: where the server ran, its memory (KiB, idle before
    the load and after it), what went wrong, and with --repeat every run's figures."""

    server_cpus: str = "any"
    rss_idle_kib: int = 0
    rss_after_kib: int = 0
    hwm_after_kib: int = 0
    problems: list[str] = field(default_factory=list)
    #: Every repetition's figures (--repeat), this run's first (see ``median_carrying``).
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class Perturbable(Measured):
    """A run with a load generator beside the server, on a machine others may use too."""

    client_cpus: str = "any"
    busy_before_percent: float | None = None
    attempts: int = 1
    machine_busy_percent: float = 0.0
    #: CPU used by none of the processes measured, in % of one core (should be ~0).
    other_cpu_percent: float = 0.0
    steal_percent: float = 0.0


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ordered sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def ratio(value: float | None, floor: float | None) -> float | None:
    """``value / floor`` (None when either is missing or the floor is not positive)."""
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def latency_stats(values: Iterable[float]) -> dict[str, Any]:
    """count, p50/p90/p99/max/mean in milliseconds, of latencies in seconds."""
    ordered = sorted(values)
    if not ordered:
        return {
            "n": 0,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "max_ms": None,
            "mean_ms": None,
        }

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1e3, 3)

    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 50)),
        "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1]),
        "mean_ms": ms(sum(ordered) / len(ordered)),
    }


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute (None under 3 points)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return 60 * sum((t - mx) * (v - my) for t, v in points) / sxx


def median_run(runs: Sequence[T], key: Callable[[T], float]) -> T:
    """The run with the median ``key`` (the lower middle one of an even number)."""
    ordered = sorted(runs, key=key)
    return ordered[(len(ordered) - 1) // 2]


def median_carrying(
    runs: Sequence[T],
    key: Callable[[T], float],
    figures: Callable[[T], dict[str, Any]],
    problems: bool = True,
) -> T:
    """The run with the median ``key``, carrying in ``.runs`` every run's ``figures`` (its
    own first) and, with ``problems``, the other runs' problems in ``.problems``."""
    chosen = median_run(runs, key)
    others = [r for r in runs if r is not chosen]
    chosen.runs = [figures(r) for r in [chosen, *others]]
    if problems:
        for r in others:
            chosen.problems += [f"(another run) {p}" for p in r.problems]
    return chosen


def interleaved(
    rounds: int,
    scenarios: Sequence[S],
    measure: Callable[[S], T],
    label: Callable[[S], str] | None = None,
) -> dict[S, list[T]]:
    """``rounds`` rounds of every scenario in turn, so that a slow spell of the machine hits
    them all; every run, by scenario. ``label``, if given, says on stderr what runs."""
    runs: dict[S, list[T]] = {s: [] for s in scenarios}
    for number in range(rounds):
        for scenario in scenarios:
            if label is not None:
                text = f"... {label(scenario)} (run {number + 1}/{rounds})"
                print(text, file=sys.stderr, flush=True)
            runs[scenario].append(measure(scenario))
    return runs


def least_perturbed(
    measure: Callable[[], T],
    attempts: int,
    other: Callable[[T], float],
    limit: float,
    done: Callable[[T], bool] = lambda result: False,
    pause: float = 0.0,
) -> tuple[T, int]:
    """Measure up to ``attempts`` times while other processes used ``limit`` % of a core or
    more (``other``), or until ``done``; (the least perturbed result, attempts made)."""
    best: T | None = None
    made = 0
    for attempt in range(attempts):
        result = measure()
        made = attempt + 1
        if best is None or other(result) < other(best):
            best = result
        if other(result) < limit or done(result) or made == attempts:
            break
        print(
            f"    other processes used {other(result)}% of a core; measuring again",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(pause)
    assert best is not None
    return best, made
