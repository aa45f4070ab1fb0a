"""``kmsemu host fault set | show | clear``: failures on demand, in the host's faults file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from kmsemu.catalog import Product
from kmsemu.cli.common import (
    DURATION,
    PRODUCT,
    emit,
    json_option,
    kmsemu_home,
)
from kmsemu.cli.host_base import STATE_HELP, default_state_dir, host
from kmsemu.clock import SystemClock
from kmsemu.errors import ConfigError, LocalError
from kmsemu.host.store import LAB_DB, HostStore, database_path

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


#: How long ``fault set`` and ``fault clear`` wait for a running host to take the change.
TAKE_WAIT = 3.0


def _wait_until_taken(state: Path, path: Path) -> None:
    """Return once the host running on ``state`` obeys the faults file as written now (its
    ``faults_seen`` reaches the file's modification time), so that a script's next request
    meets the change; at once when no host runs there. A host that does not take it within
    ``TAKE_WAIT`` seconds is named on stderr (it obeys at its next look)."""
    import sqlite3
    import time

    from kmsemu.host.watch import modified_ns

    written = modified_ns(path)
    deadline = time.monotonic() + TAKE_WAIT
    pid = None
    while True:
        try:
            store = HostStore(state, create=False, read_only=True)
            try:
                meta = store.meta()
            finally:
                store.close()
        except (OSError, sqlite3.Error):  # no host state yet: no host to wait for
            return
        pid = int(meta.get("pid", "0") or 0)
        if not pid or not _alive(pid) or int(meta.get("faults_seen", "0") or 0) >= written:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    click.echo(
        f"Warning: the host running on this state (pid {pid}) has not read the faults file "
        f"within {TAKE_WAIT:g} s; it obeys at its next look.",
        err=True,
    )


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one this user may signal, or any other)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
    garbage, slow DELAY. A running host obeys before this command returns.
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
    _wait_until_taken(state, store.path)
    if as_json:
        emit({"fault": stored.to_json(), "file": str(store.path)})
    else:
        click.echo(_fault_line(stored.to_json()) + " (set)")


@fault.command("show")
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
@click.option("--state", "state_dir", type=click.Path(path_type=Path), help=STATE_HELP)
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
    _wait_until_taken(state, store.path)
    _, faults = _faults_shown(state)
    if as_json:
        emit({"cleared": removed, "faults": faults, "file": str(store.path)})
    else:
        click.echo(f"Cleared {removed} fault(s).")
