"""``kmsemu mak``: run the MAK service and administer its keys over its HTTP API.

Every command but ``serve`` talks to a running service (``--url``, default
http://127.0.0.1:8688). Administration sends ``--admin-token`` /
``KMSEMU_ADMIN_TOKEN``, or else the token a local ``serve`` keeps in
``$KMSEMU_HOME/mak/admin-token``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from kmsemu.addresses import format_address
from kmsemu.catalog import load_catalog
from kmsemu.cli.common import (
    ADDRESS,
    DURATION,
    emit,
    json_option,
    kmsemu_home,
    secret_option,
    table,
)
from kmsemu.clock import OffsetClock, SystemClock
from kmsemu.durations import parse_duration
from kmsemu.errors import LocalError
from mak.client import MakClient, RemoteError
from mak.defaults import DEFAULT_PORT, DEFAULT_REDEEM_RATE, DEFAULT_URL, token_file
from mak.service import is_fingerprint, parse_key

F = TypeVar("F", bound=Callable[..., Any])


def mak_home() -> Path:
    """The MAK service's state directory: ``$KMSEMU_HOME/mak``."""
    return kmsemu_home() / "mak"


@click.group()
def mak() -> None:
    """The MAK service: activation counts, online, phone and proxy activation."""


# -- serve ---------------------------------------------------------------------------------------


@mak.command()
@click.option(
    "--listen",
    type=ADDRESS,
    multiple=True,
    help="ADDR[:PORT] to listen on (repeatable). Default: 127.0.0.1.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--db",
    "db_url",
    envvar="KMSEMU_MAK_DB",
    show_envvar=True,
    help="sqlite:///PATH or postgresql://... Default: SQLite in $KMSEMU_HOME/mak/mak.sqlite3.",
)
@click.option(
    "--admin-token",
    envvar="KMSEMU_ADMIN_TOKEN",
    show_envvar=True,
    help="Bearer token for administration. Default: one kept in $KMSEMU_HOME/mak/admin-token.",
)
@secret_option()
@click.option(
    "--clock-offset",
    type=DURATION,
    default=0.0,
    help="Run the service's clock this far from real time (e.g. +30d).",
)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Catalog file (default: the built-in one).",
)
@click.option(
    "--redeem-rate",
    type=click.IntRange(0, None),
    default=DEFAULT_REDEEM_RATE,
    show_default=True,
    help="Portal: redemption attempts per organisation per minute before 'busy' (0: no limit).",
)
@click.option("--quiet", is_flag=True, help="Log only warnings and errors.")
def serve(
    listen: tuple[tuple[str, int | None], ...],
    port: int,
    db_url: str | None,
    admin_token: str | None,
    secret: str,
    clock_offset: float,
    catalog_path: Path | None,
    redeem_rate: int,
    quiet: bool,
) -> None:
    """Run the MAK service and the licensing portal until SIGTERM or SIGINT.

    Prints `ready mak http://ADDR` on stderr once it accepts connections.
    """
    from kmsemu.run.mak import MakConfig, OpenMak, serve_mak

    home = mak_home()
    config = MakConfig(home, secret, OffsetClock(SystemClock(), clock_offset),
                       load_catalog(catalog_path), db=db_url, admin_token=admin_token,
                       redeem_rate=redeem_rate)  # fmt: skip
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start-up chatter
    addresses = [(h, p if p is not None else port) for h, p in listen] or [("127.0.0.1", port)]

    def announce(opened: OpenMak, bound: list[tuple[str, int]]) -> None:
        if not admin_token:
            click.echo(f"admin token in {token_file(home)}", err=True)
        urls = " ".join(f"http://{format_address(h, p)}" for h, p in bound)
        click.echo(f"ready mak {urls}", err=True)

    serve_mak(config, addresses, announce)


# -- talking to a service ------------------------------------------------------------------------


def client_options(func: F) -> F:
    """``--url`` and ``--admin-token``, for commands that talk to a running service."""
    func = click.option(
        "--url",
        envvar="KMSEMU_MAK_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The MAK service.",
    )(func)
    return click.option(
        "--admin-token",
        envvar="KMSEMU_ADMIN_TOKEN",
        help="Administrator token (default: $KMSEMU_HOME/mak/admin-token).",
    )(func)


def admin_token_or_file(given: str | None) -> str | None:
    """``--admin-token``/``KMSEMU_ADMIN_TOKEN``, else the token a local ``serve`` keeps."""
    if given is not None:
        return given
    try:
        return token_file(mak_home()).read_text().strip()
    except OSError:
        return None


