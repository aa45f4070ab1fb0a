"""`kmsemu host requests`: the host's 12290 log, read from records real activations left.

Every record here comes from `kmsemu client activate` against a real host (a
``BackgroundHost`` or a `kmsemu host serve` process); every expected line and field is
written out in the test, never read from the code under test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import kmsemu_command, start_host_process, stop_host_process

from kmsemu.cli import main
from kmsemu.clock import FakeClock
from kmsemu.testing import BackgroundHost

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the host's clock in these tests
CMID_A = "174d1b52-2b07-4a4e-8c5d-2f0a3c1b9e6d"
CMID_B = "9f3c0e11-77aa-4b1e-9d2c-5e6f7a8b9c0d"
W11_PRO = "54cb0ac5-d4ac-593a-808d-377c43341134"
OFFICE_2024 = "office-ltsc-2024-proplus"
NIL = "00000000-0000-0000-0000-000000000000"
HEADER = re.compile(r"^Request (\d+) at (\S+) from 127\.0\.0\.1:\d+$")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KMSEMU_SECRET", raising=False)
    return tmp_path / "home"


@pytest.fixture
def fixed_host(home: Path) -> Iterator[tuple[BackgroundHost, FakeClock]]:
    """A host whose clock stands at 2026-01-01T00:00:00Z until a test moves it."""
    clock = FakeClock(float(T0))
    host = BackgroundHost(home / "host", clock=clock).start()
    try:
        yield host, clock
    finally:
        host.stop()


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def activate(
    host: BackgroundHost, product: str, *extra: str, client_at: float | None = None
) -> Result:
    """One activation; ``client_at``: the client's clock (Unix seconds), default real time."""
    offset = [] if client_at is None else ["--clock-offset", f"{client_at - time.time():.3f}s"]
    result = cli(
        "client", "activate", "--host", host.host_port, "--product", product,
        "--timeout", "2", *offset, *extra,
    )  # fmt: skip
    assert "Traceback" not in result.output
    return result


def requests(host: BackgroundHost, *args: str) -> Result:
    host.flush()
    return cli("host", "requests", "--state", str(host.state_dir), *args)


def blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.strip().split("\n\n")]


