"""``kmsemu ospp ARGS...`` and the ``ospp`` console script: a client machine's Office
products driven with ospp.vbs's own syntax, printing everything on stdout as ``cscript
ospp.vbs`` does.

ospp takes one option per call, ``/name`` or ``-name`` in any case, its value after a
colon (``/inpkey:KEY``, ``/sethst:kms1.lab.test``). ``translate`` (pure) checks the call;
the command runs it on the Office installs of the profile ``--profile`` (or
``KMSEMU_PROFILE``) names: every Office product with a key, never Windows (that is
slmgr's). The output sits between ospp's Processing and Exiting lines
(``kmsemu.client.ospp``); a failure is ospp's ``ERROR CODE:`` and ``ERROR DESCRIPTION:``
lines, on stdout too, with exit status 1; a call ospp would not understand is a usage
error (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from kmsemu.addresses import AddressError, format_address, parse_address
from kmsemu.cli.common import console_script, emit, report_error, secret_option

if TYPE_CHECKING:
    from kmsemu.client.machine import Machine
    from kmsemu.client.profile import Install
    from kmsemu.errors import KmsemuError

KMS_PORT: Final = 1688
#: ``parse_address``'s answer for a value without a port (no port is negative).
_NO_PORT: Final = -1


@dataclass(frozen=True, slots=True)
class Option:
    """One ospp option: what its value after the colon is (None: it takes no value)."""

    needs: str | None = None


OPTIONS: Final[dict[str, Option]] = {
    "dstatus": Option(),
    "dstatusall": Option(),
    "act": Option(),
    "inpkey": Option("a product key"),
    "unpkey": Option("the last 5 characters of a product key"),
    "sethst": Option("a KMS host name"),
    "setprt": Option("a port"),
    "remhst": Option(),
    "dhistorykms": Option(),
    "dcmid": Option(),
    "dinstid": Option(),
    "actcid": Option("a confirmation ID"),
    "rearm": Option(),
}
PARTIAL_KEY_LENGTH: Final = 5


class OsppUsage(ValueError):
    """A call ospp would refuse: no option, an unknown one, a missing or extra value."""


@dataclass(frozen=True, slots=True)
class Call:
    """An ospp call checked: the option's name (lower case) and its value, if it takes one."""

    option: str
    value: str | None = None


def translate(args: Sequence[str]) -> Call:
    """The option of an ospp call (``/act``, ``-INPKEY:KEY``...); ``OsppUsage`` naming what
    is wrong otherwise. Values that only have one form are checked here: the 5 characters
    of /unpkey (upper-cased), the host of /sethst, the port of /setprt."""
    if not args:
        raise OsppUsage("no option given: ospp takes one, e.g. /dstatus or /act")
    if len(args) > 1:
        raise OsppUsage(f"ospp takes one option per call, not {len(args)}: {' '.join(args)}")
    first = args[0]
    name, colon, value = first[1:].partition(":")
    option = OPTIONS.get(name.lower()) if first[:1] in ("/", "-") else None
    if option is None:
        known = ", ".join(f"/{n}" for n in OPTIONS)
        raise OsppUsage(f"unknown option {first!r}; kmsemu ospp takes {known}")
    name = name.lower()
    if option.needs is None:
        if colon:
            raise OsppUsage(f"/{name} takes no value")
        return Call(name)
    if not value:
        raise OsppUsage(f"/{name} needs {option.needs} after a colon: /{name}:VALUE")
    return Call(name, _checked(name, value))


def _checked(name: str, value: str) -> str:
    """The value of /unpkey, /sethst or /setprt if it has its form (others as given)."""
    if name == "unpkey":
        if len(value) != PARTIAL_KEY_LENGTH:
            raise OsppUsage(f"/unpkey:{value}: give the last 5 characters of the product key")
        return value.upper()
    if name == "sethst":
        try:
            parse_address(value, KMS_PORT)
        except AddressError as exc:
            raise OsppUsage(f"/sethst:{value}: {exc}") from None
    if name == "setprt" and not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
        raise OsppUsage(f"/setprt:{value}: the port is a number from 1 to 65535")
    return value


