"""A client machine holds products, as a PC does: Windows and Office side by side, each with
its own key, licence, rearms and events, Windows and Office each with its own CMID; verbs
act on the product they name; profiles written before products (version 1) still load.

The version-1 files under ``tests/data/profiles-v1`` were written by kmsemu at 64c50b9
(``kmsemu client ipk/skms/ato/rearm/dns/vm`` against a real host), before products existed.
Expectations are written out here, never read from the code under test.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.client.machine import Machine
from kmsemu.client.profile import Profile, ProfileStore
from kmsemu.klp.messages import LicenseStatus
from kmsemu.testing import BackgroundHost

V1 = Path(__file__).parent / "data" / "profiles-v1"
WINDOWS_KEY = "BBM3H-RG4H4-4JFDJ-MJ382-JB8QD"  # Windows 11 Enterprise's setup key
WINDOWS_PRO_KEY = "BBM3H-PMQ9T-88T8G-HGPCF-GYYBG"  # Windows 11 Pro's
OFFICE_KEY = "BBM3J-HYH6Y-JQB4F-XKC7H-4THHY"  # Office LTSC Professional Plus 2024's
OFFICE_2021_KEY = "BBM3J-F47WP-QDQXC-TGXWM-FTDYV"
WINDOWS_ID = "e00a2fc7-b003-57c0-a5b6-3331a3b90984"
OFFICE_ID = "cb10b4d0-c71b-545d-a00c-6ba420b32cdc"
WINDOWS_APP = "55c92734-d682-4d71-983e-d6ec3f16059f"
OFFICE_APP = "0ff1ce15-a989-479d-af46-f275c6370663"


def client(*args: str) -> Result:
    return CliRunner().invoke(main, ["client", "--profile", "pc", *args])


def ok(*args: str) -> dict[str, object]:
    result = client(*args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def slmgr(*args: str) -> Result:
    return CliRunner().invoke(main, ["slmgr", "--profile", "pc", *args])


def _saved(home: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((home / "clients" / "pc.json").read_text())
    return data


# -- profiles written before products ------------------------------------------------------


def _load_v1(name: str) -> Profile:
    return ProfileStore(V1).load(name)


def test_a_version_1_windows_profile_becomes_its_windows_install() -> None:
    profile = _load_v1("pc1")
    assert profile.cmids == {"windows": "df052bda-6140-42d0-bfc2-d0dad0fdf9c8"}
    assert profile.previous_cmids == {"windows": "1e93a0fc-8b67-4411-b3ed-c5bb6870c881"}
    assert profile.kms_host == "127.0.0.1:17688"
    assert profile.dns_servers == ["127.0.0.1:5353"] and profile.dns_suffixes == ["lab.test"]
    [install] = profile.installs
    assert install.application == "windows"
    assert install.product == "windows-11-enterprise"
    assert install.product_key == "BBM3HRG4H44JFDJMJ382JB8QD"
    assert install.licence.status is LicenseStatus.LICENSED
    assert install.licence.rearms_left == 2  # rearmed once
    assert [e["id"] for e in install.events] == [12288, 12289, 12288, 12289]
    assert install.last_kms["host"] == "127.0.0.1:17688"
    assert install.activation_hardware == profile.hardware


def test_a_version_1_office_profile_keeps_its_cmid_as_office_s() -> None:
    profile = _load_v1("office")
    assert profile.cmids == {"office": "ba6bb304-01ff-43bb-8abd-9bbe1465fd21"}
    [install] = profile.installs
    assert install.application == "office" and install.product == "office-ltsc-2024-proplus"
    assert install.licence.rearms_left == 6  # 5, +1 after its KMS activation
    assert install.licence.policy.rearms == 5


def test_version_1_profiles_without_a_key_or_with_a_mak_load() -> None:
    bare = _load_v1("bare")
    assert bare.vm is True and bare.cmids == {"windows": "ddda58dc-a76b-4f7b-b536-44011f05ad5b"}
    assert [(i.application, i.product, i.product_key) for i in bare.installs] == [
        ("windows", None, None)
    ]
    mak = _load_v1("mak")
    [install] = mak.installs
    assert install.product == "windows-11-pro"
    assert install.licence.kms_client is False
    assert install.licence.status is LicenseStatus.INITIAL_GRACE


@pytest.mark.parametrize("name", ["pc1", "office", "bare", "mak"])
def test_a_migrated_profile_is_saved_as_version_2_and_reads_back_the_same(
    tmp_path: Path, name: str
) -> None:
    profile = _load_v1(name)
    store = ProfileStore(tmp_path)
    store.save(profile)
    written = json.loads((tmp_path / f"{name}.json").read_text())
    assert written["version"] == 2
    assert "licence" not in written and "cmid" not in written
    assert store.load(name).to_json() == profile.to_json()


def test_the_cli_reads_a_version_1_profile_unchanged(home: Path) -> None:
    (home / "clients").mkdir(parents=True)
    shutil.copy(V1 / "pc1.json", home / "clients" / "pc.json")
    before = (home / "clients" / "pc.json").read_bytes()
    shown = ok("dli")
    assert shown["cmid"] == "df052bda-6140-42d0-bfc2-d0dad0fdf9c8"
    assert shown["product"] == "windows-11-enterprise"
    assert shown["partial_product_key"] == "JB8QD"
    assert shown["kms_host"] == "127.0.0.1:17688"
    assert (home / "clients" / "pc.json").read_bytes() == before  # reading writes nothing
    office = home / "clients" / "pc.json"
    shutil.copy(V1 / "office.json", office)
    lines = client("dli").stdout.splitlines()
    assert lines[:2] == [
        "Name: Office LTSC Professional Plus 2024, VOLUME_KMSCLIENT channel",
        "Description: Office 24, VOLUME_KMSCLIENT channel",
    ]


# -- Windows and Office on one machine ------------------------------------------------------


def _machine() -> Machine:
    cmids = iter(f"{n:08d}-0000-4000-8000-000000000000" for n in range(1, 100))
    return Machine(
        Profile.new("pc", random.Random(7)),
        default_catalog(),
        real_now=lambda: 1_800_000_000.0,
        secret="kmsemu-lab",
        new_cmid=lambda: next(cmids),
        rng=random.Random(1),
    )


def test_windows_and_office_keep_separate_licences_cmids_and_rearms() -> None:
    m = _machine()
    windows_cmid = m.profile.cmids["windows"]
    assert m.install_key(WINDOWS_KEY).hresult == 0
    assert m.install_key(OFFICE_KEY).hresult == 0
    assert m.profile.cmids == {
        "windows": windows_cmid,
        "office": "00000001-0000-4000-8000-000000000000",
    }
    assert [(i.application, i.product) for i in m.profile.installs] == [
        ("windows", "windows-11-enterprise"),
        ("office", "office-ltsc-2024-proplus"),
    ]
    assert m.select("windows-11-enterprise") is m.profile.installs[0]
    assert m.current().rearms_left == 3 and m.cmid == windows_cmid
    m.select(OFFICE_ID)
    assert m.current().rearms_left == 5  # Office's own, not Windows' 3
    assert m.rearm().hresult == 0
    assert m.current().rearms_left == 4
    assert m.profile.cmids["office"] == "00000002-0000-4000-8000-000000000000"
    assert m.profile.previous_cmids == {"office": "00000001-0000-4000-8000-000000000000"}
    assert m.profile.cmids["windows"] == windows_cmid  # Windows untouched
    m.select(None)  # the default: the Windows licence
    assert m.product is not None and m.product.key == "windows-11-enterprise"
    assert m.current().rearms_left == 3


def test_a_new_windows_key_replaces_the_edition_and_keeps_its_rearms() -> None:
    m = _machine()
    assert m.install_key(WINDOWS_KEY).hresult == 0
    assert m.rearm().hresult == 0
    assert m.install_key(OFFICE_KEY).hresult == 0
    assert m.install_key(WINDOWS_PRO_KEY).hresult == 0
    assert [(i.application, i.product) for i in m.profile.installs] == [
        ("windows", "windows-11-pro"),
        ("office", "office-ltsc-2024-proplus"),
    ]
    m.select("Windows 11 Pro")
    assert m.current().rearms_left == 2


def test_two_office_products_are_two_licences_with_one_office_cmid() -> None:
    m = _machine()
    assert m.install_key(OFFICE_KEY).hresult == 0
    assert m.install_key(OFFICE_2021_KEY).hresult == 0
    assert [i.product for i in m.profile.installs] == [
        "office-ltsc-2024-proplus",
        "office-ltsc-2021-proplus",
    ]
    assert set(m.profile.cmids) == {"windows", "office"}
    assert [i.product for i in m.installs("office")] == [
        "office-ltsc-2024-proplus",
        "office-ltsc-2021-proplus",
    ]


def test_uninstalling_office_leaves_windows() -> None:
    m = _machine()
    assert m.install_key(WINDOWS_KEY).hresult == 0
    assert m.install_key(OFFICE_KEY).hresult == 0
    assert m.uninstall_key().hresult == 0  # ipk selected Office
    assert [i.product for i in m.installs()] == ["windows-11-enterprise"]
    m.select(None)
    assert m.current().status is LicenseStatus.INITIAL_GRACE


def test_naming_a_product_the_machine_does_not_have_is_product_not_found(home: Path) -> None:
    assert client("ipk", WINDOWS_KEY).exit_code == 0
    refused = CliRunner().invoke(
        main, ["client", "--profile", "pc", "--product", OFFICE_ID, "ato", "--json"]
    )
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] == "product_not_found"


def test_dlv_all_lists_every_licence_windows_first(home: Path) -> None:
    assert client("ipk", OFFICE_KEY).exit_code == 0
    assert client("ipk", WINDOWS_KEY).exit_code == 0
    for shown in (client("dlv", "all"), slmgr("/dlv", "all"), slmgr("-DLV", "ALL")):
        assert shown.exit_code == 0, shown.output
        lines = shown.stdout.splitlines()
        names = [line for line in lines if line.startswith("Name: ")]
        assert names == [
            "Name: Windows 11 Enterprise, VOLUME_KMSCLIENT channel",
            "Name: Office LTSC Professional Plus 2024, VOLUME_KMSCLIENT channel",
        ]
        assert [line for line in lines if line.startswith("Activation ID: ")] == [
            f"Activation ID: {WINDOWS_ID}",
            f"Activation ID: {OFFICE_ID}",
        ]
        assert [line for line in lines if line.startswith("Application ID: ")] == [
            f"Application ID: {WINDOWS_APP}",
            f"Application ID: {OFFICE_APP}",
        ]
        assert [line for line in lines if line.startswith("Remaining ")] == [
            "Remaining Windows rearm count: 3",
            "Remaining Office rearm count: 5",
        ]
        office_start = lines.index(names[1])
        assert lines[office_start - 1] == ""  # one blank line between licences
    dli = slmgr("/dli", "all").stdout.splitlines()
    assert [line for line in dli if line.startswith("Partial Product Key: ")] == [
        "Partial Product Key: JB8QD",
        "Partial Product Key: 4THHY",
    ]
    only_office = slmgr("/dlv", OFFICE_ID).stdout.splitlines()
    assert only_office[0] == "Name: Office LTSC Professional Plus 2024, VOLUME_KMSCLIENT channel"
    assert not any(line.startswith("Name: Windows") for line in only_office)
    default = slmgr("/dlv").stdout.splitlines()
    assert default[0] == "Name: Windows 11 Enterprise, VOLUME_KMSCLIENT channel"
    summary = ok("dlv", "all")
    assert [p["product"] for p in summary["products"]] == [  # type: ignore[attr-defined]
        "windows-11-enterprise",
        "office-ltsc-2024-proplus",
    ]


def test_one_pc_counted_twice_by_the_host_once_per_application(home: Path, tmp_path: Path) -> None:
    """The trainer's picture: one PC with Windows 11 Enterprise and Office LTSC 2024; the
    host keeps a Windows count and an Office count, each with the PC's own CMID for it."""
    with BackgroundHost(tmp_path / "host") as host:
        assert client("ipk", WINDOWS_KEY).exit_code == 0
        assert client("ipk", OFFICE_KEY).exit_code == 0
        assert slmgr("/skms", host.host_port).exit_code == 0
        windows = slmgr("/ato")
        office = slmgr("/ato", OFFICE_ID)
    requests = CliRunner().invoke(  # the host has stopped: its rows are all written
        main, ["host", "requests", "--state", str(tmp_path / "host"), "--json"]
    )
    assert windows.stdout.splitlines()[0] == f"Activating Windows 11 Enterprise ({WINDOWS_ID}) ..."
    assert office.stdout.splitlines()[0] == (
        f"Activating Office LTSC Professional Plus 2024 ({OFFICE_ID}) ..."
    )
    cmids = _saved(home)["cmids"]
    assert isinstance(cmids, dict) and cmids.keys() == {"windows", "office"}
    assert cmids["windows"] != cmids["office"]
    assert requests.exit_code == 0, requests.output
    records = json.loads(requests.stdout)["requests"]
    assert [(r["activation_id"], r["client_machine_id"], r["current_count"]) for r in records] == [
        (WINDOWS_ID, cmids["windows"], 1),
        (OFFICE_ID, cmids["office"], 1),
    ]


