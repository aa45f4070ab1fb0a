"""The running lab: KMS host, DNS, MAK service and dashboard on one event loop.

All state is in one SQLite file, ``$KMSEMU_HOME/lab.sqlite3``: the host's
tables (identity, count cache, request log, settings in use, the lab clock's
offset) and the MAK service's and portal's tables. The admin token stays in
``$KMSEMU_HOME/mak/admin-token`` where ``kmsemu mak`` and ``kmsemu portal``
look for it. The lab clock is the real clock plus an offset that the
dashboard moves (time travel); the host and the MAK service both read it, and
the offset is stored, so a restart keeps the lab's date.

SIGTERM and SIGINT stop it: HTTP stops taking requests and finishes those in
flight, then the host writes what it holds and everything closes. SIGHUP
reads the configuration file again (``kmsemu.lab.config``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import click
from dnslib import QTYPE

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog
from kmsemu.clock import OffsetClock, SystemClock
from kmsemu.dns.authority import Authority
from kmsemu.dns.server import DnsServer, loopback
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.errors import ConfigError, KmsemuError, LocalError
from kmsemu.host.faults import FaultStore, faults_path
from kmsemu.host.options import ServerOptions
from kmsemu.host.overrides import Overrides, OverridesStore
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import product_names
from kmsemu.host.store import LAB_DB, HostStore
from kmsemu.lab.config import (
    FILE_NAME,
    LabSettings,
    Reload,
    Reloading,
    plan_reload,
    read_config,
)
from kmsemu.lab.fault_api import HostFaults
from kmsemu.lab.metrics import LabGauges, LabMetrics
from kmsemu.lab.monitor import Monitor, iso
from kmsemu.lab.web import create_lab_app
from kmsemu.run.host import HostConfig, RunningHost, open_host
from kmsemu.run.mak import MakConfig, open_mak, start_http
from kmsemu.run.signals import until_signal
from kmsemu.run.state import discarded_on_failure
from kmsemu.wire import FILETIME_PER_SECOND, filetime_from_unix
from mak.defaults import token_file
from mak.server import bind
from mak.store.base import Store
from mak.store.sql import key_json

KMS_NAME: Final = "kms"
#: Log rows read back at start, to rebuild the dashboard's client list.
HISTORY: Final = 20_000

log = logging.getLogger("kmsemu.lab")


def configure_logging(log_format: str, quiet: bool) -> None:
    """Send every log record to stderr, as text or JSON; ``quiet``: warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON: time, level, logger, message, and any traceback."""
        entry = {
            "time": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Lab:
    """The running parts, and the view the web app reads (``kmsemu.lab.web.LabView``)."""

    def __init__(
        self,
        settings: LabSettings,
        home: Path,
        catalog: Catalog,
        reloading: Reloading,
        loop_name: str = "asyncio",
    ) -> None:
        self.settings = settings
        self.home = home
        self.db = home / LAB_DB
        self.catalog = catalog
        self.reloading = reloading
        self.loop_name = loop_name
        self.clock = OffsetClock(SystemClock(), _stored_offset(self.db))
        self.monitor = Monitor(catalog)
        self.metrics = LabMetrics(product_names(catalog), self.gauges)
        self.stopping = False
        self.host: RunningHost | None = None
        self.dns: DnsServer | None = None
        self.zone: Zone | None = None
        self.mak_ready = False
        self.http_url = ""
        self.dns_bound: tuple[str, int] = ("", 0)
        self.token = ""
        self._store: Store | None = None
        self._products = {p.number: p.key for p in catalog}
        self._thresholds: dict[bytes, list[int]] = {}
        for product in catalog.volume:
            app = product.application_id.bytes_le
            self._thresholds[app] = sorted({*self._thresholds.get(app, []), product.threshold})

    # -- start and stop -------------------------------------------------------------

    async def run(self) -> None:
        """Start every part, announce ``ready``, serve until SIGTERM/SIGINT, stop in order.

        The signal handlers are in place before ``ready`` is printed; a lab that could
        not start leaves no new state behind, and says why (``lab_failed``)."""
        try:
            await self._run()
        except OSError as exc:  # a part that cannot bind says which already (ListenError)
            raise LocalError("lab_failed", str(exc.strerror or exc)) from exc

    async def _run(self) -> None:
        with discarded_on_failure(self.db, token_file(self.home / "mak")):
            async with contextlib.AsyncExitStack() as stack:
                await self._start(stack)
                with until_signal(reload=self.reload) as stopper:
                    self._announce()
                    await stopper.wait()
                    self.stopping = True  # live event streams end; uvicorn then closes quickly
                    await stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        try:
            host = self.host = await open_host(
                HostConfig(
                    self.db,
                    self.catalog,
                    HostSettings(s.activation_interval, s.renewal_interval, s.min_count),
                    [s.secret],
                    self.clock,
                    s.kms_listen,
                    ServerOptions(),
                    s.log_format,
                    self.loop_name,
                )
            )
        except OSError as exc:
            raise _listen_error("KMS", s.kms_listen, "--kms-listen", exc) from exc

        async def close_host(kind: type[BaseException] | None, *_: object) -> None:
            await host.close("signal" if kind is None else "start failed")

        stack.push_async_exit(close_host)
        total, failed, _ = host.store.request_totals()
        history = host.store.recent_requests(HISTORY)
        self.monitor.load(history, total, failed, host.store.below_threshold())
        host.server.observers += [self.monitor.observe, self.metrics.observe_kms]
        host.server.host.rules.travel = round(self.clock.offset * FILETIME_PER_SECOND)

        port = host.bound[0][1]
        specific = [h for h, _ in host.bound if h not in ("0.0.0.0", "::")]
        address = s.kms_address or (specific[0] if specific else "127.0.0.1")
        self.zone = Zone.build(
            s.zone, srv=[SrvTarget(KMS_NAME, port)], addresses=[(KMS_NAME, address)]
        )
        self._srv = [rr for rr in self.zone.records if rr.rtype == QTYPE.SRV]
        host.server.settings_observers.append(self._publish_or_not)
        self._publish_or_not(self._kept_settings(host.server.overrides))
        self.dns = DnsServer(Authority([self.zone]))
        try:
            self.dns_bound = await self.dns.start(*s.dns_listen)
        except OSError as exc:
            raise _listen_error("DNS", [s.dns_listen], "--dns-listen", exc) from exc
        stack.push_async_callback(self.dns.close)

        opened = open_mak(
            MakConfig(
                self.home / "mak",
                s.secret,
                self.clock,
                self.catalog,
                db=str(self.db),
                admin_token=s.admin_token,
                redeem_rate=s.redeem_rate,
            )
        )
        stack.callback(opened.close)
        self._store, self.token = opened.store, opened.token
        try:
            sockets = bind([s.http_listen])
        except OSError as exc:
            raise _listen_error("HTTP", [s.http_listen], "--http-listen", exc) from exc
        for sock in sockets:
            stack.callback(sock.close)
        http_bound = sockets[0].getsockname()[:2]
        app = create_lab_app(
            self,
            opened.app,
            self.metrics,
            admin_token=opened.token,
            open_reads=loopback(http_bound[0]),
            faults=HostFaults(
                FaultStore(faults_path(self.db)),  # the file kmsemu host fault writes
                self.catalog,
                host.server.host_time,
                host.server.reload_faults,  # on this loop: the host obeys at once
                lambda: dict(host.server.fault_counts),
            ),
        )
        http = await start_http(app, sockets)
        stack.push_async_callback(http.close)
        self.mak_ready = True
        self.http_url = f"http://{format_address(*http_bound)}"

    def _kept_settings(self, store: OverridesStore | None) -> Overrides:
        """What ``kmsemu host set`` kept for the lab's host (nothing when it cannot be
        read: the host logs ``settings-invalid`` when it meets that file)."""
        try:
            return store.load() if store is not None else Overrides()
        except (OSError, KmsemuError):
            return Overrides()

    def _publish_or_not(self, overrides: Overrides) -> None:
        """slmgr /cdns and /sdns on the lab's host: the SRV record leaves the lab's zone, or
        comes back (the next answer shows it), and ``host status`` says which."""
        zone, host = self.zone, self.host
        assert zone is not None and host is not None  # observed once both are up
        publish = overrides.dns_publish is not False
        shown = [rr for rr in zone.records if rr.rtype == QTYPE.SRV]
        if publish and not shown:
            for rr in self._srv:
                zone.add(rr)
            zone.bump_serial()
        elif not publish and shown:
            zone.remove(shown)
            zone.bump_serial()
        host.store.set_meta(dns_publish=self.settings.zone if publish else "")

    def _announce(self) -> None:
        host = self.host
        assert host is not None
        kms = ",".join(format_address(h, p) for h, p in host.bound)
        dns = format_address(*self.dns_bound)
        zone, port = self.settings.zone, host.bound[0][1]
        token = (
            "from --admin-token"
            if self.settings.admin_token
            else str(token_file(self.home / "mak"))
        )
        lines = [
            f"KMS host   {' '.join(format_address(h, p) for h, p in host.bound)}",
            f"DNS        {dns} udp+tcp, zone {zone}: _vlmcs._tcp.{zone} SRV -> "
            f"{KMS_NAME}.{zone}:{port}",
            f"Dashboard  {self.http_url}/ (metrics /metrics, health /healthz /readyz)",
            f"MAK+portal {self.http_url} (/openapi.json)",
            f"State      {self.db}",
            f"admin token {token}",
        ]
        if self.settings.log_format == "json":
            host.log.event(
                "lab",
                None,
                {
                    "kms": kms,
                    "dns": dns,
                    "zone": zone,
                    "http": self.http_url,
                    "state": str(self.db),
                },
            )
            host.log.flush()
        else:
            for line in lines:
                click.echo(line, err=True)
        click.echo(
            f"ready lab kms={kms} dns={dns} http={self.http_url} mak={self.http_url}", err=True
        )

    # -- SIGHUP ---------------------------------------------------------------------

    def reload(self) -> None:
        """Read the configuration file again; apply what can change while running."""
        path = self.reloading.path
        if path is None and (self.home / FILE_NAME).is_file():
            path = self.reloading.path = self.home / FILE_NAME  # made since the start
        if path is None:
            self._report_reload(
                {
                    "error": "no configuration file (--config, KMSEMU_CONFIG or "
                    f"{self.home / FILE_NAME})"
                }
            )
            return
        try:
            values = read_config(path)
        except ConfigError as exc:
            self._report_reload({"error": f"{exc}; nothing changed"})
            return
        current = {k: getattr(self.settings, k) for k in vars(self.settings)}
        plan = plan_reload(self.reloading.file_values, values, current, self.reloading.fixed)
        try:
            self.apply(plan)
        except ValueError as exc:
            self._report_reload({"error": f"{exc}; nothing changed"})
            return
        self.reloading.file_values = values
        self._report_reload(
            {
                "applied": ",".join(f"{k}={v}" for k, v in plan.apply.items()),
                "restart_needed": ",".join(plan.restart),
                "overridden": ",".join(plan.overridden),
                "summary": plan.summary(),
            }
        )

    def apply(self, plan: Reload) -> None:
        """Take a reload's new values now, in the host's rules and its stored settings."""
        settings = replace(self.settings, **plan.apply)
        host_settings = HostSettings(
            settings.activation_interval, settings.renewal_interval, settings.min_count
        )  # raises ValueError when out of range
        self.settings = settings
        if self.host is not None:
            self.host.server.host.rules.settings = host_settings
            self.host.store.set_meta(
                min_count=str(settings.min_count),
                activation_interval=str(settings.activation_interval),
                renewal_interval=str(settings.renewal_interval),
            )
        logging.getLogger().setLevel(logging.WARNING if settings.quiet else logging.INFO)
        self.monitor.bump()

    def _report_reload(self, fields: dict[str, str]) -> None:
        if self.host is not None:
            self.host.log.event(
                "reload", filetime_from_unix(time.time()), {k: v for k, v in fields.items() if v}
            )
            self.host.log.flush()

    # -- what the web app reads -----------------------------------------------------

    def version(self) -> int:
        """The dashboard monitor's version: it grows whenever something shown changes."""
        return self.monitor.version

    def bump(self) -> None:
        """Tell viewers something shown changed."""
        self.monitor.bump()

    def travel(self, seconds: float | None) -> None:
        """Move the lab clock (None: back to real time), for the host too, and log it."""
        self.clock.offset = 0.0 if seconds is None else self.clock.offset + seconds
        if self.host is not None:
            self.host.server.host.rules.travel = round(self.clock.offset * FILETIME_PER_SECOND)
            self.host.store.set_meta(clock_offset=str(self.clock.offset))
            self.host.log.event(
                "clock",
                filetime_from_unix(self.clock.now()),
                {"offset_seconds": round(self.clock.offset)},
            )
            self.host.log.flush()
        self.monitor.bump()

    def counts(self, now: float) -> dict[bytes, int]:
        """The host's live count per application at ``now`` (empty before the host starts)."""
        if self.host is None:
            return {}
        rules, at = self.host.server.host.rules, filetime_from_unix(now)
        return {app: rules.count(app, at) for app in self._thresholds}

    def mak_keys(self) -> list[dict[str, Any]]:
        """The MAK service's keys as the dashboard lists them, with product names."""
        if self._store is None:
            return []
        keys = self._store.keys()  # a store's rows, not a dict's keys
        return [{**key_json(r), "product": self._products.get(r.product)} for r in keys]

    def state(self, read_only: bool) -> dict[str, Any]:
        """Everything the dashboard shows: host, counts, clients, requests, DNS, MAK keys."""
        now = self.clock.now()
        host = self.host
        counts = self.counts(now)
        apps = self.catalog.kms_applications
        return {
            "version": self.monitor.version,
            "now": iso(now),
            "clock_offset": self.clock.offset,
            "read_only": read_only,
            "host": {
                "listen": [format_address(h, p) for h, p in host.bound] if host else [],
                "epid": host.server.host.rules.identity.epid if host else None,
                "min_count": self.settings.min_count,
                "activation_interval": self.settings.activation_interval,
                "renewal_interval": self.settings.renewal_interval,
            },
            "counts": [
                {
                    "application": name,
                    "application_id": str(app_id),
                    "count": counts.get(app_id.bytes_le, 0),
                    "thresholds": self._thresholds.get(app_id.bytes_le, []),
                }
                for app_id, name in apps.items()
            ],
            **self.monitor.snapshot(now),
            "dns": {
                "zone": self.settings.zone,
                "listen": format_address(*self.dns.address) if self.dns else None,
                "records": [
                    {
                        "name": str(rr.rname),
                        "type": QTYPE.get(rr.rtype),
                        "ttl": rr.ttl,
                        "data": str(rr.rdata),
                    }
                    for rr in (self.zone.records if self.zone else [])
                ],
            },
            "mak": {"keys": self.mak_keys()},
            "host_faults": self.host_faults(),
        }

    def host_faults(self) -> dict[str, Any]:
        """The faults the host holds in force and those fired by kind, as the dashboard
        lists them (the host's own copy of the faults file: no I/O)."""
        if self.host is None:
            return {"faults": [], "fired": {}}
        server = self.host.server
        live = server.faults.live(server.host_time()) if server.faults is not None else ()
        return {"faults": [f.to_json() for f in live], "fired": dict(server.fault_counts)}

    def readiness(self) -> dict[str, bool]:
        """Whether each part is serving: kms, dns, http and the database."""
        return {part: not why for part, why in self.problems().items()}

    def problems(self) -> dict[str, str]:
        """Per part, what keeps it from serving ("" when it serves): stopping, not started,
        or the database's own error (a full disk, a file locked by another process)."""
        stopping = "stopping" if self.stopping else ""
        database = "not open" if self.host is None else ""
        if self.host is not None:
            try:
                self.host.store.meta()
            except (sqlite3.Error, OSError) as exc:
                database = f"{type(exc).__name__}: {exc}"
            database = database or self.host.server.store_failure  # its rows refused
        store = self._store  # the MAK service's, in the same file
        if not database and store is not None:
            database = store.problem()
        return {
            "kms": stopping or ("" if self.host and self.host.bound else "not listening"),
            "dns": stopping or ("" if self.dns is not None else "not started"),
            "http": stopping or ("" if self.mak_ready else "not started"),
            "database": database,
        }

    def gauges(self) -> LabGauges:
        """What the metrics read when scraped: counts, connections, MAK keys, clock, DNS."""
        now = self.clock.now()
        names = {a.bytes_le: n for a, n in self.catalog.kms_applications.items()}
        return LabGauges(
            counts={names[a]: c for a, c in self.counts(now).items() if a in names},
            connections=len(self.host.server.connections) if self.host else 0,
            mak_keys=self.mak_keys(),
            clock_offset=self.clock.offset,
            dns_queries=dict(self.dns.stats) if self.dns else {},
            host_faults=dict(self.host.server.fault_counts) if self.host else {},
            host_store_failures=self.host.server.store_failures if self.host else 0,
            host_pending_rows=self.host.server.pending_rows if self.host else 0,
        )


class ListenError(KmsemuError):
    """A part of the lab could not bind its address (the detail names it and its flag)."""

    code = "lab_failed"


def _listen_error(
    part: str, addresses: list[tuple[str, int]], flag: str, exc: OSError
) -> ListenError:
    wanted = " ".join(format_address(*a) for a in addresses)
    return ListenError(f"{part} cannot listen on {wanted} ({flag}): {exc.strerror or exc}")


def _stored_offset(db: Path) -> float:
    """The lab clock's offset kept from the last run (0 for a new lab)."""
    if not db.exists():
        return 0.0
    store = HostStore(db, create=False)
    try:
        return float(store.meta().get("clock_offset", "0") or 0)
    except ValueError:
        return 0.0
    finally:
        store.close()
