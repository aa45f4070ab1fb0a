"""``kmsemu client [--profile NAME] VERB``: a client machine driven like slmgr."""

from __future__ import annotations

import ipaddress
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from kmsemu.addresses import parse_address
from kmsemu.catalog import default_catalog
from kmsemu.cli.client import client
from kmsemu.cli.common import DURATION, emit, json_option, kmsemu_home, secret_option
from kmsemu.client import slmgr
from kmsemu.client.machine import Machine, Result
from kmsemu.client.profile import COMPONENT_NAMES, ProfileStore
from kmsemu.clock import SystemClock
from kmsemu.errors import ActivationError, LocalError
from kmsemu.keys.product_key import format_key
from kmsemu.klp import DEFAULT_SECRET
from mak.defaults import DEFAULT_URL as DEFAULT_MAK_URL

MAK_URL_ENV = "KMSEMU_MAK_URL"


def profile_store() -> ProfileStore:
    """Where client profiles live: ``$KMSEMU_HOME/clients``."""
    return ProfileStore(kmsemu_home() / "clients")


@contextmanager
def machine(
    obj: dict[str, Any], secret: str = DEFAULT_SECRET, *, select: bool = True
) -> Iterator[Machine]:
    """The profile's machine, with the product ``--product`` names selected (unless
    ``select`` is False: ``ipk`` selects what it installs), saved afterwards when the verb
    changed it: after a verb that failed with an HRESULT too (its events and licence
    changed), but not after one that raised (a profile that cannot be read, a product it
    does not have, a clock that cannot move there), nor after one that only read it
    (``dli``): nothing changed, nothing is written."""
    store = profile_store()
    profile = store.load(obj["profile"], random.SystemRandom())  # ProfileError: exit 1
    stored = profile.to_json() if store.path(profile.name).exists() else None
    m = Machine(
        profile,
        default_catalog(),
        real_now=SystemClock().now,
        secret=secret,
        mak_url=os.environ.get(MAK_URL_ENV) or DEFAULT_MAK_URL,
    )
    if select:
        m.select(obj.get("product"))  # LocalError product_not_found: exit 1
    yield m
    if m.profile.to_json() != stored:
        store.save(m.profile)


def report(
    m: Machine, result: Result, as_json: bool, lines: Sequence[str], preface: Sequence[str] = ()
) -> None:
    """Print ``preface`` and, when the verb succeeded, its ``lines`` (or, with --json, the
    summary and the verb's data); a verb that failed raises its HRESULT (with --json:
    ``error`` with the code, HRESULT, hint and the verb's data, beside the summary)."""
    if not as_json:
        for line in preface:
            click.echo(line)
    if result.hresult:
        raise ActivationError(
            result.hresult,
            result.detail,
            code=result.code or None,
            output=m.summary(),
            **(result.data or {}),
        )
    if as_json:
        emit({**m.summary(), **(result.data or {})})
    else:
        for line in lines:
            click.echo(line)


def _has_key(m: Machine) -> None:
    """slmgr's "Error: product key not found." for dli, dlv and xpr without a key."""
    if m.product is None:
        raise LocalError("product_key_not_found", output=m.summary())


@client.command("ipk")
@click.argument("key")
@json_option
@click.pass_obj
def ipk(obj: dict[str, Any], key: str, as_json: bool) -> None:
    """Install a product key: a KMS client setup key, a MAK, a retail or a KMS host key.

    Each starts the initial grace; a setup key then activates against KMS (by
    itself, with tick), the others only when asked (ato online, or dti/atp).
    """
    with machine(obj, select=False) as m:
        result = m.install_key(key)
    installed = m.install.product_key if m.install is not None else None
    shown = format_key(installed or "")
    report(m, result, as_json, [] if result.hresult else [slmgr.installed(shown)])


@client.command("upk")
@json_option
@click.pass_obj
def upk(obj: dict[str, Any], as_json: bool) -> None:
    """Uninstall the product key."""
    with machine(obj) as m:
        result = m.uninstall_key()
    report(m, result, as_json, ["Uninstalled product key successfully."])


@client.command("ato")
@secret_option()
@json_option
@click.pass_obj
def ato(obj: dict[str, Any], secret: str, as_json: bool) -> None:
    """Activate now: a setup key against the KMS host (skms, cached or discovered); a MAK,
    retail or KMS host key online against the MAK service (mak-url)."""
    with machine(obj, secret) as m:
        product = m.product
        result = m.activate()
    preface = [slmgr.activating(m)] if product is not None else []
    report(m, result, as_json, ["Product activated successfully."], preface)


