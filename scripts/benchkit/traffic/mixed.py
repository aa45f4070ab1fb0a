"""The soak's load: every kind at its own rate, open loop, on a shared clock of phases.

``generator_main`` runs in a forked process: ``baseline`` (light legitimate load), ``soak``
(everything, malformed traffic and idle connections too), ``settle`` (nothing), ``after``
(the light load again). Latencies are measured from each request's scheduled time, so that
queueing counts, and kept per kind, phase and interval (``Recorder``).
"""

from __future__ import annotations

import array
import asyncio
import collections
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchkit.procs import own_cpu, raise_nofile, run_loop, worker_body
from benchkit.stats import latency_stats, percentile
from benchkit.traffic.dns import UDP_TIMEOUT, DnsTraffic
from benchkit.traffic.hostile import Hostile, IdleConnections
from benchkit.traffic.kms import KmsTraffic
from benchkit.traffic.mak import MakTraffic

PHASES = ("baseline", "soak", "settle", "after")
#: The legitimate kinds: their latency is compared between baseline and after.
LEGIT = ("kms-new", "kms-keepalive", "mak", "dns-udp", "dns-tcp")
KINDS = (*LEGIT, "dns-hostile")
#: Kept-alive connections per pool (KMS, MAK).
POOL_SIZE = 8
#: Requests waiting for a pooled connection beyond which the generator counts a "backlog".
BACKLOG = 2000
DRAIN_SECONDS = 15.0


