"""``kmsemu client``: one activation (``activate``) and, in ``client_verbs``, a client machine."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import click

from kmsemu.addresses import format_address
from kmsemu.catalog import Product
from kmsemu.cli.common import (
    ADDRESS,
    DURATION,
    PRODUCT,
    GuidType,
    SecondsType,
    emit,
    json_option,
    secret_option,
)
from kmsemu.client import DEFAULT_TIMEOUT
from kmsemu.client.profile import valid_profile_name
from kmsemu.clock import SystemClock
from kmsemu.errors import ActivationError, HResult, describe, format_hresult
from kmsemu.host.options import DEFAULT_PORT
from kmsemu.klp.messages import (
    FLAG_VIRTUAL_MACHINE,
    ActivationRequest,
    LicenseStatus,
    MessageError,
)
from kmsemu.wire import datetime_from_filetime, filetime_from_unix

if TYPE_CHECKING:
    from kmsemu.client.exchange import Exchange


def _profile_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_profile_name(value):
        raise click.BadParameter(
            f"{value!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


@click.group()
@click.option(
    "--profile",
    default="default",
    show_default=True,
    envvar="KMSEMU_PROFILE",
    callback=_profile_name,
    help="Which client machine (profiles live under $KMSEMU_HOME/clients).",
)
@click.option(
    "--product",
    "product",
    default=None,
    metavar="ACTID|NAME",
    help="Which installed product the verb acts on: its Activation ID, catalog key or "
    "name (default: the Windows licence, else the first product with a key).",
)
@click.pass_context
def client(ctx: click.Context, profile: str, product: str | None) -> None:
    """A KMS client: a machine shaped like slmgr (ipk, ato, dlv...), or one activation.

    Each profile is a client machine, a PC with Windows and any Office products
    installed: each product has its own key, licence, rearms and events;
    Windows and Office each have their own CMID. The machine has its KMS host
    settings, DNS settings and clock.
    """
    ctx.obj = {"profile": profile, "product": product}


@client.command()
@click.option(
    "--host",
    "address",
    type=ADDRESS,
    default="127.0.0.1",
    show_default=True,
    help=f"KMS host, HOST[:PORT] or [IPv6]:PORT (port {DEFAULT_PORT} if omitted).",
)
@click.option(
    "--product", type=PRODUCT, required=True, help="Catalog product key or name (kmsemu catalog)."
)
@click.option("--cmid", type=GuidType(), help="Client machine id (default: a random one).")
@click.option("--previous-cmid", type=GuidType(), help="The CMID this machine had before.")
@click.option("--vm", is_flag=True, help="Say the client is a virtual machine.")
@click.option("--name", default=None, help="Workstation name (default: this machine's name).")
@click.option(
    "--license-status",
    type=click.IntRange(0, 6),
    default=int(LicenseStatus.INITIAL_GRACE),
    show_default=True,
    help="Licence status to report (0-6).",
)
@click.option(
    "--required-count",
    type=click.IntRange(1, 1000),
    help="Count needed to activate (default: the product's threshold).",
)
@click.option("--clock-offset", type=DURATION, default=0.0, help="Run the client clock off.")
@click.option(
    "--timeout",
    type=SecondsType(0.1, 3600),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the host.",
)
@secret_option()
@json_option
def activate(
    address: tuple[str, int | None],
    product: Product,
    cmid: uuid.UUID | None,
    previous_cmid: uuid.UUID | None,
    vm: bool,
    name: str | None,
    license_status: int,
    required_count: int | None,
    clock_offset: float,
    timeout: float,
    secret: str,
    as_json: bool,
) -> None:
    """Perform one KLP/1 activation and print the host's response.

    Exit 0 when activated (status 0 and a count that reaches the required
    count), 1 otherwise.
    """
    chosen = product
    target = (address[0], address[1] if address[1] is not None else DEFAULT_PORT)
    required = required_count or chosen.threshold
    try:
        request = ActivationRequest(
            application_id=chosen.application_id,
            sku_id=chosen.sku_id,
            kms_count_id=chosen.kms_count_id,
            client_machine_id=cmid or uuid.uuid4(),
            request_time=filetime_from_unix(SystemClock().now() + clock_offset),
            required_client_count=required,
            license_status=license_status,
            workstation_name=_workstation_name(name),
            previous_client_machine_id=previous_cmid or uuid.UUID(int=0),
            flags=FLAG_VIRTUAL_MACHINE if vm else 0,
        )
    except (MessageError, OverflowError) as exc:  # --name too long, --clock-offset too far
        raise click.UsageError(f"cannot send that request: {exc}") from exc
    host_text = format_address(*target)
    try:
        from kmsemu.client.exchange import request_activation  # the cipher loads here
        from kmsemu.klp.envelope import LabKey

        exchange = request_activation(target, request, LabKey.derive(secret), timeout=timeout)
    except ActivationError as exc:
        cause = format_hresult(exc.cause) if exc.cause is not None else None
        exc.output.update(host=host_text, cause=cause)
        if exc.cause is not None:
            exc.notes.append(f"Cause: {cause} {describe(exc.cause).message}")
        raise
    result = _result(exchange, chosen, required, host_text)
    failure = _failure(exchange, required)
    if not as_json:
        click.echo(_text(result, chosen))
    if failure is not None:
        raise ActivationError(failure, output=result)
    if as_json:
        emit(result)
        return
    click.echo("Product activated successfully.")


def _workstation_name(name: str | None) -> str:
    """``--name``, else this machine's: 1-63 printable characters, as KLP/1 carries it."""
    import socket

    text = (name if name is not None else socket.gethostname())[:63]
    if not text or not text.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise click.BadParameter(
            "a workstation name is 1-63 printable characters", param_hint="--name"
        )
    return text


def _failure(exchange: Exchange, required: int) -> int | None:
    response = exchange.response
    if response.status != 0:
        return response.status
    if response.current_count < required:
        return HResult.COUNT_INSUFFICIENT
    return None


def _result(exchange: Exchange, product: Product, required: int, host: str) -> dict[str, Any]:
    r = exchange.response
    return {
        "host": host,
        "product": product.key,
        "activated": _failure(exchange, required) is None,
        "status": r.status,
        "hresult": format_hresult(r.status),
        "current_count": r.current_count,
        "required_client_count": required,
        "activation_interval": r.activation_interval,
        "renewal_interval": r.renewal_interval,
        "host_epid": r.host_epid,
        "host_id": r.host_id.hex(),
        "client_machine_id": str(r.client_machine_id),
        "request_nonce": r.request_nonce.hex(),
        "request_time": r.request_time,
        "response_time": r.response_time,
        "response_time_iso": datetime_from_filetime(r.response_time).isoformat(),
        "skew_seconds": round((r.response_time - r.request_time) / 1e7, 3),
        "assoc_group_id": exchange.assoc_group_id,
    }


def _text(result: dict[str, Any], product: Product) -> str:
    return "\n".join(
        [
            f"Activating {product.name} ({product.sku_id}) at {result['host']} ...",
            f"Status: {result['hresult']}",
            f"Current count: {result['current_count']} "
            f"(required: {result['required_client_count']})",
            f"Activation interval: {result['activation_interval']} minutes",
            f"Renewal interval: {result['renewal_interval']} minutes",
            f"KMS machine extended PID: {result['host_epid']}",
            f"Client Machine ID (CMID): {result['client_machine_id']}",
            f"Host time: {result['response_time_iso']}",
        ]
    )
