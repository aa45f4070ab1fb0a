"""ospp.vbs's wording (``cscript ospp.vbs /dstatus``...), so scripts that parse it parse us.

Pure: a machine in, lines out; the command (``kmsemu.cli.ospp``) chooses the installs,
runs the verbs and frames the lines. ospp acts on the Office products of a machine only,
never on Windows. Every call's output sits between the same frame (``framed``), and each
licence's block ends with a separator line, as ospp.vbs prints them.

Names ospp takes from the licence files are derived from the catalog (cli.md "kmsemu
ospp"): ``LICENSE NAME: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition`` from
"Office LTSC Professional Plus 2024" (description "Office 24, ..."), the channel part
from the key type; the PRODUCT ID is a stable ePID-like number derived from the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from kmsemu.catalog import Product
from kmsemu.client.licence import Licence
from kmsemu.client.machine import MAK_TYPES, Machine
from kmsemu.client.profile import OFFICE, Install
from kmsemu.client.slmgr import CHANNELS
from kmsemu.errors import ConfigError, KmsemuError, describe, format_hresult
from kmsemu.keys.product_key import KeyType, check
from kmsemu.klp.messages import LicenseStatus

PROCESSING: Final = "---Processing--------------------------"
SEPARATOR: Final = "---------------------------------------"
EXITING: Final = "---Exiting-----------------------------"
NO_KEYS: Final = "<No installed product keys detected>"
#: A licence that is no beta: ospp shows the FILETIME epoch as its expiry.
BETA_EXPIRATION: Final = "BETA EXPIRATION: 01/01/1601"
_S = LicenseStatus
#: ospp's LICENSE STATUS words, per status.
_STATUS: Final = {
    _S.UNLICENSED: "---UNLICENSED---",
    _S.LICENSED: "---LICENSED---",
    _S.INITIAL_GRACE: "---OOB_GRACE---",
    _S.OUT_OF_TOLERANCE_GRACE: "---OOT_GRACE---",
    _S.NON_GENUINE_GRACE: "---NON_GENUINE_GRACE---",
    _S.NOTIFICATION: "---NOTIFICATIONS---",
    _S.EXTENDED_GRACE: "---EXTENDED_GRACE---",
}
#: The end of a licence file's name, per key type (Office's ``..VL_KMS_Client_AE``).
_LICENCE_SUFFIX: Final = {
    KeyType.KMS_CLIENT: "VL_KMS_Client_AE",
    KeyType.MAK: "VL_MAK_AE",
    KeyType.RETAIL: "R_Retail",
    KeyType.KMS_HOST: "VL_KMS_Host",
    KeyType.SUBSCRIPTION: "O365_Subscription",
}
#: Catalog words that licence names shorten (``Professional Plus`` is ``ProPlus``) or drop.
_SHORT: Final = {"Professional Plus": "ProPlus"}
_DROPPED: Final = ("Office", "LTSC")
_MINUTES_PER_DAY: Final = 1440


def framed(body: Sequence[str]) -> list[str]:
    """A whole call's output: ospp's Processing and Exiting lines around ``body``."""
    return [PROCESSING, SEPARATOR, *body, SEPARATOR, EXITING]


def licence_name(product: Product, key_type: KeyType | None) -> str:
    """``Office 24, Office24ProPlus2024VL_KMS_Client_AE edition`` (no key: a setup key's):
    the description's label, then ``Office``, its version, the catalog name without
    ``Office`` and ``LTSC`` in one word (the year last, as it is), the key type's part."""
    label = _label(product)
    words = product.name
    for long, short in _SHORT.items():
        words = words.replace(long, short)
    edition = "".join(w for w in words.split() if w not in _DROPPED)
    version = label.removeprefix("Office").strip()
    suffix = _LICENCE_SUFFIX[key_type or KeyType.KMS_CLIENT]
    return f"{label}, Office{version}{edition}{suffix} edition"


def licence_description(product: Product, key_type: KeyType | None) -> str:
    """The catalog's description with the key type's channel (``Office 24, VOLUME_MAK
    channel`` for a MAK)."""
    channel, _ = CHANNELS[key_type or KeyType.KMS_CLIENT]
    return product.description.replace("VOLUME_KMSCLIENT", channel)


def product_id(symbols: str) -> str:
    """A stable ePID-like PRODUCT ID (``NNNNN-NNNNN-NNNNN-AANNN``) derived from the key,
    so it stays across rearms and hardware changes, as the real one does."""
    digest = int.from_bytes(hashlib.sha256(symbols.encode()).digest()[:8])  # big-endian
    d = f"{digest % 10**18:018d}"
    return f"{d[:5]}-{d[5:10]}-{d[10:15]}-AA{d[15:]}"


def status_lines(machine: Machine, installs: Sequence[Install]) -> list[str]:
    """ospp /dstatus (the installs with a key) or /dstatusall (every Office install): one
    block per licence, each ending with a separator; ``NO_KEYS`` when there is none."""
    blocks = [line for install in installs for line in _status_block(machine, install)]
    return blocks or [NO_KEYS]


def _status_block(machine: Machine, install: Install) -> list[str]:
    product = product_of(machine, install)
    if product is None:
        return []  # a product the catalog no longer has: nothing ospp could name
    with _selected(machine, install):
        lic = machine.current()
    symbols = install.product_key
    key_type = _key_type(symbols)
    lines = [f"PRODUCT ID: {product_id(symbols)}"] if symbols else []
    lines += [
        f"SKU ID: {product.sku_id}",
        f"LICENSE NAME: {licence_name(product, key_type)}",
        f"LICENSE DESCRIPTION: {licence_description(product, key_type)}",
        BETA_EXPIRATION,
        f"LICENSE STATUS:  {_STATUS[lic.status]}",
    ]
    failure = lic.reason or lic.last_hresult
    if failure:
        lines += error_lines(failure)
    if lic.status is not _S.UNLICENSED and not lic.permanent:
        lines.append(remaining_grace(lic.minutes_remaining(machine.now)))
    if symbols:
        lines.append(f"Last 5 characters of installed product key: {symbols[-5:]}")
    if symbols and key_type in (None, KeyType.KMS_CLIENT):
        lines += _kms_lines(machine, install, lic)
    return [*lines, SEPARATOR]


def remaining_grace(minutes: int) -> str:
    """``REMAINING GRACE: 179 days  (258432 minute(s) before expiring)``."""
    days = minutes // _MINUTES_PER_DAY
    return f"REMAINING GRACE: {days} days  ({minutes} minute(s) before expiring)"


def _kms_lines(machine: Machine, install: Install, lic: Licence) -> list[str]:
    """A KMS client's part: where its host comes from, its intervals, host caching."""
    registered = machine.registered_host(install)
    last = install.last_kms
    if registered:
        source = f"\tKMS machine registry override defined: {registered}"
    elif last.get("source") == "dns":
        source = f"\tKMS machine name from DNS: {last.get('name') or last.get('host')}"
    else:
        source = "\tDNS auto-discovery: KMS name not available"
    caching = "Enabled" if machine.profile.host_caching else "Disabled"
    return [
        "Activation Type Configuration: ALL",
        source,
        f"\tActivation Interval: {lic.activation_interval} minutes",
        f"\tRenewal Interval: {lic.renewal_interval} minutes",
        f"\tKMS host caching: {caching}",
    ]


def error_lines(hresult: int, detail: str = "") -> list[str]:
    """ospp's two error lines: the HRESULT and the registry's message (with ``detail``)."""
    message = describe(hresult).message
    return [
        f"ERROR CODE: {format_hresult(hresult)}",
        f"ERROR DESCRIPTION: {message} ({detail})" if detail else f"ERROR DESCRIPTION: {message}",
    ]


def failure_lines(exc: KmsemuError) -> list[str]:
    """A refusal without a licence behind it (no such key, a Windows key, a bad profile)
    in ospp's shape: the HRESULT line when it has one, the description, the hint."""
    lines = [f"ERROR CODE: {format_hresult(exc.hresult)}"] if exc.hresult is not None else []
    lines.append(f"ERROR DESCRIPTION: {exc.text}")
    return [*lines, exc.hint] if exc.hint else lines


def attempting(machine: Machine, install: Install) -> list[str]:
    """ospp /act's lines before one licence's attempt."""
    product, symbols = _installed(machine, install)
    key_type = _key_type(symbols)
    return [
        "Installed product key detected - attempting to activate the following product:",
        f"SKU ID: {product.sku_id}",
        f"LICENSE NAME: {licence_name(product, key_type)}",
        f"LICENSE DESCRIPTION: {licence_description(product, key_type)}",
        f"Last 5 characters of installed product key: {symbols[-5:]}",
    ]


def uninstalling(machine: Machine, install: Install) -> str:
    """ospp /unpkey's first line, naming the licence (before its key is removed)."""
    product, symbols = _installed(machine, install)
    return f"Uninstalling product key for: {licence_name(product, _key_type(symbols))}"


def installation_id_line(machine: Machine, install: Install, iid: str) -> str:
    """ospp /dinstid's line for one MAK-type licence."""
    product, symbols = _installed(machine, install)
    return f"Installation ID for: {licence_name(product, _key_type(symbols))}: {iid}"


def cmid_line(cmid: str) -> str:
    """ospp /dcmid (Office's own CMID, not Windows')."""
    return f"OfficeClientMachineID (CMID): {cmid}"


def history_lines(machine: Machine, installs: Sequence[Install]) -> list[str]:
    """ospp /dhistorykms: the KMS client events (12288 request, 12289 answer) of
    ``installs``, oldest first, one line each (cli.md "kmsemu ospp" gives the format);
    ``<No KMS activation history found>`` when there is none."""
    rows = sorted(  # stable: events of one time stay in install, then log, order
        (
            (event, install)
            for install in installs
            for event in install.events
            if event.get("id") in (12288, 12289)
        ),
        key=lambda row: _time(row[0]),
    )
    lines = [_history_line(machine, event, install) for event, install in rows]
    return lines or ["<No KMS activation history found>"]


def _history_line(machine: Machine, event: dict[str, Any], install: Install) -> str:
    product = product_of(machine, install)
    name = product.name if product is not None else str(install.product)
    head = f"{_time(event)} Event {event.get('id')} {name}:"
    if event.get("id") == 12288:
        server = event.get("server")
        where = f" to {server}" if server else ""
        return f"{head} KMS request{where}, {event.get('hresult')}"
    outcome = "activated" if event.get("activated") else "not activated"
    return (
        f"{head} KMS response {event.get('hresult')}, "
        f"current count {event.get('current_count')}, {outcome}"
    )


def office_installs(machine: Machine, *, every: bool = False) -> list[Install]:
    """What ospp acts on: the Office installs that hold a key, in the order they were
    installed (``every``: those whose key was removed too, as /dstatusall shows them)."""
    if not every:
        return machine.installs(OFFICE)
    return [i for i in machine.profile.installs if i.application == OFFICE]


def phone_installs(machine: Machine) -> list[Install]:
    """The Office installs with a MAK-type key (MAK, retail, KMS host): /dinstid, /actcid."""
    return [i for i in office_installs(machine) if _key_type(i.product_key) in MAK_TYPES]


def product_of(machine: Machine, install: Install) -> Product | None:
    """The catalog entry of an install's product (None: the catalog no longer has it)."""
    if install.product is None:
        return None
    try:
        return machine.catalog.find(install.product)
    except ConfigError:
        return None


def _key_type(symbols: str | None) -> KeyType | None:
    """An installed key's type (None: no key, or one that no longer checks, shown as a
    setup key as slmgr shows it)."""
    key = check(symbols).key if symbols else None
    return key.type if key is not None else None


def _installed(machine: Machine, install: Install) -> tuple[Product, str]:
    """The catalog product and key of an install that has both (what /act, /unpkey and
    /dinstid name); ``ValueError`` for one that has not."""
    product = product_of(machine, install)
    symbols = install.product_key
    if product is None or symbols is None:
        raise ValueError(f"install of {install.product!r}: no key, or not in the catalog")
    return product, symbols


def _time(event: dict[str, Any]) -> str:
    """When an event happened: ISO 8601 UTC, which sorts as time does ("(no time)" in a
    damaged profile sorts first)."""
    return str(event.get("time") or "(no time)")


def _label(product: Product) -> str:
    """``Office 24``: the catalog description up to its first comma."""
    return product.description.split(",")[0].strip()


@contextmanager
def _selected(machine: Machine, install: Install) -> Iterator[None]:
    """The machine's views (``current``, ``key``) on ``install`` for a moment: a view
    only, the selection the caller made is back afterwards."""
    before = machine.chosen
    machine.select_install(install)
    try:
        yield
    finally:
        machine.select_install(before)