def test_a_product_s_own_kms_host_and_the_machine_s(home: Path) -> None:
    assert client("ipk", WINDOWS_KEY).exit_code == 0
    assert client("ipk", OFFICE_KEY).exit_code == 0
    assert slmgr("/skms", "kms1.lab.test:1700").exit_code == 0
    own = slmgr("/skms", "kms2.lab.test", OFFICE_ID)
    assert own.stdout.splitlines() == [
        "Key Management Service machine name set to kms2.lab.test:1688 successfully."
    ]
    summary = ok("dli", "all")
    products = summary["products"]
    assert isinstance(products, list)
    assert [p["kms_host"] for p in products] == ["kms1.lab.test:1700", "kms2.lab.test:1688"]
    assert slmgr("/ckms", OFFICE_ID).exit_code == 0
    products = ok("dli", "all")["products"]
    assert isinstance(products, list)
    assert [p["kms_host"] for p in products] == ["kms1.lab.test:1700", "kms1.lab.test:1700"]


def test_tick_renews_every_product_and_events_name_them(home: Path, tmp_path: Path) -> None:
    with BackgroundHost(tmp_path / "host") as host:
        host.set_min_count(25)
        assert client("ipk", WINDOWS_KEY).exit_code == 0
        assert client("ipk", OFFICE_KEY).exit_code == 0
        assert client("skms", host.host_port).exit_code == 0
        assert client("clock", "+3h").exit_code == 0  # both first attempts fell due
        ticked = ok("tick")
    assert ticked["attempts"] == 2 and ticked["failed_attempts"] == 0
    products = ticked["products"]
    assert isinstance(products, list)
    assert [p["license_status"]["name"] for p in products] == ["Licensed", "Licensed"]
    events = ok("events")["events"]
    assert isinstance(events, list)
    assert sorted((e["id"], e["product"]) for e in events) == [
        (12288, "office-ltsc-2024-proplus"),
        (12288, "windows-11-enterprise"),
        (12289, "office-ltsc-2024-proplus"),
        (12289, "windows-11-enterprise"),
    ]
    only = CliRunner().invoke(
        main, ["client", "--profile", "pc", "--product", OFFICE_ID, "events", "--json"]
    )
    assert {e["product"] for e in json.loads(only.stdout)["events"]} == {"office-ltsc-2024-proplus"}


def test_a_hardware_change_puts_every_activated_product_out_of_tolerance(
    home: Path, tmp_path: Path
) -> None:
    with BackgroundHost(tmp_path / "host") as host:
        host.set_min_count(25)
        assert client("ipk", WINDOWS_KEY).exit_code == 0
        assert client("ipk", OFFICE_KEY).exit_code == 0
        assert client("skms", host.host_port).exit_code == 0
        assert slmgr("/ato").exit_code == 0
        assert slmgr("/ato", OFFICE_ID).exit_code == 0
    changed = client(
        "hardware",
        "--set",
        "cpu=x",
        "--set",
        "nic=y",
        "--set",
        "memory=z",
        "--set",
        "display=w",
        "--set",
        "bios=v",
        "--set",
        "dock=u",  # six: a changed byte can match by chance
    )
    assert changed.exit_code == 1
    assert "0xC004F00F" in changed.stderr
    products = ok("dli", "all")["products"]
    assert isinstance(products, list)
    assert [p["license_status"]["value"] for p in products] == [3, 3]