def as_json(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    records: list[dict[str, Any]] = json.loads(result.stdout)["requests"]
    return records


def test_each_record_shows_the_fields_of_event_12290(
    fixed_host: tuple[BackgroundHost, FakeClock],
) -> None:
    host, clock = fixed_host
    # the client's clock an hour ahead of the host's: the client time is the request's own
    activate(host, "windows-11-pro", "--cmid", CMID_A, "--name", "ws-1", client_at=T0 + 3600)
    clock.advance(60)
    activate(
        host, OFFICE_2024, "--cmid", CMID_B, "--name", "office-pc", "--vm",
        "--license-status", "5", "--required-count", "3", client_at=T0 + 60,
    )  # fmt: skip
    clock.advance(60)
    host.fail("0xC004F042", product="windows-11-enterprise")
    activate(host, "windows-11-enterprise", "--cmid", CMID_A, "--name", "ws-1")
    clock.advance(60)
    activate(host, "windows-11-pro", "--secret", "not-the-lab-secret")  # never opened

    result = requests(host)
    assert result.exit_code == 0, result.output
    first, second, third, fourth = blocks(result.stdout)

    assert HEADER.match(first[0]) and first[0].startswith("Request 1 at 2026-01-01T00:00:00Z ")
    assert first[1:3] == [
        "    HRESULT: 0x00000000",
        "    Activation ID: 54cb0ac5-d4ac-593a-808d-377c43341134 (Windows 11 Pro)",
    ]
    assert first[3] in (
        "    Client time: 2026-01-01T01:00:00Z",
        "    Client time: 2026-01-01T01:00:01Z",
    )
    assert first[4:] == [
        "    Minutes to expiration: 43200",
        "    License state: 2 (Initial grace period)",
        "    Minimum count: 25",
        "    CMID: 174d1b52-2b07-4a4e-8c5d-2f0a3c1b9e6d",
        "    Workstation name: ws-1",
        "    Virtual machine: No",
        "    Current count: 1",
    ]

    assert second[0].startswith("Request 2 at 2026-01-01T00:01:00Z from 127.0.0.1:")
    assert second[1] == "    HRESULT: 0x00000000"
    assert second[2] == (
        "    Activation ID: cb10b4d0-c71b-545d-a00c-6ba420b32cdc"
        " (Office LTSC Professional Plus 2024)"
    )
    assert second[3] in (
        "    Client time: 2026-01-01T00:01:00Z",
        "    Client time: 2026-01-01T00:01:01Z",
    )
    assert second[4:] == [
        "    Minutes to expiration: 43200",
        "    License state: 5 (Notification)",
        "    Minimum count: 3",
        "    CMID: 9f3c0e11-77aa-4b1e-9d2c-5e6f7a8b9c0d",
        "    Workstation name: office-pc",
        "    Virtual machine: Yes",
        "    Current count: 1",
    ]

    assert third[0].startswith("Request 3 at 2026-01-01T00:02:00Z from 127.0.0.1:")
    assert third[1] == "    HRESULT: 0xC004F042"
    assert third[2] == (
        "    Activation ID: e00a2fc7-b003-57c0-a5b6-3331a3b90984 (Windows 11 Enterprise)"
    )
    assert "    CMID: 174d1b52-2b07-4a4e-8c5d-2f0a3c1b9e6d" in third
    assert third[-1] == "    Reason: fault 1"

    assert fourth[0].startswith("Request 4 at 2026-01-01T00:03:00Z from 127.0.0.1:")
    assert fourth[1:] == [
        "    HRESULT: 0x80070005",
        "    Activation ID: -",
        "    Client time: -",
        "    Minutes to expiration: -",
        "    License state: -",
        "    Minimum count: -",
        "    CMID: 00000000-0000-0000-0000-000000000000",
        "    Workstation name: -",
        "    Virtual machine: -",
        "    Current count: 0",
        "    Reason: unknown key id",
    ]


def test_json_gives_every_field_under_stable_names(
    fixed_host: tuple[BackgroundHost, FakeClock],
) -> None:
    host, _ = fixed_host
    activate(host, "windows-11-pro", "--cmid", CMID_A, "--name", "ws-1", client_at=T0)
    result = requests(host, "--json")
    document = json.loads(result.stdout)
    assert list(document) == ["requests", "state"]
    assert document["state"] == str(host.state_dir / "host.sqlite3")
    (record,) = document["requests"]
    assert list(record) == [
        "id", "time", "peer", "hresult", "status", "activation_id", "product",
        "product_key", "client_time", "request_time", "minutes_to_expiration",
        "license_status", "required_client_count", "client_machine_id",
        "workstation_name", "virtual_machine", "application_id", "kms_count_id",
        "current_count", "reason",
    ]  # fmt: skip
    assert record["client_time"] in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    # FILETIME of 2026-01-01T00:00:00Z is 134116992000000000; the client is within 2 s of it
    assert 0 <= record["request_time"] - 134_116_992_000_000_000 < 20_000_000
    assert record["peer"].startswith("127.0.0.1:")
    del record["client_time"], record["request_time"], record["peer"]
    assert record == {
        "id": 1,
        "time": "2026-01-01T00:00:00Z",
        "hresult": "0x00000000",
        "status": 0,
        "activation_id": W11_PRO,
        "product": "Windows 11 Pro",
        "product_key": "windows-11-pro",
        "minutes_to_expiration": 43200,
        "license_status": {"value": 2, "name": "Initial grace period"},
        "required_client_count": 25,
        "client_machine_id": CMID_A,
        "workstation_name": "ws-1",
        "virtual_machine": False,
        "application_id": "55c92734-d682-4d71-983e-d6ec3f16059f",
        "kms_count_id": "dbbf4050-193f-5582-ad7e-91a689d61743",
        "current_count": 1,
        "reason": "",
    }


def test_records_come_oldest_first_and_last_keeps_the_newest(
    fixed_host: tuple[BackgroundHost, FakeClock],
) -> None:
    host, clock = fixed_host
    for name in ("pc-1", "pc-2", "pc-3"):
        activate(host, "windows-11-pro", "--name", name, client_at=clock.now())
        clock.advance(1)
    names = [r["workstation_name"] for r in as_json(requests(host, "--json"))]
    assert names == ["pc-1", "pc-2", "pc-3"]
    assert [r["time"] for r in as_json(requests(host, "--json"))] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02Z",
    ]
    assert [r["workstation_name"] for r in as_json(requests(host, "--json", "--last", "2"))] == [
        "pc-2",
        "pc-3",
    ]
    assert [r["id"] for r in as_json(requests(host, "--json", "--last", "0"))] == [1, 2, 3]
    text = requests(host, "--last", "1").stdout
    assert [b[0].split(" at ")[0] for b in blocks(text)] == ["Request 3"]
    refused = requests(host, "--last", "-1")
    assert refused.exit_code == 2
    assert (
        "Invalid value for '--last': -1 is not in the range 0<=x<=9223372036854775807."
        in refused.stderr
    )


