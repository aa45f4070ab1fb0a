"""Scenario files for the fleet simulator (TOML), checked as a whole (pure).

A scenario names KMS hosts (settings, outages, a clock offset), the DNS
records that publish them and when they change, groups of clients (how many,
which product, when they arrive, VM share, a cloned image sharing one CMID,
offline periods, clock skew, a hardware change, a host set by hand, a MAK
instead of KMS), MAK keys with their limits, a length in days and a random
seed. Days count from the scenario's ``start``; a window ``{from_day, to_day}``
covers ``from_day`` up to, not including, ``to_day``.

    [scenario]
    name = "renewal-lapse"
    days = 365
    seed = 1

    [[hosts]]
    name = "kms1"

    [[clients]]
    name = "branch"
    count = 10
    product = "windows-11-pro"
    offline = [{ from_day = 30, to_day = 365 }]
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from kmsemu.catalog import Catalog, Product, default_catalog
from kmsemu.durations import parse_duration
from kmsemu.errors import ConfigError

DAY: Final = 86_400.0
MAX_DAYS: Final = 3650
MAX_CLIENTS: Final = 1_000_000
DEFAULT_START: Final = "2027-01-04"


@dataclass(frozen=True)
class Window:
    """Days ``from_day`` (included) to ``to_day`` (excluded), counted from the start."""

    from_day: int
    to_day: int

    def covers(self, day: float) -> bool:
        """Whether ``day`` (fractions allowed) falls inside the window."""
        return self.from_day <= day < self.to_day


@dataclass(frozen=True)
class Host:
    """A KMS host of the scenario: its settings, clock offset and outages."""

    name: str
    min_count: int = 0
    activation_interval: int = 120
    renewal_interval: int = 10_080
    clock_offset: float = 0.0
    outages: tuple[Window, ...] = ()

    def down(self, day: float) -> bool:
        """Whether the host is in an outage on ``day``."""
        return any(w.covers(day) for w in self.outages)


@dataclass(frozen=True)
class Record:
    """An SRV record ``_vlmcs._tcp.DOMAIN`` for one host, published for a window of days."""

    host: str
    priority: int = 0
    weight: int = 0
    window: Window = Window(0, MAX_DAYS)


@dataclass(frozen=True)
class Group:
    """Clients alike: product, arrivals, VMs, clones, offline days, skew and settings."""

    name: str
    count: int
    product: Product
    start_day: float = 0.0
    arrive_over_days: float = 0.0
    vm_share: float = 0.0
    cloned: int = 0
    offline: tuple[Window, ...] = ()
    clock_skew: float = 0.0
    hardware_change_day: float | None = None
    kms_host: str | None = None
    mak: str | None = None
    host_caching: bool = True

    def arrival(self, index: int) -> float:
        """Days after the start when the group's ``index``-th client arrives."""
        return self.start_day + index * self.arrive_over_days / self.count

    def offline_on(self, day: float) -> bool:
        """Whether the group's clients are offline on ``day``."""
        return any(w.covers(day) for w in self.offline)


@dataclass(frozen=True)
class MakKey:
    """A MAK the scenario registers: its name, product and activation limit."""

    name: str
    product: Product
    limit: int


@dataclass(frozen=True)
class Scenario:
    """A whole scenario as checked: days, hosts, client groups, DNS records, MAK keys."""

    name: str
    days: int
    hosts: tuple[Host, ...]
    groups: tuple[Group, ...]
    title: str = ""
    description: str = ""
    seed: int = 1
    start: float = datetime.fromisoformat(DEFAULT_START).replace(tzinfo=UTC).timestamp()
    domain: str = "lab.test"
    records: tuple[Record, ...] = ()
    mak_keys: tuple[MakKey, ...] = field(default_factory=tuple)

    @property
    def clients(self) -> int:
        """How many clients the groups hold in all."""
        return sum(g.count for g in self.groups)

    def host(self, name: str) -> Host:
        """The host of that name (the scenario was checked: it exists)."""
        return next(h for h in self.hosts if h.name == name)


# -- reading ------------------------------------------------------------------------------