def _client(url: str, admin_token: str | None) -> MakClient:
    try:
        return MakClient(url, token=admin_token_or_file(admin_token))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def fail_remote(
    exc: RemoteError, *, notes: Sequence[str] = (), extra: dict[str, Any] | None = None
) -> NoReturn:
    """The service's error with what the command adds: ``notes`` after the hint, ``extra``
    beside ``error`` with --json (``KmsemuGroup`` prints it and exits 1)."""
    exc.notes.extend(notes)
    exc.output.update(extra or {})
    raise exc


def _fingerprint(text: str) -> str:
    """A key or its fingerprint (as `mak keys` lists it) to the fingerprint; a mistyped
    key fails (exit 1, ``key_malformed``) as the service would say it, typo help included."""
    text = text.strip()
    if is_fingerprint(text):
        return text
    return parse_key(text).fingerprint


def parse_when(text: str | None) -> str | None:
    """``--expires``/``--at``: an ISO 8601 date or time, or a duration from now (+30d)."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is neither ISO 8601 nor a duration like +30d"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.isoformat()
    try:
        moment = datetime.fromtimestamp(datetime.now(UTC).timestamp() + seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise click.BadParameter(f"{text!r} is further from now than a date goes") from None
    return moment.isoformat()


_COLUMNS = ("fingerprint", "last5", "type", "used", "limit", "remaining", "blocked", "expires")


def _show_key(record: dict[str, Any], as_json: bool, verb: str = "") -> None:
    if as_json:
        emit(record)
        return
    if verb:
        click.echo(f"Key {record['fingerprint']} (…{record['last5']}) {verb}.")
    expires = record.get("expires") or "never"
    blocked = ", blocked" if record.get("blocked") else ""
    click.echo(
        f"{record['type']}: {record['used']} of {record['limit']} used, "
        f"{record['remaining']} remaining{blocked}; expires {expires}"
    )


# -- administration ------------------------------------------------------------------------------


@mak.command("add-key")
@click.argument("key")
@click.option(
    "--limit",
    type=click.IntRange(0, 2**31 - 1),
    help="Activations (machines) allowed; required for a MAK. Retail: 1; KMS host: 6.",
)
@click.option("--expires", help="ISO 8601 date or time, or a duration from now (+90d).")
@click.option(
    "--reactivations",
    type=click.IntRange(0, 2**31 - 1),
    help="Counted reactivations per machine (KMS host keys: 9).",
)
@client_options
@json_option
def add_key(
    key: str,
    limit: int | None,
    expires: str | None,
    reactivations: int | None,
    url: str,
    admin_token: str | None,
    as_json: bool,
) -> None:
    """Register a MAK, retail or KMS host key with the service."""
    client = _client(url, admin_token)
    record = client.add_key(
        key, limit=limit, expires=parse_when(expires), reactivations=reactivations
    )
    _show_key(record, as_json, "added")


@mak.command()
@click.argument("key")
@click.option(
    "--by", "amount", type=click.IntRange(1, 2**31 - 1), required=True, help="Activations to add."
)
@click.option("--reason", default=None, help="Recorded with the increase.")
@client_options
@json_option
def increase(
    key: str, amount: int, reason: str | None, url: str, admin_token: str | None, as_json: bool
) -> None:
    """Grant an activation count increase (KEY or its fingerprint)."""
    client = _client(url, admin_token)
    record = client.increase(_fingerprint(key), amount, reason)
    _show_key(record, as_json, f"increased by {amount}")


def _change_command(action: str, verb: str, doc: str) -> click.Command:
    @click.argument("key")
    @client_options
    @json_option
    def command(key: str, url: str, admin_token: str | None, as_json: bool, **options: Any) -> None:
        client = _client(url, admin_token)
        at = parse_when(options.get("at"))
        body = {"at": at} if at else None
        record = client.change(_fingerprint(key), action, body)
        _show_key(record, as_json, verb)

    command.__doc__ = doc
    if action == "expire":
        command = click.option("--at", help="When (ISO 8601 or +DURATION); default now.")(command)
    return mak.command(action)(command)


_change_command("block", "blocked", "Block a key: its activations fail with 0xC004C003.")
_change_command("unblock", "unblocked", "Lift a block.")
_change_command("expire", "expired", "Expire a key now (or --at a time): 0xC004C031 after.")


@mak.command("keys")
@client_options
@json_option
def list_keys(url: str, admin_token: str | None, as_json: bool) -> None:
    """Keys with used/limit/remaining (fingerprint and last five characters only)."""
    client = _client(url, admin_token)
    records = client.keys()
    if as_json:
        emit({"keys": records})
        return
    table(_COLUMNS, [[r.get(c) for c in _COLUMNS] for r in records])
    if not records:
        click.echo("(no keys; add one with 'kmsemu mak add-key')")


@mak.command()
@click.argument("key")
@client_options
@json_option
def show(key: str, url: str, admin_token: str | None, as_json: bool) -> None:
    """One key with its increases and the machines counted against it."""
    client = _client(url, admin_token)
    record = client.key(_fingerprint(key))
    if as_json:
        emit(record)
        return
    _show_key(record, False)
    for item in record["increases"]:
        click.echo(f"increase +{item['amount']} at {item['at']} {item['reason']}".rstrip())
    for m in record["machines"]:
        click.echo(
            f"machine {m['hardware_id']} {m['machine_name'] or '-'} {m['route']} "
            f"first {m['first_at']} last {m['last_at']}"
        )


@mak.command()
@click.argument("key")
@click.option("--url", envvar="KMSEMU_MAK_URL", default=DEFAULT_URL, show_default=True)
@json_option
def count(key: str, url: str, as_json: bool) -> None:
    """A key's remaining count (needs the key itself, not the admin token)."""
    client = _client(url, None)
    _show_key(client.count(key), as_json)


