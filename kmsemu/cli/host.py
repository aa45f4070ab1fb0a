"""``kmsemu host``: run a KMS host (``serve``), read its state (``status``) and its request
log (``requests``), make it fail (``fault set | show | clear``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kmsemu.catalog import Catalog, load_catalog
from kmsemu.cli import host_fault, host_requests  # their commands join ``host``
from kmsemu.cli.common import (
    ADDRESS,
    DURATION,
    emit,
    json_option,
    kept_host_settings,
    kept_overrides,
    secret_option,
)
from kmsemu.cli.host_base import STATE_HELP, default_state_dir, host, open_store
from kmsemu.clock import OffsetClock, SystemClock
from kmsemu.errors import ConfigError, LocalError
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
from kmsemu.host.store import HostStore
from kmsemu.klp.messages import LicenseStatus
from kmsemu.wire import (
    filetime_from_unix,
)

if TYPE_CHECKING:
    from kmsemu.run.host import RunningHost

_INTERVAL = click.IntRange(*INTERVAL_RANGE)


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
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
    help="With this many open, a new connection closes the oldest.",
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
    activation_interval, renewal_interval, port = _with_overrides(
        state_dir or default_state_dir(), activation_interval, renewal_interval, port
    )
    settings = HostSettings(activation_interval, renewal_interval, min_count)
    addresses = [(h, p if p is not None else port) for h, p in listen]
    if not addresses:
        addresses = [("0.0.0.0", port), ("::", port)]
    try:
        cdns = kept_overrides(state_dir or default_state_dir()).dns_publish is False
        off = no_publish or (cdns and not publish)  # slmgr /cdns kept, unless zones are named
        zones = publish_zones(publish, server=dns_server, off=off, fqdn=socket.getfqdn())
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


def _with_overrides(
    state: Path, activation_interval: int, renewal_interval: int, port: int
) -> tuple[int, int, int]:
    """The intervals and port a host starts with (``kept_host_settings``)."""
    kept = kept_host_settings(
        state,
        activation_interval=activation_interval,
        renewal_interval=renewal_interval,
        port=port,
    )
    return kept["activation_interval"], kept["renewal_interval"], kept["port"]


@host.command("set")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
@click.option("--activation-interval", type=_INTERVAL, help="Minutes (slmgr /sai).")
@click.option("--renewal-interval", type=_INTERVAL, help="Minutes (slmgr /sri).")
@click.option("--port", type=click.IntRange(1, 65535), help="TCP port (slmgr /sprt).")
@click.option(
    "--dns-publish/--no-dns-publish",
    "dns_publish",
    default=None,
    help="Publish the host in DNS, or stop (slmgr /sdns, /cdns).",
)
@json_option
def set_settings(
    state_dir: Path | None,
    activation_interval: int | None,
    renewal_interval: int | None,
    port: int | None,
    dns_publish: bool | None,
    as_json: bool,
) -> None:
    """Change a host's settings as slmgr /sai, /sri, /sprt, /cdns and /sdns do: a running
    host puts the intervals in its next responses and stops or resumes publishing at once;
    the port is the one of its next start."""
    from kmsemu.host.overrides import Overrides, OverridesStore, overrides_path

    if (activation_interval, renewal_interval, port, dns_publish) == (None,) * 4:
        raise click.UsageError(
            "give --activation-interval, --renewal-interval, --port or --[no-]dns-publish"
        )
    store = open_store(state_dir)
    path = overrides_path(store.path)
    store.close()
    overrides = OverridesStore(path)
    try:
        merged = overrides.load().merged(
            Overrides(activation_interval, renewal_interval, port, dns_publish)
        )
        overrides.save(merged)
    except OSError as exc:
        raise LocalError("write_failed", f"{path}: {exc.strerror or exc}") from exc
    if as_json:
        emit({**dataclasses.asdict(merged), "file": str(path)})
        return
    if activation_interval is not None:
        click.echo("Volume activation interval set successfully.")
    if renewal_interval is not None:
        click.echo("Volume renewal interval set successfully.")
    if port is not None:
        click.echo("KMS port set successfully.")
    if dns_publish is not None:
        click.echo(f"DNS publishing {'enabled' if dns_publish else 'disabled'} successfully.")


@host.command()
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
    store = open_store(state_dir)
    try:
        report = _status_report(store, catalog)
    finally:
        store.close()
    if as_json:
        emit(report)
    else:
        click.echo(_status_text(report))


def _status_report(store: HostStore, catalog: Catalog) -> dict[str, Any]:
    meta = store.meta()
    offset = float(meta.get("clock_offset", "0") or 0)
    now = filetime_from_unix(SystemClock().now() + offset)
    live = store.live_counts(now)
    min_count = int(meta.get("min_count", "0") or 0)
    counts = {}
    by_licence = {}
    per_application = store.request_totals_by_application()
    for app_id, name in catalog.kms_applications.items():
        counts[name] = max(live.get(app_id.bytes_le, 0), min_count)
        by_licence[name] = _requests(*per_application.get(app_id.bytes_le, (0, 0, {})))
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
        "requests": _requests(total, failed, by_status),
        "requests_by_licence": by_licence,
        "state": str(store.path),
    }


def _requests(total: int, failed: int, by_status: dict[int, int]) -> dict[str, Any]:
    return {
        "total": total,
        "failed": failed,
        "by_status": {s.name.lower(): by_status.get(int(s), 0) for s in LicenseStatus},
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
            *_cumulative_lines(report["requests_by_licence"][name]),
            "",
        ]
    named = sum(r["total"] for r in report["requests_by_licence"].values())
    unnamed = report["requests"]["total"] - named
    if unnamed:  # unreadable requests (wrong secret, garbage): no licence to count them in
        lines.append(f"Requests naming no licence (unreadable): {unnamed}")
    return "\n".join(lines).rstrip("\n")


def _cumulative_lines(requests: dict[str, Any]) -> list[str]:
    """slmgr's cumulative-requests part of one KMS host licence's block."""
    by_status = requests["by_status"]
    return [
        "Key Management Service cumulative requests received from clients",
        f"    Total requests received: {requests['total']}",
        f"    Failed requests received: {requests['failed']}",
        *(
            f"    Requests with License Status {text}: {by_status[value.name.lower()]}"
            for value, text in _STATUS_LINES.items()
        ),
    ]


__all__ = ["host", "host_fault", "host_requests"]