@client.command("dti")
@json_option
@click.pass_obj
def dti(obj: dict[str, Any], as_json: bool) -> None:
    """Show the installation ID for phone activation (MAK, retail and KMS host keys)."""
    with machine(obj) as m:
        result = m.installation_id()
    lines = [slmgr.installation_id_line(result.data["installation_id"])] if result.data else []
    report(m, result, as_json, lines)


@client.command("atp")
@click.argument("cid", required=False)
@secret_option()
@json_option
@click.pass_obj
def atp(obj: dict[str, Any], cid: str | None, secret: str, as_json: bool) -> None:
    """Deposit a confirmation ID (from 'kmsemu mak phone'): checked here with the lab
    secret against this machine's installation ID. Without CID: the one deposited before
    for this installation ID (local reactivation, offline)."""
    with machine(obj, secret) as m:
        result = m.deposit_confirmation_id(cid)
    report(m, result, as_json, [] if result.hresult else [slmgr.deposited(m)])


@client.command("mak-url")
@click.argument("url", required=False)
@click.option(
    "--clear",
    is_flag=True,
    help=f"Forget this profile's URL (back to {MAK_URL_ENV}, else the default).",
)
@json_option
@click.pass_obj
def mak_url(obj: dict[str, Any], url: str | None, clear: bool, as_json: bool) -> None:
    """Show or set the MAK service this machine activates against (default
    KMSEMU_MAK_URL, else http://127.0.0.1:8688)."""
    if url is not None and clear:
        raise click.UsageError("give a URL or --clear, not both")
    if url is not None:
        url = url if "://" in url else f"http://{url}"
        from mak.client import MakClient

        try:
            MakClient(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="URL") from exc
    with machine(obj) as m:
        if url is not None or clear:
            m.profile.mak_url = url
    source = (
        "this profile"
        if m.profile.mak_url
        else MAK_URL_ENV
        if os.environ.get(MAK_URL_ENV)
        else "default"
    )
    if url is not None:
        line = f"MAK activation service set to {m.mak_url} successfully."
    elif clear:
        line = f"MAK activation service cleared; using {m.mak_url} ({source})."
    else:
        line = f"MAK activation service: {m.mak_url} ({source})"
    report(m, Result(), as_json, [line])


@client.command("skms")
@click.argument("address")
@json_option
@click.pass_obj
def skms(obj: dict[str, Any], address: str, as_json: bool) -> None:
    """Use this KMS host only: HOST[:PORT], IPv6 as [ADDR]:PORT (with --product: for that
    product only, as slmgr /skms HOST ActID)."""
    with machine(obj) as m:
        try:
            stored = m.set_kms_host(address, product=m.chosen)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="ADDRESS") from exc
    report(
        m,
        Result(),
        as_json,
        [f"Key Management Service machine name set to {stored} successfully."],
    )


@client.command("skms-domain")
@click.argument("domain")
@json_option
@click.pass_obj
def skms_domain(obj: dict[str, Any], domain: str, as_json: bool) -> None:
    """Look for KMS hosts in this DNS domain only (ignored while skms is set)."""
    name = _domain(domain, "DOMAIN")
    with machine(obj) as m:
        m.profile.kms_domain = name
    report(m, Result(), as_json, [f"Key Management Service lookup domain set to {domain}."])


def _simple(
    name: str,
    doc: str,
    lines: Callable[[Machine], list[str]],
    change: Callable[[Machine], object] = lambda m: None,
    *,
    needs_key: bool = False,
) -> None:
    """A verb that at most changes a setting, then prints slmgr's lines for it."""

    @client.command(name, help=doc)
    @json_option
    @click.pass_obj
    def command(obj: dict[str, Any], as_json: bool) -> None:
        with machine(obj) as m:
            change(m)
        if needs_key:
            _has_key(m)
        report(m, Result(), as_json, lines(m))


def _setting(name: str, doc: str, change: Callable[[Machine], object], line: str) -> None:
    _simple(name, doc, lambda m: [line], change)


