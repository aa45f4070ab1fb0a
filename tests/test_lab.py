"""``kmsemu lab``: the KMS host, its DNS zone and the MAK service in one real process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.conftest import kmsemu_command, run_into_a_taken_port, start_until_ready
from tests.httpraw import request

TOKEN = "lab-test-token"


def lab_listen(http: str = "127.0.0.1:0") -> list[str]:
    """The lab's listen flags: free ports on 127.0.0.1 (HTTP on ``http``)."""
    return ["--kms-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0", "--http-listen", http]


class Lab:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.process, rest, self.lines = start_until_ready(
            kmsemu_command("lab", *lab_listen(), *args),
            "ready lab",
            {"KMSEMU_HOME": str(home), **(env or {})},
        )
        fields = dict(item.split("=", 1) for item in rest.split())
        host, _, port = fields["kms"].rpartition(":")
        self.kms = (host, int(port))
        host, _, port = fields["dns"].rpartition(":")
        self.dns = (host, int(port))
        self.mak = fields["mak"]
        assert fields["http"] == self.mak
        host, _, port = self.mak.removeprefix("http://").rpartition(":")
        self.http = (host, int(port))

    def activate(self, *args: str) -> dict[str, Any]:
        result = subprocess.run(
            kmsemu_command(
                "client", "activate", "--host", f"127.0.0.1:{self.kms[1]}", "--json", *args
            ),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "KMSEMU_HOME": str(self.home)},
        )
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply

    def state(self, token: str | None = None) -> dict[str, Any]:
        reply = request(self.http, "GET", "/lab/api/state", token=token)
        assert reply.status == 200, reply
        state: dict[str, Any] = reply.body
        return state

    def wait_for_line(self, text: str) -> str:
        """The first stderr line containing ``text`` (bounded wait: the pipe is drained by a
        thread; the lab writes its log within a quarter of a second)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab(tmp_path / "home", "--quiet")
    try:
        yield running
    finally:
        running.stop()


def test_the_summary_says_what_listens_where(lab: Lab) -> None:
    text = "\n".join(lab.lines)
    assert f"KMS host   127.0.0.1:{lab.kms[1]}" in text
    assert f"_vlmcs._tcp.lab.test SRV -> kms.lab.test:{lab.kms[1]}" in text
    assert f"MAK+portal {lab.mak}" in text
    assert f"Dashboard  {lab.mak}/" in text
    assert f"State      {lab.home / 'lab.sqlite3'}" in text
    assert str(lab.home / "mak" / "admin-token") in text


def test_dns_publishes_the_host_with_its_address(lab: Lab) -> None:
    query = dns.message.make_query("_vlmcs._tcp.lab.test", dns.rdatatype.SRV)
    answer = dns.query.udp(query, lab.dns[0], port=lab.dns[1], timeout=5)
    srv = [rd for rrset in answer.answer for rd in rrset]
    assert [(rd.port, rd.target.to_text()) for rd in srv] == [(lab.kms[1], "kms.lab.test.")]
    glue = {rd.to_text() for rrset in answer.additional for rd in rrset}
    assert glue == {"127.0.0.1"}


def test_the_published_address_can_be_named(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "home", "--kms-address", "192.0.2.10", "--quiet")
    try:
        query = dns.message.make_query("kms.lab.test", dns.rdatatype.A)
        answer = dns.query.udp(query, lab.dns[0], port=lab.dns[1], timeout=5)
        assert [rd.to_text() for rrset in answer.answer for rd in rrset] == ["192.0.2.10"]
    finally:
        assert lab.stop() == 0


def test_the_host_counts_and_the_mak_service_answers(lab: Lab) -> None:
    result = subprocess.run(
        kmsemu_command(
            "client",
            "activate",
            "--host",
            f"127.0.0.1:{lab.kms[1]}",
            "--product",
            "windows-server-2022-standard",
            "--json",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KMSEMU_HOME": str(lab.home)},
    )
    reply = json.loads(result.stdout)
    assert reply["current_count"] == 1 and reply["status"] == 0, result  # counted, below 5
    host, _, port = lab.mak.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/v1/health")
        assert json.loads(conn.getresponse().read())["status"] == "ok"
    finally:
        conn.close()


def test_sigterm_stops_everything_cleanly(lab: Lab) -> None:
    assert lab.stop() == 0
    assert any("stopped" in line for line in lab.lines)


def test_a_port_in_use_fails_cleanly_with_nothing_left_running(tmp_path: Path) -> None:
    result, port = run_into_a_taken_port(
        lambda port: ["lab", *lab_listen(http=f"127.0.0.1:{port}"), "--quiet"], tmp_path
    )
    assert result.returncode == 1
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert "The lab could not start." in error and "in use" in error
    assert f"127.0.0.1:{port} (--http-listen)" in error  # which address, which flag
    assert 'stopped reason="start failed"' in result.stderr
    assert list(tmp_path.iterdir()) == []  # a lab that never started leaves no state


def test_health_readiness_and_metrics(lab: Lab) -> None:
    assert request(lab.http, "GET", "/healthz").body == {"status": "ok"}
    ready = request(lab.http, "GET", "/readyz")
    assert ready.status == 200
    assert ready.body == {
        "ready": True,
        "components": {"kms": True, "dns": True, "http": True, "database": True},
    }
    lab.activate("--product", "windows-11-pro", "--name", "PC-1")  # 1 of 25: not yet
    lab.activate("--product", "windows-11-pro", "--name", "PC-2", "--required-count", "1")
    text = request(lab.http, "GET", "/metrics").raw.decode()
    assert 'kmsemu_kms_requests_total{product="windows-11-pro",result="0xC004F038"} 1.0' in text
    assert 'kmsemu_kms_requests_total{product="windows-11-pro",result="0x00000000"} 1.0' in text
    assert "kmsemu_kms_request_duration_seconds_count 2.0" in text
    assert "kmsemu_host_store_failures_total 0.0" in text  # the store took every flush
    assert "kmsemu_host_pending_rows " in text
    assert 'kmsemu_kms_count{application="Windows"} 2.0' in text
    assert 'kmsemu_http_requests_total{method="GET",route="/readyz",status="200"} 1.0' in text
    assert "kmsemu_lab_clock_offset_seconds 0.0" in text


def test_the_dashboard_state_shows_clients_requests_and_duplicate_cmids(lab: Lab) -> None:
    cmid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    lab.activate("--product", "windows-11-pro", "--name", "GOLD-1", "--cmid", cmid)
    lab.activate("--product", "windows-11-pro", "--name", "GOLD-2", "--cmid", cmid)
    lab.activate(
        "--product", "office-ltsc-2021-proplus", "--name", "OFFICE-1", "--required-count", "1"
    )
    state = lab.state()
    assert state["read_only"] is True  # loopback: readable without the token
    office, gold = state["clients"]
    assert gold["cmid"] == cmid and gold["names"] == ["GOLD-1", "GOLD-2"] and gold["duplicate"]
    assert gold["licence"]["state"] == "not_activated" and gold["hresult"] == "0xC004F038"
    assert office["licence"]["state"] == "licensed" and not office["duplicate"]
    assert [r["hresult"] for r in state["requests"]] == ["0x00000000", "0xC004F038", "0xC004F038"]
    assert state["totals"] == {"requests": 3, "failed": 0, "below_threshold": 2}
    counts = {c["application"]: c for c in state["counts"]}
    assert counts["Windows"]["count"] == 1 and counts["Windows"]["thresholds"] == [5, 25]
    assert [r["type"] for r in state["dns"]["records"]] == ["SOA", "NS", "SRV", "A"]


def test_time_travel_needs_the_token_and_lapses_licences(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "home", "--admin-token", TOKEN, "--quiet")
    try:
        lab.activate("--product", "windows-11-pro", "--name", "PC-1", "--required-count", "1")
        refused = request(lab.http, "POST", "/lab/api/clock", {"advance": "181d"})
        assert refused.status == 401 and refused.body["error"]["code"] == "unauthorized"
        bad = request(lab.http, "POST", "/lab/api/clock", {"advance": "soon"}, token=TOKEN)
        assert bad.status == 422 and bad.body["error"]["code"] == "invalid_field"
        assert lab.state()["clock_offset"] == 0
        moved = request(lab.http, "POST", "/lab/api/clock", {"advance": "181d"}, token=TOKEN)
        assert moved.status == 200 and moved.body["read_only"] is False
        assert moved.body["clock_offset"] == 181 * 86_400
        (client,) = moved.body["clients"]
        assert client["licence"]["state"] == "lapsed"
        assert {c["application"]: c["count"] for c in moved.body["counts"]}["Windows"] == 0
        # the whole lab moved: a client's request counts as moved too and renews...
        lab.activate("--product", "windows-11-pro", "--name", "PC-1", "--required-count", "1")
        assert lab.state()["clients"][0]["licence"]["state"] == "licensed"
        # ...while a client whose own clock is 5 hours off is still refused for it
        reply = lab.activate(
            "--product", "windows-11-pro", "--name", "PC-2", "--clock-offset", "5h"
        )
        assert reply["error"]["hresult"] == "0xC004F06C", reply
        assert lab.state()["requests"][0]["hresult"] == "0xC004F06C"
        # the host's own report follows the lab clock, once the host has written its batch
        # of rows (every quarter of a second; the answers were journaled before they left)
        for _ in range(100):
            status = subprocess.run(
                kmsemu_command("host", "status", "--json"),
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "KMSEMU_HOME": str(lab.home)},
            )
            if json.loads(status.stdout)["requests"]["total"] == 3:
                break
        assert json.loads(status.stdout)["counts"]["Windows"] == 1, status
        assert json.loads(status.stdout)["dns_publish"] == ["lab.test"]  # the lab's own zone
        named = subprocess.run(
            kmsemu_command("host", "status", "--json", "--state", str(lab.home / "lab.sqlite3")),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(named.stdout)["requests"]["total"] == 3, named
        back = request(lab.http, "POST", "/lab/api/clock", {"reset": True}, token=TOKEN)
        assert back.body["clock_offset"] == 0
    finally:
        assert lab.stop() == 0


def test_everything_is_kept_in_one_sqlite_file_across_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lab = Lab(home, "--admin-token", TOKEN, "--quiet")
    lab.activate("--product", "windows-11-pro", "--name", "KEPT", "--required-count", "1")
    key = subprocess.run(
        kmsemu_command("keys", "mint", "--type", "mak", "--product", "windows-11-pro", "--json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    added = request(
        lab.http,
        "POST",
        "/v1/keys",
        {"key": json.loads(key.stdout)["key"], "limit": 5},
        token=TOKEN,
    )
    assert added.status in (200, 201), added
    request(lab.http, "POST", "/lab/api/clock", {"advance": "3d"}, token=TOKEN)
    assert lab.stop() == 0
    files = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())
    assert files == ["lab.sqlite3"]
    again = Lab(home, "--admin-token", TOKEN, "--quiet")
    try:
        state = again.state()
        assert state["clock_offset"] == 3 * 86_400
        assert [c["name"] for c in state["clients"]] == ["KEPT"]
        assert state["totals"]["requests"] == 1
        assert [(k["used"], k["remaining"]) for k in state["mak"]["keys"]] == [(0, 5)]
    finally:
        assert again.stop() == 0


def test_sighup_reloads_what_it_can_and_says_what_needs_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = home / "lab.toml"
    config.write_text('[lab]\nmin_count = 0\nzone = "lab.test"\nrenewal_interval = 10080\n')
    lab = Lab(home, "--renewal-interval", "1440")  # the command line beats the file
    try:
        assert lab.state()["host"]["renewal_interval"] == 1440
        config.write_text('[lab]\nmin_count = 25\nzone = "other.test"\nrenewal_interval = 60\n')
        lab.process.send_signal(signal.SIGHUP)
        line = lab.wait_for_line(" reload ")
        assert "applied min_count=25" in line
        assert "restart needed for zone" in line
        assert "kept from the command line or environment: renewal_interval" in line
        host = lab.state()["host"]
        assert (host["min_count"], host["renewal_interval"]) == (25, 1440)
        assert lab.activate("--product", "windows-11-pro")["current_count"] == 25
        config.write_text("[lab]\nmin_count = 'many'\n")
        lab.process.send_signal(signal.SIGHUP)
        assert "nothing changed" in lab.wait_for_line("lab.min_count must be int")
        assert lab.state()["host"]["min_count"] == 25
    finally:
        assert lab.stop() == 0


def test_json_logs_on_request(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "home", "--log-format", "json")
    try:
        lab.activate("--product", "windows-11-pro", "--name", "JSON-PC")
        lab.wait_for_line("JSON-PC")
    finally:
        assert lab.stop() == 0
    events = [json.loads(line) for line in lab.lines if not line.startswith("ready lab ")]
    assert {"started", "lab", "activation", "stopped"} <= {e.get("event") for e in events}
    assert all(e["time"].endswith("Z") for e in events)  # every line has its time


SIGTERM_RUNS = 50


def test_sigterm_right_after_ready_always_exits_0_and_keeps_every_answer(tmp_path: Path) -> None:
    """The handlers are in place before ``ready``: a SIGTERM at once never kills the lab
    with the default action (-15), and no answered activation misses the request log.
    Two labs at a time (two homes), each started SIGTERM_RUNS / 2 times."""
    from concurrent.futures import ThreadPoolExecutor

    from kmsemu.client.exchange import request_activation
    from kmsemu.host.store import HostStore
    from tests.test_end_to_end import KEY, make_request

    def runs(home: Path) -> list[str]:
        problems, answered = [], 0
        for run in range(SIGTERM_RUNS // 2):
            lab = Lab(home, "--quiet")
            if run % 2:  # every other run: one activation, answered, then the signal at once
                request_activation(("127.0.0.1", lab.kms[1]), make_request(), KEY, timeout=10)
                answered += 1
            lab.process.send_signal(signal.SIGTERM)
            code = lab.process.wait(10)
            store = HostStore(home / "lab.sqlite3", create=False)
            try:
                logged = store.request_totals()[0]
            finally:
                store.close()
            if code != 0 or logged != answered:
                problems.append(
                    f"{home.name} run {run}: exit {code}, {logged} of {answered} "
                    "answers logged\n" + "\n".join(lab.lines)
                )
        return problems

    with ThreadPoolExecutor(2) as pool:
        problems = [p for found in pool.map(runs, [tmp_path / "a", tmp_path / "b"]) for p in found]
    assert problems == []


def test_sighup_reads_a_file_made_after_the_start_and_refuses_what_start_refuses(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    lab = Lab(home)
    try:
        (home / "lab.toml").write_text("[lab]\nmin_count = 25\n")  # there was none at start
        lab.process.send_signal(signal.SIGHUP)
        assert "applied min_count=25" in lab.wait_for_line(" reload ")
        assert lab.state()["host"]["min_count"] == 25
        (home / "lab.toml").write_text("[lab]\nmin_count = 5000\n")  # --min-count allows 1000
        lab.process.send_signal(signal.SIGHUP)
        line = lab.wait_for_line("lab.min_count must be from 0 to 1000, not 5000")
        assert "nothing changed" in line
        assert lab.state()["host"]["min_count"] == 25
    finally:
        assert lab.stop() == 0
