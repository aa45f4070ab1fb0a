"""What every command shares: state location, the lab secret, JSON output, errors.

A command that fails raises a ``KmsemuError``; ``KmsemuGroup`` (the root group's class)
prints it, as text on stderr or, when the command was given ``--json``, as one JSON
object on stdout, and exits 1. A bad option value stays a click usage error (exit 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from kmsemu.klp import DEFAULT_SECRET

if TYPE_CHECKING:  # ``kmsemu --help`` loads none of these: each is imported where it is used
    from pathlib import Path

    from kmsemu.catalog import Product
    from kmsemu.errors import KmsemuError
    from kmsemu.host.overrides import Overrides

F = TypeVar("F", bound=Callable[..., Any])
#: ``ctx.meta`` key (shared by the whole context chain): whether the command got --json.
JSON_META: Final = "kmsemu.json"


def kmsemu_home() -> Path:
    """The state directory: ``$KMSEMU_HOME``, else ``~/.kmsemu``."""
    from pathlib import Path

    return Path(os.environ.get("KMSEMU_HOME") or Path.home() / ".kmsemu").expanduser()


def _record_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True
    return value


def json_option(func: F) -> F:
    """``--json`` (``as_json``); recorded in ``ctx.meta`` so that errors print as JSON too."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        callback=_record_json,
        help="Print one JSON object on stdout.",
    )(func)


def console_script(name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """The command of a console script that takes a Windows script's own syntax (``slmgr``,
    ``ospp``): ``--profile`` (``KMSEMU_PROFILE``) and ``--json``, then every other argument
    unparsed, ``/x`` and ``-x`` alike, for the script to judge."""

    def command(func: Callable[..., Any]) -> click.Command:
        func = click.argument("args", nargs=-1, type=click.UNPROCESSED)(func)
        func = json_option(func)
        func = click.option(
            "--profile",
            default="default",
            show_default=True,
            envvar="KMSEMU_PROFILE",
            help="Which client machine (profiles live under $KMSEMU_HOME/clients).",
        )(func)
        return click.command(
            name,
            context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]},
        )(func)

    return command


def secret_option(*, multiple: bool = False) -> Callable[[F], F]:
    """``--secret`` (``KMSEMU_SECRET``); ``multiple``: repeatable, for a host that takes each."""
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
    """Print one JSON object on stdout, indented, keys in the order given."""
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=False))


def report_error(exc: KmsemuError, *, as_json: bool, err: bool = True) -> None:
    """Print a failed operation: with --json its JSON object on stdout (the fields the
    command knows besides ``error``); else ``Error: [0xHRESULT ]message (detail)``, the
    keys meant, the hint and the command's notes, on stderr (``err`` False: on stdout,
    as slmgr prints them)."""
    from kmsemu.errors import format_hresult

    if as_json:
        emit(exc.to_json(http=False))
        return
    prefix = f"Error: {format_hresult(exc.hresult)} " if exc.hresult is not None else "Error: "
    click.echo(prefix + exc.text, err=err)
    candidates = exc.fields.get("candidates")
    if candidates and isinstance(candidates, list):
        click.echo("Did you mean: " + ", ".join(map(str, candidates)), err=err)
    if exc.hint:
        click.echo(exc.hint, err=err)
    for note in exc.notes:
        click.echo(note, err=err)


class KmsemuGroup(click.Group):
    """A group whose commands fail by raising ``KmsemuError``: it prints the error
    (``report_error``, JSON when the command got --json) and exits 1. The root group is
    one (or a subclass), so every command of every sub-group shares this one renderer."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Refuse arguments no command can take (NUL, not UTF-8) before parsing them."""
        for arg in args if ctx.parent is None else ():
            _check_text(arg)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a ``KmsemuError`` is reported and the exit status is 1."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from kmsemu.errors import KmsemuError

            if not isinstance(exc, KmsemuError):
                raise
            report_error(exc, as_json=bool(ctx.meta.get(JSON_META)))
            ctx.exit(1)


def _check_text(arg: str) -> None:
    """A usage error for an argument no command can take: one with a NUL (a C string
    cannot carry it), or bytes that are not UTF-8 (Python hands them over as lone
    surrogates), which could be neither sent, stored nor printed."""
    if "\x00" in arg:
        raise click.UsageError(f"an argument holds a NUL character: {arg!r}")
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise click.UsageError(f"an argument is not UTF-8 text: {shown!r}") from None