def _licence_verb(name: str, doc: str, *, verbose: bool) -> None:
    """dli and dlv: one licence (--product's, else the default), or ``all`` of them."""

    @client.command(name, help=doc)
    @click.argument("which", required=False, metavar="[all|ACTID]")
    @json_option
    @click.pass_obj
    def command(obj: dict[str, Any], which: str | None, as_json: bool) -> None:
        every = which is not None and which.lower() == "all"
        named = {**obj, "product": which} if which is not None and not every else obj
        with machine(named) as m:
            pass
        _has_key(m)
        if not every:
            report(m, Result(), as_json, slmgr.licence_lines(m, verbose=verbose))
            return
        lines: list[str] = []
        for install in m.installs():
            m.select_install(install)
            lines += [*([""] if lines else []), *slmgr.licence_lines(m, verbose=verbose)]
        m.select_install(None)
        report(m, Result(), as_json, lines)


_licence_verb("dli", "Licence information ('all': every installed product).", verbose=False)
_licence_verb("dlv", "Detailed licence information ('all': every product).", verbose=True)
_simple(
    "xpr", "When the activation or the grace period expires.", slmgr.expiry_lines, needs_key=True
)


def _forget_cached_host(m: Machine) -> None:
    m.profile.host_caching = False
    m.profile.cached_host = m.profile.cached_name = None


_setting(
    "cpky",
    "Clear the product key from the registry (the licence is unchanged).",
    lambda m: None,
    "Product key from registry cleared successfully.",
)
_setting(
    "ckms",
    "Go back to DNS auto-discovery.",
    lambda m: m.set_kms_host(None, product=m.chosen),
    "Key Management Service machine name cleared successfully.",
)
_setting(
    "ckms-domain",
    "Forget the lookup domain.",
    lambda m: setattr(m.profile, "kms_domain", None),
    "Key Management Service lookup domain cleared.",
)
_setting(
    "skhc",
    "Enable KMS host caching (reuse the host that worked).",
    lambda m: setattr(m.profile, "host_caching", True),
    "KMS host caching is enabled",
)
_setting(
    "ckhc",
    "Disable KMS host caching (look the host up every time).",
    _forget_cached_host,
    "KMS host caching is disabled",
)


@client.command("rearm")
@json_option
@click.pass_obj
def rearm(obj: dict[str, Any], as_json: bool) -> None:
    """Reset the grace period (and the CMID); limited per product."""
    with machine(obj) as m:
        result = m.rearm()
    report(
        m,
        result,
        as_json,
        [
            "Command completed successfully.",
            "Please restart the system for the changes to take effect.",
        ],
    )


@client.command("events")
@click.option("--last", type=click.IntRange(1), default=20, show_default=True)
@json_option
@click.pass_obj
def events(obj: dict[str, Any], last: int, as_json: bool) -> None:
    """The client's event log: 12288 request sent and 12289 response processed (KMS),
    mak-online (an online MAK activation) and mak-phone (a confirmation ID deposited),
    each naming its product; every product's, oldest first, or --product's only."""
    with machine(obj) as m:
        pass
    chosen = [m.chosen] if m.chosen is not None else m.profile.installs
    merged = sorted(
        ({**event, "product": install.product} for install in chosen for event in install.events),
        key=lambda event: str(event.get("time", "")),
    )
    shown = merged[-last:]
    if as_json:
        emit({"events": shown})
        return
    for event in shown:
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("id", "time"))
        click.echo(f"{event['time']} {event['id']} {fields}")


class _SignedShift(click.Command):
    """Takes ``-2h`` as the SHIFT argument, not as the options -2 and -h."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        shifts = [a for a in args[:end] if _NEGATIVE.match(a)]
        if shifts:
            args = [a for a in args[:end] if not _NEGATIVE.match(a)] + [
                "--",
                *shifts,
                *args[end + 1 :],
            ]
        return super().parse_args(ctx, args)


_NEGATIVE = re.compile(r"-\d+(\.\d+)?[smhdwSMHDW]\Z")


@client.command("clock", cls=_SignedShift)
@click.argument("shift", type=DURATION, required=False)
@click.option("--at", "at", help="Set the profile's clock to this ISO 8601 time.")
@json_option
@click.pass_obj
def clock(obj: dict[str, Any], shift: float | None, at: str | None, as_json: bool) -> None:
    """Move the profile's clock (+30d, -2h) or set it (--at); 'tick' then catches up."""
    when = None
    if at is not None:
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--at") from exc
        if parsed.tzinfo is None:
            raise click.BadParameter(
                "give a time zone, e.g. 2027-01-01T00:00:00Z", param_hint="--at"
            )
        when = parsed.timestamp()
    with machine(obj) as m:
        m.set_clock(shift=shift, at=when)
    report(m, Result(), as_json, [f"Clock: {m.summary()['clock']}"])


