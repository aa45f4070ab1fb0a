"""Wireshark's DCERPC dissector reads the host's traffic cleanly (klp-v1.md section 8).

A capture on ``lo`` holds one activation by kmsemu's client (BIND, BIND_ACK, REQUEST,
RESPONSE) and one FAULT provoked over a raw socket (the golden BIND, then opnum 1).
``tshark -d tcp.port==N,dcerpc`` must decode them without ``_ws.malformed`` and without
expert items of severity warning or error in any frame that carries DCERPC.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmsemu.catalog import default_catalog
from kmsemu.client.exchange import request_activation
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import ActivationRequest
from kmsemu.wire import filetime_from_unix
from tests.conformance.raw import read_pdu
from tests.conftest import RunningHost

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

START_TIMEOUT = 15.0
SEEN_TIMEOUT = 10.0
# epan/proto.h: PI_CHAT 0x00200000, PI_NOTE 0x00400000, PI_WARN 0x00600000, PI_ERROR 0x00800000
PI_NOTE = 0x00400000
PI_WARN = 0x00600000


class Capture:
    """``tshark -i lo`` writing a pcapng and printing each frame's DCERPC PDU types live."""

    def __init__(self, port: int, path: Path) -> None:
        assert TSHARK is not None
        self.path = path
        self.proc = subprocess.Popen(
            [
                TSHARK,
                "-i",
                "lo",
                "-f",
                f"tcp port {port}",
                "-w",
                str(path),
                "-P",
                "-l",
                "-d",
                f"tcp.port=={port},dcerpc",
                "-T",
                "fields",
                "-e",
                "dcerpc.pkt_type",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.types: list[int] = []
        self.frames = 0
        self.started = threading.Event()
        self.changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if "Capturing on" in line:
                self.started.set()
        self.started.set()  # tshark exited: wake the waiter, who looks at the process

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            values = [int(v) for v in line.strip().split(",") if v.strip().isdigit()]
            with self.changed:
                self.types.extend(values)
                self.frames += 1
                self.changed.notify_all()

    def wait_started(self, port: int) -> None:
        """Return once frames reach the capture file; skip if ``lo`` cannot be opened.

        tshark says "Capturing on" before dumpcap has opened the device (it says it even
        for a device that does not exist), so probe: a SYN to 127.0.0.2:port (nothing
        listens there, the kernel answers RST, the host never sees it) matches the filter;
        repeat until tshark prints a frame, or exits (no permission, no ``lo``): skip.
        """
        if not self.started.wait(START_TIMEOUT):
            self.stop()
            raise AssertionError("tshark did not start capturing:\n" + "\n".join(self.stderr))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
            with self.changed:
                if self.changed.wait_for(lambda: self.frames > 0, 0.2):
                    return
        if self.proc.poll() is not None:
            self._threads[0].join(5)
            pytest.skip(
                "tshark cannot capture on lo: "
                + " / ".join(line for line in self.stderr if not line.startswith("Running as user"))
            )
        raise AssertionError("no probe frame reached tshark:\n" + "\n".join(self.stderr))

    def wait_for(self, expected: list[int]) -> None:
        """Block until tshark has written (and printed) frames with these PDU types."""
        deadline = time.monotonic() + SEEN_TIMEOUT
        with self.changed:
            while self.types[: len(expected)] != expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or len(self.types) >= len(expected):
                    break
                self.changed.wait(remaining)
            assert self.types == expected, (
                f"tshark saw PDU types {self.types}; stderr: {self.stderr}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for thread in self._threads:
            thread.join(5)


def _activation_request() -> ActivationRequest:
    p = default_catalog().find("windows-server-2022-standard")
    return ActivationRequest(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=p.kms_count_id,
        client_machine_id=uuid.uuid4(),
        request_time=filetime_from_unix(time.time()),
        required_client_count=p.threshold,
        workstation_name="tshark-pc",
    )


def _provoke_fault(address: tuple[str, int], vectors: dict[str, Any]) -> None:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(bytes.fromhex(vectors["bind"]["pdu"]))
        assert read_pdu(sock)[2] == 12
        sock.sendall(bytes.fromhex(vectors["fault_bad_opnum"]["request_pdu"]))
        assert read_pdu(sock).hex() == vectors["fault_bad_opnum"]["fault_pdu"]


def _syntax(text: str, version: int) -> bytes:
    return uuid.UUID(text).bytes_le + struct.pack("<I", version)


KLP_IF = _syntax("6e8f4bef-ca86-4ca5-981e-95096d715f4b", 1)
NDR20 = _syntax("8a885d04-1ceb-11c9-9fe8-08002b104860", 2)
BTFN = _syntax("6cb71c2c-9812-4540-0300-000000000000", 1)
OTHER_IF = _syntax("12345678-1234-abcd-ef00-0123456789ab", 1)


def _bind(ptype: int, call_id: int, contexts: list[tuple[int, bytes, bytes]]) -> bytes:
    body = struct.pack("<HHIB3x", 5840, 5840, 0, len(contexts))
    body += b"".join(
        struct.pack("<HBx", ctx, 1) + abstract + transfer for ctx, abstract, transfer in contexts
    )
    return (
        struct.pack("<BBBB4sHHI", 5, 0, ptype, 3, b"\x10\0\0\0", 16 + len(body), 0, call_id) + body
    )


def _negotiate(address: tuple[str, int]) -> None:
    """BIND with a feature-negotiation context, then ALTER_CONTEXT (accept + reject)."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(_bind(11, 1, [(0, KLP_IF, NDR20), (1, KLP_IF, BTFN)]))
        assert read_pdu(sock)[2] == 12
        sock.sendall(_bind(14, 2, [(2, KLP_IF, NDR20), (3, OTHER_IF, NDR20)]))
        assert read_pdu(sock)[2] == 15


def _layers(frame: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = frame["_source"]["layers"].get(name, [])
    return found if isinstance(found, list) else [found]


def _walk(node: Any, key_prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith(key_prefix):
                yield key, value
            yield from _walk(value, key_prefix)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key_prefix)


def _expert_items(node: Any) -> list[tuple[int, str]]:
    items = []
    for _, value in _walk(node, "_ws.expert"):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "_ws.expert.severity" in item:
                items.append(
                    (int(item["_ws.expert.severity"]), str(item.get("_ws.expert.message", "")))
                )
    return items


@pytest.fixture
def capture(host_process: RunningHost, tmp_path: Path) -> Iterator[Capture]:
    cap = Capture(host_process.port, tmp_path / "klp.pcapng")
    try:
        cap.wait_started(host_process.port)
        yield cap
    finally:
        cap.stop()


def test_tshark_decodes_host_traffic(
    host_process: RunningHost, capture: Capture, klp_vectors: dict[str, Any]
) -> None:
    port = host_process.port
    exchange = request_activation(
        host_process.address, _activation_request(), LabKey.derive("kmsemu-lab")
    )
    assert exchange.response.status == 0
    _provoke_fault(host_process.address, klp_vectors)
    _negotiate(host_process.address)
    expected = [11, 12, 0, 2, 11, 12, 0, 3, 11, 12, 14, 15]
    capture.wait_for(expected)
    capture.stop()

    assert TSHARK is not None
    decoded = subprocess.run(
        [
            TSHARK,
            "-r",
            str(capture.path),
            "-d",
            f"tcp.port=={port},dcerpc",
            "-T",
            "json",
            "--no-duplicate-keys",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frames = json.loads(decoded.stdout)
    pdus = [(frame, pdu) for frame in frames for pdu in _layers(frame, "dcerpc")]
    assert [int(pdu["dcerpc.pkt_type"]) for _, pdu in pdus] == expected

    for frame in frames:
        number = frame["_source"]["layers"]["frame"]["frame.number"]
        assert not list(_walk(frame, "_ws.malformed")), f"frame {number} is malformed"
        if _layers(frame, "dcerpc"):
            loud = [item for item in _expert_items(frame) if item[0] >= PI_WARN]
            assert not loud, f"frame {number}: expert items {loud}"

    bind_ack = pdus[1][1]
    assert bind_ack["dcerpc.cn_sec_addr"] == str(port)
    assert int(bind_ack["dcerpc.cn_sec_addr_len"]) == len(str(port)) + 1
    assert int(bind_ack["dcerpc.cn_assoc_group"], 16) == exchange.assoc_group_id != 0
    assert [v for k, v in _walk(bind_ack, "dcerpc.cn_ack_result")] == ["0"]
    request, response = pdus[2], pdus[3]
    assert response[1]["dcerpc.cn_call_id"] == request[1]["dcerpc.cn_call_id"]
    assert (
        response[1]["dcerpc.request_in"] == request[0]["_source"]["layers"]["frame"]["frame.number"]
    )
    assert int(response[1]["dcerpc.cn_alloc_hint"]) == int(response[1]["dcerpc.cn_frag_len"]) - 24
    fault = pdus[7][1]
    assert fault["dcerpc.cn_flags"] == "0x23"
    assert int(fault["dcerpc.cn_status"], 16) == 0x1C010002
    # the one expert item a FAULT carries is a note
    assert [severity for severity, _ in _expert_items(fault)] == [PI_NOTE]
    results = [v for k, v in _walk(pdus[9][1], "dcerpc.cn_ack_result")]
    assert results == ["0", "3"]
    assert [v for k, v in _walk(pdus[11][1], "dcerpc.cn_ack_result")] == ["0", "2"]