def load_scenario(source: str | Path, catalog: Catalog | None = None) -> Scenario:
    """A scenario from a file, or a built-in by name (``kms-threshold``)."""
    path = Path(source)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a NUL in the name, a name too long
        exists = False
    if path.suffix != ".toml" and not exists:
        if str(source) not in builtin_names():
            raise ConfigError(
                f"no scenario {source!r}: not a file, and the built-ins are "
                f"{', '.join(builtin_names())}",
                code="unknown_scenario",
            )
        text = (
            resources.files("kmsemu")
            .joinpath("data", "scenarios", f"{source}.toml")
            .read_text("utf-8")
        )
        return parse_scenario(text, f"built-in {source}", catalog)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        why = getattr(exc, "strerror", None) or (
            "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        )
        raise ConfigError(f"cannot read {path}: {why}", code="scenario_invalid") from exc
    return parse_scenario(text, str(path), catalog)


def builtin_names() -> list[str]:
    """The scenarios shipped in ``kmsemu/data/scenarios``, by name."""
    folder = resources.files("kmsemu").joinpath("data", "scenarios")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def parse_scenario(text: str, source: str, catalog: Catalog | None = None) -> Scenario:
    """A scenario from TOML text, checked as a whole; ConfigError names ``source``."""
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer past 4,300 digits
        raise ConfigError(f"{source}: {exc}", code="scenario_invalid") from exc
    except RecursionError:  # tomllib nests by recursion
        raise ConfigError(f"{source}: nested too deeply", code="scenario_invalid") from None
    reader = _Reader(source, catalog or default_catalog())
    return reader.scenario(data)


class _Reader:
    def __init__(self, source: str, catalog: Catalog) -> None:
        self.source = source
        self.catalog = catalog

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}", code="scenario_invalid")

    def table(self, data: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a table")
        extra = sorted(set(data) - allowed)
        if extra:
            known = ", ".join(sorted(allowed))
            raise self.fail(where, f"unknown key {extra[0]!r} (known: {known})")
        return data

    def value(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> Any:
        value: Any = table.get(key, default)
        if value is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{where}.{key}", f"must be {names}, not {value!r}")
        number = value if isinstance(value, int | float) else None  # int: exact, any size
        if isinstance(number, float) and not math.isfinite(number):
            raise self.fail(f"{where}.{key}", f"must be a finite number, not {value!r}")
        if number is not None and (
            (low is not None and number < low) or (high is not None and number > high)
        ):
            raise self.fail(f"{where}.{key}", f"{value} is outside {low}..{high}")
        return value

    def duration(self, table: Mapping[str, Any], key: str, where: str) -> float:
        text = self.value(table, key, where, str, "0h")
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None

    def windows(
        self, table: Mapping[str, Any], key: str, where: str, days: int
    ) -> tuple[Window, ...]:
        items = table.get(key, [])
        if not isinstance(items, list):
            raise self.fail(f"{where}.{key}", "must be a list of {from_day, to_day} tables")
        windows = []
        for n, item in enumerate(items):
            w = f"{where}.{key}[{n}]"
            t = self.table(item, w, {"from_day", "to_day"})
            start = self.value(t, "from_day", w, int, 0, low=0, high=days)
            end = self.value(t, "to_day", w, int, days, low=0, high=MAX_DAYS)
            if end <= start:
                raise self.fail(w, "to_day must be after from_day")
            windows.append(Window(start, end))
        return tuple(windows)

    def product(self, name: Any, where: str) -> Product:
        if not isinstance(name, str):
            raise self.fail(where, "must name a product")
        try:
            product = self.catalog.find(name)
        except ConfigError as exc:
            raise self.fail(where, exc.detail) from None
        return product

    def scenario(self, data: dict[str, Any]) -> Scenario:
        self.table(data, "top level", {"scenario", "hosts", "dns", "clients", "mak"})
        head = self.table(
            data.get("scenario"),
            "[scenario]",
            {"name", "title", "description", "days", "seed", "start"},
        )
        name = self.value(head, "name", "scenario", str)
        if not name:
            raise self.fail("scenario.name", "is required")
        days = self.value(head, "days", "scenario", int, 365, low=1, high=MAX_DAYS)
        start_text = self.value(head, "start", "scenario", str, DEFAULT_START)
        try:
            start = datetime.fromisoformat(start_text).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise self.fail("scenario.start", f"{start_text!r} is not a date") from None
        hosts = tuple(
            self.host(h, f"hosts[{n}]", days) for n, h in enumerate(self.items(data, "hosts"))
        )
        if not hosts:
            raise self.fail("hosts", "name at least one KMS host ([[hosts]])")
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise self.fail("hosts", "host names must differ")
        dns = self.table(data.get("dns", {}), "[dns]", {"domain", "records"})
        records = tuple(
            self.record(r, f"dns.records[{n}]", days, set(names))
            for n, r in enumerate(self.items(dns, "records", "dns.records"))
        )
        if "records" not in dns:  # every host published, priority 0, weight 0, all along
            records = tuple(Record(h) for h in names)
        keys = tuple(self.mak(k, f"mak[{n}]") for n, k in enumerate(self.items(data, "mak")))
        groups = tuple(
            self.group(g, f"clients[{n}]", days, set(names), {k.name for k in keys})
            for n, g in enumerate(self.items(data, "clients"))
        )
        if not groups:
            raise self.fail("clients", "name at least one group of clients ([[clients]])")
        if sum(g.count for g in groups) > MAX_CLIENTS:
            raise self.fail("clients", f"at most {MAX_CLIENTS:,} clients")
        return Scenario(
            name=name,
            days=days,
            hosts=hosts,
            groups=groups,
            title=self.value(head, "title", "scenario", str, ""),
            description=self.value(head, "description", "scenario", str, ""),
            seed=self.value(head, "seed", "scenario", int, 1),
            start=start,
            domain=self.value(dns, "domain", "dns", str, "lab.test"),
            records=records,
            mak_keys=keys,
        )

    def items(self, data: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
        items = data.get(key, [])
        if not isinstance(items, list):
            where = where or key
            raise self.fail(where, f"use [[{where}]] tables")
        return items

    def host(self, data: Any, where: str, days: int) -> Host:
        t = self.table(
            data,
            where,
            {
                "name",
                "min_count",
                "activation_interval",
                "renewal_interval",
                "clock_offset",
                "outages",
            },
        )
        return Host(
            name=self.value(t, "name", where, str) or self.missing(where, "name"),
            min_count=self.value(t, "min_count", where, int, 0, low=0, high=1000),
            activation_interval=self.value(
                t, "activation_interval", where, int, 120, low=15, high=43_200
            ),
            renewal_interval=self.value(
                t, "renewal_interval", where, int, 10_080, low=15, high=43_200
            ),
            clock_offset=self.duration(t, "clock_offset", where),
            outages=self.windows(t, "outages", where, days),
        )

    def record(self, data: Any, where: str, days: int, hosts: set[str]) -> Record:
        t = self.table(data, where, {"host", "priority", "weight", "from_day", "to_day"})
        host = self.value(t, "host", where, str)
        if host not in hosts:
            raise self.fail(f"{where}.host", f"{host!r} is not one of the hosts")
        start = self.value(t, "from_day", where, int, 0, low=0, high=days)
        end = self.value(t, "to_day", where, int, MAX_DAYS, low=start + 1, high=MAX_DAYS)
        return Record(
            host,
            self.value(t, "priority", where, int, 0, low=0, high=65535),
            self.value(t, "weight", where, int, 0, low=0, high=65535),
            Window(start, end),
        )

    def mak(self, data: Any, where: str) -> MakKey:
        t = self.table(data, where, {"name", "product", "limit"})
        return MakKey(
            self.value(t, "name", where, str) or self.missing(where, "name"),
            self.product(t.get("product"), f"{where}.product"),
            self.value(t, "limit", where, int, 1, low=0, high=10_000_000),
        )

    def group(self, data: Any, where: str, days: int, hosts: set[str], keys: set[str]) -> Group:
        t = self.table(
            data,
            where,
            {
                "name",
                "count",
                "product",
                "start_day",
                "arrive_over_days",
                "vm_share",
                "cloned",
                "offline",
                "clock_skew",
                "hardware_change_day",
                "kms_host",
                "mak",
                "host_caching",
            },
        )
        count = self.value(t, "count", where, int, 1, low=1, high=MAX_CLIENTS)
        kms_host = self.value(t, "kms_host", where, str)
        if kms_host is not None and kms_host not in hosts:
            raise self.fail(f"{where}.kms_host", f"{kms_host!r} is not one of the hosts")
        mak = self.value(t, "mak", where, str)
        if mak is not None and mak not in keys:
            raise self.fail(f"{where}.mak", f"{mak!r} is not one of the MAK keys")
        number = (int, float)
        return Group(
            name=self.value(t, "name", where, str) or self.missing(where, "name"),
            count=count,
            product=self.product(t.get("product"), f"{where}.product"),
            start_day=float(self.value(t, "start_day", where, number, 0, low=0, high=days)),
            arrive_over_days=float(
                self.value(t, "arrive_over_days", where, number, 0, low=0, high=MAX_DAYS)
            ),
            vm_share=float(self.value(t, "vm_share", where, number, 0, low=0, high=1)),
            cloned=self.value(t, "cloned", where, int, 0, low=0, high=count),
            offline=self.windows(t, "offline", where, days),
            clock_skew=self.duration(t, "clock_skew", where),
            hardware_change_day=self.value(
                t, "hardware_change_day", where, number, None, low=0, high=days
            ),
            kms_host=kms_host,
            mak=mak,
            host_caching=self.value(t, "host_caching", where, bool, True),
        )

    def missing(self, where: str, key: str) -> Any:
        raise self.fail(f"{where}.{key}", "is required")
