"""``kmsemu host``: run a KMS host (``serve``), read its state (``status``) and its request
log (``requests``), make it fail (``fault set | show | clear``)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kmsemu.catalog import Catalog, Product, load_catalog
from kmsemu.cli.common import (
    ADDRESS,
    DURATION,
    PRODUCT,
    GuidType,
    emit,
    json_option,
    kmsemu_home,
    secret_option,
)
from kmsemu.clock import OffsetClock, SystemClock
from kmsemu.errors import ConfigError, LocalError, format_hresult
from kmsemu.host.options import (
    DEFAULT_DNS_REFRESH,
    DEFAULT_DNS_SERVER,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    ServerOptions,
)
from kmsemu.host.rules import (
    DEFAULT_ACTIVATION_INTERVAL,
    DEFAULT_RENEWAL_INTERVAL,
    INTERVAL_RANGE,
    HostSettings,
)
from kmsemu.host.store import LAB_DB, HostStore, database_path
from kmsemu.klp.messages import LicenseStatus
from kmsemu.wire import (
    datetime_from_filetime,
    filetime_from_datetime,
    filetime_from_unix,
    guid_text,
)

if TYPE_CHECKING:
    from kmsemu.run.host import RunningHost

_STATE_HELP = "State directory or SQLite file (default: $KMSEMU_HOME/host)."
_INTERVAL = click.IntRange(*INTERVAL_RANGE)


def default_state_dir() -> Path:
    """The host's state without ``--state``: ``$KMSEMU_HOME/host``."""
    return kmsemu_home() / "host"


@click.group()
def host() -> None:
    """The KMS host: serve KLP/1 activations and report counts."""


