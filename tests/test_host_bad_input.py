"""A real host on 127.0.0.1 fed bad input over real sockets (klp-v1.md sections 1 to 5).

Every failure must stay on its own connection: the tests keep checking that other
clients still activate. Inputs are built with ``struct`` and AES-GCM directly (not with
the host's codecs) so that a codec bug cannot hide behind a matching encoder. Every wait
is bounded; nothing sleeps a fixed time to wait for the server.
"""

from __future__ import annotations

import os
import random
import re
import resource
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsemu.catalog import default_catalog
from kmsemu.client.exchange import request_activation
from kmsemu.clock import FakeClock
from kmsemu.host.options import ServerOptions
from kmsemu.klp.envelope import LabKey, open_response
from kmsemu.klp.messages import ActivationRequest, ActivationResponse
from kmsemu.wire import filetime_from_unix
from tests.conftest import (
    RunningHost,
    start_host_process,
    start_inprocess_host,
    stop_host_process,
)

KEY = LabKey.derive("kmsemu-lab")
SECOND = LabKey.derive("a second lab secret")
STRANGER = LabKey.derive("not this host's secret")
TIMEOUT = 5.0

ACCESS_DENIED = 0x80070005
INVALID_DATA = 0x8007000D
PRODUCT_NOT_SERVED = 0xC004F042
TIMESTAMP_INVALID = 0xC004F06C
FAULT_NDR = 0x000006F7
PROTO_ERROR = 0x1C01000B

NIL = uuid.UUID(int=0)
HOUR = 3600 * 10_000_000  # FILETIME units
SECOND_FT = 10_000_000
EPID = re.compile(
    r"^\d{5}-\d{5}-\d{3}-\d{6}-03-\d{4,5}-\d{4,5}\.0000-"
    r"(00[1-9]|0[1-9]\d|[12]\d\d|3[0-5]\d|36[0-6])\d{4}$"
)

KLP_IFACE = uuid.UUID("6e8f4bef-ca86-4ca5-981e-95096d715f4b").bytes_le + b"\1\0\0\0"
NDR20 = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + b"\2\0\0\0"
DREP = b"\x10\x00\x00\x00"
REQUEST, RESPONSE, FAULT, BIND, BIND_ACK = 0, 2, 3, 11, 12


# -- hosts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running, stop = start_inprocess_host(
        tmp_path_factory.mktemp("bad-input"),
        secrets=["kmsemu-lab", "a second lab secret"],
        options=ServerOptions(flush_interval=0.05),
    )
    try:
        yield running
    finally:
        stop()


FROZEN_UNIX = 1_750_000_000.0
FROZEN_FT = filetime_from_unix(FROZEN_UNIX)


@pytest.fixture(scope="module")
def frozen_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    """An in-process host whose clock stands still at FROZEN_UNIX."""
    running, stop = start_inprocess_host(
        tmp_path_factory.mktemp("frozen"), clock=FakeClock(FROZEN_UNIX)
    )
    try:
        yield running
    finally:
        stop()


# -- building requests --------------------------------------------------------------------


def make_request(
    product: str = "windows-server-2022-standard",
    *,
    cmid: uuid.UUID | None = None,
    when: int | None = None,
    **fields: Any,
) -> ActivationRequest:
    p = default_catalog().find(product)
    values: dict[str, Any] = dict(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=p.kms_count_id,
        client_machine_id=cmid or uuid.uuid4(),
        request_time=filetime_from_unix(time.time()) if when is None else when,
        required_client_count=p.threshold,
        workstation_name="bad-input-pc",
    )
    values.update(fields)
    return ActivationRequest(**values)


def seal(
    plaintext: bytes,
    key: LabKey = KEY,
    nonce: bytes | None = None,
    *,
    major: int = 1,
    minor: int = 0,
    magic: bytes = b"KLP1",
) -> tuple[bytes, bytes]:
    """(envelope, nonce): section 3, sealed here with AES-GCM directly."""
    nonce = nonce or os.urandom(12)
    head = magic + struct.pack("<HH", major, minor) + key.key_id + nonce
    return head + AESGCM(key.request_key).encrypt(nonce, plaintext, head), nonce


