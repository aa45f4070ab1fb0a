"""KLP/1 activations over TCP: requests built with the package's encoders, answers checked.

Two drivers: plain blocking sockets in forked client processes, made cheap so that the
host is what is measured (bench-host, bench-echo: ``client_main``), and asyncio, open
loop, every answer decrypted and checked (the soak: ``KmsTraffic``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
import struct
import time
import uuid
from typing import TYPE_CHECKING, Any

from benchkit.traffic.streams import KeptAlive, close_writer, one_shot
from kmsemu.catalog import Product, default_catalog
from kmsemu.klp import DEFAULT_SECRET
from kmsemu.klp.envelope import LabKey, open_response, seal_request
from kmsemu.klp.messages import ActivationRequest, ActivationResponse
from kmsemu.rpc.ndr import decode_response_stub, encode_request_stub
from kmsemu.rpc.pdu import (
    KLP_INTERFACE,
    MAX_FRAG,
    NDR20,
    Bind,
    ContextElement,
    PType,
    Response,
    encode_request,
)
from kmsemu.wire import filetime_from_unix

if TYPE_CHECKING:
    from benchkit.traffic.mixed import Mix

PTYPE_REQUEST = int(PType.REQUEST)
PTYPE_RESPONSE = int(PType.RESPONSE)
PTYPE_FAULT = int(PType.FAULT)
PTYPE_BIND = int(PType.BIND)
PTYPE_BIND_ACK = int(PType.BIND_ACK)
ACCESS_DENIED = 0x80070005
WRONG_SECRET = "not-the-lab-secret"
#: The CMID's offset in a request plaintext (klp-v1.md 4.1).
_CMID_AT = 60
SOCKET_TIMEOUT = 5.0
ZERO4 = b"\x00\x00\x00\x00"


def bind_pdu() -> bytes:
    return Bind(call_id=1, contexts=(ContextElement(0, KLP_INTERFACE, (NDR20,)),)).to_bytes()


def plaintext(product: Product, cmid: uuid.UUID, workstation: str) -> bytes:
    """An activation request for ``product`` from machine ``cmid``, sent now."""
    return ActivationRequest(
        application_id=product.application_id,
        sku_id=product.sku_id,
        kms_count_id=product.kms_count_id,
        client_machine_id=cmid,
        request_time=filetime_from_unix(time.time()),
        required_client_count=product.threshold,
        workstation_name=workstation,
    ).to_bytes()


def request_pdu(key: LabKey, text: bytes, nonce: bytes, call_id: int = 2) -> bytes:
    """``text`` sealed with ``key`` in a REQUEST PDU (context 0, opnum 0)."""
    stub = encode_request_stub(seal_request(key, text, nonce))
    return encode_request(call_id, 0, 0, stub, MAX_FRAG)


def answer(pdu: bytes) -> tuple[bytes, int]:
    """A RESPONSE PDU's envelope and stub status."""
    return decode_response_stub(Response.from_bytes(pdu).stub)


def opened(key: LabKey, envelope: bytes) -> ActivationResponse:
    return ActivationResponse.from_bytes(open_response(key, envelope).plaintext)


# -- pre-built requests and blocking clients (bench-host) -----------------------------------


def build_requests(
    count: int, index: int, product_name: str, secret: str = DEFAULT_SECRET
) -> tuple[list[bytes], list[bytes]]:
    """``count`` complete REQUEST PDUs (call 2, context 0, opnum 0) and their CMIDs.

    One plaintext is built with the package API; each request patches a fresh CMID into
    it and is sealed with a fresh nonce.
    """
    product = default_catalog().find(product_name)
    key = LabKey.derive(secret)
    template = plaintext(product, uuid.uuid4(), f"bench-{index}")
    head, tail = template[:_CMID_AT], template[_CMID_AT + 16 :]
    pdus, cmids = [], []
    for _ in range(count):
        cmid = uuid.uuid4().bytes_le
        pdus.append(request_pdu(key, head + cmid + tail, os.urandom(12)))
        cmids.append(cmid)
    check = ActivationRequest.from_bytes(head + cmids[0] + tail)
    assert check.client_machine_id.bytes_le == cmids[0] and check.sku_id == product.sku_id
    return pdus, cmids


