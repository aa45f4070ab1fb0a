"""What every command shares: state location, the lab secret, JSON output, errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from kmsemu.addresses import AddressError, parse_address
from kmsemu.durations import parse_duration
from kmsemu.errors import KmsemuError, format_hresult
from kmsemu.klp.envelope import DEFAULT_SECRET

F = TypeVar("F", bound=Callable[..., Any])


def kmsemu_home() -> Path:
    return Path(os.environ.get("KMSEMU_HOME") or Path.home() / ".kmsemu").expanduser()


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(
        func
    )


def secret_option(*, multiple: bool = False) -> Callable[[F], F]:
    help_text = "Lab secret (repeatable: the host accepts each). " if multiple else "Lab secret. "
    return click.option(
        "--secret",
        "secrets" if multiple else "secret",
        multiple=multiple,
        envvar="KMSEMU_SECRET",
        show_envvar=True,
        default=(DEFAULT_SECRET,) if multiple else DEFAULT_SECRET,
        help=help_text + f"Default: {DEFAULT_SECRET}.",
    )


def emit(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def fail(
    message: str,
    *,
    code: str,
    hresult: int | None = None,
    as_json: bool = False,
    extra: dict[str, Any] | None = None,
) -> NoReturn:
    """Report a failed operation (exit 1): JSON on stdout with --json, else stderr."""
    if as_json:
        error: dict[str, Any] = {"code": code, "message": message}
        if hresult is not None:
            error["hresult"] = format_hresult(hresult)
        emit({**(extra or {}), "error": error})
    else:
        prefix = f"Error: {format_hresult(hresult)} " if hresult is not None else "Error: "
        click.echo(prefix + message, err=True)
    sys.exit(1)


def fail_with(exc: KmsemuError, as_json: bool) -> NoReturn:
    fail(exc.message, code=exc.code, as_json=as_json)


class AddressType(click.ParamType):  # type: ignore[type-arg]
    """``HOST[:PORT]`` with IPv6 as ``[ADDR]:PORT``; the port is filled in later."""

    name = "ADDR[:PORT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int | None]:
        if isinstance(value, tuple):
            return value
        try:
            host, port = parse_address(str(value), -1)
        except AddressError as exc:
            self.fail(str(exc), param, ctx)
        return host, None if port == -1 else port


class DurationType(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = AddressType()
DURATION = DurationType()


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under upper-case column names, columns as wide as their widest value;
    None shows as ``-``."""
    text = [[str(v) if v is not None else "-" for v in row] for row in rows]
    widths = [max([len(c), *(len(row[i]) for row in text)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
               .rstrip())
    for row in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