@dataclass
class Outcome:
    """What an option did: its lines (inside the frame), the failure that makes the exit
    status 1 (its lines are already among ``lines``), and what ``--json`` adds."""

    lines: list[str]
    error: KmsemuError | None = None
    data: dict[str, Any] = field(default_factory=dict)


Handler = Callable[["Machine", str | None], Outcome]


@console_script("ospp")
@secret_option()
def ospp(profile: str, secret: str, as_json: bool, args: tuple[str, ...]) -> None:
    """Drive a client machine's Office with ospp's own syntax: /dstatus, /act, /inpkey:KEY...

    One option per call, '/' or '-' in any case, its value after a colon. It acts
    on every Office product of the machine, never on Windows. Everything is printed
    on stdout, errors included.
    """
    from kmsemu.cli.client_verbs import machine
    from kmsemu.client import ospp as wording
    from kmsemu.errors import KmsemuError

    try:
        call = translate(args)
    except OsppUsage as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with machine({"profile": profile}, secret, select=False) as m:
            outcome = HANDLERS[call.option](m, call.value)
            shown = _summary(m)
    except KmsemuError as exc:  # the profile cannot be read or saved: nothing was done
        _fail(exc, as_json, wording.failure_lines(exc))
    if outcome.error is not None:
        outcome.error.output = {**shown, **outcome.data}
        _fail(outcome.error, as_json, outcome.lines)
    if as_json:
        emit({**shown, **outcome.data})
    else:
        for line in wording.framed(outcome.lines):
            click.echo(line)


def _fail(exc: KmsemuError, as_json: bool, lines: list[str]) -> NoReturn:
    """Print a failure (ospp's framed lines, or the error JSON) on stdout; exit 1."""
    from kmsemu.client import ospp as wording

    if as_json:
        report_error(exc, as_json=True, err=False)
    else:
        for line in wording.framed(lines):
            click.echo(line)
    raise SystemExit(1)


def _summary(m: Machine) -> dict[str, Any]:
    """The machine summary as ospp sees it: the first Office licence at the top, and
    ``products`` holding the Office licences only."""
    from kmsemu.client.ospp import office_installs
    from kmsemu.client.profile import OFFICE

    first = office_installs(m) or office_installs(m, every=True)
    m.select_install(first[0] if first else None)
    summary = m.summary()
    applications = [i.application for i in m.installs()]
    summary["products"] = [
        p for p, app in zip(summary["products"], applications, strict=True) if app == OFFICE
    ]
    return summary


# -- the options ------------------------------------------------------------------------


def _refused(exc: KmsemuError) -> Outcome:
    """A refusal before anything changed, in ospp's error lines."""
    from kmsemu.client.ospp import failure_lines

    return Outcome(failure_lines(exc), exc)


def _no_office_key() -> KmsemuError:
    from kmsemu.errors import LocalError

    return LocalError("product_key_not_found", "no Office product key is installed")


def _activation_error(hresult: int, detail: str, code: str = "") -> KmsemuError:
    from kmsemu.errors import ActivationError

    return ActivationError(hresult, detail, code=code or None)


def _every_office(m: Machine) -> list[Install]:
    """Every Office install, with a key or not (the KMS host settings are theirs)."""
    from kmsemu.client.ospp import office_installs

    return office_installs(m, every=True)


def _dstatus(m: Machine, value: str | None, *, every: bool = False) -> Outcome:
    """/dstatus: a block per Office licence with a key; /dstatusall: every Office one."""
    from kmsemu.client.ospp import office_installs, status_lines

    return Outcome(status_lines(m, office_installs(m, every=every)))


