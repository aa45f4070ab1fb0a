"""``kmsemu lab``: the KMS host, its DNS zone and the MAK service in one real process."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.conftest import kmsemu_command, start_until_ready


class Lab:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.process, rest, self.lines = start_until_ready(
            kmsemu_command("lab", "--kms-listen", "127.0.0.1:0", "--dns-listen",
                           "127.0.0.1:0", "--mak-listen", "127.0.0.1:0", "--quiet"),
            "ready lab", {"KMSEMU_HOME": str(home)})
        fields = dict(item.split("=", 1) for item in rest.split())
        host, _, port = fields["kms"].rpartition(":")
        self.kms = (host, int(port))
        host, _, port = fields["dns"].rpartition(":")
        self.dns = (host, int(port))
        self.mak = fields["mak"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab(tmp_path / "home")
    try:
        yield running
    finally:
        running.stop()


def test_the_summary_says_what_listens_where(lab: Lab) -> None:
    text = "\n".join(lab.lines)
    assert f"KMS host   127.0.0.1:{lab.kms[1]}" in text
    assert f"_vlmcs._tcp.lab.test SRV -> kms.lab.test:{lab.kms[1]}" in text
    assert f"MAK+portal {lab.mak}" in text
    assert str(lab.home / "mak" / "admin-token") in text


def test_dns_publishes_the_host_with_its_address(lab: Lab) -> None:
    query = dns.message.make_query("_vlmcs._tcp.lab.test", dns.rdatatype.SRV)
    answer = dns.query.udp(query, lab.dns[0], port=lab.dns[1], timeout=5)
    srv = [rd for rrset in answer.answer for rd in rrset]
    assert [(rd.port, rd.target.to_text()) for rd in srv] == [(lab.kms[1], "kms.lab.test.")]
    glue = {rd.to_text() for rrset in answer.additional for rd in rrset}
    assert glue == {"127.0.0.1"}


def test_the_host_counts_and_the_mak_service_answers(lab: Lab) -> None:
    result = subprocess.run(
        kmsemu_command("client", "activate", "--host", f"127.0.0.1:{lab.kms[1]}", "--product",
                       "windows-server-2022-standard", "--json"),
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "KMSEMU_HOME": str(lab.home)})
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
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            kmsemu_command("lab", "--kms-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0",
                           "--mak-listen", f"127.0.0.1:{taken.getsockname()[1]}", "--quiet"),
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "KMSEMU_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "the lab could not start" in result.stderr and "in use" in result.stderr
    assert 'stopped reason="start failed"' in result.stderr
