"""``kmsemu host requests``: the host's request log (event 12290), as the records are."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from kmsemu.catalog import Product, load_catalog
from kmsemu.cli.common import (
    GuidType,
    emit,
    json_option,
)
from kmsemu.cli.host_base import STATE_HELP, host, open_store
from kmsemu.clock import SystemClock
from kmsemu.errors import LocalError, format_hresult
from kmsemu.host.store import HostStore
from kmsemu.klp.messages import LicenseStatus
from kmsemu.wire import (
    datetime_from_filetime,
    filetime_from_datetime,
    filetime_from_unix,
    guid_text,
)

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
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
    store = open_store(state_dir, read_only=True)
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
