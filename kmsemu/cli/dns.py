"""``kmsemu dns``: serve lab zones (``serve``) and print records for another DNS (``export``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kmsemu.addresses import format_address
from kmsemu.cli.common import ADDRESS
from kmsemu.dns import DEFAULT_PORT, EXPORT_FORMATS, UPDATE_POLICIES

if TYPE_CHECKING:
    from kmsemu.dns.zone import Zone

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def dns() -> None:
    """DNS for the lab: _vlmcs._tcp SRV records, served or exported."""


def zone_options(func: F) -> F:
    """``--zone``, ``--srv``, ``--a``, ``--zone-file`` and ``--ttl``, what ``build_zones`` takes."""
    for option in reversed(
        [
            click.option(
                "--zone",
                "zones",
                multiple=True,
                required=True,
                help="The zone, e.g. lab.test (serve: repeatable; --srv and --a go to the first).",
            ),
            click.option(
                "--srv",
                multiple=True,
                metavar="TARGET[:PORT][,PRIO,WEIGHT]",
                help="A KMS host: _vlmcs._tcp SRV record (repeatable; default port "
                "1688, priority 0, weight 0). Relative targets are in the zone.",
            ),
            click.option(
                "--a",
                "addresses",
                multiple=True,
                metavar="NAME=IP",
                help="An A or AAAA record (repeatable).",
            ),
            click.option(
                "--zone-file",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="More records in zone-file syntax (SRV targets fully qualified).",
            ),
            click.option("--ttl", type=click.IntRange(0), default=3600, show_default=True),
        ]
    ):
        func = option(func)
    return func


def build_zones(
    zones: tuple[str, ...],
    srv: tuple[str, ...],
    addresses: tuple[str, ...],
    zone_file: Path | None,
    ttl: int,
) -> list[Zone]:
    """The zones to serve: the first gets the SRV and address records; a zone file's
    records go to whichever zone contains them."""
    from kmsemu.dns.zone import SrvTarget, Zone, ZoneError, load_zone_text

    try:
        pairs = []
        for item in addresses:
            name, sep, ip = item.partition("=")
            if not sep:
                raise ZoneError(f"--a {item!r}: use NAME=IP")
            pairs.append((name.strip(), ip.strip()))
        built = [
            Zone.build(zones[0], srv=[SrvTarget.parse(s) for s in srv], addresses=pairs, ttl=ttl)
        ]
        built += [Zone.build(z, ttl=ttl) for z in zones[1:]]
        if len({z.origin for z in built}) != len(built):
            raise ZoneError("a zone is named twice")
        if zone_file is not None:
            load_zone_text(built, zone_file.read_text(encoding="utf-8"))
    except ZoneError as exc:
        raise click.UsageError(str(exc)) from exc
    return built


@dns.command()
@click.option(
    "--listen",
    type=ADDRESS,
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (UDP and TCP).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--updates",
    type=click.Choice(UPDATE_POLICIES),
    default="loopback",
    show_default=True,
    help="Who may publish records by RFC 2136 dynamic update (kmsemu host serve "
    "--dns-publish does).",
)
@zone_options
def serve(
    listen: tuple[str, int | None],
    port: int,
    updates: str,
    zones: tuple[str, ...],
    srv: tuple[str, ...],
    addresses: tuple[str, ...],
    zone_file: Path | None,
    ttl: int,
) -> None:
    """Authoritative DNS for a lab zone until SIGTERM or SIGINT.

    Prints `ready dns ADDR` on stderr once it answers.
    """
    from kmsemu.dns.authority import Authority
    from kmsemu.dns.server import DnsServer
    from kmsemu.run.dns import serve_dns
    from kmsemu.run.loop import run_on

    built = build_zones(zones, srv, addresses, zone_file, ttl)
    host, chosen = listen[0], listen[1] if listen[1] is not None else port

    def announce(bound: tuple[str, int]) -> None:
        click.echo(f"ready dns {format_address(*bound)}", err=True)

    run_on("auto", serve_dns(DnsServer(Authority(built), updates=updates), host, chosen, announce))


@dns.command("export")
@zone_options
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True)
@click.option(
    "--server",
    default="127.0.0.1",
    show_default=True,
    help="The DNS server an nsupdate script talks to.",
)
def export_command(
    zones: tuple[str, ...],
    srv: tuple[str, ...],
    addresses: tuple[str, ...],
    zone_file: Path | None,
    ttl: int,
    fmt: str,
    server: str,
) -> None:
    """Print the records for an administrator's DNS: BIND lines, PowerShell, nsupdate."""
    from kmsemu.dns.export import export

    if len(zones) != 1:
        raise click.UsageError("export takes one --zone")
    click.echo(
        export(build_zones(zones, srv, addresses, zone_file, ttl)[0], fmt, server=server), nl=False
    )
