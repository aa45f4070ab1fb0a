"""``kmsemu slmgr`` and the ``slmgr`` console script: slmgr's own syntax, slmgr's lines on
stdout (errors too), and the usage errors of a call slmgr would not take.

Expectations are written out here, never read from the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.cli.slmgr import ALL, Call, SlmgrUsage, translate
from kmsemu.testing import BackgroundHost

ENTERPRISE_KEY = "BBM3H-RG4H4-4JFDJ-MJ382-JB8QD"  # Windows 11 Enterprise's setup key
ENTERPRISE_ACTIVATION_ID = "e00a2fc7-b003-57c0-a5b6-3331a3b90984"
OTHER_ID = "00000000-0000-0000-0000-000000000001"


def slmgr(*args: str) -> Result:
    return CliRunner().invoke(main, ["slmgr", "--profile", "pc", *args])


# -- the translation, pure -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "call"),
    [
        (["/ipk", ENTERPRISE_KEY], Call("ipk", (ENTERPRISE_KEY,), None)),
        (["-IPK", ENTERPRISE_KEY], Call("ipk", (ENTERPRISE_KEY,), None)),
        (["/ato"], Call("ato", (), None)),
        (["/Ato", ENTERPRISE_ACTIVATION_ID.upper()], Call("ato", (), ENTERPRISE_ACTIVATION_ID)),
        (["/dlv"], Call("dlv", (), None)),
        (["-dlv", "All"], Call("dlv", (), ALL)),
        (["/dli", "all"], Call("dli", (), ALL)),
        (["/xpr"], Call("xpr", (), None)),
        (["/skms", "kms1.lab.test:1688"], Call("skms", ("kms1.lab.test:1688",), None)),
        (["/ckms"], Call("ckms", (), None)),
        (["/skms-domain", "lab.test"], Call("skms-domain", ("lab.test",), None)),
        (["/ckms-domain"], Call("ckms-domain", (), None)),
        (["/skhc"], Call("skhc", (), None)),
        (["/CKHC"], Call("ckhc", (), None)),
        (["/rearm"], Call("rearm", (), None)),
        (["/dti"], Call("dti", (), None)),
        (["/atp", "123456-123456"], Call("atp", ("123456-123456",), None)),
        (["/upk"], Call("upk", (), None)),
        (["/cpky"], Call("cpky", (), None)),
        (["/sai", "60"], Call("set", ("60",), None, "--activation-interval")),
        (["/SRI", "1440"], Call("set", ("1440",), None, "--renewal-interval")),
        (["-sprt", "1689"], Call("set", ("1689",), None, "--port")),
        (["/CDNS"], Call("set", (), None, "--no-dns-publish")),
        (["-sdns"], Call("set", (), None, "--dns-publish")),
    ],
)
def test_slmgr_options_become_client_verbs(args: list[str], call: Call) -> None:
    assert translate(args) == call


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no option given: slmgr takes one, e.g. /dlv or /ato"),
        (["dlv"], "unknown option 'dlv'; kmsemu slmgr takes /ipk, /ato, /dli, /dlv, /xpr, "
         "/skms, /ckms, /skms-domain, /ckms-domain, /skhc, /ckhc, /rearm, /dti, /atp, /upk, "
         "/cpky, /sai, /sri, /sprt, /cdns, /sdns"),
        (["/ipk"], "/ipk needs a product key"),
        (["/atp"], "/atp needs a confirmation ID"),
        (["/ipk", "A", "B"], "/ipk takes 1 argument"),
        (["/skhc", "x"], "/skhc takes no arguments"),
        (["/dlv", "a", "b"], "/dlv takes 1 argument"),
        (["/ato", "all"], "'all' is not an Activation ID (a GUID)"),
        (["/dlv", "1234"], "'1234' is not an Activation ID (a GUID)"),
        (["/cdns", "x"], "/cdns takes no arguments"),
        (["/sai"], "/sai needs an interval in minutes"),
        (["/sprt", "1688", "x"], "/sprt takes 1 argument"),
    ],
)  # fmt: skip
def test_calls_slmgr_would_refuse(args: list[str], message: str) -> None:
    with pytest.raises(SlmgrUsage) as refused:
        translate(args)
    assert str(refused.value) == message


# -- through the command line --------------------------------------------------------------


def test_install_and_show_in_slmgr_syntax_everything_on_stdout(home: Path) -> None:
    installed = slmgr("/ipk", ENTERPRISE_KEY)
    assert (installed.exit_code, installed.stdout, installed.stderr) == (
        0,
        f"Installed product key {ENTERPRISE_KEY} successfully.\n",
        "",
    )
    for args in (["-DLV"], ["/dlv", "all"], ["/dlv", ENTERPRISE_ACTIVATION_ID]):
        shown = slmgr(*args)
        assert shown.exit_code == 0 and shown.stderr == ""
        lines = shown.stdout.splitlines()
        assert lines[:3] == [
            "Name: Windows 11 Enterprise, VOLUME_KMSCLIENT channel",
            "Description: Windows(R) Operating System, VOLUME_KMSCLIENT channel",
            f"Activation ID: {ENTERPRISE_ACTIVATION_ID}",
        ]
        assert "License Status: Initial grace period" in lines
    brief = slmgr("/dli").stdout.splitlines()
    assert brief[:2] == [
        "Name: Windows 11 Enterprise, VOLUME_KMSCLIENT channel",
        "Description: Windows(R) Operating System, VOLUME_KMSCLIENT channel",
    ]


def test_an_activation_id_of_no_licence_is_product_not_found(home: Path) -> None:
    assert slmgr("/ipk", ENTERPRISE_KEY).exit_code == 0
    refused = slmgr("/dlv", OTHER_ID)
    assert refused.exit_code == 1 and refused.stderr == ""
    assert refused.stdout.splitlines()[0] == (f"Error: Product not found. (no licence {OTHER_ID})")
    as_json = slmgr("--json", "/xpr", OTHER_ID)
    assert as_json.exit_code == 1 and '"code": "product_not_found"' in as_json.stdout


def test_ato_as_a_provisioning_script_greps_it(home: Path, tmp_path: Path) -> None:
    with BackgroundHost(tmp_path / "host") as host:
        host.set_min_count(25)  # Windows clients are licensed from 25
        assert slmgr("/ipk", ENTERPRISE_KEY).exit_code == 0
        assert slmgr("/skms", host.host_port).exit_code == 0
        activated = slmgr("/ato")
    assert activated.exit_code == 0 and activated.stderr == ""
    assert activated.stdout.splitlines() == [
        f"Activating Windows 11 Enterprise ({ENTERPRISE_ACTIVATION_ID}) ...",
        "Product activated successfully.",
    ]
    assert "License Status: Licensed" in slmgr("/dlv").stdout.splitlines()


def test_a_failed_ato_prints_its_error_on_stdout(home: Path) -> None:
    assert slmgr("/ipk", ENTERPRISE_KEY).exit_code == 0
    assert slmgr("/skms", "127.0.0.1:9").exit_code == 0  # nothing listens on the discard port
    failed = slmgr("/ato")
    assert failed.exit_code == 1 and failed.stderr == ""
    lines = failed.stdout.splitlines()
    assert lines[0] == f"Activating Windows 11 Enterprise ({ENTERPRISE_ACTIVATION_ID}) ..."
    assert lines[1].startswith(
        "Error: 0xC004F074 No Key Management Service (KMS) could be contacted."
    )


def test_a_refused_call_is_a_usage_error(home: Path) -> None:
    refused = slmgr("/frobnicate")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "Error: unknown option '/frobnicate'" in refused.stderr


def test_the_slmgr_console_script(home: Path) -> None:
    """A provisioning script calls ``slmgr`` by name: the console script is installed
    beside ``kmsemu``."""
    script = shutil.which("slmgr")
    if script is None:
        pytest.skip("no slmgr console script on PATH (install the package: ./scripts/test does)")
    env = {**os.environ, "KMSEMU_HOME": str(home), "KMSEMU_PROFILE": "pc"}
    missing = subprocess.run(
        [script, "/dlv"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert (missing.returncode, missing.stderr) == (1, "")
    assert missing.stdout.splitlines()[0] == "Error: Product key not found."
    installed = subprocess.run(
        [script, "-ipk", ENTERPRISE_KEY], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert (installed.returncode, installed.stdout) == (
        0,
        f"Installed product key {ENTERPRISE_KEY} successfully.\n",
    )
