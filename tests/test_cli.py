"""The CLI contract (shared/spec/cli.md): in process with CliRunner, and as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.errors import HResult, describe
from kmsemu.host.rules import EPID_PATTERN
from tests.conftest import (
    RunningHost,
    kmsemu_command,
    start_host_process,
    stop_host_process,
)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KMSEMU_SECRET", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(main, list(args), catch_exceptions=False)


def activate(runner: CliRunner, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(main, ["client", "activate", *args], env=env)


def test_catalog_json_fields(runner: CliRunner) -> None:
    result = invoke(runner, "catalog", "--json")
    assert result.exit_code == 0
    products = json.loads(result.stdout)["products"]
    assert len(products) >= 12
    for p in products:
        assert {
            "name",
            "application_id",
            "sku_id",
            "kms_count_id",
            "threshold",
            "channel",
        } <= p.keys()


def test_catalog_text_and_bad_file(runner: CliRunner, tmp_path: Path) -> None:
    assert "Windows Server 2025 Datacenter" in invoke(runner, "catalog").stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[applications]\n")
    result = runner.invoke(main, ["catalog", "--file", str(bad), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "bad_catalog"


def test_activate_json_against_a_host(runner: CliRunner, inprocess_host: RunningHost) -> None:
    cmid = str(uuid.uuid4())
    host = f"127.0.0.1:{inprocess_host.port}"
    result = invoke(
        runner,
        "client",
        "activate",
        "--host",
        host,
        "--product",
        "windows-server-2022-standard",
        "--cmid",
        cmid,
        "--vm",
        "--name",
        "srv-1",
        "--required-count",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == 0 and data["activated"] is True
    assert data["current_count"] == 1 and data["client_machine_id"] == cmid
    assert (data["activation_interval"], data["renewal_interval"]) == (120, 10080)
    assert EPID_PATTERN.match(data["host_epid"])
    inprocess_host.flush()
    line = [x for x in inprocess_host.stderr_lines if "activation" in x][-1]
    assert "client=srv-1" in line and "vm=1" in line and f"cmid={cmid}" in line


def test_activate_below_threshold_exits_1_with_c004f038(
    runner: CliRunner, inprocess_host: RunningHost
) -> None:
    result = activate(
        runner,
        "--host",
        f"127.0.0.1:{inprocess_host.port}",
        "--product",
        "windows-11-pro",
        "--json",
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["current_count"] == 1 and data["status"] == 0
    assert data["error"] == {
        "code": "count_insufficient",
        "hresult": "0xC004F038",
        "message": describe(HResult.COUNT_INSUFFICIENT).message,
        "hint": describe(HResult.COUNT_INSUFFICIENT).hint,
    }


def test_activate_text_output(runner: CliRunner, inprocess_host: RunningHost) -> None:
    result = activate(
        runner,
        "--host",
        f"127.0.0.1:{inprocess_host.port}",
        "--product",
        "office-ltsc-2024-proplus",
        "--required-count",
        "1",
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("Activating Office LTSC Professional Plus 2024 (")
    assert result.stdout.rstrip().endswith("Product activated successfully.")


def test_activate_wrong_secret_and_no_host(runner: CliRunner, inprocess_host: RunningHost) -> None:
    result = activate(
        runner,
        "--host",
        f"127.0.0.1:{inprocess_host.port}",
        "--product",
        "windows-11-pro",
        "--secret",
        "nope",
        "--json",
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["error"]["hresult"] == "0xC004F074" and data["cause"] == "0x80070005"
    result = activate(
        runner, "--host", "127.0.0.1:1", "--product", "windows-11-pro", "--timeout", "2"
    )
    assert result.exit_code == 1
    assert "Error: 0xC004F074" in result.stderr and "0x800706BA" in result.stderr


def test_secret_from_environment(runner: CliRunner, tmp_path: Path) -> None:
    from tests.conftest import start_inprocess_host

    host, stop = start_inprocess_host(tmp_path / "h", secrets=["env-secret"])
    try:
        result = activate(
            runner,
            "--host",
            f"127.0.0.1:{host.port}",
            "--product",
            "windows-11-pro",
            "--required-count",
            "1",
            env={"KMSEMU_SECRET": "env-secret"},
        )
        assert result.exit_code == 0, result.output
    finally:
        stop()


@pytest.mark.parametrize(
    "args",
    [
        ["client", "activate", "--product", "windows-11-pro", "--host", "[::1"],
        ["client", "activate", "--product", "windows-11-pro", "--cmid", "xyz"],
        ["client", "activate"],
        ["host", "serve", "--renewal-interval", "5"],
        ["host", "serve", "--clock-offset", "5 hours"],
        ["host", "serve", "--log-format", "xml"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    assert runner.invoke(main, args).exit_code == 2


def test_a_mistyped_product_is_a_usage_error_with_did_you_mean(runner: CliRunner) -> None:
    for args in (["client", "activate"], ["keys", "mint", "--type", "mak"]):
        result = runner.invoke(main, [*args, "--product", "windows-11-pr", "--json"])
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert "did you mean windows-11-pro" in result.stderr
        assert "windows-server-2025-datacenter" not in result.stderr  # not every product
    result = runner.invoke(main, ["client", "activate", "--product", "toaster"])
    assert result.exit_code == 2 and "no product 'toaster'" in result.stderr


def test_status_without_state(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["host", "status", "--state", str(tmp_path / "none"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "no_state"


def test_serve_status_and_clean_stop_as_real_processes(tmp_path: Path) -> None:
    state = tmp_path / "host"
    host = start_host_process(state, "--min-count", "3", "--log-format", "json")
    try:
        address = f"127.0.0.1:{host.port}"
        for cmid in (uuid.uuid4(), uuid.uuid4()):
            out = subprocess.run(
                kmsemu_command(
                    "client",
                    "activate",
                    "--host",
                    address,
                    "--product",
                    "windows-server-2019-datacenter",
                    "--cmid",
                    str(cmid),
                    "--json",
                ),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert json.loads(out.stdout)["current_count"] == 3
        subprocess.run(
            kmsemu_command(
                "client",
                "activate",
                "--host",
                address,
                "--product",
                "windows-11-pro",
                "--secret",
                "wrong",
            ),
            capture_output=True,
            timeout=30,
        )
    finally:
        host.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        assert stop_host_process(host) == 0
    logs = [json.loads(x) for x in host.stderr_lines if x.startswith("{")]
    activations = [x for x in logs if x["event"] == "activation"]
    assert len(activations) == 3 and activations[0]["status"] == "0x00000000"
    assert activations[2]["status"] == "0x80070005"
    status = subprocess.run(
        kmsemu_command("host", "status", "--state", str(state), "--json"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = json.loads(status.stdout)
    assert report["counts"]["Windows"] == 3  # min count 3 (two live clients)
    assert report["port"] == host.port
    assert report["requests"]["total"] == 3 and report["requests"]["failed"] == 1
    assert report["requests"]["by_status"]["initial_grace"] == 2
    text = subprocess.run(
        kmsemu_command("host", "status", "--state", str(state)),
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert f"Listening on Port: {host.port}" in text
    # the cumulative requests per licence block, as slmgr /dlv on a KMS host: the two
    # Windows requests; the one with the wrong secret named no licence
    lines = text.splitlines()
    windows = lines[lines.index("Licence: Windows") : lines.index("Licence: Office")]
    office = lines[lines.index("Licence: Office") :]
    assert windows[-11:] == [
        "Key Management Service cumulative requests received from clients",
        "    Total requests received: 2",
        "    Failed requests received: 0",
        "    Requests with License Status Unlicensed: 0",
        "    Requests with License Status Licensed: 0",
        "    Requests with License Status Initial grace period: 2",
        "    Requests with License Status License expired or Hardware out of tolerance: 0",
        "    Requests with License Status Non-genuine grace period: 0",
        "    Requests with License Status Notification: 0",
        "    Requests with License Status Extended grace period: 0",
        "",
    ]
    assert "    Total requests received: 0" in office
    assert lines[-1] == "Requests naming no licence (unreadable): 1"
    assert report["requests_by_licence"]["Windows"]["total"] == 2
    assert report["requests_by_licence"]["Office"] == {
        "total": 0,
        "failed": 0,
        "by_status": {
            "unlicensed": 0,
            "licensed": 0,
            "initial_grace": 0,
            "out_of_tolerance_grace": 0,
            "non_genuine_grace": 0,
            "notification": 0,
            "extended_grace": 0,
        },
    }


def test_serve_refuses_a_port_in_use_and_leaves_no_state(tmp_path: Path) -> None:
    from tests.conftest import run_into_a_taken_port

    home = tmp_path / "home"
    home.mkdir()
    (home / "lab.sqlite3").touch()  # a lab ran here; host status should keep finding it
    out, port = run_into_a_taken_port(
        lambda port: ["host", "serve", "--listen", f"127.0.0.1:{port}"], home
    )
    assert out.returncode == 1
    assert f"Error: Cannot listen on the address. (127.0.0.1:{port}: " in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in home.iterdir()) == ["lab.sqlite3"]  # no empty host/ left


def test_status_names_the_state_it_reads(tmp_path: Path) -> None:
    from kmsemu.host.store import HostStore

    home = tmp_path / "home"
    HostStore(home / "lab.sqlite3").close()  # only a lab ran
    out = subprocess.run(
        kmsemu_command("host", "status"),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KMSEMU_HOME": str(home)},
    )
    assert out.returncode == 0, out.stderr
    assert f"    State: {home / 'lab.sqlite3'}" in out.stdout.splitlines()


def test_serve_and_activate_over_ipv6(tmp_path: Path) -> None:
    from kmsemu.host.server import ipv6_available

    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this machine")
    proc = subprocess.Popen(
        kmsemu_command(
            "host",
            "serve",
            "--listen",
            "[::1]:0",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--state",
            str(tmp_path / "h"),
        ),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline().strip()
        while not ready.startswith("ready kms-host"):
            ready = proc.stderr.readline().strip()
            assert ready or proc.poll() is None, "host exited"
        addresses = ready.split()[2:]
        assert addresses[0].startswith("[::1]:") and addresses[1].startswith("127.0.0.1:")
        assert addresses[0].rsplit(":", 1)[1] == addresses[1].rsplit(":", 1)[1]  # one port
        for address in addresses:
            out = subprocess.run(
                kmsemu_command(
                    "client", "activate", "--host", address, "--product", "windows-11-pro", "--json"
                ),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert json.loads(out.stdout)["status"] == 0, out.stderr
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_keys_mint_check_and_setup_keys(runner: CliRunner) -> None:
    minted = json.loads(
        invoke(
            runner,
            "keys",
            "mint",
            "--type",
            "subscription",
            "--product",
            "office-ltsc-2024-proplus",
            "--serial",
            "7",
            "--quantity",
            "25",
            "--json",
        ).stdout
    )
    assert {"key", "type", "product", "serial", "quantity"} <= minted.keys()
    assert (minted["type"], minted["serial"], minted["quantity"]) == ("subscription", 7, 25)
    checked = json.loads(invoke(runner, "keys", "check", minted["key"].lower(), "--json").stdout)
    assert checked["well_formed"] is True and checked["product"] == "office-ltsc-2024-proplus"
    typo = minted["key"][:6] + ("B" if minted["key"][6] != "B" else "C") + minted["key"][7:]
    result = runner.invoke(main, ["keys", "check", typo, "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["well_formed"] is False and minted["key"] in data["candidates"]
    assert data["problems"][0]["code"] == "check_failed"
    result = runner.invoke(main, ["keys", "check", "0B2TRBH828146YPJW2Q9598CM"])
    assert result.exit_code == 1 and result.stderr.count("keys never use") == 3
    setup = json.loads(invoke(runner, "keys", "setup-keys", "--json").stdout)["keys"]
    assert setup[0] == {
        "product": "windows-11-pro",
        "name": "Windows 11 Pro",
        "number": 0,
        "key": "BBM3H-PMQ9T-88T8G-HGPCF-GYYBG",
    }
    products = json.loads(invoke(runner, "catalog", "--json").stdout)["products"]
    volume = [p["key"] for p in products if p["channel"] == "volume"]
    assert [row["product"] for row in setup] == volume and len(volume) < len(products)
    assert (
        runner.invoke(
            main,
            ["keys", "mint", "--type", "mak", "--product", "windows-11-pro", "--quantity", "3"],
        ).exit_code
        == 2
    )
