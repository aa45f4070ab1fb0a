"""``kmsemu lab``: KMS host, DNS, MAK service and dashboard in one process.

Settings come from the command line, then the environment (``KMSEMU_LAB_*``,
``KMSEMU_SECRET``, ``KMSEMU_ADMIN_TOKEN``), then the configuration file
(``--config``, ``KMSEMU_CONFIG``, or ``$KMSEMU_HOME/lab.toml`` when it exists;
see ``kmsemu.lab.config``), then the defaults. The running lab is
``kmsemu.lab.runner.Lab``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kmsemu.catalog import load_catalog
from kmsemu.cli.common import ADDRESS, kept_host_settings, kmsemu_home, secret_option
from kmsemu.host.options import DEFAULT_PORT
from kmsemu.host.rules import DEFAULT_ACTIVATION_INTERVAL, DEFAULT_RENEWAL_INTERVAL, INTERVAL_RANGE
from kmsemu.lab.config import FILE_NAME, KEYS, LabSettings, Reloading, read_config
from mak.defaults import DEFAULT_PORT as HTTP_PORT
from mak.defaults import DEFAULT_REDEEM_RATE

DNS_PORT = 5300
_CONFIG_KEY = "kmsemu.lab.config"
_INTERVAL = click.IntRange(*INTERVAL_RANGE)


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager: read the file before the other options so that it only fills their defaults."""
    path = value
    if path is None:
        default = kmsemu_home() / FILE_NAME
        path = default if default.is_file() else None
    values: dict[str, Any] = {}
    if path is not None:
        values = read_config(path)  # a ConfigError stops the lab before it starts (exit 1)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_CONFIG_KEY] = values
    return path


def _env(name: str) -> str:
    return f"KMSEMU_LAB_{name.upper()}"


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="KMSEMU_CONFIG",
    show_envvar=True,
    is_eager=True,
    callback=_load_config,
    help=f"TOML file with a [lab] table. Default: $KMSEMU_HOME/{FILE_NAME} if it "
    "exists. The command line and the environment win over it.",
)
@click.option(
    "--kms-listen",
    type=ADDRESS,
    multiple=True,
    envvar=_env("kms_listen"),
    show_envvar=True,
    help=f"ADDR[:PORT] for the KMS host (repeatable). Default: every address, port {DEFAULT_PORT}.",
)
@click.option(
    "--kms-address",
    envvar=_env("kms_address"),
    show_envvar=True,
    metavar="IP",
    help="The address DNS publishes for the host (kms.ZONE). Default: the KMS listen "
    "address, or 127.0.0.1 when it listens on every address.",
)
@click.option(
    "--dns-listen",
    type=ADDRESS,
    default=f"127.0.0.1:{DNS_PORT}",
    show_default=True,
    envvar=_env("dns_listen"),
    show_envvar=True,
    help="ADDR[:PORT] for the lab DNS (UDP and TCP).",
)
@click.option(
    "--http-listen",
    "--mak-listen",
    "http_listen",
    type=ADDRESS,
    default=f"127.0.0.1:{HTTP_PORT}",
    show_default=True,
    envvar=_env("http_listen"),
    show_envvar=True,
    help="ADDR[:PORT] for HTTP: dashboard, MAK service and portal, /metrics, /healthz. "
    "Beyond loopback, reading the dashboard needs the admin token.",
)
@click.option(
    "--zone",
    default="lab.test",
    show_default=True,
    envvar=_env("zone"),
    show_envvar=True,
    help="The DNS zone that publishes the host (_vlmcs._tcp.ZONE).",
)
@click.option(
    "--min-count",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    envvar=_env("min_count"),
    show_envvar=True,
    help="Report at least this count (25: every client activates at once).",
)
@click.option(
    "--activation-interval",
    type=_INTERVAL,
    default=DEFAULT_ACTIVATION_INTERVAL,
    show_default=True,
    envvar=_env("activation_interval"),
    help="Minutes; what clients retry at.",
)
@click.option(
    "--renewal-interval",
    type=_INTERVAL,
    default=DEFAULT_RENEWAL_INTERVAL,
    show_default=True,
    envvar=_env("renewal_interval"),
    help="Minutes; how often clients renew.",
)
@click.option(
    "--admin-token",
    envvar="KMSEMU_ADMIN_TOKEN",
    show_envvar=True,
    help="The admin token (MAK service, portal, dashboard changes). Default: one kept "
    "in $KMSEMU_HOME/mak/admin-token.",
)
@secret_option()
@click.option(
    "--redeem-rate",
    type=click.IntRange(0),
    default=DEFAULT_REDEEM_RATE,
    show_default=True,
    envvar=_env("redeem_rate"),
    help="Portal redemptions per organisation per minute (0: no limit).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar=_env("log_format"),
    show_envvar=True,
    help="Log lines on stderr as text or one JSON object each.",
)
@click.option("--quiet", is_flag=True, envvar=_env("quiet"), help="Log only warnings and errors.")
@click.pass_context
def lab(
    ctx: click.Context,
    config_path: Path | None,
    kms_listen: tuple[tuple[str, int | None], ...],
    kms_address: str | None,
    dns_listen: tuple[str, int | None],
    http_listen: tuple[str, int | None],
    zone: str,
    min_count: int,
    activation_interval: int,
    renewal_interval: int,
    admin_token: str | None,
    secret: str,
    redeem_rate: int,
    log_format: str,
    quiet: bool,
) -> None:
    """Run the whole lab in one process: KMS host, DNS, MAK service and dashboard.

    Prints what listens where, then `ready lab kms=... dns=... http=URL mak=URL` on stderr.
    State: one SQLite file, $KMSEMU_HOME/lab.sqlite3. SIGHUP reloads the configuration
    file; SIGTERM and SIGINT stop.
    """
    from kmsemu.host.store import LAB_DB

    kept = kept_host_settings(  # what slmgr /sai, /sri, /sprt set for the lab's host
        kmsemu_home() / LAB_DB,
        activation_interval=activation_interval,
        renewal_interval=renewal_interval,
        port=DEFAULT_PORT,
    )
    activation_interval, renewal_interval = kept["activation_interval"], kept["renewal_interval"]
    kms_port = kept["port"]  # of every KMS listen address that names none
    settings = LabSettings(
        kms_listen=[(h, p if p is not None else kms_port) for h, p in kms_listen]
        or [("0.0.0.0", kms_port), ("::", kms_port)],
        dns_listen=(dns_listen[0], dns_listen[1] if dns_listen[1] is not None else DNS_PORT),
        http_listen=(http_listen[0], http_listen[1] if http_listen[1] is not None else HTTP_PORT),
        zone=zone,
        kms_address=kms_address,
        min_count=min_count,
        activation_interval=activation_interval,
        renewal_interval=renewal_interval,
        admin_token=admin_token,
        secret=secret,
        log_format=log_format,
        quiet=quiet,
        redeem_rate=redeem_rate,
    )
    fixed = {
        name
        for name in KEYS
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    reloading = Reloading(config_path, dict(ctx.meta.get(_CONFIG_KEY, {})), fixed)
    from kmsemu.lab.runner import Lab, configure_logging
    from kmsemu.run.loop import loop_factory, run_on

    configure_logging(log_format, quiet)
    loop_name, _ = loop_factory("auto")
    run_on("auto", Lab(settings, kmsemu_home(), load_catalog(), reloading, loop_name).run())
