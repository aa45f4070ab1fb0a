"""slmgr's wording (behaviour.md "slmgr-style output"), so scripts that parse it parse us."""

from __future__ import annotations

from datetime import UTC, datetime

from kmsemu.client.machine import Machine
from kmsemu.errors import describe
from kmsemu.keys.activation_ids import hardware_id, installation_id
from kmsemu.keys.product_key import KeyType
from kmsemu.klp.messages import LicenseStatus

_S = LicenseStatus
#: Per key type: the channel slmgr names in Name/Description, and its "Product Key Channel".
CHANNELS = {
    KeyType.KMS_CLIENT: ("VOLUME_KMSCLIENT", "Volume:GVLK"),
    KeyType.MAK: ("VOLUME_MAK", "Volume:MAK"),
    KeyType.RETAIL: ("RETAIL", "Retail"),
    KeyType.KMS_HOST: ("VOLUME_KMS", "Volume:CSVLK"),
    KeyType.SUBSCRIPTION: ("SUBSCRIPTION", "Subscription"),
}


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%m/%d/%Y %I:%M:%S %p")


def _remaining(minutes: int) -> str:
    return f"{minutes} minute(s) ({minutes // 1440} day(s))"


def error_line(hresult: int) -> str:
    """slmgr's error line: the HRESULT in hex and the registry's message."""
    return f"Error: 0x{hresult:08X} {describe(hresult).message}"


def installation_id_line(iid: str) -> str:
    """slmgr /dti (nine groups of seven digits, as the activation centre reads them)."""
    return f"Installation ID: {iid}"


def deposited(machine: Machine) -> str:
    """slmgr /atp's success line."""
    product = machine.product
    assert product is not None
    return f"Confirmation ID for product {product.sku_id} deposited successfully."


def installed(key: str) -> str:
    """slmgr /ipk's success line."""
    return f"Installed product key {key} successfully."


def activating(machine: Machine) -> str:
    """slmgr /ato's first line, naming the product and its SKU id."""
    product = machine.product
    assert product is not None
    return f"Activating {product.name} ({product.sku_id}) ..."


def licence_lines(machine: Machine, *, verbose: bool) -> list[str]:
    """slmgr /dli (``verbose=False``) or /dlv."""
    product = machine.product
    profile = machine.profile
    install = machine.install
    lic = machine.current()
    if product is None or install is None or install.product_key is None:
        return ["Error: product key not found."]
    key = machine.key
    channel, key_channel = CHANNELS[key.type if key else KeyType.KMS_CLIENT]
    kms_client = key is None or key.type is KeyType.KMS_CLIENT
    lines = [
        f"Name: {product.name}, {channel} channel",
        f"Description: {product.description.replace('VOLUME_KMSCLIENT', channel)}",
    ]
    if verbose:
        hw_id = hardware_id(profile.hardware)
        iid = installation_id(key.type, key.fingerprint, hw_id) if key else ""
        lines += [
            f"Activation ID: {product.sku_id}",
            f"Application ID: {product.application_id}",
            f"Extended PID: {_client_epid(machine)}",
            f"Product Key Channel: {key_channel}",
            f"Installation ID: {iid.replace('-', '')}",
        ]
    lines += [
        f"Partial Product Key: {install.product_key[-5:]}",
        f"License Status: {lic.status.text}",
    ]
    minutes = lic.minutes_remaining(machine.now)
    if lic.permanent:
        pass  # slmgr shows no expiration for a MAK, retail or KMS host activation
    elif lic.status is _S.LICENSED:
        lines.append(f"Volume activation expiration: {_remaining(minutes)}")
    elif lic.status is _S.NOTIFICATION:
        lines.append(f"Notification Reason: 0x{lic.reason:08X}.")
    else:
        lines.append(f"Time remaining: {_remaining(minutes)}")
    rearm_label = "Office" if product.family == "office" else "Windows"
    lines += [
        f"Remaining {rearm_label} rearm count: {lic.rearms_left or 0}",
        f"Trusted time: {_when(machine.now)}",
    ]
    if not kms_client or (not verbose and lic.status is not _S.LICENSED):
        return lines
    lines += [
        "",
        "Key Management Service client information",
        f"    Client Machine ID (CMID): {machine.cmid}",
    ]
    last = install.last_kms
    registered = machine.registered_host(install)
    if registered:
        lines.append(f"    Registered KMS machine name: {registered}")
    elif last.get("source") == "dns":
        lines.append(f"    KMS machine name from DNS: {last['name']}")
    else:
        lines.append("    DNS auto-discovery: KMS name not available")
    if last:
        lines += [
            f"    KMS machine IP address: {last.get('ip', 'not available')}",
            f"    KMS machine extended PID: {last.get('epid', '')}",
        ]
    lines += [
        f"    Activation interval: {lic.activation_interval} minutes",
        f"    Renewal interval: {lic.renewal_interval} minutes",
        "    KMS host caching is " + ("enabled" if profile.host_caching else "disabled"),
    ]
    return lines


def expiry_lines(machine: Machine) -> list[str]:
    """slmgr /xpr."""
    product = machine.product
    lic = machine.current()
    if product is None:
        return ["Error: product key not found."]
    if lic.permanent:
        state = "The machine is permanently activated."
    elif lic.status is _S.LICENSED and lic.valid_until is not None:
        state = f"Volume activation will expire {_when(lic.valid_until)}"
    elif lic.status is _S.NOTIFICATION:
        state = f"{'Office' if product.family == 'office' else 'Windows'} is in Notification mode"
    elif lic.grace_ends is not None:
        label = "Initial" if lic.status is _S.INITIAL_GRACE else "Additional"
        state = f"{label} grace period ends {_when(lic.grace_ends)}"
    else:
        state = lic.status.text
    return [f"{product.name}:", f"    {state}"]


def _client_epid(machine: Machine) -> str:
    """A stable client ePID in the KLP/1 form, derived from the CMID."""
    digits = f"{int(machine.cmid.replace('-', ''), 16):040d}"
    return f"03612-{digits[:5]}-{digits[5:8]}-{digits[8:14]}-03-1033-9600.0000-0012026"
