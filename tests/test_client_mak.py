"""The client machine with MAK, retail and KMS host keys, through the CLI, against a real
MAK service (BackgroundMak): online activation, counts, hardware changes, phone activation."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.client.profile import COMPONENT_NAMES
from kmsemu.keys.activation_ids import (
    confirmation_id,
    hardware_id,
    parse_installation_id,
    same_machine,
)
from kmsemu.keys.product_key import KeyType, fingerprint, mint, setup_key
from kmsemu.testing.mak import BackgroundMak
from mak.client import MakClient

WINDOWS_11_PRO = default_catalog().products[0]  # what BackgroundMak.mint_key mints for
IID_SHAPE = re.compile(r"^000\d{4}(-\d{7}){8}$")
CID_SHAPE = re.compile(r"^\d{6}(-\d{6}){7}$")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path))
    for name in ("KMSEMU_SECRET", "KMSEMU_MAK_URL", "KMSEMU_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def svc() -> Iterator[BackgroundMak]:
    with BackgroundMak() as service:
        yield service


def client(profile: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["client", "--profile", profile, *args])


def ok(profile: str, *args: str) -> dict[str, Any]:
    """Run a verb with --json; it must succeed."""
    result = client(profile, *args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def refused(profile: str, *args: str) -> dict[str, Any]:
    """Run a verb with --json; it must exit 1 with an error object."""
    result = client(profile, *args, "--json")
    assert result.exit_code == 1, result.output
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


def saved(home: Path, profile: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "clients" / f"{profile}.json").read_text())
    return data


def prepare(profile: str, svc: BackgroundMak, key: str) -> None:
    """A machine with ten known components, the service's URL and the key installed."""
    sets = [arg for name in COMPONENT_NAMES for arg in ("--set", f"{name}=base-{profile}")]
    assert client(profile, "hardware", *sets).exit_code == 0
    assert client(profile, "mak-url", svc.url).exit_code == 0
    installed = client(profile, "ipk", key)
    assert installed.exit_code == 0, installed.output
    assert installed.stdout.strip() == f"Installed product key {key} successfully."


def significant(home: Path, profile: str) -> bool:
    """Whether the machine's hardware differs significantly from its last activation."""
    data = saved(home, profile)
    return not same_machine(
        hardware_id(data["installs"][0]["activation_hardware"]), hardware_id(data["hardware"])
    )


def remaining(svc: BackgroundMak, key: str) -> int:
    count: int = MakClient(svc.url).count(key)["remaining"]
    return count


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- online activation: the count, hardware changes, increases ----------------------------------