def ndr(envelope: bytes) -> bytes:
    return struct.pack("<II", len(envelope), len(envelope)) + envelope


def split_response_stub(stub: bytes) -> tuple[bytes, int]:
    """(envelope, status) of a RESPONSE stub, checked against section 2's layout."""
    size, referent = struct.unpack_from("<II", stub)
    status = struct.unpack_from("<I", stub, len(stub) - 4)[0]
    if referent == 0:
        assert size == 0 and len(stub) == 12
        return b"", status
    assert referent == 0x00020000
    assert struct.unpack_from("<I", stub, 8)[0] == size
    pad = -size % 4
    assert len(stub) == 12 + size + pad + 4
    assert stub[12 + size : 12 + size + pad] == bytes(pad)
    return stub[12 : 12 + size], status


def status_stub(status: int) -> bytes:
    """The stub of an answer with no envelope: M 0, null referent, status."""
    return struct.pack("<III", 0, 0, status)


def fault_pdu(call_id: int, ctx: int, status: int) -> bytes:
    return struct.pack("<BBBB4sHHI", 5, 0, FAULT, 0x23, DREP, 32, 0, call_id) + struct.pack(
        "<IHBBII", 0, ctx, 0, 0, status, 0
    )


def header(
    ptype: int,
    flags: int,
    frag_length: int,
    call_id: int,
    auth_length: int = 0,
    *,
    vers: int = 5,
    minor: int = 0,
    drep: bytes = DREP,
) -> bytes:
    return struct.pack(
        "<BBBB4sHHI", vers, minor, ptype, flags, drep, frag_length, auth_length, call_id
    )


def bind_pdu(
    n_contexts: int = 1, *, call_id: int = 1, max_xmit: int = 5840, max_recv: int = 5840
) -> bytes:
    items = b"".join(struct.pack("<HBx", i, 1) + KLP_IFACE + NDR20 for i in range(n_contexts))
    body = struct.pack("<HHIB3x", max_xmit, max_recv, 0, n_contexts) + items
    return header(BIND, 3, 16 + len(body), call_id) + body


def request_pdu(
    stub: bytes, *, call_id: int, ctx: int = 0, opnum: int = 0, flags: int = 3, auth: bytes = b""
) -> bytes:
    trailer = struct.pack("<BBBBI", 10, 6, 0, 0, 0) + auth if auth else b""
    body = struct.pack("<IHH", len(stub), ctx, opnum) + stub + trailer
    return header(REQUEST, flags, 16 + len(body), call_id, len(auth)) + body


# -- a raw client -------------------------------------------------------------------------------