def test_since_takes_an_iso_time_or_a_duration_back_from_now(home: Path) -> None:
    now = time.time()
    clock = FakeClock(now - 3 * 3600)  # the first request three hours ago
    with BackgroundHost(home / "host", clock=clock) as host:
        activate(host, "windows-11-pro", "--name", "early", client_at=clock.now())
        clock.advance(3 * 3600)
        activate(host, "windows-11-pro", "--name", "late")

        def since(value: str) -> list[str]:
            return [
                r["workstation_name"] for r in as_json(requests(host, "--json", "--since", value))
            ]

        assert since("2h") == ["late"]
        assert since("-2h") == ["late"]
        assert since("4h") == ["early", "late"]
        assert since("90m") == ["late"]
        assert since("2000-01-01") == ["early", "late"]
        hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
        assert since(hour_ago) == ["late"]
        assert since(hour_ago.replace("Z", "+00:00")) == ["late"]
        assert since("2999-01-01T00:00:00Z") == []
        assert requests(host, "--since", "2999-01-01").stdout == "No requests logged.\n"

        ahead = requests(host, "--since", "+2h")
        assert ahead.exit_code == 2
        assert "'+2h': --since counts back from now, give 2h" in ahead.stderr
        bad = requests(host, "--since", "yesterday")
        assert bad.exit_code == 2
        assert (
            "Invalid value for '--since': 'yesterday' is neither an ISO 8601 date or time "
            "(2026-12-01, 2026-12-01T08:00:00Z) nor a duration back from now (90m, 2h, 7d)"
        ) in bad.stderr.replace("\n", " ").replace("  ", " ")


def test_client_filters_by_cmid_in_any_case(
    fixed_host: tuple[BackgroundHost, FakeClock],
) -> None:
    host, _ = fixed_host
    activate(host, "windows-11-pro", "--cmid", CMID_A, "--name", "a-1", client_at=T0)
    activate(host, "windows-11-pro", "--cmid", CMID_B, "--name", "b-1", client_at=T0)
    activate(host, "windows-11-pro", "--cmid", CMID_A, "--name", "a-2", client_at=T0)

    def only(cmid: str, *extra: str) -> list[str]:
        records = as_json(requests(host, "--json", "--client", cmid, *extra))
        return [r["workstation_name"] for r in records]

    assert only(CMID_A) == ["a-1", "a-2"]
    assert only(CMID_A.upper()) == ["a-1", "a-2"]
    assert only("{" + CMID_B + "}") == ["b-1"]
    assert only(CMID_A, "--last", "1") == ["a-2"]
    assert only("0b9a3f7e-0000-4000-8000-000000000001") == []
    text = requests(host, "--client", CMID_B).stdout
    assert "    CMID: 9f3c0e11-77aa-4b1e-9d2c-5e6f7a8b9c0d" in text.splitlines()
    assert "174d1b52" not in text


@pytest.mark.parametrize("bad", ["not-a-guid", "174d1b52-2b07-4a4e-8c5d", ""])
def test_a_malformed_cmid_is_a_usage_error(
    fixed_host: tuple[BackgroundHost, FakeClock], bad: str
) -> None:
    host, _ = fixed_host
    result = requests(host, "--client", bad)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"Invalid value for '--client': {bad!r} is not a CMID" in result.stderr