def test_three_machines_a_refused_fourth_free_and_counted_reactivation(
    home: Path, svc: BackgroundMak
) -> None:
    key = svc.mint_key(limit=3)
    for pc in ("pc1", "pc2", "pc3"):
        prepare(pc, svc, key)
        grace = ok(pc, "dli")
        assert grace["license_status"]["value"] == 2 and grace["next_attempt"] is None
        done = client(pc, "ato")
        assert done.exit_code == 0, done.output
        assert done.stdout.splitlines() == [
            f"Activating {WINDOWS_11_PRO.name} ({WINDOWS_11_PRO.sku_id}) ...",
            "Product activated successfully.",
        ]
        state = ok(pc, "dli")
        assert state["license_status"] == {"value": 1, "name": "Licensed"}
        assert state["permanent"] and state["key_type"] == "mak"
        assert state["expires_at"] is None and state["next_attempt"] is None
    assert remaining(svc, key) == 0

    # the fourth machine: the MAK is used up
    prepare("pc4", svc, key)
    error = refused("pc4", "ato")
    assert error["hresult"] == "0xC004C020" and error["code"] == "mak_limit_exceeded"
    assert error["hint"]
    text = client("pc4", "ato")
    assert text.exit_code == 1
    assert text.stderr.startswith(
        "Error: 0xC004C020 The activation server reported that the "
        "Multiple Activation Key has exceeded its limit."
    )
    state = ok("pc4", "dli")
    assert state["license_status"]["value"] == 2 and state["last_hresult"] == "0xC004C020"

    # two components changed: the same machine, reactivated for free
    minor = client("pc1", "hardware", "--set", "disk=second-disk", "--set", "nic=second-nic")
    assert minor.exit_code == 0 and not significant(home, "pc1")
    assert ok("pc1", "dli")["license_status"]["name"] == "Licensed"
    free = ok("pc1", "ato")["mak"]
    assert (free["verdict"], free["counted"], free["remaining"]) == ("same", False, 0)
    assert remaining(svc, key) == 0

    # four more: a significant change, out of tolerance; reactivating needs a count
    major = client(
        "pc1",
        "hardware",
        "--set",
        "cpu=new-cpu",
        "--set",
        "board=new-board",
        "--set",
        "memory=new-memory",
        "--set",
        "display=new-display",
    )
    assert significant(home, "pc1")
    assert major.exit_code == 1 and "Error: 0xC004F00F" in major.stderr
    lapsed = ok("pc1", "dli")
    assert lapsed["license_status"]["value"] == 3 and lapsed["reason"] == "0xC004F00F"
    assert not lapsed["permanent"] and lapsed["next_attempt"] is None
    assert refused("pc1", "ato")["hresult"] == "0xC004C020"  # nothing left to count

    fp = fingerprint(key)
    svc.service.increase(fp, 1)
    counted = ok("pc1", "ato")
    assert counted["license_status"]["name"] == "Licensed" and counted["permanent"]
    assert (counted["mak"]["verdict"], counted["mak"]["counted"]) == ("new", True)
    assert (counted["mak"]["used"], counted["mak"]["limit"], counted["mak"]["remaining"]) == (
        4,
        4,
        0,
    )
    assert not significant(home, "pc1")  # the activation hardware moved on

    # the increase is used up too: 0xC004C021; one more and the fourth machine activates
    assert refused("pc4", "ato")["hresult"] == "0xC004C021"
    svc.service.increase(fp, 1)
    fourth = ok("pc4", "ato")
    assert fourth["permanent"] and fourth["mak"]["counted"] and remaining(svc, key) == 0

    events = ok("pc1", "events")["events"]
    online = [e for e in events if e["id"] == "mak-online"]
    assert [(e["hresult"], e.get("verdict")) for e in online] == [
        ("0x00000000", "new"),
        ("0x00000000", "same"),
        ("0xC004C020", None),
        ("0x00000000", "new"),
    ]
    assert online[0]["fingerprint"] == fp and online[0]["url"] == svc.url
    assert key not in json.dumps(events) and key.replace("-", "") not in json.dumps(events)


def test_slmgr_lines_for_a_permanent_activation(home: Path, svc: BackgroundMak) -> None:
    prepare("pc", svc, svc.mint_key(limit=1))
    assert client("pc", "ato").exit_code == 0
    dli = client("pc", "dli").stdout.splitlines()
    assert dli[0] == f"Name: {WINDOWS_11_PRO.name}, VOLUME_MAK channel"
    assert "VOLUME_MAK" in dli[1] and "License Status: Licensed" in dli
    assert not any(
        line.startswith(("Volume activation expiration", "Time remaining")) for line in dli
    )
    assert not any("Key Management Service" in line for line in dli)
    dlv = client("pc", "dlv").stdout.splitlines()
    assert "Product Key Channel: Volume:MAK" in dlv
    assert any(line.startswith("Installation ID: 000") for line in dlv)
    assert client("pc", "xpr").stdout.splitlines() == [
        f"{WINDOWS_11_PRO.name}:",
        "    The machine is permanently activated.",
    ]
    # time never ends it, and tick has nothing to do
    assert client("pc", "clock", "+3650d").exit_code == 0
    ticked = ok("pc", "tick")
    assert ticked["attempts"] == 0 and ticked["license_status"]["name"] == "Licensed"