class Peer:
    """One TCP connection to the host, driven byte by byte."""

    def __init__(
        self,
        address: tuple[str, int] | socket.socket,
        timeout: float = TIMEOUT,
    ) -> None:
        if isinstance(address, socket.socket):
            self.sock = address
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.next_call_id = 2

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return bytes(data)

    def read_pdu(self) -> bytes:
        head = self.read_exact(16)
        frag_length = struct.unpack_from("<H", head, 8)[0]
        return head + self.read_exact(frag_length - 16)

    def bind(self, n_contexts: int = 1, **kw: Any) -> bytes:
        self.send(bind_pdu(n_contexts, **kw))
        ack = self.read_pdu()
        assert ack[2] == BIND_ACK, ack.hex()
        return ack

    def call(self, stub: bytes, *, ctx: int = 0) -> tuple[int, bytes]:
        """(RESPONSE, stub) or (FAULT, the FAULT PDU) for one opnum-0 call."""
        call_id = self.next_call_id
        self.next_call_id += 1
        self.send(request_pdu(stub, call_id=call_id, ctx=ctx))
        parts = []
        while True:
            pdu = self.read_pdu()
            assert struct.unpack_from("<I", pdu, 12)[0] == call_id
            if pdu[2] == FAULT:
                return FAULT, pdu
            assert pdu[2] == RESPONSE
            assert struct.unpack_from("<H", pdu, 20)[0] == ctx
            parts.append(pdu[24:])
            if pdu[3] & 0x02:
                return RESPONSE, b"".join(parts)

    def stub_call(self, stub: bytes, *, ctx: int = 0) -> bytes:
        kind, payload = self.call(stub, ctx=ctx)
        assert kind == RESPONSE, f"FAULT {payload.hex()}"
        return payload

    def activate(
        self,
        request: ActivationRequest | None = None,
        key: LabKey = KEY,
    ) -> ActivationResponse:
        envelope, nonce = seal((request or make_request()).to_bytes(), key)
        return open_answer(self.stub_call(ndr(envelope)), key, nonce)

    def wait_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the host sends until it closes; fails if it does not close in time."""
        deadline = time.monotonic() + timeout
        received = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open after {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(received)
            except TimeoutError:
                raise AssertionError(f"still open after {timeout} s") from None
            if not chunk:
                return bytes(received)
            received += chunk


def open_answer(stub: bytes, key: LabKey, nonce: bytes) -> ActivationResponse:
    envelope, status = split_response_stub(stub)
    assert status == 0 and envelope, f"stub status 0x{status:08X}"
    assert envelope[:8] == b"KLP1\x01\x00\x00\x00"
    assert envelope[8:12] == key.key_id
    response = ActivationResponse.from_bytes(open_response(key, envelope).plaintext)
    assert response.request_nonce == nonce
    return response


def fresh_activation_works(address: tuple[str, int]) -> None:
    cmid = uuid.uuid4()
    response = request_activation(address, make_request(cmid=cmid), KEY, timeout=TIMEOUT).response
    assert response.status == 0 and response.client_machine_id == cmid
    assert response.current_count >= 1


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Polls ``predicate`` until it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def log_lines(host: RunningHost, event: str, port: int | None = None) -> list[str]:
    peer = rf"peer=127\.0\.0\.1:{port}(\s|$)" if port is not None else ""
    pattern = re.compile(rf"(^|\s){re.escape(event)}\s.*{peer}")
    return [line for line in list(host.stderr_lines) if pattern.search(line)]


# -- section 3: envelopes ------------------------------------------------------------------------


def test_wrong_secret_is_access_denied_without_envelope(host: RunningHost) -> None:
    with Peer(host.address) as peer:
        peer.bind()
        envelope, _ = seal(make_request().to_bytes(), STRANGER)
        stub = peer.stub_call(ndr(envelope))
        assert stub == bytes.fromhex("000000000000000005000780")
        assert split_response_stub(stub) == (b"", ACCESS_DENIED)
        assert peer.activate().status == 0  # the connection still serves


def _tag_flipped(env: bytes) -> bytes:
    return env[:-1] + bytes([env[-1] ^ 1])


def _ciphertext_flipped(env: bytes) -> bytes:
    return env[:30] + bytes([env[30] ^ 0x80]) + env[31:]


def _nonce_flipped(env: bytes) -> bytes:
    return env[:12] + bytes([env[12] ^ 1]) + env[13:]


def _other_key_id(env: bytes) -> bytes:
    return env[:8] + SECOND.key_id + env[12:]


@pytest.mark.parametrize(
    "tamper", [_tag_flipped, _ciphertext_flipped, _nonce_flipped, _other_key_id]
)
def test_envelope_that_does_not_verify_is_access_denied(
    host: RunningHost, tamper: Callable[[bytes], bytes]
) -> None:
    envelope, _ = seal(make_request().to_bytes())
    with Peer(host.address) as peer:
        peer.bind()
        assert peer.stub_call(ndr(tamper(envelope))) == status_stub(ACCESS_DENIED)


def test_second_secret_is_served_with_its_own_key_id(host: RunningHost) -> None:
    with Peer(host.address) as peer:
        peer.bind()
        assert peer.activate(key=SECOND).status == 0  # open_answer checks the key id


def test_bind_ack_names_the_port_and_responses_use_fresh_nonces(host: RunningHost) -> None:
    port = str(host.port).encode("ascii") + b"\0"
    with Peer(host.address) as peer:
        ack = peer.bind()
        assert struct.unpack_from("<H", ack, 24)[0] == len(port)
        assert ack[26 : 26 + len(port)] == port
        envelope, nonce = seal(make_request().to_bytes())
        stubs = [peer.stub_call(ndr(envelope)) for _ in range(2)]
    nonces = {split_response_stub(stub)[0][12:24] for stub in stubs}
    assert len(nonces) == 2 and nonce not in nonces


def _good_envelope() -> bytes:
    return seal(make_request().to_bytes())[0]


MALFORMED_ENVELOPES = [
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: _good_envelope()[:39], id="39-bytes"),
    pytest.param(lambda: _good_envelope()[:24], id="header-only"),
    pytest.param(lambda: seal(make_request().to_bytes(), magic=b"KLP2")[0], id="magic-KLP2"),
    pytest.param(lambda: seal(make_request().to_bytes(), magic=b"klp1")[0], id="magic-klp1"),
    pytest.param(
        lambda: seal(make_request().to_bytes(), STRANGER, magic=b"XXXX")[0],
        id="magic-wrong-and-unknown-key",
    ),
    pytest.param(lambda: seal(make_request().to_bytes(), major=2)[0], id="version-2.0"),
    pytest.param(lambda: seal(make_request().to_bytes(), major=0)[0], id="version-0.0"),
    pytest.param(
        lambda: seal(make_request().to_bytes(), STRANGER, major=2)[0],
        id="version-2-and-unknown-key",
    ),
    pytest.param(lambda: seal(b"", STRANGER)[0][:39], id="39-bytes-unknown-key"),
]


@pytest.mark.parametrize("make_envelope", MALFORMED_ENVELOPES)
def test_malformed_envelope_is_invalid_data_without_envelope(
    host: RunningHost, make_envelope: Callable[[], bytes]
) -> None:
    with Peer(host.address) as peer:
        peer.bind()
        assert peer.stub_call(ndr(make_envelope())) == status_stub(INVALID_DATA)
        assert peer.activate().status == 0


@pytest.mark.parametrize("minor", [1, 7, 0xFFFF])
@pytest.mark.parametrize("extra", [b"", b"\xaa" * 64], ids=["v1.0-layout", "extra-bytes"])
def test_newer_minor_version_and_extra_plaintext_bytes_are_accepted(
    host: RunningHost, minor: int, extra: bytes
) -> None:
    cmid = uuid.uuid4()
    envelope, nonce = seal(make_request(cmid=cmid).to_bytes() + extra, minor=minor)
    with Peer(host.address) as peer:
        peer.bind()
        response = open_answer(peer.stub_call(ndr(envelope)), KEY, nonce)
    assert response.status == 0 and response.client_machine_id == cmid


def test_extra_plaintext_bytes_are_ignored_at_version_1_0(host: RunningHost) -> None:
    envelope, nonce = seal(make_request().to_bytes() + b"\x01" * 500)
    with Peer(host.address) as peer:
        peer.bind()
        assert open_answer(peer.stub_call(ndr(envelope)), KEY, nonce).status == 0


# -- section 2: NDR ------------------------------------------------------------------------------


def _env() -> bytes:
    return _good_envelope()


BAD_STUBS = [
    pytest.param(lambda e: struct.pack("<II", len(e), len(e) + 1) + e, id="max_count-bigger"),
    pytest.param(lambda e: struct.pack("<II", len(e), len(e) - 1) + e, id="max_count-smaller"),
    pytest.param(lambda e: struct.pack("<II", len(e) + 4, len(e) + 4) + e, id="array-past-stub"),
    pytest.param(lambda e: b"", id="empty-stub"),
    pytest.param(lambda e: bytes(4), id="4-byte-stub"),
    pytest.param(lambda e: bytes(7), id="7-byte-stub"),
    pytest.param(lambda e: ndr(e) + bytes(4), id="4-trailing-zeros"),
    pytest.param(lambda e: ndr(e) + bytes(100), id="100-trailing-zeros"),
    pytest.param(lambda e: ndr(e) + b"\x01", id="trailing-01"),
    pytest.param(lambda e: ndr(e) + b"\x00\x00\xff", id="trailing-0000ff"),
]


@pytest.mark.parametrize("make_stub", BAD_STUBS)
def test_stub_that_does_not_parse_is_fault_ndr_and_the_connection_stays(
    host: RunningHost, make_stub: Callable[[bytes], bytes]
) -> None:
    with Peer(host.address) as peer:
        peer.bind(n_contexts=2)
        call_id = peer.next_call_id
        kind, pdu = peer.call(make_stub(_env()), ctx=1)
        assert kind == FAULT
        assert pdu == fault_pdu(call_id, 1, FAULT_NDR)
        assert peer.activate().status == 0
        kind, pdu = peer.call(make_stub(_env()), ctx=0)
        assert pdu == fault_pdu(call_id + 2, 0, FAULT_NDR)
        assert peer.activate().status == 0


@pytest.mark.parametrize("trailing", [0, 1, 2, 3])
def test_up_to_three_trailing_zero_bytes_are_accepted(host: RunningHost, trailing: int) -> None:
    envelope, nonce = seal(make_request().to_bytes())
    with Peer(host.address) as peer:
        peer.bind()
        response = open_answer(peer.stub_call(ndr(envelope) + bytes(trailing)), KEY, nonce)
    assert response.status == 0


# -- section 4.1: invalid plaintexts --------------------------------------------------------------

CMID = uuid.UUID("0badc0de-1234-5678-9abc-def012345678")


def _plaintext(**fields: Any) -> bytes:
    return make_request(cmid=CMID, **fields).to_bytes()


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _name_field(raw: bytes) -> bytes:
    return raw + bytes(128 - len(raw))


INVALID_PLAINTEXTS = [
    # (id, plaintext builder, CMID echoed, request_time echoed)
    ("231-bytes", lambda: _plaintext()[:231], True, True),
    ("88-bytes", lambda: _plaintext()[:88], True, True),
    ("87-bytes", lambda: _plaintext()[:87], True, False),
    ("76-bytes", lambda: _plaintext()[:76], True, False),
    ("75-bytes", lambda: _plaintext()[:75], False, False),
    ("empty", lambda: b"", False, False),
    ("license-status-7", lambda: _with(_plaintext(), 4, struct.pack("<I", 7)), True, True),
    ("license-status-max", lambda: _with(_plaintext(), 4, b"\xff" * 4), True, True),
    ("nil-cmid", lambda: _with(_plaintext(), 60, bytes(16)), True, True),
    (
        "name-without-nul",
        lambda: _with(_plaintext(), 104, "AB".encode("utf-16-le") * 32),
        True,
        True,
    ),
    (
        "lone-high-surrogate",
        lambda: _with(_plaintext(), 104, _name_field(b"a\0\x00\xd8b\0")),
        True,
        True,
    ),
    ("lone-low-surrogate", lambda: _with(_plaintext(), 104, _name_field(b"\x00\xdc")), True, True),
    (
        "high-surrogate-at-end",
        lambda: _with(_plaintext(), 104, _name_field(b"x\0\x3d\xd8")),
        True,
        True,
    ),
    (
        "invalid-and-product-unknown",
        lambda: _with(_plaintext(application_id=uuid.uuid4()), 4, struct.pack("<I", 9)),
        True,
        True,
    ),
]


@pytest.mark.parametrize(
    ("make_plaintext", "echo_cmid", "echo_time"),
    [pytest.param(*row[1:], id=row[0]) for row in INVALID_PLAINTEXTS],
)
def test_invalid_plaintext_is_an_encrypted_invalid_data_response(
    host: RunningHost, make_plaintext: Callable[[], bytes], echo_cmid: bool, echo_time: bool
) -> None:
    plaintext = make_plaintext()
    envelope, nonce = seal(plaintext)
    with Peer(host.address) as peer:
        peer.bind()
        response = open_answer(peer.stub_call(ndr(envelope)), KEY, nonce)
        assert peer.activate().status == 0
    assert response.status == INVALID_DATA
    assert response.current_count == 0
    expected_cmid = uuid.UUID(bytes_le=plaintext[60:76]) if echo_cmid else NIL
    expected_time = int.from_bytes(plaintext[80:88], "little") if echo_time else 0
    assert response.client_machine_id == expected_cmid
    assert response.request_time == expected_time
    assert (response.activation_interval, response.renewal_interval) == (120, 10080)
    assert len(response.host_id) == 8 and EPID.match(response.host_epid)


# -- section 5: product and clock ----------------------------------------------------------------


def _office_count_id() -> uuid.UUID:
    return default_catalog().find("office-ltsc-2021-proplus").kms_count_id


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(lambda: {"application_id": uuid.uuid4()}, id="unknown-application"),
        pytest.param(lambda: {"kms_count_id": uuid.uuid4()}, id="unknown-count-id"),
        pytest.param(
            lambda: {"kms_count_id": _office_count_id()}, id="windows-app-office-count-id"
        ),
        pytest.param(
            lambda: {
                "application_id": uuid.uuid4(),
                "request_time": filetime_from_unix(time.time() + 5 * 3600),
            },
            id="unknown-and-skewed",
        ),
    ],
)
def test_product_not_served(host: RunningHost, fields: Callable[[], dict[str, Any]]) -> None:
    request = make_request(cmid=CMID, **fields())
    with Peer(host.address) as peer:
        peer.bind()
        response = peer.activate(request)
    assert response.status == PRODUCT_NOT_SERVED
    assert response.current_count == 0
    assert response.client_machine_id == CMID
    assert response.request_time == request.request_time


def test_sku_id_is_not_checked(host: RunningHost) -> None:
    with Peer(host.address) as peer:
        peer.bind()
        assert peer.activate(make_request(sku_id=uuid.uuid4())).status == 0


@pytest.mark.parametrize(
    ("delta", "status"),
    [
        pytest.param(0, 0, id="same-time"),
        pytest.param(4 * HOUR, 0, id="plus-4h"),
        pytest.param(-4 * HOUR, 0, id="minus-4h"),
        pytest.param(4 * HOUR + SECOND_FT, TIMESTAMP_INVALID, id="plus-4h-1s"),
        pytest.param(-4 * HOUR - SECOND_FT, TIMESTAMP_INVALID, id="minus-4h-1s"),
        pytest.param(4 * HOUR + 1, TIMESTAMP_INVALID, id="plus-4h-100ns"),
        pytest.param(-4 * HOUR - 1, TIMESTAMP_INVALID, id="minus-4h-100ns"),
        pytest.param(-FROZEN_FT, TIMESTAMP_INVALID, id="time-zero"),
    ],
)
def test_clock_skew_limit_is_exactly_four_hours(
    frozen_host: RunningHost, delta: int, status: int
) -> None:
    request = make_request(cmid=CMID, when=FROZEN_FT + delta)
    with Peer(frozen_host.address) as peer:
        peer.bind()
        response = peer.activate(request)
    assert response.status == status
    assert response.response_time == FROZEN_FT
    assert response.request_time == request.request_time
    assert response.client_machine_id == CMID
    assert (response.current_count >= 1) if status == 0 else response.current_count == 0


# -- section 1: PDUs that end only their own connection ------------------------------------------

GARBAGE = [
    pytest.param(header(REQUEST, 3, 12, 1), id="frag_length-12"),
    pytest.param(header(REQUEST, 3, 20, 2) + bytes(4), id="request-shorter-than-24"),
    pytest.param(header(BIND, 3, 24, 2) + bytes(8), id="bind-shorter-than-28"),
    pytest.param(header(REQUEST, 3, 6000, 2) + bytes(200), id="oversized-6000"),
    pytest.param(header(REQUEST, 3, 0xFFFF, 2) + bytes(5000), id="oversized-65535"),
    pytest.param(header(REQUEST, 3, 40, 2, auth_length=30) + bytes(24), id="auth_length-too-big"),
    pytest.param(bind_pdu()[:4] + b"\x00\x00\x00\x00" + bind_pdu()[8:], id="big-endian"),
    pytest.param(b"\x04" + bind_pdu()[1:], id="rpc_vers-4"),
    pytest.param(bind_pdu()[:1] + b"\x02" + bind_pdu()[2:], id="rpc_minor-2"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: kms\r\n\r\n", id="http"),
    pytest.param(bytes.fromhex("1603010200010001fc0303") + bytes(32), id="tls-hello"),
    pytest.param(random.Random(1688).randbytes(3000), id="random"),
    pytest.param(b"\x05" * 64, id="fives"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("after_bind", [False, True], ids=["unbound", "bound"])
def test_invalid_pdu_closes_only_its_connection(
    host: RunningHost, garbage: bytes, after_bind: bool
) -> None:
    with Peer(host.address) as bystander, Peer(host.address) as bad:
        bystander.bind()
        if after_bind:
            bad.bind()
        bad.send(garbage)
        assert bad.wait_closed() == b"", "an invalid header is answered by closing, no reply"
        assert bystander.activate().status == 0
        fresh_activation_works(host.address)
        assert bystander.activate().status == 0
        lines = wait_for(
            lambda: log_lines(host, "connection-closed", bad.port),
            what="the connection-closed log line",
        )
        assert len(lines) == 1, lines


def test_oversized_after_bind_is_measured_against_the_negotiated_size(host: RunningHost) -> None:
    with Peer(host.address) as bystander, Peer(host.address) as bad:
        bystander.bind()
        bad.bind(max_xmit=2048)
        bad.send(request_pdu(bytes(2049 - 24), call_id=2))
        assert bad.wait_closed() == b""
        assert bystander.activate().status == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            header(RESPONSE, 3, 32, 0x99) + bytes(16),
            fault_pdu(0x99, 0, PROTO_ERROR),
            id="response-pdu",
        ),
        pytest.param(
            header(16, 3, 20, 0x98) + bytes(4), fault_pdu(0x98, 0, PROTO_ERROR), id="auth3"
        ),
        pytest.param(header(99, 3, 16, 0x97), fault_pdu(0x97, 0, PROTO_ERROR), id="type-99"),
        pytest.param(
            request_pdu(b"x" * 8, call_id=0x96, auth=bytes(16)),
            fault_pdu(0x96, 0, PROTO_ERROR),
            id="request-with-auth",
        ),
        pytest.param(
            request_pdu(b"x" * 8, call_id=0x95, flags=2),
            fault_pdu(0x95, 0, PROTO_ERROR),
            id="last-fragment-of-unknown-call",
        ),
    ],
)
def test_protocol_error_gets_a_fault_then_close(
    host: RunningHost, data: bytes, expected: bytes
) -> None:
    with Peer(host.address) as bystander, Peer(host.address) as bad:
        bystander.bind()
        bad.bind()
        bad.send(data)
        assert bad.wait_closed() == expected
        assert bystander.activate().status == 0


def test_oversized_reassembled_stub_gets_a_fault_then_close(host: RunningHost) -> None:
    with Peer(host.address) as bystander, Peer(host.address) as bad:
        bystander.bind()
        bad.bind()
        stub = bytes(64 * 1024 + 1)
        size = 5000
        for i in range(0, len(stub), size):
            flags = (1 if i == 0 else 0) | (2 if i + size >= len(stub) else 0)
            bad.send(request_pdu(stub[i : i + size], call_id=7, flags=flags))
        assert bad.wait_closed() == fault_pdu(7, 0, PROTO_ERROR)
        assert bystander.activate().status == 0


def test_fragmented_request_over_a_real_socket(host: RunningHost) -> None:
    envelope, nonce = seal(make_request().to_bytes())
    stub = ndr(envelope)
    with Peer(host.address) as peer:
        peer.bind()
        peer.send(
            request_pdu(stub[:100], call_id=5, flags=1)
            + request_pdu(stub[100:200], call_id=5, flags=0)
            + request_pdu(stub[200:], call_id=5, flags=2)
        )
        pdu = peer.read_pdu()
        assert pdu[2] == RESPONSE and struct.unpack_from("<I", pdu, 12)[0] == 5
        assert open_answer(pdu[24:], KEY, nonce).status == 0


# -- peers that stall or vanish -----------------------------------------------------------------


@pytest.fixture
def idle_host(tmp_path: Path) -> Iterator[RunningHost]:
    running = start_host_process(tmp_path / "idle", "--idle-timeout", "0.5")
    try:
        yield running
    finally:
        stop_host_process(running)


def test_stalled_peers_are_closed_after_the_idle_timeout(idle_host: RunningHost) -> None:
    with (
        Peer(idle_host.address) as half_header,
        Peer(idle_host.address) as half_body,
        Peer(idle_host.address) as silent,
    ):
        started = time.monotonic()
        half_header.send(bind_pdu()[:8])
        half_body.send(bind_pdu()[:40])
        fresh_activation_works(idle_host.address)
        for peer in (half_header, half_body, silent):
            assert peer.wait_closed(timeout=10) == b""
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 10
        fresh_activation_works(idle_host.address)
        for peer in (half_header, half_body, silent):
            lines = wait_for(
                lambda p=peer: log_lines(idle_host, "connection-closed", p.port),
                what="the idle-timeout log line",
            )
            assert len(lines) == 1 and "idle timeout" in lines[0], lines


def test_peer_that_disconnects_mid_pdu(host: RunningHost) -> None:
    with Peer(host.address) as bystander:
        bystander.bind()
        with Peer(host.address) as fin:
            fin.send(bind_pdu()[:30])
            fin.sock.shutdown(socket.SHUT_WR)
            assert fin.wait_closed() == b""
            lines = wait_for(
                lambda: log_lines(host, "connection-closed", fin.port), what="the mid-PDU log line"
            )
            assert len(lines) == 1 and "middle of a PDU" in lines[0], lines
        with Peer(host.address) as fin_mid_call:
            fin_mid_call.bind()
            fin_mid_call.send(request_pdu(b"part", call_id=3, flags=1))
            fin_mid_call.sock.shutdown(socket.SHUT_WR)
            assert fin_mid_call.wait_closed() == b""
        reset = Peer(host.address)
        reset.bind()
        reset.send(request_pdu(bytes(100), call_id=3)[:50])
        reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.sock.close()  # RST
        assert bystander.activate().status == 0
        fresh_activation_works(host.address)


def _raise_nofile(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE (left raised: lowering it under open sockets could hurt)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is under {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_a_thousand_idle_connections_do_not_block_activation(host: RunningHost) -> None:
    _raise_nofile(2 * 1000 + 256)  # both ends live in this process
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(host.address, timeout=TIMEOUT))
        fresh_activation_works(host.address)
        for sock in (idle[0], idle[500], idle[-1]):
            Peer(sock).bind()
        fresh_activation_works(host.address)
    finally:
        for sock in idle:
            sock.close()


def test_at_max_connections_a_new_connection_closes_the_oldest(tmp_path: Path) -> None:
    """Idle peers holding every slot do not keep a real client out (issue 17): each new
    connection closes the oldest open one, logged, and is served itself."""
    limited = start_host_process(tmp_path / "limited", "--max-connections", "3")
    try:
        idle = [Peer(limited.address) for _ in range(3)]
        for peer in idle:  # accepted in this order: each has its BIND_ACK before the next
            peer.bind()
        clients = [Peer(limited.address) for _ in range(2)]
        for client in clients:
            client.bind()
            assert client.activate().status == 0
        # the two oldest made way, in order; the third idle peer is still served
        assert [idle[0].wait_closed(), idle[1].wait_closed()] == [b"", b""]
        assert idle[2].activate().status == 0
        for peer in idle[:2]:
            lines = wait_for(
                lambda p=peer: log_lines(limited, "connection-closed", p.port),
                what="the connection-closed log line",
            )
            assert len(lines) == 1 and 'reason="max connections: the oldest' in lines[0], lines
        assert log_lines(limited, "connection-refused") == []
        for peer in [*idle, *clients]:
            peer.sock.close()
        wait_for(lambda: _served(limited.address), what="a slot after the connections closed")
    finally:
        assert stop_host_process(limited) == 0


def _served(address: tuple[str, int]) -> bool:
    try:
        with Peer(address) as peer:
            peer.bind()
            return peer.activate().status == 0
    except (EOFError, ConnectionError):
        return False