@host.command()
@click.option(
    "--listen",
    "listen",
    type=ADDRESS,
    multiple=True,
    help="Address to listen on, ADDR[:PORT] or [IPv6]:PORT (repeatable). "
    "Default: every IPv4 and IPv6 address.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port for --listen addresses that name none (0: any free port).",
)
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@secret_option(multiple=True)
@click.option(
    "--min-count",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Report at least this count (a CI convenience).",
)
@click.option(
    "--activation-interval",
    type=_INTERVAL,
    default=DEFAULT_ACTIVATION_INTERVAL,
    show_default=True,
    help="Minutes; what clients retry at (slmgr /sai).",
)
@click.option(
    "--renewal-interval",
    type=_INTERVAL,
    default=DEFAULT_RENEWAL_INTERVAL,
    show_default=True,
    help="Minutes; how often clients renew (slmgr /sri).",
)
@click.option(
    "--clock-offset",
    type=DURATION,
    default=0.0,
    help="Run the host clock this far off, e.g. 5h or -90m.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Connections over this are closed on arrival.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0.05),
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    help="Seconds a connection may stay silent.",
)
@click.option(
    "--ack",
    type=click.Choice(["durable", "batched"]),
    default="durable",
    show_default=True,
    help="durable: answer once the request is in the journal (survives a kill); "
    "batched: answer at once, store in batches.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="One line per activation on stderr.",
)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve the products of this catalog file instead of the shipped one.",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="Event loop; auto uses uvloop when installed.",
)
@click.option(
    "--dns-publish",
    "publish",
    multiple=True,
    metavar="ZONE[,PRIO,WEIGHT]",
    help="Publish the host's _vlmcs._tcp SRV and address records in this zone "
    "(repeatable: the publish list).",
)
@click.option(
    "--dns-server",
    default=None,
    help="DNS server taking RFC 2136 updates (kmsemu dns serve, BIND...; default "
    f"{DEFAULT_DNS_SERVER}); given alone, the host publishes into this machine's DNS domain.",
)
@click.option(
    "--no-dns-publish",
    "no_publish",
    is_flag=True,
    help="Publish nothing in DNS (slmgr /cdns).",
)
@click.option(
    "--dns-name",
    default=None,
    help="The host's name in the zone (default: this machine's short name).",
)
@click.option(
    "--dns-address",
    default=None,
    help="Address to publish (default: the listen address, or 127.0.0.1).",
)
@click.option(
    "--dns-refresh",
    type=DURATION,
    default=DEFAULT_DNS_REFRESH,
    help="Publish again this often (default 24h).",
)
@click.option(
    "--dns-tsig",
    default=None,
    metavar="NAME:BASE64",
    help="Sign updates with this HMAC-SHA256 TSIG key.",
)
def serve(
    listen: tuple[tuple[str, int | None], ...],
    port: int,
    state_dir: Path | None,
    secrets: tuple[str, ...],
    min_count: int,
    activation_interval: int,
    renewal_interval: int,
    clock_offset: float,
    max_connections: int,
    idle_timeout: float,
    ack: str,
    log_format: str,
    catalog_path: Path | None,
    loop: str,
    publish: tuple[str, ...],
    dns_server: str | None,
    no_publish: bool,
    dns_name: str | None,
    dns_address: str | None,
    dns_refresh: float,
    dns_tsig: str | None,
) -> None:
    """Run a KMS host speaking KLP/1 until SIGTERM or SIGINT.

    Prints `ready kms-host ADDR...` on stderr once it accepts connections.
    """

    import socket

    from kmsemu.run.host import HostConfig, Publishing, publish_zones, serve_host
    from kmsemu.run.loop import loop_factory, run_on

    catalog = load_catalog(catalog_path)
    settings = HostSettings(activation_interval, renewal_interval, min_count)
    addresses = [(h, p if p is not None else port) for h, p in listen]
    if not addresses:
        addresses = [("0.0.0.0", port), ("::", port)]
    try:
        zones = publish_zones(publish, server=dns_server, off=no_publish, fqdn=socket.getfqdn())
        publishing = Publishing.parse(
            zones, dns_server or DEFAULT_DNS_SERVER, dns_name, dns_address, dns_refresh, dns_tsig
        )
    except ConfigError as exc:
        raise click.UsageError(exc.detail) from exc
    loop_name, _ = loop_factory(loop)
    config = HostConfig(
        state_dir or default_state_dir(),
        catalog,
        settings,
        list(secrets),
        OffsetClock(SystemClock(), clock_offset),
        addresses,
        ServerOptions(max_connections, idle_timeout, durable=ack == "durable"),
        log_format,
        loop_name,
        publishing,
    )

    def announce(running: RunningHost) -> None:
        click.echo(f"ready kms-host {running.listen}", err=True)

    run_on(loop, serve_host(config, announce))


@host.command()
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Name applications from this catalog file.",
)
@json_option
def status(state_dir: Path | None, catalog_path: Path | None, as_json: bool) -> None:
    """The host's slmgr /dlv-style block: counts, port, cumulative requests.

    Without --state: $KMSEMU_HOME/host, or the lab's database when only `kmsemu lab` ran;
    the block names the state it read.
    """
    catalog = load_catalog(catalog_path)
    store = _open_store(state_dir)
    try:
        report = _status_report(store, catalog)
    finally:
        store.close()
    if as_json:
        emit(report)
    else:
        click.echo(_status_text(report))


def _open_store(state_dir: Path | None, *, read_only: bool = False) -> HostStore:
    """The host's store as ``host status`` finds it: ``--state``, else ``$KMSEMU_HOME/host``,
    else the lab's database when only ``kmsemu lab`` ran (``no_state`` when none is there)."""
    state = state_dir or default_state_dir()
    lab_db = kmsemu_home() / LAB_DB
    if state_dir is None and not database_path(state).exists() and lab_db.exists():
        state = lab_db
    try:
        return HostStore(state, create=False, read_only=read_only)
    except OSError as exc:  # FileNotFoundError; a name too long, a directory not readable
        raise LocalError("no_state", f"looked in {state}") from exc