# -- the activation centre -----------------------------------------------------------------------


@mak.command()
@click.argument("installation_id", nargs=-1, required=True)
@click.option("--machine-name", help="Recorded with the activation.")
@click.option("--url", envvar="KMSEMU_MAK_URL", default=DEFAULT_URL, show_default=True)
@json_option
def phone(
    installation_id: tuple[str, ...], machine_name: str | None, url: str, as_json: bool
) -> None:
    """Play the activation centre: an installation ID in, a confirmation ID out.

    The ID may be given as one argument or as its nine groups.
    """
    client = _client(url, None)
    answer = client.phone("-".join(installation_id), machine_name=machine_name)
    if as_json:
        emit(answer)
        return
    click.echo(f"Confirmation ID: {answer['confirmation_id']}")
    click.echo(f"Remaining activations: {answer['remaining']}")


@mak.command("proxy-activate")
@click.argument("file", type=click.File("r"))
@click.option("--out", type=click.File("w"), help="Write the results here (JSON) too.")
@click.option("--url", envvar="KMSEMU_MAK_URL", default=DEFAULT_URL, show_default=True)
@json_option
def proxy_activate(file: Any, out: Any, url: str, as_json: bool) -> None:
    """VAMT-style proxy activation: a JSON list of installation IDs, one call.

    FILE holds a JSON list of installation IDs, or of objects
    {"installation_id", "machine_name"}, or {"installation_ids": [...]}.
    Prints one confirmation ID (or error) per ID; exit 1 if any was refused.
    """
    try:
        items = json.load(file)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from exc
    if isinstance(items, dict):
        items = items.get("installation_ids")
    if not isinstance(items, list):
        raise click.BadParameter("expected a JSON list of installation IDs", param_hint="FILE")
    client = _client(url, None)
    answer = client.proxy_activate(items)
    if out is not None:
        json.dump(answer, out, indent=2)
    if not as_json:
        for result in answer["results"]:
            if "error" in result:
                error = result["error"]
                code = f"{error['hresult']} " if error.get("hresult") else ""
                click.echo(f"{result['installation_id']}  Error: {code}{error['message']}")
            else:
                click.echo(f"{result['installation_id']}  {result['confirmation_id']}")
    if answer["failed"]:  # with --json: the answer and the error, one object
        raise LocalError(
            "proxy_refused",
            f"{answer['activated']} confirmed, {answer['failed']} refused",
            output=answer,
        )
    if as_json:
        emit(answer)
    else:
        click.echo(f"{answer['activated']} confirmed, 0 refused", err=True)


# -- export and import ---------------------------------------------------------------------------


@mak.command("export")
@click.option("--out", type=click.File("w"), default="-", help="File (default: stdout).")
@click.option(
    "--mode",
    type=click.Choice(["all", "keys", "activations"]),
    default="all",
    show_default=True,
    help="Keys and activations, keys only, or activations only.",
)
@click.option(
    "--no-machine-names",
    is_flag=True,
    help="Leave machine names out (for data that leaves the lab).",
)
@client_options
def export_command(
    out: Any, mode: str, no_machine_names: bool, url: str, admin_token: str | None
) -> None:
    """Export keys and activations as JSON for an isolated lab."""
    client = _client(url, admin_token)
    document = client.export(
        keys=mode in ("all", "keys"),
        activations=mode in ("all", "activations"),
        machine_names=not no_machine_names,
    )
    json.dump(document, out, indent=2)
    out.write("\n")


@mak.command("import")
@click.argument("file", type=click.File("r"))
@client_options
@json_option
def import_command(file: Any, url: str, admin_token: str | None, as_json: bool) -> None:
    """Merge an export into the service (what it already has is kept; idempotent)."""
    try:
        document = json.load(file)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from exc
    client = _client(url, admin_token)
    report = client.import_(document)
    if as_json:
        emit(report)
    else:
        click.echo(
            f"keys: {report['keys_added']} added, {report['keys_kept']} kept; "
            f"activations: {report['activations_added']} added, "
            f"{report['activations_kept']} kept"
        )