def test_a_missing_database_fails_as_host_status_does(tmp_path: Path, home: Path) -> None:
    state = tmp_path / "nowhere"
    result = cli("host", "requests", "--state", str(state))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        result.stderr.splitlines()[0] == f"Error: No KMS host state was found. (looked in {state})"
    )
    assert result.stderr == cli("host", "status", "--state", str(state)).stderr
    as_js = cli("host", "requests", "--state", str(state), "--json")
    assert as_js.exit_code == 1
    assert json.loads(as_js.stdout)["error"]["code"] == "no_state"
    assert not state.exists()  # reading never creates a state
    # without --state, the same error names $KMSEMU_HOME/host
    default = cli("host", "requests")
    assert default.exit_code == 1
    assert f"(looked in {home / 'host'})" in default.stderr


def test_a_file_that_is_no_host_database_is_no_state(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    result = cli("host", "requests", "--state", str(empty))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: No KMS host state was found. (")


def test_the_lab_database_is_read_without_state(home: Path) -> None:
    with BackgroundHost(home / "lab.sqlite3") as host:  # the host's tables in the lab's file
        activate(host, "windows-11-pro", "--cmid", CMID_A, "--name", "lab-pc")
        host.flush()
    result = cli("host", "requests", "--json")
    document = json.loads(result.stdout)
    assert document["state"] == str(home / "lab.sqlite3")
    assert [r["workstation_name"] for r in document["requests"]] == ["lab-pc"]


def test_a_running_host_process_is_read_while_it_writes(tmp_path: Path) -> None:
    state = tmp_path / "host"
    home = tmp_path / "home"
    env = {**os.environ, "KMSEMU_HOME": str(home)}
    host = start_host_process(state)
    try:
        address = f"{host.address[0]}:{host.address[1]}"
        for n in range(3):
            result = cli(
                "client", "activate", "--host", address, "--product", "windows-11-pro",
                "--cmid", CMID_A if n != 1 else CMID_B, "--name", f"proc-{n}", "--timeout", "5",
            )  # fmt: skip
            assert "Status: 0x00000000" in result.stdout, result.output

            deadline = time.monotonic() + 10  # the host writes its log in batches
            while True:
                out = subprocess.run(
                    kmsemu_command("host", "requests", "--state", str(state), "--json"),
                    capture_output=True, text=True, timeout=30, env=env,
                )  # fmt: skip
                assert out.returncode == 0, out.stderr
                seen = [r["workstation_name"] for r in json.loads(out.stdout)["requests"]]
                if len(seen) == n + 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert seen == [f"proc-{i}" for i in range(n + 1)]

        text = subprocess.run(
            kmsemu_command("host", "requests", "--state", str(state), "--client", CMID_B),
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert text.returncode == 0, text.stderr
        (block,) = blocks(text.stdout)
        assert HEADER.match(block[0]) and block[0].startswith("Request 2 at ")
        assert block[1:3] == [
            "    HRESULT: 0x00000000",
            "    Activation ID: 54cb0ac5-d4ac-593a-808d-377c43341134 (Windows 11 Pro)",
        ]
        assert block[4:] == [
            "    Minutes to expiration: 43200",
            "    License state: 2 (Initial grace period)",
            "    Minimum count: 25",
            "    CMID: 9f3c0e11-77aa-4b1e-9d2c-5e6f7a8b9c0d",
            "    Workstation name: proc-1",
            "    Virtual machine: No",
            "    Current count: 2",
        ]
    finally:
        assert stop_host_process(host) == 0


def test_host_status_prints_current_count_per_licence(home: Path) -> None:
    with BackgroundHost(home / "host") as host:  # status counts on the real clock
        activate(host, "windows-11-pro", "--cmid", CMID_A)
        host.flush()
        result = cli("host", "status", "--state", str(host.state_dir))
    lines = result.stdout.splitlines()
    windows = lines.index("Licence: Windows")
    office = lines.index("Licence: Office")
    assert lines[windows + 1 : windows + 3] == [
        "Key Management Service is enabled on this machine",
        "    Current count: 1",
    ]
    assert lines[office + 1 : office + 3] == [
        "Key Management Service is enabled on this machine",
        "    Current count: 0",
    ]
    assert not any("Current count (" in line for line in lines)
    report = json.loads(cli("host", "status", "--state", str(home / "host"), "--json").stdout)
    assert report["counts"] == {"Windows": 1, "Office": 0}
