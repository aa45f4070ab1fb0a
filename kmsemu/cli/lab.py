"""``kmsemu lab``: the KMS host, its DNS zone and the MAK service in one process.

One event loop runs the three servers; the DNS zone (default ``lab.test``)
publishes the host as ``_vlmcs._tcp`` with an address record for it, so a
client that looks the host up by DNS finds it. State lives where the
separate commands keep it, so ``kmsemu host status``, ``kmsemu mak`` and
``kmsemu portal`` work against a running lab unchanged: ``$KMSEMU_HOME/host``
and ``$KMSEMU_HOME/mak`` (SQLite and the admin token).
SIGTERM or SIGINT stops all three cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click

from kmsemu.addresses import format_address
from kmsemu.catalog import load_catalog
from kmsemu.cli.common import ADDRESS, fail, kmsemu_home, secret_option
from kmsemu.cli.host import open_host
from kmsemu.clock import SystemClock
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import Authority, SrvTarget, Zone, ZoneError
from kmsemu.errors import KmsemuError
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import DEFAULT_PORT, ServerOptions, install_uvloop
from mak.server import DEFAULT_PORT as MAK_PORT
from mak.server import MakServer, bind, ensure_token, executor_for, open_store, uvicorn_config

DNS_PORT = 5300
KMS_NAME = "kms"


@click.command()
@click.option("--kms-listen", type=ADDRESS, multiple=True,
              help=f"ADDR[:PORT] for the KMS host (repeatable). Default: every address, port "
                   f"{DEFAULT_PORT}.")
@click.option("--dns-listen", type=ADDRESS, default=f"127.0.0.1:{DNS_PORT}", show_default=True,
              help="ADDR[:PORT] for the lab DNS (UDP and TCP).")
@click.option("--mak-listen", type=ADDRESS, default=f"127.0.0.1:{MAK_PORT}", show_default=True,
              help="ADDR[:PORT] for the MAK service and portal (HTTP).")
@click.option("--zone", default="lab.test", show_default=True,
              help="The DNS zone that publishes the host (_vlmcs._tcp.ZONE).")
@click.option("--min-count", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Report at least this count (25: every client activates at once).")
@click.option("--admin-token", envvar="KMSEMU_ADMIN_TOKEN", show_envvar=True,
              help="The MAK service's admin token. Default: one kept in "
                   "$KMSEMU_HOME/mak/admin-token.")
@secret_option()
@click.option("--quiet", is_flag=True, help="Log only warnings and errors.")
def lab(kms_listen: tuple[tuple[str, int | None], ...], dns_listen: tuple[str, int | None],
        mak_listen: tuple[str, int | None], zone: str, min_count: int, admin_token: str | None,
        secret: str, quiet: bool) -> None:
    """Run the whole lab in one process: KMS host, DNS and MAK service.

    Prints what listens where, then `ready lab` on stderr.
    """
    kms = [(h, p if p is not None else DEFAULT_PORT) for h, p in kms_listen] or [
        ("0.0.0.0", DEFAULT_PORT), ("::", DEFAULT_PORT)]
    dns = (dns_listen[0], dns_listen[1] if dns_listen[1] is not None else DNS_PORT)
    mak = (mak_listen[0], mak_listen[1] if mak_listen[1] is not None else MAK_PORT)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    loop_name = install_uvloop("auto")
    try:
        asyncio.run(_run(kms, dns, mak, zone, min_count, admin_token, secret, loop_name))
    except (OSError, KmsemuError, ZoneError) as exc:
        fail(f"the lab could not start: {getattr(exc, 'strerror', None) or exc}",
             code="lab_failed")


async def _run(kms: list[tuple[str, int]], dns: tuple[str, int], mak: tuple[str, int],
               zone_name: str, min_count: int, admin_token: str | None, secret: str,
               loop_name: str) -> None:
    from mak.api import create_app
    from mak.service import MakService

    home = kmsemu_home()
    catalog = load_catalog()
    async with contextlib.AsyncExitStack() as stack:
        host = await open_host(home / "host", catalog, HostSettings(min_count=min_count),
                               [secret], 0.0, kms, ServerOptions(), "text", loop_name)

        async def close_host(kind: type[BaseException] | None, *_: object) -> None:
            await host.close("signal" if kind is None else "start failed")

        stack.push_async_exit(close_host)
        port = host.bound[0][1]
        specific = [h for h, _ in host.bound if h not in ("0.0.0.0", "::")]
        zone = Zone.build(zone_name, srv=[SrvTarget(KMS_NAME, port)],
                          addresses=[(KMS_NAME, specific[0] if specific else "127.0.0.1")])
        dns_server = DnsServer(Authority([zone]))
        dns_bound = await dns_server.start(*dns)
        stack.push_async_callback(dns_server.close)

        store = open_store(None, home / "mak")
        stack.callback(store.close)
        token = admin_token or ensure_token(home / "mak")
        service = MakService(store, now=SystemClock().now, secret=secret, catalog=catalog)
        app = create_app(service, admin_token=token, executor=executor_for(store))
        mak_ready = asyncio.Event()
        mak_server = MakServer(uvicorn_config(app), on_ready=lambda _: mak_ready.set(),
                               handle_signals=False)
        sockets = bind([mak])
        mak_bound = sockets[0].getsockname()[:2]
        mak_task = asyncio.create_task(mak_server.serve(sockets=sockets))
        ready = asyncio.ensure_future(mak_ready.wait())
        await asyncio.wait([mak_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if not mak_ready.is_set():
            ready.cancel()
            mak_task.result()
            raise OSError("the MAK service stopped at start")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        kms_text = " ".join(format_address(h, p) for h, p in host.bound)
        mak_url = f"http://{format_address(*mak_bound)}"
        for line in (
            f"KMS host   {kms_text} (state {home / 'host'})",
            f"DNS        {format_address(*dns_bound)} udp+tcp, zone {zone_name}: "
            f"_vlmcs._tcp.{zone_name} SRV -> {KMS_NAME}.{zone_name}:{port}",
            f"MAK+portal {mak_url} (/openapi.json; SQLite in {home / 'mak'})",
            "admin token " + ("from --admin-token" if admin_token
                              else f"in {home / 'mak' / 'admin-token'}"),
        ):
            click.echo(line, err=True)
        click.echo(f"ready lab kms={kms_text} dns={format_address(*dns_bound)} mak={mak_url}",
                   err=True)
        await stop.wait()
        mak_server.should_exit = True
        await mak_task