class Recorder:
    """Latencies and errors per kind, phase and interval; free-form counters."""

    def __init__(self, phases: list[tuple[str, float, float]], t0: float, interval: float) -> None:
        self.phases = phases
        self.t0 = t0
        self.interval = interval
        self.latencies: dict[tuple[str, str, int], array.array[float]] = {}
        self.errors: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.bucket_errors: collections.Counter[tuple[str, int]] = collections.Counter()
        self.error_samples: list[str] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.hostile: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.hostile_samples: dict[str, list[str]] = collections.defaultdict(list)

    def phase(self, t: float) -> str:
        for name, _, end in self.phases:
            if t < end:
                return name
        return self.phases[-1][0]

    def bucket(self, t: float) -> int:
        return max(0, int((t - self.t0) // self.interval))

    def ok(self, kind: str, due: float) -> None:
        key = (kind, self.phase(due), self.bucket(due))
        values = self.latencies.get(key)
        if values is None:
            values = self.latencies[key] = array.array("d")
        values.append(time.monotonic() - due)

    def error(self, kind: str, due: float, what: str, detail: str = "") -> None:
        phase = self.phase(due)
        self.errors[(kind, phase, what)] += 1
        self.bucket_errors[(kind, self.bucket(due))] += 1
        if len(self.error_samples) < 40:
            at = time.monotonic() - self.t0
            self.error_samples.append(f"t={at:.1f}s {phase} {kind}: {what} {detail}".rstrip())

    def outcome(self, variant: str, result: str, detail: str = "") -> None:
        self.hostile[variant][result] += 1
        if detail and len(self.hostile_samples[variant]) < 5:
            self.hostile_samples[variant].append(f"{result}: {detail}")

    def summary(self) -> dict[str, Any]:
        per_phase: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            per_phase[kind] = {}
            for phase in PHASES:
                merged: array.array[float] = array.array("d")
                for (k, p, _), values in self.latencies.items():
                    if k == kind and p == phase:
                        merged.extend(values)
                stats = latency_stats(merged)
                stats["errors"] = {
                    what: n for (k, p, what), n in self.errors.items() if k == kind and p == phase
                }
                per_phase[kind][phase] = stats
        buckets: dict[int, dict[str, Any]] = {}
        by_bucket: dict[tuple[str, int], array.array[float]] = {}
        for (kind, _, index), values in self.latencies.items():
            by_bucket.setdefault((kind, index), array.array("d")).extend(values)
        for (kind, index), values in by_bucket.items():
            stats = latency_stats(values)
            buckets.setdefault(index, {})[kind] = {
                "n": stats["n"],
                "p50_ms": stats["p50_ms"],
                "p99_ms": stats["p99_ms"],
                "errors": self.bucket_errors.get((kind, index), 0),
            }
        for (kind, index), n in self.bucket_errors.items():
            buckets.setdefault(index, {}).setdefault(
                kind, {"n": 0, "p50_ms": None, "p99_ms": None, "errors": n}
            )
        return {
            "latency": per_phase,
            "intervals": {str(i): buckets[i] for i in sorted(buckets)},
            "error_samples": self.error_samples,
            "counters": dict(self.counters),
            "hostile": {v: dict(c) for v, c in self.hostile.items()},
            "hostile_samples": dict(self.hostile_samples),
        }


def phase_bounds(t0: float, seconds: dict[str, float]) -> list[tuple[str, float, float]]:
    """(phase, start, end) of every phase in turn from ``t0``."""
    bounds = []
    at = t0
    for name in PHASES:
        bounds.append((name, at, at + seconds[name]))
        at += seconds[name]
    return bounds


class Mix:
    """Every kind of traffic, each paced at its own rate per phase."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg["seed"])
        self.phases = phase_bounds(cfg["t0"], cfg["phase_seconds"])
        self.end = self.phases[-1][2]
        self.soak_end = self.phases[1][2]
        self.rec = Recorder(self.phases, cfg["t0"], cfg["interval"])
        self.tasks: set[asyncio.Task[None]] = set()
        self.skipped: collections.Counter[str] = collections.Counter()
        self.lag: dict[int, float] = {}
        kms, dns, http, mak = (
            (str(cfg[n][0]), int(cfg[n][1])) for n in ("kms", "dns", "http", "mak")
        )
        self.kms = KmsTraffic(self, kms)
        self.mak = MakTraffic(self, mak, cfg["mak_base"], cfg["key"])
        self.dns = DnsTraffic(self, dns)
        self.hostile = Hostile(self, kms, http, cfg["mak_base"], dns)
        ports = {"kms": kms, "http": http}
        self.idle = IdleConnections(self, cfg["idle"], ports, cfg["health_path"])

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def enqueue(self, kind: str, queue: asyncio.Queue[float | None], due: float) -> None:
        if queue.qsize() >= BACKLOG:
            self.skipped[kind] += 1
            self.rec.error(kind, due, "backlog: not sent", f"{BACKLOG} requests waiting")
            return
        queue.put_nowait(due)

    async def pace(self, rates: dict[str, float], launch: Callable[[float], None]) -> None:
        """Call ``launch(due)`` at ``rates[phase]`` per second through every phase."""
        for name, start, end in self.phases:
            rate = rates.get(name, 0.0)
            if rate <= 0:
                continue
            k = 0
            while (due := start + k / rate) < end:
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                launch(due)
                k += 1

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        light, full = cfg["light"], cfg["rates"]

        def rates(kind_rate: float, *, light_too: bool = True) -> dict[str, float]:
            out = {"soak": kind_rate}
            if light_too:
                out["baseline"] = out["after"] = kind_rate * light
            return out

        await self.dns.start()
        workers = [asyncio.create_task(self.kms.pooled_worker()) for _ in range(POOL_SIZE)]
        workers += [asyncio.create_task(self.mak.pooled_worker()) for _ in range(POOL_SIZE)]
        kms_half = full["kms"] / 2
        pacers = [
            self.pace(rates(kms_half), lambda due: self.spawn(self.kms.new_connection(due))),
            self.pace(
                rates(kms_half), lambda due: self.enqueue("kms-keepalive", self.kms.queue, due)
            ),
            self.pace(rates(full["mak"]), lambda due: self.enqueue("mak", self.mak.queue, due)),
            self.pace(rates(full["dns"] * 0.60), self.dns.udp_srv),
            self.pace(rates(full["dns"] * 0.25), lambda due: self.spawn(self.dns.tcp_srv(due))),
            self.pace(rates(full["dns"] * 0.15, light_too=False), self.dns.hostile),
            self.pace(
                rates(full["malformed"], light_too=False),
                lambda due: self.spawn(self.hostile.run(due)),
            ),
            self.idle_phase(),
            self.watch_lag(),
        ]
        await asyncio.gather(*pacers)
        # Drain: whatever is still outstanding gets DRAIN_SECONDS.
        for _ in workers[:POOL_SIZE]:
            self.kms.queue.put_nowait(None)
        for _ in workers[POOL_SIZE:]:
            self.mak.queue.put_nowait(None)
        drained = True
        pending = [*self.tasks, *workers]
        if pending:
            _, late = await asyncio.wait(pending, timeout=DRAIN_SECONDS)
            for task in late:
                task.cancel()
            drained = not late
        deadline = time.monotonic() + UDP_TIMEOUT + 0.2
        while self.dns.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # replies to junk datagrams, if the lab sends any
        self.dns.close()
        self.hostile.close()
        summary = self.rec.summary()
        stalls = sorted(self.hostile.stall_closed_after)
        return {
            **summary,
            "drained": drained,
            "generator_lag_max_ms": {
                str(i): round(v * 1e3, 2) for i, v in sorted(self.lag.items())
            },
            "skipped": dict(self.skipped),
            "kms_answered": self.kms.answered,
            "kms_statuses": dict(self.kms.statuses),
            "mak_counted": self.mak.counted,
            "mak_counted_distinct": len(self.mak.counted_ids),
            "mak_verdicts": dict(self.mak.verdicts),
            "idle": self.idle.summary(),
            "stall_closed_after_s": {
                "n": len(stalls),
                "min": round(stalls[0], 2) if stalls else None,
                "median": round(percentile(stalls, 50) or 0, 2) if stalls else None,
                "max": round(stalls[-1], 2) if stalls else None,
            },
        }

    async def watch_lag(self) -> None:
        """The generator's own event-loop lag (oversleep of a 10 ms timer) per interval: a
        latency spike with a quiet generator is the lab's."""
        tick = 0.01
        while (now := time.monotonic()) < self.end:
            await asyncio.sleep(tick)
            lag = time.monotonic() - now - tick
            index = self.rec.bucket(now)
            if lag > self.lag.get(index, 0.0):
                self.lag[index] = lag

    async def idle_phase(self) -> None:
        """Open --idle connections at the start of the soak (in batches), hold them to its end."""
        if not self.cfg["idle"]:
            return
        _, start, end = self.phases[1]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        holders = []
        for index in range(self.cfg["idle"]):
            holders.append(asyncio.create_task(self.idle.hold(index, end)))
            if index % 50 == 49:
                await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, min(start + 5, end) - time.monotonic()))
        self.rec.counters["idle connections open 5 s into the soak"] = self.idle.open_now
        await asyncio.gather(*holders, return_exceptions=True)


async def _generate(pipe: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    gen = Mix(cfg)
    pipe.send("ready")
    cpu0 = os.times()
    result = await gen.run()
    result["cpu_seconds"] = round(own_cpu(cpu0, os.times()), 2)
    return result


def generator_main(pipe: Any, cfg: dict[str, Any]) -> None:
    """The load generator process: report ready, run every phase, report."""

    def body() -> dict[str, Any]:
        raise_nofile()
        result, loop_name = run_loop(lambda: _generate(pipe, cfg))
        result["loop"] = loop_name
        return result

    worker_body(pipe, cfg["cpus"], body, full_traceback=True)