def test_a_mak_in_grace_is_not_retried_automatically(home: Path, svc: BackgroundMak) -> None:
    prepare("pc", svc, svc.mint_key(limit=1))
    client("pc", "clock", "+10d")
    ticked = ok("pc", "tick")
    assert ticked["attempts"] == 0 and ticked["license_status"]["value"] == 2
    client("pc", "clock", "+21d")
    ticked = ok("pc", "tick")
    assert ticked["attempts"] == 0
    assert ticked["license_status"]["value"] == 5 and ticked["reason"] == "0xC004F009"
    assert ok("pc", "ato")["permanent"]  # activating leaves Notification


def test_retail_and_kms_host_keys_activate_online(home: Path, svc: BackgroundMak) -> None:
    retail = svc.mint_key(limit=None, key_type=KeyType.RETAIL)
    prepare("a", svc, retail)
    assert ok("a", "ato")["permanent"]
    assert client("a", "dlv").stdout.count("Product Key Channel: Retail") == 1
    prepare("b", svc, retail)
    assert refused("b", "ato")["hresult"] == "0xC004C008"  # one machine per retail key
    host_key = svc.mint_key(limit=None, key_type=KeyType.KMS_HOST)
    prepare("c", svc, host_key)
    assert ok("c", "ato")["key_type"] == "kms-host"
    assert "Product Key Channel: Volume:CSVLK" in client("c", "dlv").stdout


def test_unknown_key_and_unreachable_service(home: Path, svc: BackgroundMak) -> None:
    stranger = str(mint(KeyType.MAK, 0, serial=424242))  # well formed, never registered
    prepare("pc", svc, stranger)
    error = refused("pc", "ato")
    assert error["hresult"] == "0xC004C001" and error["code"] == "key_unknown"

    assert client("pc", "mak-url", dead_url()).exit_code == 0
    result = client("pc", "ato")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: 0x80072EFD A connection with the server could not be established."
    )
    error = refused("pc", "ato")
    assert error["code"] == "unreachable" and error["hresult"] == "0x80072EFD"
    state = ok("pc", "dli")
    assert state["last_hresult"] == "0x80072EFD" and state["license_status"]["value"] == 2
    assert ok("pc", "events")["events"][-1]["hresult"] == "0x80072EFD"


def test_subscription_keys_are_refused_and_setup_keys_have_no_iid(home: Path) -> None:
    subscription = str(mint(KeyType.SUBSCRIPTION, 0, serial=7, quantity=5))
    result = client("pc", "ipk", subscription)
    assert result.exit_code == 1 and "0xC004F050" in result.stderr
    assert refused("pc", "dli")["code"] == "product_key_not_found"  # nothing installed
    assert client("pc", "ipk", str(setup_key(0))).exit_code == 0
    dti = client("pc", "dti")
    assert dti.exit_code == 1 and "0xC004F050" in dti.stderr
    assert refused("pc", "atp", "0" * 48)["hresult"] == "0xC004F050"
    assert client("nokey", "dti").exit_code == 1


# -- the MAK service URL ----------------------------------------------------------------------


