"""``kmsemu ospp`` and the ``ospp`` console script: ospp.vbs's own syntax on the Office
products of a machine (never Windows), ospp's lines on stdout (errors too), the usage
errors of a call ospp would not take; and the wording module, pure, on a fixed clock.

Expectations are written out here, never read from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.cli.ospp import Call, OsppUsage, translate
from kmsemu.client import ospp
from kmsemu.client.machine import Machine
from kmsemu.client.profile import Install, Profile, new_hardware
from kmsemu.errors import ActivationError, LocalError
from kmsemu.keys.activation_ids import confirmation_id
from kmsemu.keys.product_key import KeyType, mint
from kmsemu.klp.messages import LicenseStatus
from kmsemu.testing import BackgroundHost

WINDOWS_KEY = "BBM3H-RG4H4-4JFDJ-MJ382-JB8QD"  # Windows 11 Enterprise's setup key
OFFICE_KEY = "BBM3J-HYH6Y-JQB4F-XKC7H-4THHY"  # Office LTSC Professional Plus 2024's
OFFICE_2021_KEY = "BBM3J-F47WP-QDQXC-TGXWM-FTDYV"  # Office LTSC Professional Plus 2021's
OFFICE_MAK = "BB2TR-XBY6H-HMV2T-KBT8B-R4793"  # a lab MAK of Office LTSC 2024 (mint(MAK, 11, 1))
OFFICE_ID = "cb10b4d0-c71b-545d-a00c-6ba420b32cdc"
OFFICE_2021_ID = "c94f51d1-6a7f-5086-9b6b-49dddc3cf555"
OFFICE_NAME = "LICENSE NAME: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition"
OFFICE_DESCRIPTION = "LICENSE DESCRIPTION: Office 24, VOLUME_KMSCLIENT channel"
PROCESSING = "---Processing--------------------------"
SEPARATOR = "---------------------------------------"
EXITING = "---Exiting-----------------------------"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["ospp", "--profile", "pc", *args])


def slmgr(*args: str) -> Result:
    return CliRunner().invoke(main, ["slmgr", "--profile", "pc", *args])


def json_of(*args: str) -> dict[str, Any]:
    result = run("--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def framed(*body: str) -> str:
    return "\n".join([PROCESSING, SEPARATOR, *body, SEPARATOR, EXITING]) + "\n"


def _saved(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "clients" / "pc.json").read_text())
    return data


@pytest.fixture
def pc(home: Path) -> Path:
    """Windows 11 Enterprise and Office LTSC Professional Plus 2024, setup keys."""
    assert slmgr("/ipk", WINDOWS_KEY).exit_code == 0
    assert run(f"/inpkey:{OFFICE_KEY}").exit_code == 0
    return home


# -- the translation, pure -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "call"),
    [
        (["/dstatus"], Call("dstatus")),
        (["-DSTATUS"], Call("dstatus")),
        (["/dstatusall"], Call("dstatusall")),
        (["/Act"], Call("act")),
        ([f"/inpkey:{OFFICE_KEY}"], Call("inpkey", OFFICE_KEY)),
        ([f"-INPKEY:{OFFICE_KEY}"], Call("inpkey", OFFICE_KEY)),
        (["/unpkey:4thhy"], Call("unpkey", "4THHY")),
        (["/sethst:kms1.lab.test"], Call("sethst", "kms1.lab.test")),
        (["/sethst:[::1]:1700"], Call("sethst", "[::1]:1700")),
        (["/setprt:1700"], Call("setprt", "1700")),
        (["/setprt:65535"], Call("setprt", "65535")),
        (["/setprt:1"], Call("setprt", "1")),
        (["/remhst"], Call("remhst")),
        (["/dhistorykms"], Call("dhistorykms")),
        (["/dcmid"], Call("dcmid")),
        (["/dinstid"], Call("dinstid")),
        (["/actcid:123456-123456"], Call("actcid", "123456-123456")),
        (["/REARM"], Call("rearm")),
    ],
)
def test_ospp_options(args: list[str], call: Call) -> None:
    assert translate(args) == call


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no option given: ospp takes one, e.g. /dstatus or /act"),
        (["/act", "/dstatus"], "ospp takes one option per call, not 2: /act /dstatus"),
        (["dstatus"], "unknown option 'dstatus'; kmsemu ospp takes /dstatus, /dstatusall, "
         "/act, /inpkey, /unpkey, /sethst, /setprt, /remhst, /dhistorykms, /dcmid, /dinstid, "
         "/actcid, /rearm"),
        (["/dlv"], "unknown option '/dlv'; kmsemu ospp takes /dstatus, /dstatusall, "
         "/act, /inpkey, /unpkey, /sethst, /setprt, /remhst, /dhistorykms, /dcmid, /dinstid, "
         "/actcid, /rearm"),
        (["/act:now"], "/act takes no value"),
        (["/dstatus:"], "/dstatus takes no value"),
        (["/inpkey"], "/inpkey needs a product key after a colon: /inpkey:VALUE"),
        (["/inpkey:"], "/inpkey needs a product key after a colon: /inpkey:VALUE"),
        (["/unpkey"], "/unpkey needs the last 5 characters of a product key after a colon: "
         "/unpkey:VALUE"),
        (["/unpkey:4THH"], "/unpkey:4THH: give the last 5 characters of the product key"),
        (["/unpkey:X4THHY"], "/unpkey:X4THHY: give the last 5 characters of the product key"),
        (["/sethst"], "/sethst needs a KMS host name after a colon: /sethst:VALUE"),
        (["/sethst:[::1"], "/sethst:[::1: '[::1': missing ']'"),
        (["/setprt"], "/setprt needs a port after a colon: /setprt:VALUE"),
        (["/setprt:0"], "/setprt:0: the port is a number from 1 to 65535"),
        (["/setprt:65536"], "/setprt:65536: the port is a number from 1 to 65535"),
        (["/setprt:x"], "/setprt:x: the port is a number from 1 to 65535"),
        (["/actcid"], "/actcid needs a confirmation ID after a colon: /actcid:VALUE"),
    ],
)  # fmt: skip
def test_calls_ospp_would_refuse(args: list[str], message: str) -> None:
    with pytest.raises(OsppUsage) as refused:
        translate(args)
    assert str(refused.value) == message


# -- through the command line --------------------------------------------------------------


def test_inpkey_installs_office_beside_windows(home: Path) -> None:
    assert slmgr("/ipk", WINDOWS_KEY).exit_code == 0
    before = run("/dstatus")
    assert (before.exit_code, before.stdout) == (0, framed("<No installed product keys detected>"))
    installed = run(f"/inpkey:{OFFICE_KEY}")
    assert (installed.exit_code, installed.stdout, installed.stderr) == (
        0,
        framed("<Product key installation successful>"),
        "",
    )
    saved = _saved(home)
    assert [(i["application"], i["product"]) for i in saved["installs"]] == [
        ("windows", "windows-11-enterprise"),
        ("office", "office-ltsc-2024-proplus"),
    ]


def test_dstatus_shows_the_office_licence_only(pc: Path) -> None:
    shown = run("/dstatus")
    assert shown.exit_code == 0 and shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert lines[:8] == [
        PROCESSING,
        SEPARATOR,
        "PRODUCT ID: 33186-62420-41372-AA839",
        f"SKU ID: {OFFICE_ID}",
        OFFICE_NAME,
        OFFICE_DESCRIPTION,
        "BETA EXPIRATION: 01/01/1601",
        "LICENSE STATUS:  ---OOB_GRACE---",
    ]
    assert re.fullmatch(r"REMAINING GRACE: 2[45] days  \(3[56]\d{3} minute\(s\) before expiring\)",
                        lines[8])  # fmt: skip
    assert lines[9:] == [
        "Last 5 characters of installed product key: 4THHY",
        "Activation Type Configuration: ALL",
        "\tDNS auto-discovery: KMS name not available",
        "\tActivation Interval: 120 minutes",
        "\tRenewal Interval: 10080 minutes",
        "\tKMS host caching: Enabled",
        SEPARATOR,
        SEPARATOR,
        EXITING,
    ]
    assert not any("Windows" in line or "JB8QD" in line for line in lines)


def test_act_against_a_real_host_then_dstatus_shows_licensed(pc: Path, tmp_path: Path) -> None:
    with BackgroundHost(tmp_path / "host") as host:
        host.set_min_count(25)
        assert run(f"/sethst:{host.host_port}").stdout == framed("Successfully applied setting.")
        activated = run("/act")
    assert (activated.exit_code, activated.stderr) == (0, "")
    assert activated.stdout == framed(
        "Installed product key detected - attempting to activate the following product:",
        f"SKU ID: {OFFICE_ID}",
        OFFICE_NAME,
        OFFICE_DESCRIPTION,
        "Last 5 characters of installed product key: 4THHY",
        "<Product activation successful>",
        SEPARATOR,
    )
    lines = run("/dstatus").stdout.splitlines()
    assert "LICENSE STATUS:  ---LICENSED---" in lines
    grace = next(line for line in lines if line.startswith("REMAINING GRACE: "))
    assert re.fullmatch(r"REMAINING GRACE: 179 days  \(2591\d\d minute\(s\) before expiring\)",
                        grace)  # fmt: skip
    assert f"\tKMS machine registry override defined: {host.host_port}" in lines
    assert not any(line.startswith("ERROR CODE: ") for line in lines)
    history = run("/dhistorykms").stdout.splitlines()
    time = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    assert history[:2] == [PROCESSING, SEPARATOR] and history[-2:] == [SEPARATOR, EXITING]
    assert re.fullmatch(
        rf"{time} Event 12288 Office LTSC Professional Plus 2024: KMS request to "
        rf"{re.escape(host.host_port)}, 0x00000000",
        history[2],
    )
    assert re.fullmatch(
        rf"{time} Event 12289 Office LTSC Professional Plus 2024: KMS response 0x00000000, "
        r"current count 25, activated",
        history[3],
    )
    assert len(history) == 6
    windows = slmgr("/dlv").stdout.splitlines()  # ospp never touched Windows
    assert "License Status: Initial grace period" in windows


def test_a_failed_act_prints_ospp_s_error_on_stdout(pc: Path) -> None:
    assert run("/sethst:127.0.0.1:9").exit_code == 0  # nothing listens on the discard port
    failed = run("/act")
    assert failed.exit_code == 1 and failed.stderr == ""
    lines = failed.stdout.splitlines()
    assert lines[2] == (
        "Installed product key detected - attempting to activate the following product:"
    )
    assert lines[7] == "ERROR CODE: 0xC004F074"
    assert lines[8].startswith(
        "ERROR DESCRIPTION: No Key Management Service (KMS) could be contacted. ("
    )
    assert lines[-3:] == [SEPARATOR, SEPARATOR, EXITING]
    shown = run("/dstatus").stdout.splitlines()  # the licence remembers the failure
    assert shown[8:10] == [
        "ERROR CODE: 0xC004F074",
        "ERROR DESCRIPTION: No Key Management Service (KMS) could be contacted.",
    ]
    as_json = run("--json", "/act")
    assert as_json.exit_code == 1
    error = json.loads(as_json.stdout)
    assert error["error"]["hresult"] == "0xC004F074"
    assert error["results"] == [{"activation_id": OFFICE_ID, "hresult": "0xC004F074"}]
    assert [p["product"] for p in error["products"]] == ["office-ltsc-2024-proplus"]


def test_inpkey_refuses_a_windows_key(home: Path) -> None:
    refused = run(f"/inpkey:{WINDOWS_KEY}")
    assert refused.exit_code == 1 and refused.stderr == ""
    assert refused.stdout == framed(
        "ERROR CODE: 0xC004F050",
        "ERROR DESCRIPTION: The Software Licensing Service reported that the product key is "
        "invalid. (Windows 11 Enterprise is not an Office product; install it with slmgr /ipk)",
        "Check the key with 'kmsemu keys check'.",
    )
    assert _saved(home)["installs"] == []  # nothing was installed
    typo = run("/inpkey:BBM3J-HYH6Y-JQB4F-XKC7H-4THHX")
    assert typo.exit_code == 1
    assert typo.stdout.splitlines()[2] == "ERROR CODE: 0xC004F050"


def test_unpkey_removes_the_office_key_and_dstatusall_still_shows_it(pc: Path) -> None:
    wrong = run("/unpkey:JB8QD")  # the Windows key's: ospp does not touch Windows
    assert wrong.exit_code == 1
    assert wrong.stdout == framed(
        "ERROR DESCRIPTION: Product key not found. (no Office product key ends in JB8QD)",
        "Install one with 'kmsemu client ipk KEY' ('kmsemu keys setup-keys' lists the KMS "
        "client setup keys).",
    )
    removed = run("/unpkey:4thhy")
    assert (removed.exit_code, removed.stdout) == (
        0,
        framed(
            "Uninstalling product key for: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition",
            "<Product key uninstall successful>",
        ),
    )
    assert run("/dstatus").stdout == framed("<No installed product keys detected>")
    assert run("/dstatusall").stdout == framed(
        f"SKU ID: {OFFICE_ID}",
        OFFICE_NAME,
        OFFICE_DESCRIPTION,
        "BETA EXPIRATION: 01/01/1601",
        "LICENSE STATUS:  ---UNLICENSED---",
        SEPARATOR,
    )
    assert "License Status: Initial grace period" in slmgr("/dlv").stdout.splitlines()


def test_sethst_setprt_remhst_set_office_s_own_host(pc: Path) -> None:
    def hosts() -> list[str | None]:
        return [p["kms_host"] for p in json_of("/dstatus")["products"]]

    assert slmgr("/skms", "kms0.lab.test:1690").exit_code == 0  # the machine's (Windows')
    assert run("/sethst:kms1.lab.test").stdout == framed("Successfully applied setting.")
    assert hosts() == ["kms1.lab.test:1688"]
    assert run("/setprt:1700").stdout == framed("Successfully applied setting.")
    assert hosts() == ["kms1.lab.test:1700"]
    assert run("/sethst:kms2.lab.test").exit_code == 0  # the port stays
    assert hosts() == ["kms2.lab.test:1700"]
    assert run("/sethst:[::1]:1800").exit_code == 0
    assert hosts() == ["[::1]:1800"]
    assert run("/remhst").stdout == framed("Successfully applied setting.")
    assert hosts() == ["kms0.lab.test:1690"]  # back to the machine's
    assert run("/setprt:1701").exit_code == 0  # the machine's host, now Office's own
    assert hosts() == ["kms0.lab.test:1701"]
    windows = json.loads(slmgr("--json", "/dli").stdout)
    assert windows["kms_host"] == "kms0.lab.test:1690"
    lines = run("/dstatus").stdout.splitlines()
    assert "\tKMS machine registry override defined: kms0.lab.test:1701" in lines


def test_setprt_without_a_host_is_refused(pc: Path) -> None:
    refused = run("/setprt:1700")
    assert refused.exit_code == 1
    assert refused.stdout.splitlines()[2] == (
        "ERROR DESCRIPTION: The configuration is invalid. (no KMS host is set for Office: "
        "set one first with /sethst:HOST)"
    )


def test_settings_without_office_are_refused(home: Path) -> None:
    assert slmgr("/ipk", WINDOWS_KEY).exit_code == 0
    for args in ("/sethst:kms1", "/setprt:1700", "/remhst", "/rearm", "/dinstid", "/dcmid"):
        refused = run("--json", args)
        assert refused.exit_code == 1, args
        assert json.loads(refused.stdout)["error"]["code"] == "product_key_not_found"
    act = run("/act")
    assert (act.exit_code, act.stdout) == (1, framed("<No installed product keys detected>"))
    assert run("/dhistorykms").stdout == framed("<No KMS activation history found>")


def test_dcmid_shows_office_s_cmid(pc: Path) -> None:
    cmids = _saved(pc)["cmids"]
    shown = run("/dcmid")
    assert shown.stdout == framed(f"OfficeClientMachineID (CMID): {cmids['office']}")
    assert cmids["office"] != cmids["windows"]
    assert json_of("/dcmid")["cmid"] == cmids["office"]


def test_rearm_rearms_every_office_licence_with_one_new_cmid(pc: Path) -> None:
    assert run(f"/inpkey:{OFFICE_2021_KEY}").exit_code == 0
    before = _saved(pc)
    rearmed = run("/rearm")
    assert (rearmed.exit_code, rearmed.stdout) == (0, framed("<Office rearm successful>"))
    after = _saved(pc)
    assert after["cmids"]["office"] != before["cmids"]["office"]
    assert after["previous_cmids"]["office"] == before["cmids"]["office"]
    assert after["cmids"]["windows"] == before["cmids"]["windows"]
    assert [i["licence"]["rearms_left"] for i in after["installs"]] == [3, 4, 4]
    for _ in range(4):
        assert run("/rearm").exit_code == 0
    spent = run("/rearm")
    assert spent.exit_code == 1
    assert spent.stdout == framed(
        "ERROR CODE: 0xC004D307",
        "ERROR DESCRIPTION: The Software Licensing Service reported that the rearm limit has "
        "been exceeded.",
        "ERROR CODE: 0xC004D307",
        "ERROR DESCRIPTION: The Software Licensing Service reported that the rearm limit has "
        "been exceeded.",
    )


def test_dinstid_and_actcid_phone_activate_an_office_mak(pc: Path) -> None:
    refused = run("/dinstid")  # a setup key has no phone activation
    assert refused.exit_code == 1
    assert refused.stdout.splitlines()[2] == "ERROR CODE: 0xC004F050"
    assert run(f"/inpkey:{OFFICE_MAK}").exit_code == 0  # replaces the 2024 setup key
    shown = run("/dinstid")
    assert shown.exit_code == 0
    line = shown.stdout.splitlines()[2]
    prefix = "Installation ID for: Office 24, Office24ProPlus2024VL_MAK_AE edition: "
    assert line.startswith(prefix)
    iid = line[len(prefix) :]
    assert re.fullmatch(r"\d{7}(-\d{7}){8}", iid)
    assert json_of("/dinstid")["installation_ids"] == [
        {"activation_id": OFFICE_ID, "installation_id": iid}
    ]
    wrong = run("/actcid:" + "-".join(["000000"] * 8))
    assert wrong.exit_code == 1
    assert wrong.stdout.splitlines()[2] == "ERROR CODE: 0xC004F04D"
    assert wrong.stdout.splitlines()[3] == (
        "ERROR DESCRIPTION: The Software Licensing Service determined that the Installation ID "
        "(IID) or the Confirmation ID (CID) is invalid. (no group matches this installation ID: "
        "a confirmation ID for another installation ID, or made with another lab secret)"
    )
    cid = confirmation_id(iid, "kmsemu-lab")
    deposited = run(f"/actcid:{cid}")
    assert (deposited.exit_code, deposited.stdout) == (
        0,
        framed("<Product activation successful>"),
    )
    lines = run("/dstatus").stdout.splitlines()
    assert lines[2:10] == [
        "PRODUCT ID: 25862-84553-11208-AA325",
        f"SKU ID: {OFFICE_ID}",
        "LICENSE NAME: Office 24, Office24ProPlus2024VL_MAK_AE edition",
        "LICENSE DESCRIPTION: Office 24, VOLUME_MAK channel",
        "BETA EXPIRATION: 01/01/1601",
        "LICENSE STATUS:  ---LICENSED---",
        "Last 5 characters of installed product key: R4793",
        SEPARATOR,
    ]


def test_json_is_one_object_with_the_office_licences(pc: Path) -> None:
    shown = json_of("/dstatus")
    assert shown["profile"] == "pc"
    assert shown["product"] == "office-ltsc-2024-proplus"
    assert shown["activation_id"] == OFFICE_ID
    assert shown["license_status"] == {"value": 2, "name": "Initial grace period"}
    assert [p["partial_product_key"] for p in shown["products"]] == ["4THHY"]
    refused = run("--json", "/unpkey:ABCDE")
    assert refused.exit_code == 1 and refused.stderr == ""
    error = json.loads(refused.stdout)
    assert error["error"]["code"] == "product_key_not_found"
    assert (
        error["error"]["message"] == "Product key not found. (no Office product key ends in ABCDE)"
    )
    assert error["product"] == "office-ltsc-2024-proplus"


def test_a_refused_call_is_a_usage_error(home: Path) -> None:
    refused = run("/frobnicate")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "Error: unknown option '/frobnicate'" in refused.stderr
    valued = run("/act:now")
    assert valued.exit_code == 2 and "Error: /act takes no value" in valued.stderr


def test_a_damaged_profile_is_an_error_on_stdout(home: Path) -> None:
    (home / "clients").mkdir(parents=True)
    (home / "clients" / "pc.json").write_text("{not json")
    failed = run("/dstatus")
    assert failed.exit_code == 1 and failed.stderr == ""
    assert failed.stdout.splitlines()[2].startswith(
        "ERROR DESCRIPTION: The client profile cannot be used. (profile "
    )


def test_the_ospp_console_script(home: Path) -> None:
    """An Office deployment script calls ``ospp`` by name (``cscript ospp.vbs`` becomes
    ``ospp``): the console script is installed beside ``kmsemu`` and ``slmgr``."""
    script = shutil.which("ospp")
    if script is None:
        pytest.skip("no ospp console script on PATH (install the package: ./scripts/test does)")
    env = {**os.environ, "KMSEMU_HOME": str(home), "KMSEMU_PROFILE": "pc"}

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    installed = call(f"-INPKEY:{OFFICE_KEY}")
    assert (installed.returncode, installed.stdout, installed.stderr) == (
        0,
        framed("<Product key installation successful>"),
        "",
    )
    shown = call("/dstatus")
    assert shown.returncode == 0
    assert "Last 5 characters of installed product key: 4THHY" in shown.stdout.splitlines()
    usage = call("/nothing")
    assert usage.returncode == 2 and usage.stdout == ""


# -- the wording, pure (kmsemu/client/ospp.py) --------------------------------------------------

T0 = 1_795_348_800.0  # 2026-11-22 12:00:00 UTC
WINDOWS_CMID = "11111111-2222-4333-8444-555555555555"
OFFICE_CMID = "99999999-8888-4777-8666-555555555555"
KMS_PART = [
    "Activation Type Configuration: ALL",
    "\tDNS auto-discovery: KMS name not available",
    "\tActivation Interval: 120 minutes",
    "\tRenewal Interval: 10080 minutes",
    "\tKMS host caching: Enabled",
]
HEAD = [
    "PRODUCT ID: 33186-62420-41372-AA839",
    f"SKU ID: {OFFICE_ID}",
    OFFICE_NAME,
    OFFICE_DESCRIPTION,
    "BETA EXPIRATION: 01/01/1601",
]


def _machine(*keys: str) -> Machine:
    m = Machine(
        Profile("pc", "PC-1", new_hardware(random.Random(1)), cmids={"windows": WINDOWS_CMID}),
        default_catalog(),
        real_now=lambda: T0,
        secret="kmsemu-lab",
        new_cmid=lambda: OFFICE_CMID,
        rng=random.Random(1),
    )
    for key in keys:
        assert m.install_key(key).hresult == 0
    return m


def _office(m: Machine) -> Install:
    return next(i for i in m.profile.installs if i.application == "office")


def _set(install: Install, **fields: Any) -> None:
    install.licence = dataclasses.replace(install.licence, **fields)


def _status(m: Machine) -> list[str]:
    return ospp.status_lines(m, ospp.office_installs(m, every=True))


def test_wording_of_a_setup_key_in_its_initial_grace() -> None:
    m = _machine(WINDOWS_KEY, OFFICE_KEY)
    assert ospp.framed(ospp.status_lines(m, ospp.office_installs(m))) == [
        PROCESSING,
        SEPARATOR,
        *HEAD,
        "LICENSE STATUS:  ---OOB_GRACE---",
        "REMAINING GRACE: 25 days  (36000 minute(s) before expiring)",
        "Last 5 characters of installed product key: 4THHY",
        *KMS_PART,
        SEPARATOR,
        SEPARATOR,
        EXITING,
    ]
    assert m.chosen is m.profile.installs[1]  # ipk's selection, put back after the view


def test_wording_of_a_licensed_setup_key_found_in_dns_without_host_caching() -> None:
    m = _machine(OFFICE_KEY)
    office = _office(m)
    _set(
        office,
        status=LicenseStatus.LICENSED,
        grace_ends=None,
        valid_until=T0 + 180 * 86400 - 30,
        activation_interval=60,
        renewal_interval=1440,
    )
    office.last_kms = {"source": "dns", "name": "kms1.lab.test:1688", "host": "10.0.0.1:1688"}
    m.profile.host_caching = False
    assert _status(m) == [
        *HEAD,
        "LICENSE STATUS:  ---LICENSED---",
        "REMAINING GRACE: 179 days  (259199 minute(s) before expiring)",
        "Last 5 characters of installed product key: 4THHY",
        "Activation Type Configuration: ALL",
        "\tKMS machine name from DNS: kms1.lab.test:1688",
        "\tActivation Interval: 60 minutes",
        "\tRenewal Interval: 1440 minutes",
        "\tKMS host caching: Disabled",
        SEPARATOR,
    ]
    office.last_kms = {"source": "dns", "host": "10.0.0.1:1688"}
    assert "\tKMS machine name from DNS: 10.0.0.1:1688" in _status(m)
    office.last_kms = {"source": "registered", "name": "kms9:1688"}
    assert "\tDNS auto-discovery: KMS name not available" in _status(m)
    m.profile.kms_host = "kms0.lab.test:1688"  # the machine's host, Office has none of its own
    assert "\tKMS machine registry override defined: kms0.lab.test:1688" in _status(m)
    office.kms_host = "kms2.lab.test:1700"
    assert "\tKMS machine registry override defined: kms2.lab.test:1700" in _status(m)


def test_wording_of_a_notification_shows_the_reason() -> None:
    m = _machine(OFFICE_KEY)
    m.profile.clock_offset = 26 * 86400.0  # the 25-day grace is over
    assert _status(m) == [
        *HEAD,
        "LICENSE STATUS:  ---NOTIFICATIONS---",
        "ERROR CODE: 0xC004F009",
        "ERROR DESCRIPTION: The software Licensing Service reported that the grace period expired.",
        "REMAINING GRACE: 0 days  (0 minute(s) before expiring)",
        "Last 5 characters of installed product key: 4THHY",
        *KMS_PART,
        SEPARATOR,
    ]


def test_wording_shows_the_last_failure_of_a_grace() -> None:
    m = _machine(OFFICE_KEY)
    _set(_office(m), last_hresult=0xC004F038, grace_ends=T0 + 1439 * 60 + 59)
    lines = _status(m)
    assert lines[5:9] == [
        "LICENSE STATUS:  ---OOB_GRACE---",
        "ERROR CODE: 0xC004F038",
        "ERROR DESCRIPTION: The count reported by your Key Management Service (KMS) is "
        "insufficient.",
        "REMAINING GRACE: 0 days  (1439 minute(s) before expiring)",
    ]
    _set(_office(m), grace_ends=T0 + 1440 * 60)
    assert _status(m)[8] == "REMAINING GRACE: 1 days  (1440 minute(s) before expiring)"


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (LicenseStatus.OUT_OF_TOLERANCE_GRACE, "LICENSE STATUS:  ---OOT_GRACE---"),
        (LicenseStatus.NON_GENUINE_GRACE, "LICENSE STATUS:  ---NON_GENUINE_GRACE---"),
        (LicenseStatus.EXTENDED_GRACE, "LICENSE STATUS:  ---EXTENDED_GRACE---"),
        (LicenseStatus.INITIAL_GRACE, "LICENSE STATUS:  ---OOB_GRACE---"),
    ],
)
def test_wording_of_each_grace(status: LicenseStatus, shown: str) -> None:
    m = _machine(OFFICE_KEY)
    _set(_office(m), status=status)
    assert _status(m)[5:7] == [
        shown,
        "REMAINING GRACE: 25 days  (36000 minute(s) before expiring)",
    ]


def test_wording_of_a_permanently_activated_mak_and_other_key_types() -> None:
    m = _machine(str(mint(KeyType.MAK, 10, 1)))
    _set(_office(m), status=LicenseStatus.LICENSED, grace_ends=None, next_attempt=None)
    assert _status(m) == [
        "PRODUCT ID: 83998-52961-92278-AA660",
        f"SKU ID: {OFFICE_2021_ID}",
        "LICENSE NAME: Office 21, Office21ProPlus2021VL_MAK_AE edition",
        "LICENSE DESCRIPTION: Office 21, VOLUME_MAK channel",
        "BETA EXPIRATION: 01/01/1601",
        "LICENSE STATUS:  ---LICENSED---",
        "Last 5 characters of installed product key: JQGH8",
        SEPARATOR,
    ]
    retail = _machine(str(mint(KeyType.RETAIL, 11, 2)))
    assert _status(retail)[2:4] == [
        "LICENSE NAME: Office 24, Office24ProPlus2024R_Retail edition",
        "LICENSE DESCRIPTION: Office 24, RETAIL channel",
    ]
    host = _machine(str(mint(KeyType.KMS_HOST, 11, 3)))
    assert _status(host)[2:4] == [
        "LICENSE NAME: Office 24, Office24ProPlus2024VL_KMS_Host edition",
        "LICENSE DESCRIPTION: Office 24, VOLUME_KMS channel",
    ]
    assert _status(host)[-2] == "Last 5 characters of installed product key: GM3Y9"
    catalog = default_catalog()
    product = catalog.find("office-ltsc-2024-proplus")
    assert ospp.licence_name(product, KeyType.SUBSCRIPTION) == (
        "Office 24, Office24ProPlus2024O365_Subscription edition"
    )
    assert ospp.licence_name(product, None) == OFFICE_NAME.removeprefix("LICENSE NAME: ")
    assert ospp.licence_description(product, None) == "Office 24, VOLUME_KMSCLIENT channel"
    plain = dataclasses.replace(product, name="Office Standard", description="Office 16")
    assert ospp.licence_name(plain, KeyType.MAK) == "Office 16, Office16StandardVL_MAK_AE edition"
    odd = dataclasses.replace(product, name="Office LTSC Home 24", description="Office 24, x")
    assert ospp.licence_name(odd, KeyType.MAK) == "Office 24, Office24Home24VL_MAK_AE edition"


def test_wording_of_a_removed_key_and_of_no_key() -> None:
    m = _machine(WINDOWS_KEY)
    assert ospp.status_lines(m, ospp.office_installs(m)) == ["<No installed product keys detected>"]
    assert ospp.history_lines(m, []) == ["<No KMS activation history found>"]
    m = _machine(WINDOWS_KEY, OFFICE_KEY)
    assert m.uninstall_key().hresult == 0  # ipk selected Office
    assert ospp.office_installs(m) == []
    assert _status(m) == [
        f"SKU ID: {OFFICE_ID}",
        OFFICE_NAME,
        OFFICE_DESCRIPTION,
        "BETA EXPIRATION: 01/01/1601",
        "LICENSE STATUS:  ---UNLICENSED---",
        SEPARATOR,
    ]
    _office(m).product = "no-such-product"  # a catalog that lost the product
    assert _status(m) == ["<No installed product keys detected>"]
    assert ospp.product_of(m, Install("office")) is None


def test_wording_of_act_unpkey_dinstid_dcmid_and_errors() -> None:
    m = _machine(WINDOWS_KEY, OFFICE_KEY, str(mint(KeyType.MAK, 10, 1)))
    office, mak = ospp.office_installs(m)
    assert ospp.attempting(m, office) == [
        "Installed product key detected - attempting to activate the following product:",
        f"SKU ID: {OFFICE_ID}",
        OFFICE_NAME,
        OFFICE_DESCRIPTION,
        "Last 5 characters of installed product key: 4THHY",
    ]
    assert ospp.attempting(m, mak)[2:4] == [
        "LICENSE NAME: Office 21, Office21ProPlus2021VL_MAK_AE edition",
        "LICENSE DESCRIPTION: Office 21, VOLUME_MAK channel",
    ]
    assert ospp.uninstalling(m, mak) == (
        "Uninstalling product key for: Office 21, Office21ProPlus2021VL_MAK_AE edition"
    )
    assert ospp.uninstalling(m, office) == (
        "Uninstalling product key for: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition"
    )
    assert ospp.phone_installs(m) == [mak]
    assert ospp.installation_id_line(m, mak, "0001") == (
        "Installation ID for: Office 21, Office21ProPlus2021VL_MAK_AE edition: 0001"
    )
    assert ospp.cmid_line(OFFICE_CMID) == f"OfficeClientMachineID (CMID): {OFFICE_CMID}"
    assert ospp.error_lines(0xC004F074) == [
        "ERROR CODE: 0xC004F074",
        "ERROR DESCRIPTION: No Key Management Service (KMS) could be contacted.",
    ]
    assert ospp.error_lines(0xC004F074, "no host") == [
        "ERROR CODE: 0xC004F074",
        "ERROR DESCRIPTION: No Key Management Service (KMS) could be contacted. (no host)",
    ]
    assert ospp.failure_lines(LocalError("product_not_found", "x")) == [
        "ERROR DESCRIPTION: Product not found. (x)",
        "The Activation ID names no licence of this machine: 'kmsemu slmgr /dlv all' shows "
        "them with their Activation IDs.",
    ]
    assert ospp.failure_lines(ActivationError(0xC004F050)) == [
        "ERROR CODE: 0xC004F050",
        "ERROR DESCRIPTION: The Software Licensing Service reported that the product key is "
        "invalid.",
        "Check the key with 'kmsemu keys check'.",
    ]
    assert ospp.failure_lines(ActivationError(0x12345678)) == [
        "ERROR CODE: 0x12345678",
        "ERROR DESCRIPTION: Unknown error 0x12345678.",
    ]
    assert ospp.framed([]) == [PROCESSING, SEPARATOR, SEPARATOR, EXITING]
    assert ospp.product_id("BBM3JHYH6YJQB4FXKC7H4THHY") == "33186-62420-41372-AA839"
    assert ospp.product_id("B" * 20 + "00013") == "00912-01694-31313-AA186"


def test_wording_of_the_kms_history_oldest_first_across_products() -> None:
    m = _machine(OFFICE_KEY, OFFICE_2021_KEY)
    new, old = ospp.office_installs(m)
    new.events = [
        {"id": 12288, "time": "2026-11-22T12:05:00+00:00", "hresult": "0x00000000",
         "server": "10.0.0.1:1688"},
        {"id": 12289, "time": "2026-11-22T12:05:00+00:00", "hresult": "0x00000000",
         "activated": True, "current_count": 5},
        {"id": "mak-online", "time": "2026-11-22T12:06:00+00:00", "hresult": "0x00000000"},
    ]  # fmt: skip
    old.events = [
        {"id": 12288, "time": "2026-11-22T12:01:00+00:00", "hresult": "0x8007232B",
         "server": None},
        {"id": 12289, "time": "2026-11-22T12:07:00+00:00", "hresult": "0xC004F038",
         "activated": False, "current_count": 2},
    ]  # fmt: skip
    assert ospp.history_lines(m, [new, old]) == [
        "2026-11-22T12:01:00+00:00 Event 12288 Office LTSC Professional Plus 2021: "
        "KMS request, 0x8007232B",
        "2026-11-22T12:05:00+00:00 Event 12288 Office LTSC Professional Plus 2024: "
        "KMS request to 10.0.0.1:1688, 0x00000000",
        "2026-11-22T12:05:00+00:00 Event 12289 Office LTSC Professional Plus 2024: "
        "KMS response 0x00000000, current count 5, activated",
        "2026-11-22T12:07:00+00:00 Event 12289 Office LTSC Professional Plus 2021: "
        "KMS response 0xC004F038, current count 2, not activated",
    ]
    new.product = "gone"
    assert ospp.history_lines(m, [new])[0] == (
        "2026-11-22T12:05:00+00:00 Event 12288 gone: KMS request to 10.0.0.1:1688, 0x00000000"
    )


def test_wording_of_a_damaged_profile() -> None:
    """A key that no longer checks is named as a setup key (as slmgr shows it); an install
    without its key or product cannot be named; an event without a time sorts first."""
    m = _machine(OFFICE_KEY)
    office = _office(m)
    office.product_key = "B" * 25
    assert ospp.attempting(m, office)[2] == OFFICE_NAME
    assert ospp.uninstalling(m, office) == (
        "Uninstalling product key for: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition"
    )
    assert ospp.installation_id_line(m, office, "1") == (
        "Installation ID for: Office 24, Office24ProPlus2024VL_KMS_Client_AE edition: 1"
    )
    assert ospp.phone_installs(m) == []
    lines = _status(m)
    assert lines[2] == OFFICE_NAME
    assert lines[-7:-5] == [
        "Last 5 characters of installed product key: BBBBB",
        "Activation Type Configuration: ALL",
    ]
    for wording in (ospp.attempting, ospp.uninstalling):
        office.product = "gone"
        with pytest.raises(ValueError, match="install of 'gone': no key, or not in the catalog"):
            wording(m, office)
        office.product, office.product_key = "office-ltsc-2024-proplus", None
        with pytest.raises(ValueError, match="no key, or not in the catalog"):
            wording(m, office)
        office.product_key = "B" * 25
    office.product_key = None
    with pytest.raises(ValueError, match="no key"):
        ospp.installation_id_line(m, office, "1")
    office.events = [
        {"id": 12289, "time": "2026-11-22T12:05:00+00:00", "hresult": "0x00000000",
         "activated": True, "current_count": 5},
        {"id": 12288, "hresult": "0x00000000", "server": "10.0.0.1:1688"},
    ]  # fmt: skip
    assert ospp.history_lines(m, [office]) == [
        "(no time) Event 12288 Office LTSC Professional Plus 2024: KMS request to "
        "10.0.0.1:1688, 0x00000000",
        "2026-11-22T12:05:00+00:00 Event 12289 Office LTSC Professional Plus 2024: "
        "KMS response 0x00000000, current count 5, activated",
    ]
