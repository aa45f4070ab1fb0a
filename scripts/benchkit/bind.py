"""A throwaway BIND 9 ``named`` serving one zone on 127.0.0.1 (bench-dns --against-bind).

``NamedServer`` writes a named.conf and the zone file into a directory of its own, starts
``named -g`` (foreground, logging to stderr, no pid file, no control channel, no
recursion, IPv4 loopback only), waits until it answers the zone's SOA with AA set (a
bounded loop of queries), and has the interface of ``procs.ServerProcess`` that a bench
reads: ``pid``, ``cpu_seconds``, ``memory_kib``, ``log_text``, ``stop``.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

from benchkit.env import ensure_tool, tool_version
from benchkit.procs import ServerProcess
from benchkit.waits import Cpus

NAMED = "/usr/sbin/named"

#: named.conf: the options that make named a plain authoritative server for one zone.
#: ``minimal-responses no-auth``: no NS records in the authority section of positive
#: answers (kmsemu adds none) but the A records of SRV targets in the additional section
#: (kmsemu adds them too).
CONF = """\
options {{
    directory "{directory}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{directory}";
    recursion no;
    dnssec-validation no;
    notify no;
    querylog no;
    minimal-responses no-auth;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{zone_file}";
}};
"""


def find_named() -> str | None:
    found = shutil.which("named")
    if found:
        return found
    return NAMED if os.access(NAMED, os.X_OK) else None


def ensure_named() -> str:
    """named's path; installs Debian's bind9 with apt-get (as root) when missing, or exits."""
    return ensure_tool(
        find_named, "bind9", "BIND 9's named", "Debian/Ubuntu: apt-get install bind9"
    )


def named_version(named: str) -> str:
    """``9.18.49-1~deb12u3-Debian`` from ``named -v`` ('?' when it cannot tell)."""
    return tool_version(named, "-v", r"BIND\s+(\S+)")


def free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (named listens on both)."""
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
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def zone_file_text(origin: str, ttl: int, records: Iterable[str]) -> str:
    """A master file: ``$ORIGIN``, ``$TTL`` and ``records`` (zone-file lines, names fully
    qualified), one a line."""
    lines = [f"$ORIGIN {origin.rstrip('.')}.", f"$TTL {ttl}"]
    lines += [r for r in records if r.strip() and not r.lstrip().startswith("$")]
    return "\n".join(lines) + "\n"


def answers_soa(address: tuple[str, int], zone: str, timeout: float) -> bool:
    """Whether the server at ``address`` answers ``ZONE SOA`` with NOERROR, AA and a SOA."""
    query = DNSRecord.question(zone, "SOA")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query.pack(), address)
            reply = DNSRecord.parse(sock.recv(4096))
        except (OSError, ValueError):
            return False
    return (
        reply.header.id == query.header.id
        and reply.header.rcode == RCODE.NOERROR
        and bool(reply.header.aa)
        and any(rr.rtype == QTYPE.SOA for rr in reply.rr)
    )


class NamedServer(ServerProcess):
    """``named -g`` for one zone in ``directory`` (created), on 127.0.0.1:FREEPORT.

    ``threads``: named's worker threads (``-n``), e.g. the number of CPUs it is pinned to.
    Ready when it answers the zone's SOA authoritatively (queried until ``timeout``); a
    ``ServerProcess`` otherwise (log file, CPU and memory figures, ``stop``).
    """

    def __init__(
        self,
        named: str,
        directory: Path,
        zone: str,
        zone_text: str,
        *,
        cpus: Cpus = None,
        threads: int = 1,
        timeout: float = 30.0,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.port = free_udp_tcp_port()
        self.address = ("127.0.0.1", self.port)
        zone_file = directory / f"{zone}.zone"
        zone_file.write_text(zone_text)
        self.conf_path = directory / "named.conf"
        self.conf_path.write_text(
            CONF.format(directory=directory, port=self.port, zone=zone, zone_file=zone_file)
        )
        argv = [named, "-g", "-4", "-n", str(max(1, threads)), "-c", str(self.conf_path)]
        super().__init__(
            argv,
            directory,
            lambda _: answers_soa(self.address, zone, 0.2),
            name="named",
            log_name="named.log",
            cpus=cpus,
            timeout=timeout,
            tail=3000,
        )