def test_mak_url_profile_then_environment_then_default(
    home: Path, svc: BackgroundMak, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = client("pc", "mak-url")
    assert shown.stdout.strip() == "MAK activation service: http://127.0.0.1:8688 (default)"
    monkeypatch.setenv("KMSEMU_MAK_URL", svc.url)
    assert client("pc", "mak-url").stdout.strip() == (
        f"MAK activation service: {svc.url} (KMSEMU_MAK_URL)"
    )
    key = svc.mint_key(limit=1)
    assert client("pc", "ipk", key).exit_code == 0
    assert ok("pc", "ato")["mak"]["url"] == svc.url  # no mak-url: the environment's

    set_ = client("pc", "mak-url", "127.0.0.1:1")
    assert set_.stdout.strip() == "MAK activation service set to http://127.0.0.1:1 successfully."
    assert ok("pc", "mak-url")["mak_url"] == "http://127.0.0.1:1"  # the profile's wins
    cleared = client("pc", "mak-url", "--clear")
    assert cleared.stdout.strip() == (
        f"MAK activation service cleared; using {svc.url} (KMSEMU_MAK_URL)."
    )
    assert client("pc", "mak-url", "ftp://x").exit_code == 2
    assert client("pc", "mak-url", "http://x", "--clear").exit_code == 2


def test_old_profiles_still_load(home: Path, svc: BackgroundMak) -> None:
    """A profile written before MAK support (no mak_url, no CIDs, no kms_client)."""
    assert client("old", "ipk", str(setup_key(6))).exit_code == 0
    path = home / "clients" / "old.json"
    data = json.loads(path.read_text())
    for name in ("mak_url", "confirmation_ids"):
        del data[name]
    del data["installs"][0]["licence"]["kms_client"]
    path.write_text(json.dumps(data))
    state = ok("old", "dli")
    assert state["license_status"]["value"] == 2 and state["next_attempt"] is not None
    assert state["mak_url"] == "http://127.0.0.1:8688"
    prepare("old", svc, svc.mint_key(limit=1))  # and it takes a MAK afterwards
    assert ok("old", "ato")["permanent"]


# -- phone activation: dti, the activation centre, atp ------------------------------------------


def phone(svc: BackgroundMak, iid: str) -> str:
    cid: str = MakClient(svc.url).phone(iid)["confirmation_id"]
    return cid


def test_phone_activation(home: Path, svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=2)
    prepare("pc", svc, key)
    shown = client("pc", "dti")
    assert shown.exit_code == 0
    line = shown.stdout.strip()
    assert line.startswith("Installation ID: ")
    iid = line.removeprefix("Installation ID: ")
    assert IID_SHAPE.match(iid) and ok("pc", "dti")["installation_id"] == iid
    installation = parse_installation_id(iid)
    assert installation.key_type is KeyType.MAK and installation.fingerprint == fingerprint(key)
    assert installation.hardware_id == hardware_id(saved(home, "pc")["hardware"])
    assert f"Installation ID: {iid.replace('-', '')}" in client("pc", "dlv").stdout

    cid = phone(svc, iid)
    assert remaining(svc, key) == 1  # the phone activation counted
    deposited = client("pc", "atp", cid)
    assert deposited.exit_code == 0, deposited.output
    assert deposited.stdout.strip() == (
        f"Confirmation ID for product {WINDOWS_11_PRO.sku_id} deposited successfully."
    )
    state = ok("pc", "dli")
    assert state["license_status"]["name"] == "Licensed" and state["permanent"]
    assert "The machine is permanently activated." in client("pc", "xpr").stdout
    profile = saved(home, "pc")
    assert profile["confirmation_ids"] == {iid: cid}
    assert profile["installs"][0]["activation_hardware"] == profile["hardware"]
    assert ok("pc", "events")["events"][-1] == {
        "id": "mak-phone",
        "time": ok("pc", "events")["events"][-1]["time"],
        "installation_id": iid,
        "stored": False,
        "hresult": "0x00000000",
        "product": "windows-11-pro",
    }

    # separators are free: spaces, none, or dashes
    assert client("pc", "atp", cid.replace("-", " ")).exit_code == 0
    assert ok("pc", "atp", cid.replace("-", ""))["confirmation_id"] == cid


def test_local_reactivation_reapplies_the_stored_cid_offline(
    home: Path, svc: BackgroundMak
) -> None:
    key = svc.mint_key(limit=1)
    prepare("pc", svc, key)
    iid = ok("pc", "dti")["installation_id"]
    assert client("pc", "atp", phone(svc, iid)).exit_code == 0
    # reinstall the same key on the same hardware, with no service anywhere
    assert client("pc", "mak-url", dead_url()).exit_code == 0
    assert client("pc", "upk").exit_code == 0 and client("pc", "ipk", key).exit_code == 0
    assert ok("pc", "dli")["license_status"]["value"] == 2
    again = ok("pc", "atp")
    assert again["permanent"] and again["installation_id"] == iid
    assert ok("pc", "events")["events"][-1]["stored"] is True
    assert remaining(svc, key) == 0  # used once, not twice
    # after a significant hardware change the IID is new: nothing stored for it
    sets = [arg for name in COMPONENT_NAMES[:5] for arg in ("--set", f"{name}=replaced")]
    assert client("pc", "hardware", *sets).exit_code == 1 and significant(home, "pc")
    assert ok("pc", "dti")["installation_id"] != iid
    error = refused("pc", "atp")
    assert error["code"] == "no_confirmation_id" and error["hresult"] == "0xC004F04D"


def test_a_mistyped_cid_names_the_group(home: Path, svc: BackgroundMak) -> None:
    prepare("pc", svc, svc.mint_key(limit=1))
    iid = ok("pc", "dti")["installation_id"]
    cid = phone(svc, iid)
    assert CID_SHAPE.match(cid)
    # one data digit of group 3 changed by one: its check digit fails
    position = 2 * 7 + 1
    typo = cid[:position] + str((int(cid[position]) + 1) % 10) + cid[position + 1 :]
    result = client("pc", "atp", typo)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: 0xC004F04D The Software Licensing Service "
        "determined that the Installation ID (IID) or the "
        "Confirmation ID (CID) is invalid."
    )
    assert "group 3 has a typing error" in result.stderr
    error = refused("pc", "atp", typo)
    assert error["code"] == "confirmation_id_invalid"
    assert (error["failed_groups"], error["mismatched_groups"]) == ([3], [3])
    state = ok("pc", "dli")
    assert state["license_status"]["value"] == 2 and state["last_hresult"] == "0xC004F04D"
    assert saved(home, "pc")["confirmation_ids"] == {}
    short = client("pc", "atp", cid[:-7])
    assert short.exit_code == 1 and "48 digits" in short.stderr
    assert client("pc", "atp", cid).exit_code == 0  # the right one still works