def _status_report(store: HostStore, catalog: Catalog) -> dict[str, Any]:
    meta = store.meta()
    offset = float(meta.get("clock_offset", "0") or 0)
    now = filetime_from_unix(SystemClock().now() + offset)
    live = store.live_counts(now)
    min_count = int(meta.get("min_count", "0") or 0)
    counts = {}
    for app_id, name in catalog.kms_applications.items():
        counts[name] = max(live.get(app_id.bytes_le, 0), min_count)
    total, failed, by_status = store.request_totals()
    return {
        "counts": counts,
        "port": int(meta["port"]) if "port" in meta else None,
        "listen": meta.get("listen", "").split(),
        "extended_pid": meta.get("epid"),
        "host_id": meta.get("host_id"),
        "activation_interval": int(meta.get("activation_interval", DEFAULT_ACTIVATION_INTERVAL)),
        "renewal_interval": int(meta.get("renewal_interval", DEFAULT_RENEWAL_INTERVAL)),
        "min_count": min_count,
        "dns_publish": meta.get("dns_publish", "").split(),
        "requests": {
            "total": total,
            "failed": failed,
            "by_status": {s.name.lower(): by_status.get(int(s), 0) for s in LicenseStatus},
        },
        "state": str(store.path),
    }


_STATUS_LINES = {
    LicenseStatus.UNLICENSED: "Unlicensed",
    LicenseStatus.LICENSED: "Licensed",
    LicenseStatus.INITIAL_GRACE: "Initial grace period",
    LicenseStatus.OUT_OF_TOLERANCE_GRACE: "License expired or Hardware out of tolerance",
    LicenseStatus.NON_GENUINE_GRACE: "Non-genuine grace period",
    LicenseStatus.NOTIFICATION: "Notification",
    LicenseStatus.EXTENDED_GRACE: "Extended grace period",
}


def _status_text(report: dict[str, Any]) -> str:
    lines = [
        "Name: kmsemu lab KMS host (KLP/1)",
        "Description: VOLUME_KMS lab host; activates lab clients only",
        f"Extended PID: {report['extended_pid']}",
        f"Host ID: {report['host_id']}",
        "",
    ]
    port = report["port"] if report["port"] is not None else "(never started)"
    for name, count in report["counts"].items():  # one block per licence, as slmgr /dlv all
        lines += [
            f"Licence: {name}",
            "Key Management Service is enabled on this machine",
            f"    Current count: {count}",
            f"    State: {report['state']}",
            f"    Listening on Port: {port}",
            "    DNS publishing " + ("enabled" if report["dns_publish"] else "disabled"),
            "    KMS priority: Normal",
            "",
            f"    Activation interval: {report['activation_interval']} minutes",
            f"    Renewal interval: {report['renewal_interval']} minutes",
            "",
        ]
    lines += [
        "Key Management Service cumulative requests received from clients",
        f"    Total requests received: {report['requests']['total']}",
        f"    Failed requests received: {report['requests']['failed']}",
    ]
    by_status = report["requests"]["by_status"]
    for status_value, text in _STATUS_LINES.items():
        lines.append(
            f"    Requests with License Status {text}: {by_status[status_value.name.lower()]}"
        )
    return "\n".join(lines)


# -- kmsemu host requests ---------------------------------------------------------------


#: ``--client``: a client machine ID.
CMID = GuidType("CMID", "a CMID (a GUID such as 174d1b52-2b07-4a4e-8c5d-2f0a3c1b9e6d)")


class SinceType(click.ParamType):  # type: ignore[type-arg]
    """``--since``: an ISO 8601 date or time (UTC unless it says otherwise), or a duration
    back from now (``90m``, ``2h``, ``7d``; ``-2h`` alike)."""

    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | float:
        """An aware datetime, or the seconds back from now (not negative)."""
        if isinstance(value, datetime | float):
            return value
        from kmsemu.durations import parse_duration

        text = str(value).strip()
        try:
            seconds = parse_duration(text)
        except ValueError:
            pass
        else:
            if text.startswith("+"):
                self.fail(f"{text!r}: --since counts back from now, give {text[1:]}", param, ctx)
            if not math.isfinite(seconds) or abs(seconds) > _MAX_SINCE:
                self.fail(f"{text!r} is further back than a date goes", param, ctx)
            return abs(seconds)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither an ISO 8601 date or time (2026-12-01, "
                "2026-12-01T08:00:00Z) nor a duration back from now (90m, 2h, 7d)",
                param,
                ctx,
            )
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_MAX_SINCE = 3_650 * 86_400.0  # ten years: further back than any lab host has run