@client.command("tick")
@secret_option()
@json_option
@click.pass_obj
def tick(obj: dict[str, Any], secret: str, as_json: bool) -> None:
    """Run the renewals and retries that fell due up to the profile's clock."""
    with machine(obj, secret) as m:
        results = m.tick()
    failures = sum(1 for r in results if r.hresult)
    line = (
        f"{len(results)} attempt(s), {len(results) - failures} successful; "
        f"License Status: {m.licence.status.text}"
    )
    if as_json:
        emit({**m.summary(), "attempts": len(results), "failed_attempts": failures})
    else:
        click.echo(line)


@client.command("hardware")
@click.option(
    "--set",
    "changes",
    multiple=True,
    metavar="SLOT=VALUE",
    help="Replace a component: SLOT is 1-10 or its name (cpu, board, disk, nic, "
    "memory, display, bios, os-disk-volume, dock, machine).",
)
@json_option
@click.pass_obj
def hardware(obj: dict[str, Any], changes: tuple[str, ...], as_json: bool) -> None:
    """Show or change the ten hardware components (a significant change: 0xC004F00F)."""
    parsed = {}
    for change in changes:
        slot, sep, value = change.partition("=")
        if not sep or not value:
            raise click.BadParameter(f"{change!r}: use SLOT=VALUE", param_hint="--set")
        parsed[_slot(slot)] = value if ":" in value else f"{COMPONENT_NAMES[_slot(slot)]}:{value}"
    with machine(obj) as m:
        result = m.change_hardware(parsed)
    lines = [f"{i:>2} {value}" for i, value in enumerate(m.profile.hardware, 1)]
    if as_json and not result.hresult:
        emit({**m.summary(), "hardware": m.profile.hardware})
        return
    report(m, result, as_json, [], lines)


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _domain(text: str, hint: str) -> str:
    """A DNS domain as the profile keeps it: lower case, no dots around it."""
    name = text.strip().strip(".").lower()
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(x) for x in name.split(".")):
        raise click.BadParameter(
            f"{text!r} is not a DNS domain (labels of letters, digits and '-', at most 63 each)",
            param_hint=hint,
        )
    return name


def _slot(text: str) -> int:
    text = text.strip().lower()
    if text.isascii() and text.isdigit() and 1 <= int(text) <= len(COMPONENT_NAMES):
        return int(text) - 1
    if text in COMPONENT_NAMES:
        return COMPONENT_NAMES.index(text)
    raise click.BadParameter(
        f"slot {text!r}: 1-10 or one of {', '.join(COMPONENT_NAMES)}", param_hint="--set"
    )


@client.command("vm")
@click.argument("state", type=click.Choice(["on", "off"]), required=False)
@json_option
@click.pass_obj
def vm(obj: dict[str, Any], state: str | None, as_json: bool) -> None:
    """Show or set whether this machine is a virtual machine (sent with every request)."""
    with machine(obj) as m:
        if state is not None:
            m.profile.vm = state == "on"
    report(m, Result(), as_json, [f"Virtual machine: {'yes' if m.profile.vm else 'no'}"])


@client.command("dns")
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="ADDR[:PORT]",
    help="DNS server(s) to ask (replaces the list; port 53 if omitted).",
)
@click.option(
    "--suffix",
    "suffixes",
    multiple=True,
    metavar="DOMAIN",
    help="Primary DNS suffix, then the search list (replaces the list).",
)
@json_option
@click.pass_obj
def dns_settings(
    obj: dict[str, Any], servers: tuple[str, ...], suffixes: tuple[str, ...], as_json: bool
) -> None:
    """Show or set where this machine looks for _vlmcs._tcp SRV records."""
    for server in servers:
        try:
            host, _ = parse_address(server, 53)
            ipaddress.ip_address(host.split("%")[0])
        except ValueError as exc:
            raise click.BadParameter(
                f"{server!r}: an IP address, optionally with :PORT ({exc})", param_hint="--server"
            ) from exc
    names = [_domain(suffix, "--suffix") for suffix in suffixes]
    with machine(obj) as m:
        if servers:
            m.profile.dns_servers = list(servers)
        if suffixes:
            m.profile.dns_suffixes = names
    report(
        m,
        Result(),
        as_json,
        [
            f"DNS servers: {', '.join(m.profile.dns_servers) or '(none)'}",
            f"DNS suffix search list: {', '.join(m.profile.dns_suffixes) or '(none)'}",
        ],
    )