def _act(m: Machine, value: str | None) -> Outcome:
    """/act: one attempt per Office licence with a key; the first failure is the error."""
    from kmsemu.client import ospp as wording

    installs = wording.office_installs(m)
    if not installs:
        return Outcome([wording.NO_KEYS], _no_office_key())
    lines: list[str] = []
    results: list[dict[str, Any]] = []
    failure: KmsemuError | None = None
    for install in installs:
        lines += wording.attempting(m, install)
        m.select_install(install)
        result = m.activate()
        if result.hresult:
            lines += wording.error_lines(result.hresult, result.detail)
            failure = failure or _activation_error(result.hresult, result.detail, result.code)
        else:
            lines.append("<Product activation successful>")
        lines.append(wording.SEPARATOR)
        results.append(
            {"activation_id": _activation_id(m, install), "hresult": f"0x{result.hresult:08X}"}
        )
    return Outcome(lines, failure, {"results": results})


def _inpkey(m: Machine, value: str | None) -> Outcome:
    """/inpkey: an Office key only; a Windows key is refused before it is installed."""
    from kmsemu.client.profile import application_of
    from kmsemu.errors import HResult
    from kmsemu.keys.product_key import KeyType, check

    assert value is not None
    key = check(value).key
    if key is not None and key.type is not KeyType.SUBSCRIPTION and key.product < len(m.catalog):
        product = m.catalog.products[key.product]
        if application_of(product.family) != "office":
            detail = f"{product.name} is not an Office product; install it with slmgr /ipk"
            return _refused(_activation_error(HResult.PRODUCT_KEY_INVALID, detail))
    result = m.install_key(value)
    if result.hresult:
        return _refused(_activation_error(result.hresult, result.detail, result.code))
    return Outcome(["<Product key installation successful>"])


def _unpkey(m: Machine, value: str | None) -> Outcome:
    """/unpkey: remove the Office key(s) ending in those 5 characters."""
    from kmsemu.client import ospp as wording
    from kmsemu.errors import LocalError

    matching = [
        i for i in wording.office_installs(m) if (i.product_key or "")[-5:] == (value or "")
    ]
    if not matching:
        return _refused(
            LocalError("product_key_not_found", f"no Office product key ends in {value}")
        )
    lines: list[str] = []
    for install in matching:
        lines.append(wording.uninstalling(m, install))
        m.select_install(install)
        m.uninstall_key()  # it has a key: removing it cannot fail
        lines.append("<Product key uninstall successful>")
    return Outcome(lines)


def _sethst(m: Machine, value: str | None) -> Outcome:
    """/sethst: every Office install's own KMS host; a port in the value is used, else the
    port it had (/setprt), else 1688."""
    assert value is not None
    installs = _every_office(m)
    if not installs:
        return _refused(_no_office_key())
    host, port = parse_address(value, _NO_PORT)
    for install in installs:
        kept = parse_address(install.kms_host, KMS_PORT)[1] if install.kms_host else KMS_PORT
        m.set_kms_host(format_address(host, kept if port == _NO_PORT else port), product=install)
    return Outcome(["Successfully applied setting."])


def _setprt(m: Machine, value: str | None) -> Outcome:
    """/setprt: the port of the KMS host each Office install uses (its own, else the
    machine's slmgr /skms host, which then becomes its own); no host set: refused."""
    from kmsemu.errors import ConfigError

    assert value is not None
    installs = _every_office(m)
    if not installs:
        return _refused(_no_office_key())
    hosts = [m.registered_host(install) for install in installs]
    if None in hosts:
        return _refused(
            ConfigError("no KMS host is set for Office: set one first with /sethst:HOST")
        )
    for install, registered in zip(installs, hosts, strict=True):
        assert registered is not None
        host, _ = parse_address(registered, KMS_PORT)
        m.set_kms_host(format_address(host, int(value)), product=install)
    return Outcome(["Successfully applied setting."])


def _remhst(m: Machine, value: str | None) -> Outcome:
    """/remhst: every Office install back to the machine's host (slmgr /skms) or DNS."""
    installs = _every_office(m)
    if not installs:
        return _refused(_no_office_key())
    for install in installs:
        m.set_kms_host(None, product=install)
    return Outcome(["Successfully applied setting."])


