"""A KMS host publishes itself into a real BIND 9 by TSIG-signed RFC 2136 update,
and a client profile finds and activates through it."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.keys.product_key import setup_key
from tests.conftest import start_host_process, stop_host_process

NAMED = shutil.which("named") or ("/usr/sbin/named" if os.path.exists("/usr/sbin/named") else None)
pytestmark = pytest.mark.skipif(
    NAMED is None, reason="BIND 9 (named) not installed: apt-get install bind9"
)
TSIG_SECRET = base64.b64encode(b"kmsemu lab tsig secret 32 bytes!").decode()


def _free_port() -> int:
    """A port free for both UDP and TCP (named listens on both; a busy machine may have the
    TCP side of a free UDP port in use)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@pytest.fixture
def bind_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    (tmp_path / "lab.test.zone").write_text(
        "$TTL 300\n@ IN SOA ns1.lab.test. hostmaster.lab.test. 1 3600 600 86400 300\n"
        "@ IN NS ns1.lab.test.\nns1 IN A 127.0.0.1\n"
    )
    conf = tmp_path / "named.conf"
    conf.write_text(f"""
key "kmsemu" {{ algorithm hmac-sha256; secret "{TSIG_SECRET}"; }};
options {{
    directory "{tmp_path}";
    pid-file "{tmp_path}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
zone "lab.test" {{ type primary; file "lab.test.zone"; allow-update {{ key "kmsemu"; }}; }};
""")
    proc = subprocess.Popen(
        [str(NAMED), "-g", "-c", str(conf), "-n", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:  # ready when it answers for the zone
            try:
                reply = dns.query.udp(
                    dns.message.make_query("lab.test", "SOA"), "127.0.0.1", port=port, timeout=0.5
                )
                if reply.rcode() == dns.rcode.NOERROR:
                    break
            except (dns.exception.Timeout, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.skip(f"named did not start: {err[-500:]}")
            time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def test_host_publishes_into_bind_and_a_client_activates(tmp_path: Path, bind_server: str) -> None:
    host = start_host_process(
        tmp_path / "host",
        "--min-count",
        "5",
        "--dns-publish",
        "lab.test,5,20",
        "--dns-server",
        bind_server,
        "--dns-name",
        "kmsa",
        "--dns-tsig",
        f"kmsemu:{TSIG_SECRET}",
    )
    try:
        deadline = time.monotonic() + 20
        while not any("12294" in line or "12293" in line for line in host.stderr_lines):
            assert time.monotonic() < deadline, host.stderr_lines
            time.sleep(0.05)
        assert any("12294" in line for line in host.stderr_lines), host.stderr_lines
        ip, port = bind_server.split(":")
        reply = dns.query.udp(
            dns.message.make_query("_vlmcs._tcp.lab.test", "SRV"), ip, port=int(port), timeout=3
        )
        srv = reply.answer[0][0]
        assert (srv.priority, srv.weight, srv.port) == (5, 20, host.port)
        assert srv.target.to_text() == "kmsa.lab.test."
        home = tmp_path / "home"
        run = CliRunner().invoke
        env = {"KMSEMU_HOME": str(home)}
        assert run(main, ["client", "ipk", str(setup_key(6))], env=env).exit_code == 0
        run(main, ["client", "dns", "--server", bind_server, "--suffix", "lab.test"], env=env)
        result = run(main, ["client", "ato"], env=env)
        assert result.exit_code == 0, result.output
    finally:
        stop_host_process(host)


def test_unsigned_update_is_refused_by_bind(tmp_path: Path, bind_server: str) -> None:
    host = start_host_process(
        tmp_path / "host", "--dns-publish", "lab.test", "--dns-server", bind_server
    )
    try:
        deadline = time.monotonic() + 20
        while not any("12293" in line for line in host.stderr_lines):
            assert time.monotonic() < deadline, host.stderr_lines
            time.sleep(0.05)
        line = next(x for x in host.stderr_lines if "12293" in x)
        assert "REFUSED" in line and "0x8007232A" in line
    finally:
        stop_host_process(host)
