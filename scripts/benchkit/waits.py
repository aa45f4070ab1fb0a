"""Where processes run (pinning), how busy the machine is, waiting for it to be quiet."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

Cpus = set[int] | None


def placement(pin: bool) -> tuple[Cpus, Cpus]:
    """CPUs for the process under test and for its load: the first allowed CPU alone, and the
    others, so that they never compete (None, None: no pinning, or a single CPU)."""
    allowed = sorted(os.sched_getaffinity(0))
    if not pin or len(allowed) < 2:
        return None, None
    return {allowed[0]}, set(allowed[1:])


def cpus_text(cpus: Cpus) -> str:
    return ",".join(map(str, sorted(cpus))) if cpus else "any"


def pin_self(cpus: Cpus) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def pinned(cpus: Cpus) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None when there is nothing to pin)."""
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks over all CPUs; busy = user+nice+system+irq+softirq."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2] + v[5] + v[6], sum(v), v[7]


def cpu_ticks(cpus: Cpus) -> tuple[int, int, int]:
    """(idle+iowait, total, steal) ticks summed over ``cpus`` (None: all CPUs)."""
    idle = total = steal = 0
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
                continue
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in rest.split()[:8]]
            idle += v[3] + v[4]
            total += sum(v)
            steal += v[7]
    return idle, total, steal


def tick_share(before: tuple[int, int, int], after: tuple[int, int, int], field: int) -> float:
    """Field ``field`` of two tick samples as % of the total ticks between them."""
    return 100 * (after[field] - before[field]) / max(1, after[1] - before[1])


def busy_seconds(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """CPU seconds the whole machine was busy between two ``machine_ticks``."""
    return (after[0] - before[0]) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait: float, threshold: float = 10.0) -> float:
    """Wait (at most ``max_wait`` s) for a second with under ``threshold`` % of the machine busy.

    Returns the busy % of the last second sampled. Other work on the machine (a test
    suite, a build) would otherwise compete with what is measured.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_ticks()
        time.sleep(1.0)
        busy = tick_share(before, machine_ticks(), 0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def sleep_until(t: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``t``."""
    while (delay := t - time.monotonic()) > 0:
        time.sleep(min(delay, 0.5))