def _dhistorykms(m: Machine, value: str | None) -> Outcome:
    """/dhistorykms: the 12288/12289 events of every Office install, oldest first."""
    from kmsemu.client.ospp import history_lines

    installs = _every_office(m)
    events = sorted(
        (
            {**event, "product": install.product}
            for install in installs
            for event in install.events
            if event.get("id") in (12288, 12289)
        ),
        key=lambda event: str(event.get("time", "")),
    )
    return Outcome(history_lines(m, installs), data={"events": events})


def _dcmid(m: Machine, value: str | None) -> Outcome:
    """/dcmid: Office's CMID (made when its first key was installed)."""
    from kmsemu.client.ospp import cmid_line
    from kmsemu.client.profile import OFFICE
    from kmsemu.errors import LocalError

    cmid = m.profile.cmids.get(OFFICE)
    if cmid is None:
        return _refused(LocalError("product_key_not_found", "no Office product was installed"))
    return Outcome([cmid_line(cmid)], data={"cmid": cmid})


def _phone_refusal(m: Machine) -> Outcome:
    """No Office MAK-type licence: why (no Office key, or only KMS client setup keys)."""
    from kmsemu.client.ospp import office_installs

    installs = office_installs(m)
    if not installs:
        return _refused(_no_office_key())
    m.select_install(installs[0])
    result = m.installation_id()  # the machine's reason: a setup key has no phone activation
    return _refused(_activation_error(result.hresult, result.detail, result.code))


def _dinstid(m: Machine, value: str | None) -> Outcome:
    """/dinstid: the installation ID of each Office MAK-type licence."""
    from kmsemu.client import ospp as wording

    installs = wording.phone_installs(m)
    if not installs:
        return _phone_refusal(m)
    lines: list[str] = []
    ids: list[dict[str, str | None]] = []
    for install in installs:
        m.select_install(install)
        iid = (m.installation_id().data or {})["installation_id"]
        lines.append(wording.installation_id_line(m, install, iid))
        ids.append({"activation_id": _activation_id(m, install), "installation_id": iid})
    return Outcome(lines, data={"installation_ids": ids})


def _actcid(m: Machine, value: str | None) -> Outcome:
    """/actcid: deposit a confirmation ID for the (first) Office MAK-type licence."""
    from kmsemu.client import ospp as wording

    installs = wording.phone_installs(m)
    if not installs:
        return _phone_refusal(m)
    m.select_install(installs[0])
    result = m.deposit_confirmation_id(value)
    if result.hresult:
        error = _activation_error(result.hresult, result.detail, result.code)
        return Outcome(wording.error_lines(result.hresult, result.detail), error, result.data or {})
    return Outcome(["<Product activation successful>"], data=result.data or {})


def _rearm(m: Machine, value: str | None) -> Outcome:
    """/rearm: every Office licence with a key, and one new Office CMID for them all."""
    from kmsemu.client import ospp as wording
    from kmsemu.client.profile import OFFICE

    installs = wording.office_installs(m)
    if not installs:
        return _refused(_no_office_key())
    lines: list[str] = []
    failure: KmsemuError | None = None
    for _, result in m.rearm_application(OFFICE):
        if result.hresult:
            lines += wording.error_lines(result.hresult, result.detail)
            failure = failure or _activation_error(result.hresult, result.detail, result.code)
    return Outcome(lines or ["<Office rearm successful>"], failure)


def _activation_id(m: Machine, install: Install) -> str | None:
    from kmsemu.client.ospp import product_of

    product = product_of(m, install)
    return str(product.sku_id) if product is not None else None


HANDLERS: Final[dict[str, Handler]] = {
    "dstatus": _dstatus,
    "dstatusall": lambda m, value: _dstatus(m, value, every=True),
    "act": _act,
    "inpkey": _inpkey,
    "unpkey": _unpkey,
    "sethst": _sethst,
    "setprt": _setprt,
    "remhst": _remhst,
    "dhistorykms": _dhistorykms,
    "dcmid": _dcmid,
    "dinstid": _dinstid,
    "actcid": _actcid,
    "rearm": _rearm,
}


def main() -> Any:
    """The ``ospp`` console script: ``ospp /act`` as ``kmsemu ospp /act``."""
    return ospp.main(prog_name="ospp")