@host.command()
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Name products from this catalog file.",
)
@click.option(
    "--since",
    type=SinceType(),
    help="Only requests logged since WHEN: ISO 8601 (2026-12-01T08:00:00Z) or a duration "
    "back from now on the host's clock (2h, 7d).",
)
@click.option("--client", "client_id", type=CMID, help="Only requests from this CMID.")
@click.option(
    "--last",
    type=click.IntRange(0, 2**63 - 1),  # SQLite's LIMIT is a signed 64-bit integer
    metavar="N",
    default=100,
    show_default=True,
    help="Show the newest N matching requests (0: all).",
)
@json_option
def requests(
    state_dir: Path | None,
    catalog_path: Path | None,
    since: datetime | float | None,
    client_id: uuid.UUID | None,
    last: int,
    as_json: bool,
) -> None:
    """The host's request log: one Windows event 12290 per request, oldest first.

    Reads the state as `host status` does (while the host runs, too).
    """
    import sqlite3

    catalog = load_catalog(catalog_path)
    store = _open_store(state_dir, read_only=True)
    try:
        try:
            since_ft = None if since is None else _since_filetime(store, since)
            rows = store.request_log(
                since=since_ft,
                client=client_id.bytes_le if client_id is not None else None,
                last=last or None,
            )
        except sqlite3.Error as exc:  # an empty or foreign file: no host tables in it
            raise LocalError("no_state", f"{store.path}: {exc}") from exc
        path = str(store.path)
    finally:
        store.close()
    products = {p.sku_id.bytes_le: p for p in catalog}
    records = [_request_json(row, products) for row in rows]
    if as_json:
        emit({"requests": records, "state": path})
    elif not records:
        click.echo("No requests logged.")
    else:
        click.echo("\n\n".join(_request_text(r) for r in records))


def _since_filetime(store: HostStore, since: datetime | float) -> int:
    """``--since`` as a FILETIME on the host's clock (its ``--clock-offset`` included)."""
    if isinstance(since, datetime):
        return filetime_from_datetime(since)
    offset = float(store.meta().get("clock_offset", "0") or 0)
    return filetime_from_unix(SystemClock().now() + offset - since)


def _iso(filetime: int | None) -> str | None:
    """A FILETIME as ``2026-12-02T14:30:01Z``; None when there is none or no date has it."""
    if filetime is None:
        return None
    try:
        return datetime_from_filetime(filetime).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        return None


def _request_json(row: tuple[Any, ...], products: dict[bytes, Product]) -> dict[str, Any]:
    """One log row (``REQUEST_LOG_COLUMNS``) as ``host requests --json`` prints it."""
    (
        row_id, time, status, required, workstation, cmid, request_time, vm,
        license_status, minutes, sku, application, count_id, current_count, peer, reason,
    ) = row  # fmt: skip
    product = products.get(sku) if sku is not None else None
    parsed = license_status is not None  # NULL: the plaintext never parsed
    return {
        "id": row_id,
        "time": _iso(time),
        "peer": peer,
        "hresult": format_hresult(status),
        "status": status,
        "activation_id": guid_text(sku) if sku is not None else None,
        "product": product.name if product is not None else None,
        "product_key": product.key if product is not None else None,
        "client_time": _iso(request_time) if parsed else None,
        "request_time": request_time,
        "minutes_to_expiration": minutes,
        "license_status": (
            {"value": license_status, "name": _license_text(license_status)} if parsed else None
        ),
        "required_client_count": required,
        "client_machine_id": guid_text(cmid),
        "workstation_name": workstation,
        "virtual_machine": bool(vm) if vm is not None else None,
        "application_id": guid_text(application) if application is not None else None,
        "kms_count_id": guid_text(count_id) if count_id is not None else None,
        "current_count": current_count,
        "reason": reason,
    }