class ProductType(click.ParamType):  # type: ignore[type-arg]
    """A catalog product by key, name or SKU id; a mistyped one is a usage error naming
    the products it was most likely meant to be."""

    name = "PRODUCT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Product:
        """The product named; a usage error with close matches when there is none."""
        from kmsemu.catalog import Product, default_catalog
        from kmsemu.errors import ConfigError

        if isinstance(value, Product):
            return value
        catalog = default_catalog()
        try:
            return catalog.find(str(value))
        except ConfigError:
            close = catalog.close_matches(str(value))
            also = f"; did you mean {' or '.join(close)}?" if close else ""
            self.fail(
                f"no product {value!r} in the catalog{also} (see 'kmsemu catalog')", param, ctx
            )


class AddressType(click.ParamType):  # type: ignore[type-arg]
    """``HOST[:PORT]`` with IPv6 as ``[ADDR]:PORT``; the port is filled in later."""

    name = "ADDR[:PORT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int | None]:
        """``(host, port)``; the port None when the text gives none."""
        if isinstance(value, tuple):
            return value
        from kmsemu.addresses import AddressError, parse_address

        try:
            host, port = parse_address(str(value), -1)
        except AddressError as exc:
            self.fail(str(exc), param, ctx)
        return host, None if port == -1 else port


class GuidType(click.ParamType):  # type: ignore[type-arg]
    """A GUID in any case, with or without braces; ``what`` names it in the usage error."""

    def __init__(self, name: str = "GUID", what: str = "a GUID") -> None:
        self.name = name
        self._what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The ``uuid.UUID``; a usage error when the text is no GUID."""
        import uuid

        if isinstance(value, uuid.UUID):
            return value
        try:
            return uuid.UUID(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not {self._what}", param, ctx)


class DurationType(click.ParamType):  # type: ignore[type-arg]
    """A duration such as ``90m``, ``+181d`` or ``-5h`` (``kmsemu.durations``), in seconds."""

    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """The duration in seconds; a usage error when it does not parse or is too long."""
        if isinstance(value, int | float):
            return float(value)
        from kmsemu.durations import parse_duration

        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is too long to count", param, ctx)
        return seconds


class SecondsType(click.FloatRange):
    """Seconds in a range; unlike ``FloatRange``, ``nan`` is refused too."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The seconds, in range and not ``nan``."""
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


ADDRESS = AddressType()
DURATION = DurationType()
PRODUCT = ProductType()


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under upper-case column names, columns as wide as their widest value;
    None shows as ``-``."""
    text = [[str(v) if v is not None else "-" for v in row] for row in rows]
    widths = [max([len(c), *(len(row[i]) for row in text)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def kept_overrides(state: Path) -> Overrides:
    """What ``kmsemu host set`` kept for the host state ``state`` (a directory or its SQLite
    file): ``ConfigError`` for a file that is not a settings file; nothing set when it
    cannot be read, or the path not even looked at (a name too long): the start says why."""
    from kmsemu.host.overrides import Overrides, OverridesStore, overrides_path
    from kmsemu.host.store import database_path

    try:
        return OverridesStore(overrides_path(database_path(state))).load()
    except OSError:
        return Overrides()


def kept_host_settings(state: Path, **given: int) -> dict[str, int]:
    """The settings a KMS host starts with (``activation_interval``, ``renewal_interval``,
    ``port``): a value the command line, the environment or a configuration file gave
    says; else what ``kmsemu host set`` (slmgr /sai, /sri, /sprt) kept in the settings
    file of the host state ``state``; else the default given. A settings file that is not one is
    a ``ConfigError`` (exit 1); one that cannot be read is left to the start to report."""
    from click.core import ParameterSource

    kept = kept_overrides(state)
    ctx = click.get_current_context()
    chosen = {}
    for name, value in given.items():
        stored = getattr(kept, name)
        source = ctx.get_parameter_source(name)  # None: not an option of this command
        given_here = source not in (None, ParameterSource.DEFAULT)
        chosen[name] = value if stored is None or given_here else stored
    return chosen