def verify_samples(
    samples: list[dict[str, Any]], secret: str = DEFAULT_SECRET
) -> tuple[int, list[str]]:
    """Decrypt sampled responses; (number verified, problems)."""
    key = LabKey.derive(secret)
    problems = []
    for sample in samples:
        request = bytes.fromhex(sample["request"])
        try:
            envelope, status = answer(bytes.fromhex(sample["response"]))
            response = opened(key, envelope)
        except Exception as exc:
            problems.append(f"cannot open a response: {exc!r}")
            continue
        nonce = request[24 + 8 + 12 : 24 + 8 + 24]
        if status or response.status:
            problems.append(f"status 0x{status:08X}/0x{response.status:08X}")
        elif response.request_nonce != nonce:
            problems.append("response answers another request")
        elif response.client_machine_id.bytes_le != bytes.fromhex(sample["cmid"]):
            problems.append("response names another CMID")
        elif response.current_count < 1:
            problems.append("current_count 0")
    return len(samples), problems


def _read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU: normally one recv; the header's frag_length says when it is complete."""
    data = sock.recv(MAX_FRAG)
    while len(data) < 16:
        more = sock.recv(MAX_FRAG)
        if not more:
            raise ConnectionError("closed by the host")
        data += more
    frag_length = data[8] | data[9] << 8
    while len(data) < frag_length:
        more = sock.recv(frag_length - len(data))
        if not more:
            raise ConnectionError("closed by the host")
        data += more
    if len(data) != frag_length:
        raise ConnectionError("more than one PDU")
    return data


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Kernel-side timeouts keep the socket blocking (no poll() per call, unlike settimeout).
    timeval = struct.pack("ll", int(SOCKET_TIMEOUT), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect(address)
    return sock


def _good_response(pdu: bytes) -> bool:
    # RESPONSE, an envelope (responseSize M > 0) and stub status 0.
    return pdu[2] == PTYPE_RESPONSE and pdu[24:28] != ZERO4 and pdu[-4:] == ZERO4


class NewConnections:
    """Mode ``new``: connect, BIND, BIND_ACK, REQUEST, RESPONSE, close, for every activation."""

    def __init__(self, address: tuple[str, int], bind: bytes) -> None:
        self.address = address
        self.bind = bind

    def exchange(self, request: bytes) -> bytes | None:
        sock = _connect(self.address)
        try:
            sock.sendall(self.bind)
            if _read_pdu(sock)[2] != PTYPE_BIND_ACK:
                return None
            sock.sendall(request)
            response = _read_pdu(sock)
        finally:
            sock.close()
        return response if _good_response(response) else None

    def close(self) -> None:
        pass


class Persistent:
    """Mode ``persistent``: BIND once, then REQUEST/RESPONSE; reconnect after an error."""

    def __init__(self, address: tuple[str, int], bind: bytes) -> None:
        self.address = address
        self.bind = bind
        self.sock: socket.socket | None = None

    def exchange(self, request: bytes) -> bytes | None:
        try:
            if self.sock is None:
                self.sock = _connect(self.address)
                self.sock.sendall(self.bind)
                if _read_pdu(self.sock)[2] != PTYPE_BIND_ACK:
                    raise ConnectionError("BIND not acknowledged")
            self.sock.sendall(request)
            response = _read_pdu(self.sock)
        except OSError:
            self.close()
            raise
        return response if _good_response(response) else None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _drive(
    client: NewConnections | Persistent,
    requests: list[bytes],
    start: float,
    end: float,
    keep: collections.deque[tuple[int, bytes]],
) -> dict[str, Any]:
    """Activate until ``end``; count what completes in [start, end) and the CPU spent there."""
    monotonic = time.monotonic
    done = errors = sent = 0
    n = len(requests)
    last_error = ""
    cpu_start: os.times_result | None = None
    while True:
        i = sent % n
        sent += 1
        try:
            response = client.exchange(requests[i])
        except OSError as exc:
            response = None
            last_error = repr(exc)
        t = monotonic()
        if t >= end:
            break
        if t >= start:
            if cpu_start is None:
                cpu_start = os.times()
            if response is not None:
                done += 1
                if done % 997 == 0:
                    keep.append((i, response))
            else:
                errors += 1
    cpu_end = os.times()
    client.close()
    cpu = 0.0
    if cpu_start is not None:
        cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    return {
        "activations": done,
        "errors": errors,
        "sent": sent,
        "last_error": last_error,
        "cpu_seconds": cpu,
    }


def client_main(
    conn: Any,
    index: int,
    mode: str,
    address: tuple[str, int],
    pool: int,
    cpus: set[int] | None,
    product: str,
) -> None:
    """One client process: build its requests, report ready, run the window, report."""
    try:
        requests, cmids = build_requests(pool, index, product)
        if cpus:
            os.sched_setaffinity(0, cpus)
        bind = bind_pdu()
        conn.send("ready")
        if not conn.poll(300):
            return
        go, start, end = conn.recv()
        delay = go - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        keep: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=3)
        client = (NewConnections if mode == "new" else Persistent)(address, bind)
        result = _drive(client, requests, start, end, keep)
        result["reused"] = max(0, result["sent"] - len(requests))
        result["samples"] = [
            {"request": requests[i].hex(), "cmid": cmids[i].hex(), "response": r.hex()}
            for i, r in keep
        ]
        conn.send(result)
    except BaseException as exc:  # report, never hang the parent
        conn.send({"fatal": repr(exc)})
    finally:
        conn.close()