def _license_text(value: int) -> str:
    try:
        return LicenseStatus(value).text
    except ValueError:
        return f"Unknown ({value})"


def _request_text(r: dict[str, Any]) -> str:
    """One record as a block of ``host requests``, its lines in event 12290's order."""

    def shown(value: object) -> str:
        return "-" if value is None or value == "" else str(value)

    activation = shown(r["activation_id"])
    if r["product"] is not None:
        activation += f" ({r['product']})"
    state = r["license_status"]
    lines = [
        f"Request {r['id']} at {shown(r['time'])} from {shown(r['peer'])}",
        f"    HRESULT: {r['hresult']}",
        f"    Activation ID: {activation}",
        f"    Client time: {shown(r['client_time'])}",
        f"    Minutes to expiration: {shown(r['minutes_to_expiration'])}",
        f"    License state: {state['value']} ({state['name']})"
        if state
        else "    License state: -",
        f"    Minimum count: {shown(r['required_client_count'])}",
        f"    CMID: {r['client_machine_id']}",
        f"    Workstation name: {shown(r['workstation_name'])}",
        "    Virtual machine: " + {None: "-", True: "Yes", False: "No"}[r["virtual_machine"]],
        f"    Current count: {r['current_count']}",
    ]
    if r["reason"]:
        lines.append(f"    Reason: {r['reason']}")
    return "\n".join(lines)


# -- kmsemu host fault ------------------------------------------------------------------


