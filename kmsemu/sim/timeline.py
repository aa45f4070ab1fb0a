"""What a simulation produces: one ``Day`` per simulated day and the key moments.

``Timeline.to_json`` is the document written as ``timeline.json`` (and read
by ``kmsemu.sim.report``); ``write_csv`` flattens the days into
``timeline.csv``, one row per day. The narrative events are plain sentences
("count reached 25 on kms1 (Windows)") with the day they happened.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kmsemu.catalog import Catalog
from kmsemu.klp.messages import LicenseStatus
from kmsemu.sim.scenario import DAY, Scenario

STATES = tuple(s.name.lower() for s in LicenseStatus)


@dataclass(frozen=True)
class Day:
    """One simulated day's end: licence states, counts, activations, failures, MAK use."""

    day: int
    states: dict[str, int]
    offline: int
    counts: dict[str, dict[bytes, int]]  # host -> application id (bytes_le) -> count
    activations: int
    renewals: int
    mak_activations: int
    failures: dict[str, int]
    lapsed: int
    notification: int
    mak_remaining: dict[str, int]


@dataclass
class Timeline:
    """A run's days and its narrative of notable events."""

    scenario: Scenario
    catalog: Catalog
    mode: str = "fast"
    days: list[Day] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        used = {g.product.application_id for g in self.scenario.groups}
        self.apps = {a.bytes_le: self.catalog.application_name(a) for a in sorted(used)}
        self.thresholds: dict[str, int] = {}
        for group in self.scenario.groups:
            name = group.product.application
            low = self.thresholds.get(name, group.product.threshold)
            self.thresholds[name] = min(low, group.product.threshold)
        self._pending_threshold: dict[int, list[dict[str, Any]]] = {}
        self._exhausted: set[str] = set()
        self._all_licensed = False

    # -- the narrative ------------------------------------------------------------------

    def add(self, when: float, kind: str, text: str, **facts: Any) -> dict[str, Any]:
        """Add a narrative event at ``when``; the event, for callers that amend it."""
        event = {
            "day": int((when - self.scenario.start) // DAY),
            "time": _iso(when),
            "kind": kind,
            "text": text,
            **facts,
        }
        self.events.append(event)
        return event

    def start_events(self) -> None:
        """What holds from a group's first day: cloned images, clocks that run off."""
        s = self.scenario
        for group in s.groups:
            if group.cloned > 1:
                self.add(
                    s.start + group.start_day * DAY,
                    "cloned",
                    f"{group.cloned} clients of {group.name} come from one image that was "
                    "not generalised: they share one CMID and count once",
                )
            if group.clock_skew:
                self.add(
                    s.start + group.start_day * DAY,
                    "clock_skew",
                    f"{group.name}'s clocks run {group.clock_skew / 3600:+g} h off",
                )

    def day_events(self, day: int) -> None:
        """Outages, offline periods and DNS changes that begin or end on ``day``."""
        s = self.scenario
        at = s.start + day * DAY
        for host in s.hosts:
            for w in host.outages:
                if w.from_day == day:
                    self.add(at, "outage_start", f"{host.name} goes down", host=host.name)
                if w.to_day == day:
                    self.add(at, "outage_end", f"{host.name} is back", host=host.name)
        for group in s.groups:
            for w in group.offline:
                if w.from_day == day:
                    self.add(at, "offline_start", f"{group.name} loses its network")
                if w.to_day == day:
                    self.add(at, "offline_end", f"{group.name} is back on the network")
        for r in s.records:
            if r.window.from_day == day and day > 0:
                self.add(
                    at,
                    "dns_change",
                    f"DNS publishes {r.host} (priority {r.priority}, weight {r.weight})",
                )
            if r.window.to_day == day:
                self.add(at, "dns_change", f"DNS no longer publishes {r.host}")

    def threshold(self, when: float, host: str, application: str, count: int) -> None:
        """A host's count reached a threshold; the day's activations are added at day end."""
        event = self.add(
            when,
            "threshold",
            f"count reached {count} on {host} ({application})",
            host=host,
            application=application,
        )
        self._pending_threshold.setdefault(event["day"], []).append(event)

    # -- days ---------------------------------------------------------------------------

    def close_day(self, day: Day) -> None:
        """Record a finished day and the events it brings (lapses, exhausted keys...)."""
        self.days.append(day)
        at = self.scenario.start + day.day * DAY
        for event in self._pending_threshold.pop(day.day, []):
            event["text"] += (
                f"; {day.activations + day.renewals} clients activated or renewed that day"
            )
        if day.lapsed:
            self.add(
                at,
                "lapsed",
                f"{day.lapsed} clients' KMS activation lapsed: 180 days "
                "without a renewal (out-of-tolerance grace)",
            )
        if day.notification:
            self.add(
                at,
                "notification",
                f"{day.notification} clients entered Notification (grace period over)",
            )
        for key, remaining in day.mak_remaining.items():
            if remaining == 0 and key not in self._exhausted:
                self._exhausted.add(key)
                self.add(at, "mak_exhausted", f"MAK {key} has no activations left")
        arrived = sum(day.states.values())  # a client counts from its arrival
        licensed = day.states.get("licensed", 0)
        if not self._all_licensed and arrived == self.scenario.clients and licensed == arrived:
            self._all_licensed = True
            self.add(at, "all_licensed", f"all {arrived} clients are licensed")
        elif self._all_licensed and licensed < arrived:
            self._all_licensed = False

    # -- output -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The run as ``timeline.json`` holds it: scenario, days, events and a summary."""
        s = self.scenario
        days = [self._day_json(d) for d in self.days]
        last = days[-1] if days else {}
        failures: dict[str, int] = {}
        for d in self.days:
            for code, n in d.failures.items():
                failures[code] = failures.get(code, 0) + n
        first_threshold: dict[str, int] = {}
        for e in self.events:
            if e["kind"] == "threshold":
                first_threshold.setdefault(f"{e['host']}/{e['application']}", e["day"])
        return {
            "scenario": {
                "name": s.name,
                "title": s.title,
                "description": s.description,
                "days": s.days,
                "seed": s.seed,
                "mode": self.mode,
                "start": _iso(s.start),
                "clients": s.clients,
                "hosts": [h.name for h in s.hosts],
                "mak_keys": [k.name for k in s.mak_keys],
            },
            "days": days,
            "events": self.events,
            "summary": {
                "final_states": last.get("states", {}),
                "activated_ever": sum(d.activations + d.mak_activations for d in self.days),
                "lapsed": sum(d.lapsed for d in self.days),
                "failures": dict(sorted(failures.items())),
                "mak_remaining": last.get("mak_remaining", {}),
                "first_threshold_day": first_threshold,
            },
        }

    def _day_json(self, d: Day) -> dict[str, Any]:
        return {
            "day": d.day,
            "date": _iso(self.scenario.start + d.day * DAY)[:10],
            "states": d.states,
            "offline": d.offline,
            "counts": {
                host: {self.apps[a]: n for a, n in counts.items() if a in self.apps}
                for host, counts in d.counts.items()
            },
            "thresholds": self.thresholds,
            "activations": d.activations,
            "renewals": d.renewals,
            "mak_activations": d.mak_activations,
            "failures": dict(sorted(d.failures.items())),
            "lapsed": d.lapsed,
            "notification": d.notification,
            "mak_remaining": d.mak_remaining,
        }

    def write(self, out: Path) -> dict[str, Any]:
        """``timeline.json`` and ``timeline.csv`` in ``out``; returns the JSON document."""
        document = self.to_json()
        (out / "timeline.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        write_csv(document, out / "timeline.csv")
        return document


def write_csv(document: dict[str, Any], path: Path) -> None:
    """``timeline.csv``: one row per day, a column per state, count, failure and key."""
    days = document["days"]
    codes = sorted({c for d in days for c in d["failures"]})
    hosts = document["scenario"]["hosts"]
    apps = sorted({a for d in days for counts in d["counts"].values() for a in counts})
    keys = document["scenario"]["mak_keys"]
    header = [
        "day",
        "date",
        *STATES,
        "offline",
        "activations",
        "renewals",
        "mak_activations",
        "lapsed",
        "notification",
        *(f"count_{h}_{a}" for h in hosts for a in apps),
        *(f"failures_{c}" for c in codes),
        *(f"mak_remaining_{k}" for k in keys),
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for d in days:
            writer.writerow(
                [
                    d["day"],
                    d["date"],
                    *(d["states"].get(s, 0) for s in STATES),
                    d["offline"],
                    d["activations"],
                    d["renewals"],
                    d["mak_activations"],
                    d["lapsed"],
                    d["notification"],
                    *(d["counts"].get(h, {}).get(a, 0) for h in hosts for a in apps),
                    *(d["failures"].get(c, 0) for c in codes),
                    *(d["mak_remaining"].get(k, 0) for k in keys),
                ]
            )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
