"""Failures on demand: every fault kind through a real host and a real client.

Expectations are written out here (the HRESULT lines, licence states, event fields),
never read from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import kmsemu_command, start_host_process, stop_host_process

from kmsemu.cli import main
from kmsemu.host.faults import Fault, FaultSet, Phase, new_fault
from kmsemu.keys.product_key import setup_key
from kmsemu.testing import BackgroundHost

SERVER_KEY = str(setup_key(6))  # windows-server-2022-standard, threshold 5


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KMSEMU_SECRET", raising=False)
    return tmp_path / "home"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def client(profile: str, *args: str) -> Result:
    return cli("client", "--profile", profile, *args)


def activate(host: BackgroundHost, *extra: str, product: str = "windows-11-pro") -> Result:
    return cli(
        "client", "activate", "--host", host.host_port, "--product", product,
        "--timeout", "1", *extra,
    )  # fmt: skip


def error_line(result: Result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("Error: "))


def kms_events(profile: str) -> list[dict[str, Any]]:
    result = client(profile, "events", "--json")
    assert result.exit_code == 0, result.output
    return [e for e in json.loads(result.stdout)["events"] if e["id"] in (12288, 12289)]


def licence(profile: str) -> dict[str, Any]:
    result = client(profile, "dli", "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["license_status"])


def ready_profile(profile: str, host: BackgroundHost) -> None:
    assert client(profile, "ipk", SERVER_KEY).exit_code == 0
    assert client(profile, "skms", host.host_port).exit_code == 0


NO_HOST = "Error: 0xC004F074 No Key Management Service (KMS) could be contacted."
GRACE = {"value": 2, "name": "Initial grace period"}
LICENSED = {"value": 1, "name": "Licensed"}

# kind, what `client activate` prints first on stderr, what `client ato` prints,
# the 12288 event's hresult, the 12289 event's hresult (None: no 12289)
KINDS = [
    (
        "0xC004F042",
        "Error: 0xC004F042 The Software Licensing Service determined that the specified Key "
        "Management Service (KMS) cannot be used.",
        "Error: 0xC004F042 The Software Licensing Service determined that the specified Key "
        "Management Service (KMS) cannot be used.",
        "0xC004F042",
        "0xC004F042",
    ),
    (
        "timestamp_invalid",  # by its registry name
        "Error: 0xC004F06C The activation request timestamp is invalid.",
        NO_HOST,  # slmgr shows a skewed host as 0xC004F074
        "0xC004F06C",
        "0xC004F06C",
    ),
    ("refuse", NO_HOST, NO_HOST, "0x800706BA", None),
    ("close-after-bind", NO_HOST, NO_HOST, "0x800706BA", None),
    ("stall", NO_HOST, NO_HOST, "0x800706BA", None),
    ("reset", NO_HOST, NO_HOST, "0x800706BA", None),
    ("garbage", NO_HOST, NO_HOST, "0xC004F074", None),
]


@pytest.mark.parametrize(("kind", "activate_line", "ato_line", "sent", "answered"), KINDS)
def test_each_kind_as_a_client_sees_it(
    home: Path,
    kms_host: BackgroundHost,
    kind: str,
    activate_line: str,
    ato_line: str,
    sent: str,
    answered: str | None,
) -> None:
    kms_host.set_min_count(25)
    kms_host.fail(kind, times=1)
    one = activate(kms_host)
    assert one.exit_code == 1
    assert error_line(one).startswith(activate_line)
    assert activate(kms_host).exit_code == 0  # spent: the host answers again

    ready_profile("pc", kms_host)
    kms_host.fail(kind, times=1)
    ato = client("pc", "ato")
    assert ato.exit_code == 1
    assert error_line(ato).startswith(ato_line)
    assert licence("pc") == GRACE
    events = kms_events("pc")
    assert events[0]["id"] == 12288 and events[0]["hresult"] == sent
    if answered is None:
        assert [e["id"] for e in events] == [12288]
    else:
        assert [e["id"] for e in events] == [12288, 12289]
        assert events[1]["hresult"] == answered and events[1]["activated"] is False
    assert client("pc", "ato").exit_code == 0
    assert licence("pc") == LICENSED
    kms_host.flush()
    fired = [line for line in kms_host.log_lines if " fault kind=" in line]
    assert len(fired) == 2
    assert kms_host.faults_fired == {{"timestamp_invalid": "0xC004F06C"}.get(kind, kind): 2}


def test_slow_answers_after_the_delay(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(25)
    ready_profile("pc", kms_host)
    kms_host.fail("slow", delay=0.3, times=1)
    started = time.monotonic()
    ato = client("pc", "ato")
    assert ato.exit_code == 0
    assert ato.stdout.rstrip().endswith("Product activated successfully.")
    assert time.monotonic() - started >= 0.25  # it waited (timer granularity allowed)
    assert licence("pc") == LICENSED
    events = kms_events("pc")
    assert [(e["id"], e["hresult"]) for e in events] == [
        (12288, "0x00000000"),
        (12289, "0x00000000"),
    ]
    assert events[1]["activated"] is True
    kms_host.flush()
    assert any(" fault kind=slow " in line for line in kms_host.log_lines)


def test_times_fires_exactly_n_times(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(25)
    kms_host.fail("0xC004F042", times=3)
    codes = [activate(kms_host).exit_code for _ in range(5)]
    assert codes == [1, 1, 1, 0, 0]
    shown = cli("host", "fault", "show", "--state", str(kms_host.state_dir), "--json")
    assert json.loads(shown.stdout)["faults"] == []


def test_product_and_client_only_hit_matching_requests(
    home: Path, kms_host: BackgroundHost
) -> None:
    kms_host.set_min_count(25)
    kms_host.fail("0xC004F042", product="windows-11-pro")
    assert activate(kms_host, product="windows-11-pro").exit_code == 1
    assert activate(kms_host, product="windows-server-2022-standard").exit_code == 0
    kms_host.clear_faults()
    victim, other = str(uuid.uuid4()), str(uuid.uuid4())
    kms_host.fail("reset", client=victim.upper())
    assert error_line(activate(kms_host, "--cmid", victim)).startswith(NO_HOST)
    assert activate(kms_host, "--cmid", other).exit_code == 0
    assert activate(kms_host, "--cmid", victim).exit_code == 1  # until cleared


def test_for_expires_on_the_host_clock(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(25)
    kms_host.fail("refuse", duration=600.0)
    assert activate(kms_host).exit_code == 1
    kms_host.set_clock_offset(601.0)  # ten minutes and a second later
    assert activate(kms_host).exit_code == 0


def test_clear_removes_faults(home: Path, kms_host: BackgroundHost) -> None:
    kms_host.set_min_count(25)
    kms_host.fail("garbage")
    kms_host.fail("0xC004F042", product="windows-11-pro")
    assert activate(kms_host).exit_code == 1
    assert kms_host.clear_faults("garbage") == 1
    assert error_line(activate(kms_host)).startswith("Error: 0xC004F042 ")
    assert kms_host.clear_faults() == 1
    assert activate(kms_host).exit_code == 0


def wait_for_line(lines: list[str], text: str, start: int = 0, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines[start:]):
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(lines)
        time.sleep(0.02)


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        kmsemu_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, "KMSEMU_HOME": str(home)},
        timeout=30,
    )


def process_activate(address: tuple[str, int], home: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "client", "activate", "--host", f"{address[0]}:{address[1]}", "--product",
        "windows-11-pro", "--timeout", "2", home=home,
    )  # fmt: skip


def test_cli_fault_on_a_running_host_process_and_after_a_restart(tmp_path: Path) -> None:
    home, state = tmp_path / "home", tmp_path / "host"
    host = start_host_process(state, "--min-count", "25")
    try:
        assert process_activate(host.address, home).returncode == 0
        mark = len(host.stderr_lines)
        set_ = run("host", "fault", "set", "0xC004F042", "--state", str(state), home=home)
        assert set_.returncode == 0, set_.stderr
        assert set_.stdout.startswith("Fault 1: 0xC004F042, until cleared")
        wait_for_line(host.stderr_lines, " faults count=1 kinds=0xC004F042", mark)
        refused = process_activate(host.address, home)
        assert refused.returncode == 1
        assert "Error: 0xC004F042 " in refused.stderr
    finally:
        assert stop_host_process(host) == 0
    host = start_host_process(state, "--min-count", "25")  # the fault survives a restart
    try:
        assert "Error: 0xC004F042 " in process_activate(host.address, home).stderr
        mark = len(host.stderr_lines)
        cleared = run("host", "fault", "clear", "--all", "--state", str(state), home=home)
        assert cleared.stdout.strip() == "Cleared 1 fault(s)."
        wait_for_line(host.stderr_lines, " faults count=0", mark)
        assert process_activate(host.address, home).returncode == 0
        # --times counts across processes: set by one, spent by the host
        mark = len(host.stderr_lines)
        run("host", "fault", "set", "stall", "--times", "1", "--state", str(state), home=home)
        wait_for_line(host.stderr_lines, " faults count=1 kinds=stall", mark)
        assert "Error: 0xC004F074 " in process_activate(host.address, home).stderr
        assert process_activate(host.address, home).returncode == 0
        shown = run("host", "fault", "show", "--state", str(state), home=home)
        assert shown.stdout.strip() == "No faults set."
    finally:
        assert stop_host_process(host) == 0


def test_fault_show_lists_what_is_set(home: Path, tmp_path: Path) -> None:
    state = str(tmp_path / "host")
    cmid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    made = cli(
        "host", "fault", "set", "slow", "2s", "--times", "4", "--product", "windows-11-pro",
        "--state", state, "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["fault"]["kind"] == "slow"
    assert cli("host", "fault", "set", "PRODUCT_NOT_SERVED", "--client", cmid, "--for", "1h",
               "--state", state).exit_code == 0  # fmt: skip
    shown = cli("host", "fault", "show", "--state", state)
    lines = shown.stdout.splitlines()
    assert lines[0] == "Fault 1: slow, delay 2s, product windows-11-pro, 4 time(s) left"
    assert lines[1].startswith(f"Fault 2: 0xC004F042, client {cmid}, until cleared, expires ")
    data = json.loads(cli("host", "fault", "show", "--state", state, "--json").stdout)
    assert [(f["id"], f["kind"], f["remaining"], f["delay"]) for f in data["faults"]] == [
        (1, "slow", 4, 2.0),
        (2, "0xC004F042", None, 0.0),
    ]
    assert data["faults"][0]["sku_id"] == "54cb0ac5-d4ac-593a-808d-377c43341134"
    assert cli("host", "fault", "clear", "0xC004F042", "--state", state).stdout == (
        "Cleared 1 fault(s).\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "'bogus' is neither an activation HRESULT of the registry"),
        (["0x12345678"], "'0x12345678' is neither an activation HRESULT"),
        (["0x00000000"], "'0x00000000' is neither an activation HRESULT"),
        (["reset", "--times", "0"], "0 is not in the range 1<=x<=1000000"),
        (["reset", "--times", "-2"], "-2 is not in the range 1<=x<=1000000"),
        (["reset", "--for", "1000d"], "--for 8.64e+07 s: give more than 0 and at most 366d"),
        (["reset", "--for", "0s"], "--for 0 s: give more than 0 and at most 366d"),
        (["reset", "--for", "soon"], "'soon' is not a duration"),
        (["slow"], "slow needs a delay: 'slow 2s' or --delay 2s"),
        (["stall", "2s"], "a delay is for slow only, not stall"),
        (["refuse", "--product", "windows-11-pro"], "refuse acts before any request is read"),
        (["reset", "--client", "nope"], "--client 'nope' is not a CMID (a GUID)"),
        (["reset", "--product", "windows-99"], "no product 'windows-99' in the catalog"),
    ],
)
def test_bad_input_is_a_usage_error(
    home: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("host", "fault", "set", *args, "--state", str(tmp_path / "host"))
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "host" / "host.faults.json").exists()


def test_clear_needs_a_kind_or_all(home: Path, tmp_path: Path) -> None:
    result = cli("host", "fault", "clear", "--state", str(tmp_path / "host"))
    assert result.exit_code == 2
    assert "give a KIND or --all (not both)" in result.stderr


def test_fixture_refuses_bad_input(kms_host: BackgroundHost) -> None:
    from kmsemu.errors import ConfigError

    with pytest.raises(ConfigError, match="times 0"):
        kms_host.fail("reset", times=0)


# -- the pure part --------------------------------------------------------------------------


def test_fault_set_spends_and_round_trips() -> None:
    fault = new_fault("0xc004f042", now=100.0, times=2, duration=50.0)
    assert (fault.kind, fault.status, fault.expires) == ("0xC004F042", 0xC004F042, 150.0)
    faults = FaultSet().add(fault)
    assert FaultSet.from_bytes(faults.to_bytes()) == faults
    assert faults.first_match(Phase.REQUEST, 149.9) == faults.faults[0]
    assert faults.first_match(Phase.REQUEST, 150.0) is None  # expired
    assert faults.first_match(Phase.ACCEPT, 120.0) is None  # another phase
    once, fired = faults.spend(1)
    assert fired == Fault(
        id=1, kind="0xC004F042", status=0xC004F042, remaining=1, expires=150.0, set_at=100.0
    )
    twice, fired_again = once.spend(1)
    assert fired_again is not None and fired_again.remaining == 0
    assert twice.faults == ()
    assert twice.spend(1) == (twice, None)


def test_the_request_right_after_fault_set_or_clear_meets_it(tmp_path: Path) -> None:
    """A CI script runs `kmsemu host fault set X` and at once its client: `fault set` (and
    `fault clear`) return only once the running host obeys the file as written, so the
    very next request meets the change, every time (no waiting on the host's log here)."""
    home, state = tmp_path / "home", tmp_path / "host"
    host = start_host_process(state, "--min-count", "25")
    try:
        for _ in range(4):
            set_ = run("host", "fault", "set", "0xC004F042", "--state", str(state), home=home)
            assert set_.returncode == 0 and set_.stderr == "", set_.stderr
            assert "Error: 0xC004F042 " in process_activate(host.address, home).stderr
            cleared = run("host", "fault", "clear", "--all", "--state", str(state), home=home)
            assert cleared.returncode == 0 and cleared.stderr == "", cleared.stderr
            assert process_activate(host.address, home).returncode == 0
    finally:
        assert stop_host_process(host) == 0
    # no host runs now (its clean stop said so): nothing to wait for, no warning
    assert run("host", "fault", "set", "stall", "--state", str(state), home=home).stderr == ""