class FaultKindType(click.ParamType):  # type: ignore[type-arg]
    """A fault KIND: a network fault's name or an activation HRESULT (hex or name)."""

    name = "KIND"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The kind as the faults file names it (``0xC004F042``, ``reset``...)."""
        from kmsemu.host.faults import parse_kind

        try:
            return parse_kind(str(value))[0]
        except ConfigError as exc:
            self.fail(exc.detail, param, ctx)


class DelayType(click.ParamType):  # type: ignore[type-arg]
    """Seconds (``1.5``) or a duration (``2s``, ``1m``)."""

    name = "DELAY"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """The delay in seconds."""
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            return DURATION.convert(value, param, ctx)


_KIND = FaultKindType()
_DELAY = DelayType()


def _fault_state(state_dir: Path | None) -> Path:
    """The host state the faults go with: as ``host status`` finds it (``write_failed``
    for a path that cannot even be looked at: a name too long...)."""
    state = state_dir or default_state_dir()
    lab_db = kmsemu_home() / LAB_DB
    try:
        if state_dir is None and not database_path(state).exists() and lab_db.exists():
            state = lab_db
        database_path(state)
    except OSError as exc:
        raise LocalError("write_failed", f"{state}: {exc.strerror or exc}") from exc
    return state


def _fault_store(state: Path) -> Any:
    from kmsemu.host.faults import FaultStore, faults_path

    return FaultStore(faults_path(database_path(state)))


def _host_now(state: Path) -> float:
    """The host's clock (Unix seconds): this machine's, moved by the ``--clock-offset`` the
    host last ran with."""
    import sqlite3

    offset = 0.0
    if database_path(state).exists():
        try:
            store = HostStore(state, create=False)
            try:
                offset = float(store.meta().get("clock_offset", "0") or 0)
            finally:
                store.close()
        except (OSError, sqlite3.Error, ValueError):  # no usable host there yet: no offset
            offset = 0.0
    return SystemClock().now() + offset


def _fault_line(data: dict[str, Any]) -> str:

    parts = [f"Fault {data['id']}: {data['kind']}"]
    if data["kind"] == "slow":
        parts.append(f"delay {data['delay']:g}s")
    if data["product"]:
        parts.append(f"product {data['product']}")
    if data["client"]:
        parts.append(f"client {data['client']}")
    parts.append(
        "until cleared" if data["remaining"] is None else f"{data['remaining']} time(s) left"
    )
    if data["expires"] is not None:
        until = datetime.fromtimestamp(data["expires"], UTC).isoformat(timespec="seconds")
        parts.append(f"expires {until} (host clock)")
    return ", ".join(parts)


def _faults_shown(state: Path) -> tuple[Any, list[dict[str, Any]]]:
    store = _fault_store(state)
    try:
        now = _host_now(state)
        return store, [f.to_json() for f in store.load().live(now)]
    except OSError as exc:
        raise LocalError("no_state", f"{store.path}: {exc.strerror or exc}") from exc


@host.group()
def fault() -> None:
    """Failures on demand: make the KMS host fail (faults live in its state directory)."""


@fault.command("set")
@click.argument("kind", type=_KIND)
@click.argument("delay_arg", metavar="[DELAY]", type=_DELAY, required=False)
@click.option("--times", type=click.IntRange(1, 1_000_000), help="Fire this many times, then stop.")
@click.option("--product", type=PRODUCT, help="Only requests for this product.")
@click.option("--client", "client_id", metavar="CMID", help="Only this client machine ID.")
@click.option("--for", "duration", type=DURATION, help="Expire after this long (e.g. 10m).")
@click.option("--delay", type=_DELAY, help="For slow: how long to wait before answering.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@json_option
def fault_set(
    kind: str,
    delay_arg: float | None,
    times: int | None,
    product: Product | None,
    client_id: str | None,
    duration: float | None,
    delay: float | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Make the host fail with KIND until cleared (or --times N, or --for DURATION).

    KIND is an activation HRESULT the host answers with (0xC004F042, or its name:
    product_not_served) or a network fault: refuse, close-after-bind, stall, reset,
    garbage, slow DELAY. A running host obeys within half a second.
    """
    from kmsemu.host.faults import new_fault

    if delay_arg is not None and delay is not None:
        raise click.UsageError("give the delay once: 'slow 2s' or --delay 2s")
    state = _fault_state(state_dir)
    try:
        now = _host_now(state)
    except OSError as exc:
        raise LocalError("write_failed", f"{state}: {exc.strerror or exc}") from exc
    try:
        made = new_fault(
            kind,
            now=now,
            times=times,
            product=(product.key, str(product.sku_id)) if product is not None else None,
            client=client_id,
            duration=duration,
            delay=delay if delay is not None else delay_arg,
        )
    except ConfigError as exc:
        raise click.UsageError(exc.detail) from exc
    store = _fault_store(state)
    try:
        stored = store.add(made)
    except OSError as exc:
        raise LocalError("write_failed", f"{store.path}: {exc.strerror or exc}") from exc
    if as_json:
        emit({"fault": stored.to_json(), "file": str(store.path)})
    else:
        click.echo(_fault_line(stored.to_json()) + " (set)")


@fault.command("show")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@json_option
def fault_show(state_dir: Path | None, as_json: bool) -> None:
    """The faults in force (spent and expired ones are not shown)."""
    store, faults = _faults_shown(_fault_state(state_dir))
    if as_json:
        emit({"faults": faults, "file": str(store.path)})
    elif not faults:
        click.echo("No faults set.")
    else:
        for data in faults:
            click.echo(_fault_line(data))


@fault.command("clear")
@click.argument("kind", type=_KIND, required=False)
@click.option("--all", "clear_all", is_flag=True, help="Clear every fault.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=_STATE_HELP)
@json_option
def fault_clear(kind: str | None, clear_all: bool, state_dir: Path | None, as_json: bool) -> None:
    """Clear the faults of KIND, or --all of them."""
    if (kind is None) == (not clear_all):
        raise click.UsageError("give a KIND or --all (not both)")
    state = _fault_state(state_dir)
    store = _fault_store(state)
    try:
        removed = store.clear(None if clear_all else kind)
    except OSError as exc:
        raise LocalError("write_failed", f"{store.path}: {exc.strerror or exc}") from exc
    _, faults = _faults_shown(state)
    if as_json:
        emit({"cleared": removed, "faults": faults, "file": str(store.path)})
    else:
        click.echo(f"Cleared {removed} fault(s).")