def test_a_cid_under_another_secret_matches_nowhere(home: Path, svc: BackgroundMak) -> None:
    prepare("pc", svc, svc.mint_key(limit=1))
    iid = ok("pc", "dti")["installation_id"]
    foreign = confirmation_id(iid, "another-lab-secret")
    error = refused("pc", "atp", foreign)
    assert error["failed_groups"] == [] and len(error["mismatched_groups"]) >= 7
    assert "another lab secret" in error["message"]
    # the service's own CID, checked under a wrong secret, fails the same way
    cid = phone(svc, iid)
    wrong = refused("pc", "atp", "--secret", "another-lab-secret", cid)
    assert wrong["failed_groups"] == [] and wrong["mismatched_groups"]
    assert ok("pc", "atp", cid)["permanent"]


def test_atp_takes_the_lab_secret_from_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BackgroundMak(secret="classroom-7") as other:
        prepare("pc", other, other.mint_key(limit=1))
        iid = ok("pc", "dti")["installation_id"]
        cid = phone(other, iid)
    assert refused("pc", "atp", cid)["mismatched_groups"]  # the default secret
    monkeypatch.setenv("KMSEMU_SECRET", "classroom-7")
    assert ok("pc", "atp", cid)["permanent"]


def test_hardware_change_after_phone_activation_then_online(home: Path, svc: BackgroundMak) -> None:
    key = svc.mint_key(limit=2)
    prepare("pc", svc, key)
    assert client("pc", "atp", phone(svc, ok("pc", "dti")["installation_id"])).exit_code == 0
    sets = [arg for name in COMPONENT_NAMES[5:] for arg in ("--set", f"{name}=other")]
    changed = client("pc", "hardware", *sets)
    assert significant(home, "pc") and changed.exit_code == 1
    assert ok("pc", "dli")["license_status"]["value"] == 3
    again = ok("pc", "ato")["mak"]
    assert again["counted"] and again["remaining"] == 0
