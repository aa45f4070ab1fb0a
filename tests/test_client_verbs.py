"""The client machine through the CLI, against a real host (the kms_host fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.keys.activation_ids import hardware_id, same_machine
from kmsemu.keys.product_key import setup_key
from kmsemu.testing import BackgroundHost

SERVER_KEY = str(setup_key(6))  # windows-server-2022-standard, threshold 5


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path))
    monkeypatch.delenv("KMSEMU_SECRET", raising=False)
    return tmp_path


def client(profile: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["client", "--profile", profile, *args])


def ready(profile: str, host: BackgroundHost, key: str = SERVER_KEY) -> None:
    assert client(profile, "ipk", key).exit_code == 0
    assert client(profile, "skms", host.host_port).exit_code == 0


def state(profile: str) -> dict[str, Any]:
    result = client(profile, "dli", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_setup_key_grace_threshold_then_activation(home: Path, kms_host: BackgroundHost) -> None:
    result = client("pc1", "ipk", SERVER_KEY.lower())
    assert result.stdout.strip() == f"Installed product key {SERVER_KEY} successfully."
    assert state("pc1")["license_status"] == {"value": 2, "name": "Initial grace period"}
    assert client("pc1", "skms", kms_host.host_port).exit_code == 0
    below = client("pc1", "ato")
    assert below.exit_code == 1
    assert below.stdout.startswith("Activating Windows Server 2022 Standard (")
    assert "Error: 0xC004F038" in below.stderr
    assert state("pc1")["license_status"]["value"] == 2  # still in grace
    kms_host.set_min_count(5)
    done = client("pc1", "ato")
    assert done.exit_code == 0 and done.stdout.rstrip().endswith("Product activated successfully.")
    summary = state("pc1")
    assert summary["license_status"]["name"] == "Licensed"
    assert summary["kms_host"] == kms_host.host_port and summary["renewal_interval"] == 10080


def test_dlv_lines_in_slmgr_order(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(5)
    ready("pc", kms_host)
    client("pc", "ato")
    lines = client("pc", "dlv").stdout.splitlines()
    fields = [line.split(":")[0].strip() for line in lines if ":" in line]
    expected = [
        "Name",
        "Description",
        "Activation ID",
        "Application ID",
        "Extended PID",
        "Product Key Channel",
        "Installation ID",
        "Partial Product Key",
        "License Status",
        "Volume activation expiration",
        "Remaining Windows rearm count",
        "Trusted time",
        "Client Machine ID (CMID)",
        "Registered KMS machine name",
        "KMS machine IP address",
        "KMS machine extended PID",
        "Activation interval",
        "Renewal interval",
    ]
    assert fields == expected
    assert "VOLUME_KMSCLIENT" in lines[1] and lines[-1].strip() == "KMS host caching is enabled"
    xpr = client("pc", "xpr").stdout.splitlines()
    assert xpr[0] == "Windows Server 2022 Standard:"
    assert xpr[1].strip().startswith("Volume activation will expire ")


def test_181_days_without_renewal_then_renew(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(5)
    ready("pc", kms_host)
    client("pc", "ato")
    client("pc", "clock", "+181d")
    lapsed = client("pc", "dli").stdout
    assert "Additional grace period (KMS license expired or hardware out of tolerance)" in lapsed
    assert client("pc", "ato").exit_code == 0  # renews
    assert state("pc")["license_status"]["name"] == "Licensed"


def test_tick_keeps_a_running_machine_licensed(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(5)
    ready("pc", kms_host)
    client("pc", "ato")
    client("pc", "clock", "+365d")
    ticked = client("pc", "tick", "--json")
    data = json.loads(ticked.stdout)
    assert data["attempts"] == 52 and data["failed_attempts"] == 0
    assert data["license_status"]["name"] == "Licensed"


def test_a_cut_off_machine_lapses_on_tick(home: Path, kms_host: BackgroundHost) -> None:
    import socket

    kms_host.set_min_count(5)
    ready("pc", kms_host)
    client("pc", "ato")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    client("pc", "skms", dead)
    client("pc", "clock", "+200d")
    data = json.loads(client("pc", "tick", "--json").stdout)
    assert data["attempts"] > 100 and data["failed_attempts"] == data["attempts"]
    assert data["license_status"]["value"] == 3
    assert data["last_hresult"] == "0xC004F074"


def test_host_clock_five_hours_off(home: Path, kms_host: BackgroundHost) -> None:
    ready("pc", kms_host)
    kms_host.set_clock_offset(5 * 3600)
    result = client("pc", "ato")
    assert result.exit_code == 1 and "Error: 0xC004F074" in result.stderr
    events = json.loads(client("pc", "events", "--json").stdout)["events"]
    assert events[-2]["id"] == 12288 and events[-2]["hresult"] == "0xC004F06C"
    assert events[-1]["id"] == 12289


def test_no_host_and_host_down(home: Path) -> None:
    assert client("pc", "ipk", SERVER_KEY).exit_code == 0
    result = client("pc", "ato")
    assert result.exit_code == 1 and "Error: 0x8007232A" in result.stderr
    client("pc", "skms", "127.0.0.1:1")
    events = json.loads(client("pc", "events", "--json").stdout)["events"]
    assert events[-1]["hresult"] == "0x8007232A"  # no DNS server to ask
    client("pc", "ato")
    events = json.loads(client("pc", "events", "--json").stdout)["events"]
    assert events[-1]["hresult"] == "0x800706BA" and events[-1]["server"] == "127.0.0.1:1"


def test_cloned_image_counts_once(home: Path, kms_host: BackgroundHost) -> None:
    ready("master", kms_host)
    shutil.copy(home / "clients" / "master.json", home / "clients" / "clone.json")
    assert state("clone")["cmid"] == state("master")["cmid"]
    client("master", "ato")
    client("clone", "ato")
    counts = [
        e["current_count"]
        for e in json.loads(client("clone", "events", "--json").stdout)["events"]
        if e["id"] == 12289
    ]
    assert counts[-1] == 1  # two machines, one CMID: the host counts one


def test_rearm_new_cmid_and_limit(home: Path) -> None:
    client("pc", "ipk", SERVER_KEY)
    first = state("pc")["cmid"]
    for left in (2, 1, 0):
        assert client("pc", "rearm").exit_code == 0
        assert state("pc")["rearms_left"] == left
    assert state("pc")["cmid"] != first
    result = client("pc", "rearm")
    assert result.exit_code == 1 and "0xC004D307" in result.stderr


def test_bad_key_and_damaged_profile(home: Path) -> None:
    result = client("pc", "ipk", SERVER_KEY[:-1] + ("B" if SERVER_KEY[-1] != "B" else "C"))
    assert result.exit_code == 1 and "0xC004F050" in result.stderr
    assert SERVER_KEY in result.stderr  # the typo help names the intended key
    (home / "clients" / "pc.json").write_text("{not json")
    damaged = client("pc", "dli")
    assert damaged.exit_code == 1 and "damaged" in damaged.stderr


def test_profile_files_are_replaced_whole(home: Path) -> None:
    client("pc", "ipk", SERVER_KEY)
    files = sorted(p.name for p in (home / "clients").iterdir())
    assert files == ["pc.json"]  # no temporary file left behind
    json.loads((home / "clients" / "pc.json").read_text())


def test_hardware_change_two_free_four_out_of_tolerance(
    home: Path, kms_host: BackgroundHost
) -> None:
    kms_host.set_min_count(5)
    ready("pc", kms_host)
    client("pc", "ato")
    minor = client("pc", "hardware", "--set", "disk=new-ssd", "--set", "2=other-board")
    assert minor.exit_code == 0 and "disk:new-ssd" in minor.stdout
    assert state("pc")["license_status"]["name"] == "Licensed"
    major = client(
        "pc",
        "hardware",
        "--set",
        "cpu=x",
        "--set",
        "nic=y",
        "--set",
        "memory=z",
        "--set",
        "display=w",
    )
    saved = json.loads((home / "clients" / "pc.json").read_text())
    significant = not same_machine(
        hardware_id(saved["installs"][0]["activation_hardware"]), hardware_id(saved["hardware"])
    )
    assert significant  # 6 of 10 changed (a changed value keeps its byte 1 time in 256)
    assert major.exit_code == 1 and "0xC004F00F" in major.stderr
    assert state("pc")["license_status"]["value"] == 3
    # slmgr's order (behaviour.md): License Status, Time remaining, rearm count; no Reason line
    shown = [line.split(":")[0] for line in client("pc", "dli").stdout.splitlines()]
    status_at = shown.index("License Status")
    assert shown[status_at : status_at + 3] == [
        "License Status",
        "Time remaining",
        "Remaining Windows rearm count",
    ]
    assert "Reason" not in shown
    assert client("pc", "ato").exit_code == 0  # reactivating clears it
    assert client("pc", "hardware", "--set", "11=x").exit_code == 2


def test_vm_flag_reaches_the_host(home: Path, kms_host: BackgroundHost) -> None:
    ready("pc", kms_host)
    assert json.loads(client("pc", "vm", "on", "--json").stdout)["vm"] is True
    client("pc", "ato")
    kms_host.flush()
    assert "vm=1" in [line for line in kms_host.log_lines if " activation " in line][-1]


@pytest.mark.parametrize(
    "verb, line",
    [
        ("cpky", "Product key from registry cleared successfully."),
        ("skhc", "KMS host caching is enabled"),
        ("ckhc", "KMS host caching is disabled"),
        ("ckms", "Key Management Service machine name cleared successfully."),
        ("ckms-domain", "Key Management Service lookup domain cleared."),
    ],
)
def test_setting_verbs_say_what_slmgr_says(home: Path, verb: str, line: str) -> None:
    result = client("pc", verb)
    assert result.exit_code == 0 and result.stdout.strip() == line
    assert json.loads(client("pc", verb, "--json").stdout)["profile"] == "pc"
