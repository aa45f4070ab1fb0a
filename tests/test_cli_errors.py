"""How commands fail: one rendering, stable codes, nothing half done (issue point 5).

Each test is one row of the issue: the command, what it did, what it does now.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kmsemu.cli import main
from kmsemu.errors import HResult, describe
from kmsemu.keys.product_key import setup_key

KEY = str(setup_key(0))  # windows-11-pro


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path))
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def no_traceback(result: Result) -> Result:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def failed(result: Result, code: str) -> dict[str, Any]:
    """A --json command that failed: exit 1, one JSON object with ``error.code``."""
    no_traceback(result)
    assert result.exit_code == 1, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    assert body["error"]["code"] == code, body
    return body


def profile(home: Path, name: str = "pc") -> Path:
    return home / "clients" / f"{name}.json"


# -- client clock ----------------------------------------------------------------------------


def test_a_huge_clock_jump_is_refused_and_nothing_is_saved(home: Path) -> None:
    assert run("client", "--profile", "pc", "ipk", KEY).exit_code == 0
    before = profile(home).read_bytes()
    body = failed(
        run("client", "--profile", "pc", "clock", "+1000000000d", "--json"), "clock_out_of_range"
    )
    assert body["error"]["message"].startswith("The profile's clock cannot be moved there.")
    text = no_traceback(run("client", "--profile", "pc", "clock", "-100000d"))
    assert text.exit_code == 1
    assert text.stderr.startswith("Error: The profile's clock cannot be moved there.")
    assert profile(home).read_bytes() == before  # nothing saved
    assert run("client", "--profile", "pc", "dli").exit_code == 0  # the profile still works


def test_an_already_broken_profile_is_a_clear_error(home: Path) -> None:
    assert run("client", "--profile", "pc", "ipk", KEY).exit_code == 0
    saved = json.loads(profile(home).read_text())
    for broken in (
        {**saved, "clock_offset": 1e300},
        {**saved, "clock_offset": "soon"},
        {**saved, "hardware": 7},
        {**saved, "installs": [{**saved["installs"][0], "licence": {"status": 99}}]},
        {**saved, "installs": [{**saved["installs"][0], "application": "excel"}]},
        {**saved, "installs": "windows"},
        {**saved, "installs": [7]},
        {**saved, "cmids": {"windows": "not a GUID"}},
        {**saved, "cmids": {"windows": 7}},
        {**saved, "version": 3},
    ):
        profile(home).write_text(json.dumps(broken))
        for verb in ("dli", "tick", "clock"):
            result = no_traceback(run("client", "--profile", "pc", verb))
            assert result.exit_code == 1, (broken, verb, result.output)
            assert result.stderr.startswith("Error: The client profile cannot be used. ("), (
                result.stderr
            )
            assert "--profile" in result.stderr  # the hint: delete it or use another
        failed(run("client", "--profile", "pc", "dli", "--json"), "bad_profile")
    profile(home).write_bytes(b"\xff\xfe not UTF-8")
    failed(run("client", "--profile", "pc", "dli", "--json"), "bad_profile")


def test_negative_clock_shifts_work_as_the_help_shows(home: Path) -> None:
    start = json.loads(run("client", "clock", "--json").stdout)["clock"]
    moved = run("client", "clock", "-2h", "--json")
    assert moved.exit_code == 0, moved.output
    back = datetime.fromisoformat(json.loads(moved.stdout)["clock"])
    assert round((datetime.fromisoformat(start) - back).total_seconds() / 3600) == 2
    assert run("client", "clock", "--json", "-30m").exit_code == 0
    assert run("client", "clock", "--", "-1d").exit_code == 0
    assert "-2h" in run("client", "clock", "--help").stdout


# -- client rearm, dli, dlv, xpr ----------------------------------------------------------------


def test_a_fourth_rearm_prints_only_the_error(home: Path) -> None:
    assert run("client", "ipk", KEY).exit_code == 0
    for _ in range(3):
        assert run("client", "rearm").exit_code == 0
    fourth = no_traceback(run("client", "rearm"))
    assert (fourth.exit_code, fourth.stdout) == (1, "")
    assert fourth.stderr.startswith(
        f"Error: 0xC004D307 {describe(HResult.REARM_LIMIT_EXCEEDED).message}"
    )
    body = failed(run("client", "rearm", "--json"), "rearm_limit_exceeded")
    assert body["error"]["hresult"] == "0xC004D307" and body["rearms_left"] == 0


@pytest.mark.parametrize("verb", ["dli", "dlv", "xpr"])
def test_licence_verbs_without_a_key_exit_1(home: Path, verb: str) -> None:
    text = no_traceback(run("client", verb))
    assert (text.exit_code, text.stdout) == (1, "")
    assert text.stderr.startswith("Error: Product key not found.")
    failed(run("client", verb, "--json"), "product_key_not_found")


# -- client verbs' JSON codes ----------------------------------------------------------------


def test_client_verbs_name_the_hresult_as_client_activate_does(home: Path) -> None:
    assert run("client", "ipk", KEY).exit_code == 0
    assert run("client", "skms", "127.0.0.1:1").exit_code == 0
    body = failed(run("client", "ato", "--json"), "no_kms_host")
    assert body["error"]["hresult"] == "0xC004F074"
    assert body["error"]["hint"] == describe(HResult.NO_KMS_HOST).hint
    body = failed(run("client", "ipk", "nope", "--json"), "product_key_invalid")
    assert body["error"]["hresult"] == "0xC004F050"
    activate = failed(
        run(
            "client",
            "activate",
            "--host",
            "127.0.0.1:1",
            "--product",
            "windows-11-pro",
            "--timeout",
            "1",
            "--json",
        ),
        "no_kms_host",
    )
    assert activate["cause"] == "0x800706BA"


# -- sim run --out, --product ------------------------------------------------------------------


def test_sim_out_that_cannot_be_made_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker / "report", Path("/proc/kmsemu-cannot-be-made")):
        text = no_traceback(run("sim", "run", "--builtin", "kms-threshold", "--out", str(out)))
        assert text.exit_code == 1, text.output
        assert text.stderr.startswith("Error: Cannot write there. (--out ")
        failed(
            run("sim", "run", "--builtin", "kms-threshold", "--out", str(out), "--json"),
            "write_failed",
        )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_sim_out_without_permission(home: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    failed(
        run("sim", "run", "--builtin", "kms-threshold", "--out", str(locked / "x"), "--json"),
        "write_failed",
    )


def test_a_mistyped_product_is_a_usage_error(home: Path) -> None:
    for args in (
        ["client", "activate", "--host", "127.0.0.1:1"],
        ["keys", "mint", "--type", "kms-client"],
    ):
        result = no_traceback(run(*args, "--product", "windows 11 pr"))
        assert result.exit_code == 2
        assert "did you mean windows-11-pro" in result.stderr
        assert len(result.stderr.splitlines()) < 8  # a hint, not the catalog


# -- the CLI speaks CLI --------------------------------------------------------------------------


def test_service_hints_in_text_output_name_flags_not_http(home: Path) -> None:
    from tests.conftest import closed_url

    sock, url = closed_url()
    with sock:
        # the service's hint names HTTP things; its CLI hint names flags
        unreachable = no_traceback(run("mak", "keys", "--url", url))
    assert unreachable.exit_code == 1 and "--url" in unreachable.stderr
    for word in ("openapi", "Authorization", "Retry-After"):
        assert word not in unreachable.stderr


# -- profile names, non-UTF-8 and NUL arguments ------------------------------------------------


def test_bad_profile_names_and_arguments_are_usage_errors(home: Path) -> None:
    for name in ("", "a/b", "x" * 70, "name\n"):
        assert no_traceback(run("client", "--profile", name, "dli")).exit_code == 2, name
    assert no_traceback(run("keys", "check", "bad\udcffbytes")).exit_code == 2
    assert "not UTF-8" in run("keys", "check", "bad\udcffbytes").stderr
    assert no_traceback(run("keys", "check", "a\x00b")).exit_code == 2


def test_unwritable_home_is_write_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KMSEMU_HOME", str(blocker / "home"))
    failed(run("client", "ipk", KEY, "--json"), "write_failed")


def test_the_clock_range_is_what_the_hint_says(home: Path) -> None:
    at = failed(
        run("client", "clock", "--at", "3001-01-01T00:00:00Z", "--json"), "clock_out_of_range"
    )
    assert "2999" in at["error"]["hint"]
    ok = run("client", "clock", "--at", "2999-06-01T00:00:00+00:00", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["clock"].startswith("2999-06-01")
    assert datetime.fromisoformat(json.loads(ok.stdout)["clock"]).tzinfo == UTC