# -- asyncio, open loop, every answer checked (the soak) -------------------------------------


async def read_pdu(reader: asyncio.StreamReader) -> bytes:
    """One whole DCE/RPC PDU (its header's frag_length says how long)."""
    header = await reader.readexactly(16)
    frag_length = header[8] | header[9] << 8
    if frag_length < 16:
        raise ValueError(f"frag_length {frag_length}")
    return header + await reader.readexactly(frag_length - 16)


async def bound(
    address: tuple[str, int], bind: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose BIND was acknowledged (ConnectionError otherwise)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(bind)
        ack = await read_pdu(reader)
        if ack[2] != PTYPE_BIND_ACK:
            raise ConnectionError(f"BIND answered by PDU type {ack[2]}")
    except BaseException:
        close_writer(writer)
        raise
    return reader, writer


class KmsRequest:
    __slots__ = ("cmid", "nonce", "pdu", "product", "renewal", "wrong")

    def __init__(
        self, pdu: bytes, nonce: bytes, cmid: uuid.UUID, product: str, wrong: bool, renewal: bool
    ) -> None:
        self.pdu = pdu
        self.nonce = nonce
        self.cmid = cmid
        self.product = product
        self.wrong = wrong
        self.renewal = renewal


class KmsTraffic:
    """KLP/1 activations: a connection each, or on a pool of bound connections; four
    products, 40 % renewals of CMIDs already answered, 5 % sealed with a wrong secret."""

    PRODUCTS = (
        "windows-11-pro",
        "windows-server-2022-standard",
        "office-ltsc-2024-proplus",
        "windows-10-enterprise",
    )
    #: How long a kept-alive connection may idle before it is renewed (under the host's
    #: 30 s idle timeout).
    POOL_IDLE = 20.0

    def __init__(self, gen: Mix, address: tuple[str, int]) -> None:
        self.gen = gen
        self.rec = gen.rec
        self.address = address
        catalog = default_catalog()
        self.products = [catalog.find(name) for name in self.PRODUCTS]
        self.good = LabKey.derive(DEFAULT_SECRET)
        self.wrong = LabKey.derive(WRONG_SECRET)
        self.bind = bind_pdu()
        self.renewable: dict[str, collections.deque[uuid.UUID]] = {
            p.key: collections.deque(maxlen=4096) for p in self.products
        }
        self.number = itertools.count(1)
        self.answered = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.queue: asyncio.Queue[float | None] = asyncio.Queue()

    def build(self, call_id: int) -> KmsRequest:
        rng = self.gen.rng
        product = rng.choice(self.products)
        wrong = rng.random() < 0.05
        known = self.renewable[product.key]
        renewal = bool(known) and rng.random() < 0.4
        cmid = rng.choice(known) if renewal else uuid.uuid4()
        text = plaintext(product, cmid, f"soak-{next(self.number) % 100_000:05d}")
        nonce = os.urandom(12)
        pdu = request_pdu(self.wrong if wrong else self.good, text, nonce, call_id)
        return KmsRequest(pdu, nonce, cmid, product.key, wrong, renewal)

    def judge(self, kind: str, due: float, request: KmsRequest, pdu: bytes) -> None:
        ptype = pdu[2]
        if ptype != PTYPE_RESPONSE:
            self.rec.error(kind, due, f"PDU type {ptype}", pdu[:32].hex())
            return
        self.answered += 1  # a RESPONSE: one row in the host's request log
        try:
            envelope, status = answer(pdu)
            if request.wrong:
                self.statuses[f"wrong secret: stub 0x{status:08X}"] += 1
                if status != ACCESS_DENIED or envelope:
                    self.rec.error(kind, due, "wrong secret not refused", f"0x{status:08X}")
                    return
                self.rec.ok(kind, due)
                return
            if status:
                self.statuses[f"stub 0x{status:08X}"] += 1
                self.rec.error(kind, due, f"stub status 0x{status:08X}")
                return
            response = opened(self.good, envelope)
        except Exception as exc:
            self.rec.error(kind, due, "bad response", repr(exc))
            return
        self.statuses[f"0x{response.status:08X}"] += 1
        if response.request_nonce != request.nonce or response.client_machine_id != request.cmid:
            self.rec.error(kind, due, "response answers another request")
        elif response.status:
            self.rec.error(kind, due, f"status 0x{response.status:08X}")
        else:
            if not request.renewal:
                self.renewable[request.product].append(request.cmid)
            self.rec.ok(kind, due)

    async def new_connection(self, due: float) -> None:
        """Connect, BIND, REQUEST, close (``kms-new``)."""
        kind = "kms-new"

        async def talk(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> tuple[KmsRequest, bytes] | None:
            writer.write(self.bind)
            ack = await read_pdu(reader)
            if ack[2] != PTYPE_BIND_ACK:
                self.rec.error(kind, due, f"BIND answered by PDU type {ack[2]}")
                return None
            request = self.build(2)
            writer.write(request.pdu)
            return request, await read_pdu(reader)

        outcome = await one_shot(self.rec, kind, due, self.address, talk)
        if outcome is not None:
            self.judge(kind, due, *outcome)

    async def _talk(self, conn: KeptAlive) -> tuple[KmsRequest, bytes]:
        reader, writer = await conn.streams()
        request = self.build(conn.calls + 1)  # call 1 was the BIND
        writer.write(request.pdu)
        return request, await read_pdu(reader)

    async def pooled_worker(self) -> None:
        """REQUEST/RESPONSE on a kept-alive bound connection (``kms-keepalive``)."""
        kind = "kms-keepalive"
        conn = KeptAlive(self.rec, "kms", self.POOL_IDLE, lambda: bound(self.address, self.bind))
        await conn.serve(self.queue, kind, self._talk, lambda due, out: self.judge(kind, due, *out))
