"""``kmsemu slmgr ARGS...`` and the ``slmgr`` console script: a client machine driven
with slmgr.vbs's own syntax, printing everything on stdout as ``cscript slmgr.vbs`` does.

slmgr takes one option per call, ``/name`` or ``-name`` in any case, its arguments after
it, and often an Activation ID last. ``translate`` (pure) turns that into the
``kmsemu client`` verb that does the same; the command runs the verb on the profile
``--profile`` (or ``KMSEMU_PROFILE``) names. A failure is slmgr's ``Error: 0x...`` line,
on stdout too, with exit status 1; a call slmgr would not understand is a usage error
(exit 2).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import click

from kmsemu.cli.common import console_script, report_error

#: An Activation ID argument meaning every licence (``/dlv all``, ``/dli all``).
ALL: Final = "all"


@dataclass(frozen=True, slots=True)
class Option:
    """One slmgr option: the client verb doing the same, and what it takes."""

    verb: str
    #: What its required arguments are, in order (their names, for the usage error).
    needs: tuple[str, ...] = ()
    #: Whether an Activation ID may follow; ``all`` too when ``every``.
    activation_id: bool = True
    every: bool = False
    #: The flag of ``kmsemu host set`` it is, for an option that sets the KMS host.
    host_flag: str | None = None


OPTIONS: Final[dict[str, Option]] = {
    "ipk": Option("ipk", ("a product key",), activation_id=False),
    "ato": Option("ato"),
    "dli": Option("dli", every=True),
    "dlv": Option("dlv", every=True),
    "xpr": Option("xpr"),
    "skms": Option("skms", ("a KMS host name[:port]",)),
    "ckms": Option("ckms"),
    "skms-domain": Option("skms-domain", ("a DNS domain",)),
    "ckms-domain": Option("ckms-domain"),
    "skhc": Option("skhc", activation_id=False),
    "ckhc": Option("ckhc", activation_id=False),
    "rearm": Option("rearm", activation_id=False),
    "dti": Option("dti"),
    "atp": Option("atp", ("a confirmation ID",)),
    "upk": Option("upk"),
    "cpky": Option("cpky", activation_id=False),
    # the KMS host's own settings (``kmsemu host set``, on the host's state)
    "sai": Option("set", ("an interval in minutes",), False, host_flag="--activation-interval"),
    "sri": Option("set", ("an interval in minutes",), False, host_flag="--renewal-interval"),
    "sprt": Option("set", ("a port",), False, host_flag="--port"),
    "cdns": Option("set", (), False, host_flag="--no-dns-publish"),
    "sdns": Option("set", (), False, host_flag="--dns-publish"),
}


class SlmgrUsage(ValueError):
    """A call slmgr would refuse: no option, an unknown one, a missing or extra argument."""


@dataclass(frozen=True, slots=True)
class Call:
    """An slmgr call translated: the client verb and its arguments, and the Activation ID
    it names (None: the Windows licence, as slmgr's default; ``ALL``: every licence)."""

    verb: str
    arguments: tuple[str, ...]
    activation_id: str | None
    #: ``kmsemu host set``'s flag when the call sets the KMS host (then ``verb`` is "set").
    host_flag: str | None = None


def translate(args: Sequence[str]) -> Call:
    """The client verb of an slmgr call (``/ipk KEY``, ``-DLV all``...); ``SlmgrUsage``
    naming what is wrong otherwise."""
    if not args:
        raise SlmgrUsage("no option given: slmgr takes one, e.g. /dlv or /ato")
    first = args[0]
    name = first[1:].lower() if first[:1] in ("/", "-") else None
    option = OPTIONS.get(name or "")
    if option is None:
        known = ", ".join(f"/{n}" for n in OPTIONS)
        raise SlmgrUsage(f"unknown option {first!r}; kmsemu slmgr takes {known}")
    rest = list(args[1:])
    if len(rest) < len(option.needs):
        raise SlmgrUsage(f"{first} needs {option.needs[len(rest)]}")
    arguments, rest = tuple(rest[: len(option.needs)]), rest[len(option.needs) :]
    if not rest:
        return Call(option.verb, arguments, None, option.host_flag)
    if len(rest) > 1 or not option.activation_id:
        allowed = len(option.needs) + option.activation_id
        raise SlmgrUsage(f"{first} takes {allowed or 'no'} argument{'' if allowed == 1 else 's'}")
    if option.every and rest[0].lower() == ALL:
        return Call(option.verb, arguments, ALL)
    try:
        activation_id = str(uuid.UUID(rest[0]))
    except ValueError:
        raise SlmgrUsage(f"{rest[0]!r} is not an Activation ID (a GUID)") from None
    return Call(option.verb, arguments, activation_id)


@console_script("slmgr")
def slmgr(profile: str, as_json: bool, args: tuple[str, ...]) -> None:
    """Drive a client machine with slmgr's own syntax: /ipk KEY, /ato, /dlv [all], /xpr...

    One option per call, '/' or '-' in any case, an Activation ID last where
    slmgr takes one. Everything is printed on stdout, errors included.
    """
    import kmsemu.cli.client_verbs  # noqa: F401  (the verbs join the client group)
    from kmsemu.cli.client import client
    from kmsemu.errors import KmsemuError

    try:
        call = translate(args)
    except SlmgrUsage as exc:
        raise click.UsageError(str(exc)) from None
    json_flag = ["--json"] if as_json else []
    try:
        if call.host_flag is not None:  # /sai, /sri, /sprt, /cdns, /sdns: this machine's host
            from kmsemu.cli.host import host

            status = host.main(
                ["set", call.host_flag, *call.arguments, *json_flag],
                prog_name="slmgr",
                standalone_mode=False,
            )
            if isinstance(status, int) and status:
                raise SystemExit(status)
            return
        if call.activation_id == ALL:  # /dlv all, /dli all
            chosen, arguments = [], [*call.arguments, ALL]
        elif call.activation_id is not None:
            chosen, arguments = ["--product", call.activation_id], list(call.arguments)
        else:  # slmgr's default: the Windows licence
            chosen, arguments = [], list(call.arguments)
        status = client.main(
            ["--profile", profile, *chosen, call.verb, *arguments, *json_flag],
            prog_name="slmgr",
            standalone_mode=False,
        )
    except KmsemuError as exc:
        report_error(exc, as_json=as_json, err=False)
        raise SystemExit(1) from None
    if isinstance(status, int) and status:  # a verb that exited by itself (ctx.exit)
        raise SystemExit(status)


def main() -> Any:
    """The ``slmgr`` console script: ``slmgr /ato`` as ``kmsemu slmgr /ato``."""
    return slmgr.main(prog_name="slmgr")
