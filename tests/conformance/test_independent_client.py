"""An independent KLP/1 client, built from klp-v1.md alone, against a real host process.

Everything on the wire below (BIND, REQUEST, NDR stub, envelope, plaintext; and the
parsing of BIND_ACK, BIND_NAK, RESPONSE, FAULT and the response envelope) is written
here with ``struct``, ``socket``, ``hashlib``, ``uuid`` and ``cryptography`` only. From
kmsemu this module takes product ids from the catalog and the conftest helpers; no codec.
The same encoder must reproduce the golden vectors byte for byte (klp-v1.md section 8).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kmsemu.catalog import default_catalog
from tests.conftest import RunningHost, start_host_process, stop_host_process

# -- constants of klp-v1.md ---------------------------------------------------------------

BIND, BIND_ACK, BIND_NAK = 11, 12, 13
ALTER_CONTEXT, ALTER_CONTEXT_RESP = 14, 15
REQUEST, RESPONSE, FAULT = 0, 2, 3
FIRST, LAST, DID_NOT_EXECUTE, OBJECT_UUID = 0x01, 0x02, 0x20, 0x80
FIRST_LAST = FIRST | LAST

NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNK_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
NCA_S_FAULT_NDR = 0x000006F7

S_OK = 0
INVALID_DATA = 0x8007000D
ACCESS_DENIED = 0x80070005
PRODUCT_NOT_SERVED = 0xC004F042
TIMESTAMP_INVALID = 0xC004F06C

HOST_MAX_FRAG = 5840
MIN_FRAG = 1432
MAX_STUB = 64 * 1024
REFERENT_ID = 0x00020000


def syntax(text: str, major: int, minor: int = 0) -> bytes:
    """A presentation syntax id: GUID (mixed endian) + u16 major + u16 minor."""
    return uuid.UUID(text).bytes_le + struct.pack("<HH", major, minor)


KLP_IF = syntax("6e8f4bef-ca86-4ca5-981e-95096d715f4b", 1, 0)
KLP_IF_1_1 = syntax("6e8f4bef-ca86-4ca5-981e-95096d715f4b", 1, 1)
KLP_IF_2_0 = syntax("6e8f4bef-ca86-4ca5-981e-95096d715f4b", 2, 0)
NDR20 = syntax("8a885d04-1ceb-11c9-9fe8-08002b104860", 2)
NDR64 = syntax("71710533-beba-4937-8319-b5dbef9ccc36", 1)
BTFN = syntax("6cb71c2c-9812-4540-0300-000000000000", 1)
OTHER_IF = syntax("12345678-1234-abcd-ef00-0123456789ab", 1)
ZERO_SYNTAX = bytes(20)

EPID_RE = re.compile(
    r"^\d{5}-\d{5}-\d{3}-\d{6}-03-\d{4,5}-\d{4,5}\.0000-"
    r"(00[1-9]|0[1-9]\d|[12]\d\d|3[0-5]\d|36[0-6])\d{4}$"
)
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000
FILETIME_PER_SECOND = 10_000_000
NIL = uuid.UUID(int=0)
TIMEOUT = 5.0


def filetime_now(offset_seconds: float = 0.0) -> int:
    return FILETIME_UNIX_EPOCH + time.time_ns() // 100 + int(offset_seconds * FILETIME_PER_SECOND)


# -- keys and envelope (section 3) --------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    key_id: bytes
    request: bytes
    response: bytes


def derive_keys(secret: str) -> Keys:
    raw = secret.encode("utf-8")

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"KLP1", info=info).derive(raw)

    key_id = hashlib.sha256(b"klp1 key id" + raw).digest()[:4]
    return Keys(key_id, hkdf(b"klp1 request"), hkdf(b"klp1 response"))


LAB = derive_keys("kmsemu-lab")


def seal_request(
    keys: Keys,
    nonce: bytes,
    plaintext: bytes,
    *,
    minor: int = 0,
    major: int = 1,
    magic: bytes = b"KLP1",
    key_id: bytes | None = None,
) -> bytes:
    header = magic + struct.pack("<HH", major, minor) + (key_id or keys.key_id) + nonce
    return header + AESGCM(keys.request).encrypt(nonce, plaintext, header)


def open_response(keys: Keys, envelope: bytes) -> tuple[bytes, bytes]:
    """(nonce, plaintext) of a response envelope, checking its header per section 3."""
    assert len(envelope) >= 40
    assert envelope[:4] == b"KLP1"
    assert struct.unpack_from("<HH", envelope, 4) == (1, 0)
    assert envelope[8:12] == keys.key_id
    nonce = envelope[12:24]
    return nonce, AESGCM(keys.response).decrypt(nonce, envelope[24:], envelope[:24])


# -- plaintexts (section 4) ---------------------------------------------------------------


def utf16_field(text: str, size: int = 128) -> bytes:
    raw = text.encode("utf-16-le") + b"\x00\x00"
    assert len(raw) <= size
    return raw.ljust(size, b"\x00")


def read_utf16_field(data: bytes) -> str:
    for i in range(0, len(data) - 1, 2):
        if data[i : i + 2] == b"\x00\x00":
            return data[:i].decode("utf-16-le")
    raise AssertionError("UTF-16 field without a NUL code unit")


def request_plaintext(
    *,
    application_id: uuid.UUID,
    sku_id: uuid.UUID,
    kms_count_id: uuid.UUID,
    client_machine_id: uuid.UUID,
    request_time: int,
    required_client_count: int,
    license_status: int = 2,
    grace_minutes_remaining: int = 43_200,
    workstation_name: str = "lab-pc",
    previous_client_machine_id: uuid.UUID = NIL,
    flags: int = 0,
) -> bytes:
    return (
        struct.pack("<III", flags, license_status, grace_minutes_remaining)
        + application_id.bytes_le
        + sku_id.bytes_le
        + kms_count_id.bytes_le
        + client_machine_id.bytes_le
        + struct.pack("<IQ", required_client_count, request_time)
        + previous_client_machine_id.bytes_le
        + utf16_field(workstation_name)
    )


def product_plaintext(
    product: str = "windows-server-2022-standard",
    *,
    cmid: uuid.UUID | None = None,
    request_time: int | None = None,
    **fields: Any,
) -> bytes:
    p = default_catalog().find(product)
    return request_plaintext(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=p.kms_count_id,
        client_machine_id=cmid or uuid.uuid4(),
        request_time=filetime_now() if request_time is None else request_time,
        required_client_count=p.threshold,
        **fields,
    )


_RESPONSE_FIXED = struct.Struct("<I12s16sQQIII8s")


def parse_response_plaintext(plaintext: bytes) -> dict[str, Any]:
    assert len(plaintext) == 196, len(plaintext)
    (status, nonce, cmid, request_time, response_time, count, activation, renewal, host_id) = (
        _RESPONSE_FIXED.unpack_from(plaintext)
    )
    assert _RESPONSE_FIXED.size == 68
    return {
        "status": status,
        "request_nonce": nonce,
        "client_machine_id": uuid.UUID(bytes_le=cmid),
        "request_time": request_time,
        "response_time": response_time,
        "current_count": count,
        "activation_interval": activation,
        "renewal_interval": renewal,
        "host_id": host_id,
        "host_epid": read_utf16_field(plaintext[68:196]),
    }


# -- NDR stubs (section 2) ----------------------------------------------------------------


def request_stub(envelope: bytes) -> bytes:
    return struct.pack("<II", len(envelope), len(envelope)) + envelope


def parse_response_stub(stub: bytes) -> tuple[bytes, int]:
    """(envelope, status), checking the byte-exact layout the host must send."""
    size, referent = struct.unpack_from("<II", stub)
    status = struct.unpack_from("<I", stub, len(stub) - 4)[0]
    if size == 0:
        assert referent == 0
        assert len(stub) == 12
        assert status != 0
        return b"", status
    assert referent == REFERENT_ID
    assert struct.unpack_from("<I", stub, 8)[0] == size
    pad = -size % 4
    assert len(stub) == 12 + size + pad + 4
    assert stub[12 + size : 12 + size + pad] == bytes(pad)
    assert status == 0
    return stub[12 : 12 + size], status


# -- PDUs (section 1) ---------------------------------------------------------------------

_HEADER = struct.Struct("<BBBB4sHHI")


def pdu_header(
    ptype: int,
    flags: int,
    frag_length: int,
    call_id: int,
    auth_length: int = 0,
    *,
    vers: int = 5,
    minor: int = 0,
    drep: bytes = b"\x10\x00\x00\x00",
) -> bytes:
    return _HEADER.pack(vers, minor, ptype, flags, drep, frag_length, auth_length, call_id)


Context = tuple[int, bytes, list[bytes]]


def bind_pdu(
    call_id: int,
    contexts: list[Context],
    *,
    max_xmit: int = HOST_MAX_FRAG,
    max_recv: int = HOST_MAX_FRAG,
    assoc_group: int = 0,
    ptype: int = BIND,
) -> bytes:
    body = struct.pack("<HHIB3x", max_xmit, max_recv, assoc_group, len(contexts))
    for context_id, abstract, transfers in contexts:
        body += struct.pack("<HBx", context_id, len(transfers)) + abstract + b"".join(transfers)
    return pdu_header(ptype, FIRST_LAST, 16 + len(body), call_id) + body


def request_pdu(
    call_id: int,
    context_id: int,
    opnum: int,
    stub: bytes,
    *,
    flags: int = FIRST_LAST,
    alloc_hint: int | None = None,
    object_uuid: uuid.UUID | None = None,
    auth: bytes = b"",
) -> bytes:
    obj = b""
    if object_uuid is not None:
        flags |= OBJECT_UUID
        obj = object_uuid.bytes_le
    hint = len(stub) if alloc_hint is None else alloc_hint
    body = struct.pack("<IHH", hint, context_id, opnum) + obj + stub + auth
    return pdu_header(REQUEST, flags, 16 + len(body), call_id, len(auth)) + body


def check_header(pdu: bytes, ptype: int, flags: int, call_id: int) -> None:
    vers, minor, got_type, got_flags, drep, frag_length, auth_length, got_call = (
        _HEADER.unpack_from(pdu)
    )
    assert (vers, minor) == (5, 0)
    assert got_type == ptype, f"PDU type {got_type}, expected {ptype}"
    assert got_flags == flags, f"flags 0x{got_flags:02x}, expected 0x{flags:02x}"
    assert drep == b"\x10\x00\x00\x00"
    assert frag_length == len(pdu)
    assert auth_length == 0
    assert got_call == call_id


def parse_bind_ack(pdu: bytes, call_id: int, ptype: int = BIND_ACK) -> dict[str, Any]:
    check_header(pdu, ptype, FIRST_LAST, call_id)
    max_xmit, max_recv, assoc, addr_len = struct.unpack_from("<HHIH", pdu, 16)
    offset = 26 + addr_len
    address = pdu[26:offset]
    pad = -offset % 4
    assert pdu[offset : offset + pad] == bytes(pad), "secondary address padding is not zero"
    offset += pad
    count = pdu[offset]
    assert pdu[offset + 1 : offset + 4] == b"\x00\x00\x00"
    offset += 4
    results = []
    for _ in range(count):
        result, reason = struct.unpack_from("<HH", pdu, offset)
        results.append((result, reason, pdu[offset + 4 : offset + 24]))
        offset += 24
    assert offset == len(pdu), "bytes after the result list"
    return {
        "max_xmit": max_xmit,
        "max_recv": max_recv,
        "assoc_group": assoc,
        "address": address,
        "results_offset": offset - 24 * count - 4,
        "results": results,
    }


def parse_fault(pdu: bytes, call_id: int, context_id: int = 0) -> int:
    check_header(pdu, FAULT, FIRST_LAST | DID_NOT_EXECUTE, call_id)
    assert len(pdu) == 32
    hint, ctx, cancel, reserved, status, reserved2 = struct.unpack_from("<IHBBII", pdu, 16)
    assert (hint, ctx, cancel, reserved, reserved2) == (0, context_id, 0, 0, 0)
    return int(status)


def parse_response(pdu: bytes, call_id: int, context_id: int = 0) -> bytes:
    """The stub of a single-fragment RESPONSE, checking every header field."""
    check_header(pdu, RESPONSE, FIRST_LAST, call_id)
    hint, ctx, cancel, reserved = struct.unpack_from("<IHBB", pdu, 16)
    stub = pdu[24:]
    assert hint == len(stub)
    assert ctx == context_id
    assert cancel == 0
    assert reserved == 0
    return stub


class Wire:
    """One TCP connection reading whole PDUs, with a bounded timeout on every read."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return bytes(data)

    def recv_pdu(self) -> bytes:
        head = self._exact(16)
        frag_length = struct.unpack_from("<H", head, 8)[0]
        assert frag_length >= 16
        return head + self._exact(frag_length - 16)

    def closed_by_peer(self) -> bool:
        """True when the host closes the connection (within the timeout) with nothing more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def bind(
        self, call_id: int = 1, contexts: list[Context] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        self.send(bind_pdu(call_id, contexts or [(0, KLP_IF, [NDR20])], **kwargs))
        return parse_bind_ack(self.recv_pdu(), call_id)

    def call(self, stub: bytes, call_id: int = 2, context_id: int = 0, opnum: int = 0) -> bytes:
        self.send(request_pdu(call_id, context_id, opnum, stub))
        return self.recv_pdu()

    def fault_of(self, stub: bytes, call_id: int = 2, context_id: int = 0, opnum: int = 0) -> int:
        return parse_fault(self.call(stub, call_id, context_id, opnum), call_id, context_id)


@dataclass
class Activation:
    nonce: bytes
    response_nonce: bytes
    fields: dict[str, Any]


def activate(
    wire: Wire,
    plaintext: bytes,
    *,
    call_id: int = 2,
    keys: Keys = LAB,
    nonce: bytes | None = None,
    minor: int = 0,
) -> Activation:
    nonce = nonce or os.urandom(12)
    envelope = seal_request(keys, nonce, plaintext, minor=minor)
    stub = parse_response(wire.call(request_stub(envelope), call_id), call_id)
    response_envelope, _ = parse_response_stub(stub)
    response_nonce, response_plaintext = open_response(keys, response_envelope)
    fields = parse_response_plaintext(response_plaintext)
    assert fields["request_nonce"] == nonce
    return Activation(nonce, response_nonce, fields)


def stub_status(wire: Wire, envelope: bytes, call_id: int = 2) -> int:
    """The status of a RESPONSE stub that carries no envelope (M = 0)."""
    stub = parse_response(wire.call(request_stub(envelope), call_id), call_id)
    assert stub == bytes(8) + stub[8:12], stub.hex()
    envelope_out, status = parse_response_stub(stub)
    assert envelope_out == b""
    return status


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    """One host process for the tests that do not depend on the count."""
    host = start_host_process(Path(tmp_path_factory.mktemp("shared")), "--idle-timeout", "10")
    try:
        yield host
    finally:
        stop_host_process(host)


# -- the activation -------------------------------------------------------------------------


def test_independent_client_activates(host_process: RunningHost) -> None:
    port = host_process.port
    cmid = uuid.uuid4()
    request_time = filetime_now()
    with Wire(host_process.address) as wire:
        ack = wire.bind(call_id=1)
        # BIND_ACK: sizes, a non-zero assoc group, "PORT\0" padded so results start at 4n
        assert ack["max_xmit"] == HOST_MAX_FRAG and ack["max_recv"] == HOST_MAX_FRAG
        assert ack["assoc_group"] != 0
        assert ack["address"] == str(port).encode("ascii") + b"\x00"
        assert ack["results_offset"] % 4 == 0
        assert ack["results"] == [(0, 0, NDR20)]
        result = activate(wire, product_plaintext(cmid=cmid, request_time=request_time))
        fields = result.fields
        assert fields["status"] == S_OK
        assert fields["client_machine_id"] == cmid
        assert fields["request_time"] == request_time
        assert abs(fields["response_time"] - request_time) < 60 * FILETIME_PER_SECOND
        assert fields["current_count"] == 1
        assert fields["activation_interval"] == 120
        assert fields["renewal_interval"] == 10080
        assert len(fields["host_id"]) == 8
        assert EPID_RE.match(fields["host_epid"]), fields["host_epid"]
        assert result.response_nonce != result.nonce
        # a renewal of the same CMID on the same connection: same count, same identity
        again = activate(wire, product_plaintext(cmid=cmid), call_id=3)
        assert again.fields["current_count"] == 1
        assert again.response_nonce != result.response_nonce
        assert again.fields["host_id"] == fields["host_id"]
        assert again.fields["host_epid"] == fields["host_epid"]
    # a second client, one connection per activation as real clients do
    with Wire(host_process.address) as wire:
        second_ack = wire.bind(call_id=1)
        assert second_ack["assoc_group"] != 0
        second = activate(wire, product_plaintext(), call_id=2)
        assert second.fields["current_count"] == 2
        assert second.fields["host_id"] == fields["host_id"]


# -- golden vectors -----------------------------------------------------------------------


def _fields_plaintext(fields: dict[str, Any]) -> bytes:
    return request_plaintext(
        application_id=uuid.UUID(fields["application_id"]),
        sku_id=uuid.UUID(fields["sku_id"]),
        kms_count_id=uuid.UUID(fields["kms_count_id"]),
        client_machine_id=uuid.UUID(fields["client_machine_id"]),
        request_time=fields["request_time"],
        required_client_count=fields["required_client_count"],
        license_status=fields["license_status"],
        grace_minutes_remaining=fields["grace_minutes_remaining"],
        workstation_name=fields["workstation_name"],
        previous_client_machine_id=uuid.UUID(fields["previous_client_machine_id"]),
        flags=fields["flags"],
    )


def test_encoder_reproduces_golden_exchanges(klp_vectors: dict[str, Any]) -> None:
    for exchange in klp_vectors["exchanges"]:
        keys = derive_keys(exchange["secret"])
        assert exchange["secret"].encode("utf-8").hex() == exchange["secret_utf8"]
        assert keys.key_id.hex() == exchange["key_id"]
        assert keys.request.hex() == exchange["request_key"]
        assert keys.response.hex() == exchange["response_key"]

        request = exchange["request"]
        plaintext = _fields_plaintext(request["fields"])
        assert len(plaintext) == 232
        assert plaintext.hex() == request["plaintext"]
        envelope = seal_request(keys, bytes.fromhex(request["nonce"]), plaintext)
        assert envelope.hex() == request["envelope"]
        parts = request["envelope_parts"]
        assert envelope.hex() == "".join(
            parts[k]
            for k in (
                "magic",
                "version_major",
                "version_minor",
                "key_id",
                "nonce",
                "ciphertext",
                "tag",
            )
        )
        stub = request_stub(envelope)
        assert stub.hex() == request["stub"]
        assert request_pdu(2, 0, 0, stub).hex() == request["pdu_call_id_2_ctx_0"]

        response = exchange["response"]
        pdu = bytes.fromhex(response["pdu_call_id_2_ctx_0"])
        response_stub = parse_response(pdu, call_id=2, context_id=0)
        assert response_stub.hex() == response["stub"]
        response_envelope, status = parse_response_stub(response_stub)
        assert status == response["stub_status"] == 0
        assert response_envelope.hex() == response["envelope"]
        nonce, response_plaintext = open_response(keys, response_envelope)
        assert nonce.hex() == response["nonce"]
        assert response_plaintext.hex() == response["plaintext"]
        fields = parse_response_plaintext(response_plaintext)
        expected = dict(response["fields"])
        assert fields == {
            **expected,
            "request_nonce": bytes.fromhex(expected["request_nonce"]),
            "client_machine_id": uuid.UUID(expected["client_machine_id"]),
            "host_id": bytes.fromhex(expected["host_id"]),
        }
        assert EPID_RE.match(fields["host_epid"])


def test_encoder_reproduces_golden_pdus(klp_vectors: dict[str, Any]) -> None:
    contexts: list[Context] = [(0, KLP_IF, [NDR20]), (1, KLP_IF, [NDR64]), (2, OTHER_IF, [NDR20])]
    bind = bind_pdu(1, contexts, max_xmit=4280, max_recv=4280)
    assert bind.hex() == klp_vectors["bind"]["pdu"]
    ack = parse_bind_ack(bytes.fromhex(klp_vectors["bind_ack"]["pdu"]), call_id=1)
    assert ack["max_xmit"] == ack["max_recv"] == 4280
    assert ack["assoc_group"] == 0x00012345
    assert ack["address"] == b"1688\x00"
    assert ack["results_offset"] % 4 == 0
    assert ack["results"] == [(0, 0, NDR20), (2, 2, ZERO_SYNTAX), (2, 1, ZERO_SYNTAX)]
    fault = klp_vectors["fault_bad_opnum"]
    assert request_pdu(2, 0, 1, request_stub(bytes(40))).hex() == fault["request_pdu"]
    assert parse_fault(bytes.fromhex(fault["fault_pdu"]), call_id=2) == NCA_S_OP_RNG_ERROR
    status_only = klp_vectors["stub_status_only"]
    stub = bytes.fromhex(status_only["stub"])
    assert parse_response_stub(stub) == (b"", status_only["status"]) == (b"", ACCESS_DENIED)
    assert (
        uuid.UUID(klp_vectors["guid_layout"]["text"]).bytes_le.hex()
        == (klp_vectors["guid_layout"]["bytes_le"])
    )
    assert EPID_RE.match(klp_vectors["epid_example"]["epid"])


def test_golden_bind_and_fault_on_the_wire(
    shared_host: RunningHost, klp_vectors: dict[str, Any]
) -> None:
    """The vector BIND gets the vector BIND_ACK (but for assoc group and port), then the FAULT."""
    vector_ack = bytes.fromhex(klp_vectors["bind_ack"]["pdu"])
    golden_results = vector_ack[parse_bind_ack(vector_ack, 1)["results_offset"] :]
    with Wire(shared_host.address) as wire:
        wire.send(bytes.fromhex(klp_vectors["bind"]["pdu"]))
        pdu = wire.recv_pdu()
        ack = parse_bind_ack(pdu, 1)
        address = str(shared_host.port).encode() + b"\x00"
        head = struct.pack("<HHIH", 4280, 4280, ack["assoc_group"], len(address)) + address
        head += bytes(-(16 + len(head)) % 4)
        body = head + golden_results
        assert pdu == pdu_header(BIND_ACK, FIRST_LAST, 16 + len(body), 1) + body
        assert ack["assoc_group"] != 0
        wire.send(bytes.fromhex(klp_vectors["fault_bad_opnum"]["request_pdu"]))
        assert wire.recv_pdu().hex() == klp_vectors["fault_bad_opnum"]["fault_pdu"]
        # a FAULT other than nca_s_proto_error leaves the connection usable
        assert activate(wire, product_plaintext(), call_id=3).fields["status"] == S_OK


def test_golden_request_replayed_to_the_host(
    shared_host: RunningHost, klp_vectors: dict[str, Any]
) -> None:
    """Vector 0's REQUEST, byte for byte: its kms_count_id is not in the shipped catalog."""
    exchange = klp_vectors["exchanges"][0]
    fields = exchange["request"]["fields"]
    with Wire(shared_host.address) as wire:
        wire.bind(call_id=1)
        wire.send(bytes.fromhex(exchange["request"]["pdu_call_id_2_ctx_0"]))
        envelope, _ = parse_response_stub(parse_response(wire.recv_pdu(), 2))
    _, plaintext = open_response(LAB, envelope)
    got = parse_response_plaintext(plaintext)
    assert got["status"] == PRODUCT_NOT_SERVED
    assert got["request_nonce"].hex() == exchange["request"]["nonce"]
    assert got["client_machine_id"] == uuid.UUID(fields["client_machine_id"])
    assert got["request_time"] == fields["request_time"]
    assert got["current_count"] == 0
    assert (got["activation_interval"], got["renewal_interval"]) == (120, 10080)
    assert EPID_RE.match(got["host_epid"])


# -- BIND, ALTER_CONTEXT --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_xmit", "client_recv"),
    [
        (5840, 5840),
        (4280, 4280),
        (65535, 65535),
        (1000, 1000),
        (2000, 9000),
        (16, 1432),
    ],
)
def test_bind_ack_fragment_sizes(
    shared_host: RunningHost, client_xmit: int, client_recv: int
) -> None:
    with Wire(shared_host.address) as wire:
        ack = wire.bind(max_xmit=client_xmit, max_recv=client_recv)
    assert ack["max_xmit"] == max(min(client_recv, HOST_MAX_FRAG), MIN_FRAG)
    assert ack["max_recv"] == max(min(client_xmit, HOST_MAX_FRAG), MIN_FRAG)


def test_bind_ack_echoes_a_client_assoc_group(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        assert wire.bind(assoc_group=0x0BADF00D)["assoc_group"] == 0x0BADF00D


def test_bind_results_per_context(shared_host: RunningHost) -> None:
    contexts: list[Context] = [
        (0, OTHER_IF, [NDR20]),  # unknown interface: reason 1
        (1, KLP_IF, [NDR64]),  # our interface, no NDR 2.0: reason 2
        (2, KLP_IF_1_1, [NDR20]),  # version 1.1 is not 1.0: reason 1
        (3, KLP_IF_2_0, [NDR20]),  # version 2.0: reason 1
        (4, KLP_IF, [BTFN]),  # bind-time feature negotiation: negotiate_ack
        (5, KLP_IF, [NDR64, NDR20]),  # NDR 2.0 in the list: accepted
    ]
    with Wire(shared_host.address) as wire:
        ack = wire.bind(contexts=contexts)
        assert ack["results"] == [
            (2, 1, ZERO_SYNTAX),
            (2, 2, ZERO_SYNTAX),
            (2, 1, ZERO_SYNTAX),
            (2, 1, ZERO_SYNTAX),
            (3, 0, ZERO_SYNTAX),
            (0, 0, NDR20),
        ]
        assert wire.fault_of(request_stub(bytes(40)), call_id=2, context_id=1) == NCA_S_UNK_IF
        assert wire.fault_of(request_stub(bytes(40)), call_id=3, context_id=4) == NCA_S_UNK_IF
        envelope = seal_request(LAB, os.urandom(12), product_plaintext())
        stub = parse_response(wire.call(request_stub(envelope), 4, 5), 4, 5)
        assert parse_response_stub(stub)[1] == S_OK


def test_all_rejected_still_bind_ack_and_alter_context_adds(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        ack = wire.bind(call_id=7, contexts=[(0, OTHER_IF, [NDR20])])
        assert ack["results"] == [(2, 1, ZERO_SYNTAX)]
        assert wire.fault_of(request_stub(bytes(40)), call_id=8) == NCA_S_UNK_IF
        wire.send(
            bind_pdu(9, [(1, KLP_IF, [NDR20])], max_xmit=2000, max_recv=3000, ptype=ALTER_CONTEXT)
        )
        resp = parse_bind_ack(wire.recv_pdu(), 9, ALTER_CONTEXT_RESP)
        assert resp["address"] == b""
        assert resp["results_offset"] % 4 == 0
        assert (resp["max_xmit"], resp["max_recv"]) == (ack["max_xmit"], ack["max_recv"])
        assert resp["results"] == [(0, 0, NDR20)]
        envelope = seal_request(LAB, os.urandom(12), product_plaintext())
        stub = parse_response(wire.call(request_stub(envelope), 10, 1), 10, 1)
        assert parse_response_stub(stub)[1] == S_OK


def test_bind_ack_flags_are_first_last_only(shared_host: RunningHost) -> None:
    """A client's PFC_SUPPORT_HEADER_SIGN (0x04) or CONC_MPX (0x10) is not echoed."""
    pdu = bytearray(bind_pdu(3, [(0, KLP_IF, [NDR20])]))
    pdu[3] = FIRST_LAST | 0x04 | 0x10
    with Wire(shared_host.address) as wire:
        wire.send(bytes(pdu))
        parse_bind_ack(wire.recv_pdu(), 3)  # checks flags == FIRST|LAST


def test_pipelined_pdus_in_one_segment(shared_host: RunningHost) -> None:
    nonces = [os.urandom(12) for _ in range(2)]
    stubs = [request_stub(seal_request(LAB, n, product_plaintext())) for n in nonces]
    with Wire(shared_host.address) as wire:
        wire.send(
            bind_pdu(1, [(0, KLP_IF, [NDR20])])
            + request_pdu(1, 0, 0, stubs[0])
            + request_pdu(2, 0, 0, stubs[1])
        )
        parse_bind_ack(wire.recv_pdu(), 1)
        for call_id, nonce in ((1, nonces[0]), (2, nonces[1])):
            envelope, _ = parse_response_stub(parse_response(wire.recv_pdu(), call_id))
            fields = parse_response_plaintext(open_response(LAB, envelope)[1])
            assert fields["request_nonce"] == nonce and fields["status"] == S_OK


def test_pdus_dribbled_one_byte_at_a_time(shared_host: RunningHost) -> None:
    nonce = os.urandom(12)
    data = bind_pdu(1, [(0, KLP_IF, [NDR20])]) + request_pdu(
        2, 0, 0, request_stub(seal_request(LAB, nonce, product_plaintext()))
    )
    with Wire(shared_host.address) as wire:
        wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            wire.send(data[i : i + 1])
        parse_bind_ack(wire.recv_pdu(), 1)
        envelope, _ = parse_response_stub(parse_response(wire.recv_pdu(), 2))
        assert parse_response_plaintext(open_response(LAB, envelope)[1])["request_nonce"] == nonce


def test_second_bind_gets_bind_nak(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind(call_id=1)
        wire.send(bind_pdu(2, [(0, KLP_IF, [NDR20])]))
        nak = wire.recv_pdu()
        check_header(nak, BIND_NAK, FIRST_LAST, 2)
        # reason 0, one protocol version 5.0, zero padding to a multiple of 4
        assert nak[16:] == b"\x00\x00" + b"\x01" + b"\x05\x00" + bytes(3)
        assert activate(wire, product_plaintext(), call_id=3).fields["status"] == S_OK


# -- REQUEST and FAULT ----------------------------------------------------------------------


def test_request_before_bind_is_unk_if_and_keeps_the_connection(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        assert wire.fault_of(request_stub(bytes(40)), call_id=1) == NCA_S_UNK_IF
        wire.bind(call_id=2)
        assert activate(wire, product_plaintext(), call_id=3).fields["status"] == S_OK


def test_many_requests_on_one_connection(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind(call_id=1)
        for call_id in (1, 2, 77, 0xFFFFFFFF):
            assert activate(wire, product_plaintext(), call_id=call_id).fields["status"] == S_OK


def test_object_uuid_is_skipped(shared_host: RunningHost) -> None:
    envelope = seal_request(LAB, os.urandom(12), product_plaintext())
    with Wire(shared_host.address) as wire:
        wire.bind()
        wire.send(request_pdu(2, 0, 0, request_stub(envelope), object_uuid=uuid.uuid4()))
        assert parse_response_stub(parse_response(wire.recv_pdu(), 2))[1] == S_OK


@pytest.mark.parametrize(
    "stub",
    [
        b"",
        b"\x00" * 7,  # under 8 bytes
        struct.pack("<II", 40, 41) + bytes(41),  # requestSize != max_count
        struct.pack("<II", 40, 40) + bytes(44),  # 4 trailing bytes
        struct.pack("<II", 40, 40) + bytes(40) + b"\x00\x01",  # non-zero trailing byte
        struct.pack("<II", 40, 40) + bytes(39),  # array past the stub
    ],
)
def test_bad_stub_is_fault_ndr(shared_host: RunningHost, stub: bytes) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert wire.fault_of(stub, call_id=2) == NCA_S_FAULT_NDR
        assert activate(wire, product_plaintext(), call_id=3).fields["status"] == S_OK


@pytest.mark.parametrize("trailing", [1, 2, 3])
def test_up_to_three_trailing_zero_bytes_accepted(shared_host: RunningHost, trailing: int) -> None:
    envelope = seal_request(LAB, os.urandom(12), product_plaintext())
    with Wire(shared_host.address) as wire:
        wire.bind()
        stub = parse_response(wire.call(request_stub(envelope) + bytes(trailing)), 2)
        assert parse_response_stub(stub)[1] == S_OK


def test_opnum_out_of_range(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert wire.fault_of(request_stub(bytes(40)), call_id=5, opnum=1) == NCA_S_OP_RNG_ERROR
        assert wire.fault_of(b"", call_id=6, opnum=0xFFFF) == NCA_S_OP_RNG_ERROR


def test_fragmented_request_reassembled(shared_host: RunningHost) -> None:
    """Fragments of at most the negotiated size; p_cont_id and opnum come from the first."""
    plaintext = product_plaintext() + os.urandom(3000)  # bytes after v1.0 are ignored
    nonce = os.urandom(12)
    stub = request_stub(seal_request(LAB, nonce, plaintext))
    with Wire(shared_host.address) as wire:
        ack = wire.bind(max_xmit=MIN_FRAG, max_recv=MIN_FRAG)
        assert ack["max_recv"] == MIN_FRAG
        chunk = MIN_FRAG - 24
        pieces = [stub[i : i + chunk] for i in range(0, len(stub), chunk)]
        assert len(pieces) == 3
        for index, piece in enumerate(pieces):
            flags = (FIRST if index == 0 else 0) | (LAST if index == len(pieces) - 1 else 0)
            opnum, context = (0, 0) if index == 0 else (9, 3)
            pdu = request_pdu(
                4, context, opnum, piece, flags=flags, alloc_hint=len(stub) - index * chunk
            )
            assert len(pdu) <= MIN_FRAG
            wire.send(pdu)
        envelope, status = parse_response_stub(parse_response(wire.recv_pdu(), 4))
        assert status == S_OK
        _, response = open_response(LAB, envelope)
        fields = parse_response_plaintext(response)
        assert fields["status"] == S_OK and fields["request_nonce"] == nonce


def test_two_fragmented_calls_interleaved(shared_host: RunningHost) -> None:
    """Fragments are reassembled by call_id (section 1), so two calls may interleave."""
    nonces = {7: os.urandom(12), 8: os.urandom(12)}
    stubs = {c: request_stub(seal_request(LAB, n, product_plaintext())) for c, n in nonces.items()}
    half = {c: len(stub) // 2 for c, stub in stubs.items()}
    with Wire(shared_host.address) as wire:
        wire.bind()
        for call_id in (7, 8):
            wire.send(request_pdu(call_id, 0, 0, stubs[call_id][: half[call_id]], flags=FIRST))
        for call_id in (8, 7):
            wire.send(request_pdu(call_id, 0, 0, stubs[call_id][half[call_id] :], flags=LAST))
            envelope, _ = parse_response_stub(parse_response(wire.recv_pdu(), call_id))
            fields = parse_response_plaintext(open_response(LAB, envelope)[1])
            assert fields["request_nonce"] == nonces[call_id]


def test_stub_of_exactly_64_kib_is_served(shared_host: RunningHost) -> None:
    plaintext = product_plaintext()
    plaintext += bytes(MAX_STUB - 8 - 40 - len(plaintext))
    stub = request_stub(seal_request(LAB, os.urandom(12), plaintext))
    assert len(stub) == MAX_STUB
    with Wire(shared_host.address) as wire:
        wire.bind()
        chunk = HOST_MAX_FRAG - 24
        starts = range(0, len(stub), chunk)
        for start in starts:
            flags = (FIRST if start == 0 else 0) | (LAST if start + chunk >= len(stub) else 0)
            wire.send(
                request_pdu(
                    2, 0, 0, stub[start : start + chunk], flags=flags, alloc_hint=len(stub) - start
                )
            )
        assert parse_response_stub(parse_response(wire.recv_pdu(), 2))[1] == S_OK


def test_stub_over_64_kib_is_proto_error_and_close(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        chunk = HOST_MAX_FRAG - 24
        fragments = MAX_STUB // chunk + 1
        for index in range(fragments):
            wire.send(request_pdu(2, 0, 0, bytes(chunk), flags=FIRST if index == 0 else 0))
        assert parse_fault(wire.recv_pdu(), 2) == NCA_S_PROTO_ERROR
        assert wire.closed_by_peer()


# -- errors that close the connection -------------------------------------------------------


def _expect_proto_error_then_close(
    address: tuple[str, int], pdu: bytes, call_id: int, context_id: int = 0
) -> None:
    with Wire(address) as wire:
        wire.bind()
        wire.send(pdu)
        assert parse_fault(wire.recv_pdu(), call_id, context_id) == NCA_S_PROTO_ERROR
        assert wire.closed_by_peer()


def test_request_with_auth_is_proto_error(shared_host: RunningHost) -> None:
    auth = bytes([10, 2, 0, 0, 0, 0, 0, 0]) + bytes(16)  # a sec_trailer and a verifier
    pdu = request_pdu(3, 0, 0, request_stub(bytes(40)), auth=auth)
    _expect_proto_error_then_close(shared_host.address, pdu, 3)


def test_fragment_of_unknown_call_is_proto_error(shared_host: RunningHost) -> None:
    pdu = request_pdu(5, 0, 0, bytes(16), flags=LAST)
    _expect_proto_error_then_close(shared_host.address, pdu, 5)


@pytest.mark.parametrize(
    "ptype",
    [
        RESPONSE,
        FAULT,
        BIND_ACK,
        BIND_NAK,
        ALTER_CONTEXT_RESP,
        16,
        17,
        18,
        19,  # AUTH3, SHUTDOWN, CO_CANCEL, ORPHANED
    ],
)
def test_pdu_type_not_served_is_proto_error(shared_host: RunningHost, ptype: int) -> None:
    body = bytes(16)  # enough for every fixed part
    pdu = pdu_header(ptype, FIRST_LAST, 16 + len(body), 6) + body
    _expect_proto_error_then_close(shared_host.address, pdu, 6)


@pytest.mark.parametrize(
    "header_fields",
    [
        {"vers": 4},
        {"vers": 6},
        {"minor": 2},
        {"drep": b"\x00\x00\x00\x00"},
        {"frag_length": 15},
        {"frag_length": 0},
        {"frag_length": 20},  # under the REQUEST fixed part
        {"auth_length": 57},  # more than frag_length - 16
    ],
)
def test_invalid_header_closes(shared_host: RunningHost, header_fields: dict[str, Any]) -> None:
    stub = request_stub(bytes(40))
    fields = {"frag_length": 24 + len(stub), **header_fields}
    pdu = pdu_header(REQUEST, FIRST_LAST, call_id=2, **fields)
    pdu += struct.pack("<IHH", len(stub), 0, 0) + stub
    with Wire(shared_host.address) as wire:
        wire.bind()
        wire.send(pdu)
        assert wire.closed_by_peer()


def test_rpc_vers_minor_1_is_accepted(shared_host: RunningHost) -> None:
    envelope = seal_request(LAB, os.urandom(12), product_plaintext())
    stub = request_stub(envelope)
    pdu = pdu_header(REQUEST, FIRST_LAST, 24 + len(stub), 2, minor=1)
    pdu += struct.pack("<IHH", len(stub), 0, 0) + stub
    with Wire(shared_host.address) as wire:
        wire.bind()
        wire.send(pdu)
        assert parse_response_stub(parse_response(wire.recv_pdu(), 2))[1] == S_OK


def test_pdu_over_the_negotiated_size_closes(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind(max_xmit=MIN_FRAG)
        wire.send(request_pdu(2, 0, 0, bytes(MIN_FRAG - 24 + 1)))
        assert wire.closed_by_peer()


def test_pdu_over_5840_before_bind_closes(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.send(request_pdu(1, 0, 0, bytes(HOST_MAX_FRAG - 24 + 1)))
        assert wire.closed_by_peer()


# -- envelope and plaintext errors (sections 3 and 4) ------------------------------------


def test_wrong_secret_is_access_denied(
    shared_host: RunningHost, klp_vectors: dict[str, Any]
) -> None:
    other = derive_keys("not the lab secret")
    same_id = Keys(LAB.key_id, other.request, other.response)  # right key id, wrong key
    with Wire(shared_host.address) as wire:
        wire.bind()
        envelope = seal_request(other, os.urandom(12), product_plaintext())
        assert stub_status(wire, envelope, 2) == ACCESS_DENIED
        envelope = seal_request(same_id, os.urandom(12), product_plaintext())
        wire.send(request_pdu(3, 0, 0, request_stub(envelope)))
        stub = parse_response(wire.recv_pdu(), 3)
        assert stub.hex() == klp_vectors["stub_status_only"]["stub"]


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        seal_request(LAB, bytes(12), b"")[:39],  # under 40 bytes
        seal_request(LAB, bytes(12), b"x" * 232, magic=b"KLP2"),
        seal_request(LAB, bytes(12), b"x" * 232, major=2),
        seal_request(LAB, bytes(12), b"x" * 232, major=0),
    ],
)
def test_malformed_envelope_is_invalid_data(shared_host: RunningHost, envelope: bytes) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert stub_status(wire, envelope) == INVALID_DATA


def test_newer_minor_version_and_extra_plaintext_accepted(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        plaintext = product_plaintext() + b"future fields" * 10
        result = activate(wire, plaintext, minor=7)
        assert result.fields["status"] == S_OK and result.fields["current_count"] >= 1


def _with(plaintext: bytes, offset: int, data: bytes) -> bytes:
    return plaintext[:offset] + data + plaintext[offset + len(data) :]


@pytest.mark.parametrize(
    ("name", "mutate", "echo"),
    [
        ("nil CMID", lambda p: _with(p, 60, bytes(16)), "zero-cmid"),
        ("license status 7", lambda p: _with(p, 4, struct.pack("<I", 7)), "full"),
        ("231 bytes", lambda p: p[:231], "full"),
        ("60 bytes", lambda p: p[:60], "none"),
        ("name without NUL", lambda p: p[:104] + "x".encode("utf-16-le") * 64, "full"),
        ("lone surrogate", lambda p: p[:104] + b"\x00\xd8\x00\x00" + bytes(124), "full"),
    ],
)
def test_invalid_plaintext_is_encrypted_invalid_data(
    shared_host: RunningHost, name: str, mutate: Any, echo: str
) -> None:
    cmid = uuid.uuid4()
    request_time = filetime_now()
    plaintext = mutate(product_plaintext(cmid=cmid, request_time=request_time))
    with Wire(shared_host.address) as wire:
        wire.bind()
        fields = activate(wire, plaintext).fields
    assert fields["status"] == INVALID_DATA, name
    assert fields["current_count"] == 0
    assert (fields["activation_interval"], fields["renewal_interval"]) == (120, 10080)
    assert EPID_RE.match(fields["host_epid"])
    if echo == "full":
        assert fields["client_machine_id"] == cmid
        assert fields["request_time"] == request_time
    elif echo == "zero-cmid":
        assert fields["client_machine_id"] == NIL
        assert fields["request_time"] == request_time
    else:
        assert fields["client_machine_id"] == NIL
        assert fields["request_time"] == 0


def test_name_bytes_after_the_nul_are_ignored(shared_host: RunningHost) -> None:
    plaintext = product_plaintext(workstation_name="pc")
    plaintext = plaintext[:112] + b"\xff" * 120  # "pc", NUL, then junk (even lone surrogates)
    assert len(plaintext) == 232
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert activate(wire, plaintext).fields["status"] == S_OK


def test_product_not_served(shared_host: RunningHost) -> None:
    p = default_catalog().find("windows-server-2022-standard")
    plaintext = request_plaintext(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=uuid.uuid4(),
        client_machine_id=uuid.uuid4(),
        request_time=filetime_now(),
        required_client_count=5,
    )
    with Wire(shared_host.address) as wire:
        wire.bind()
        fields = activate(wire, plaintext).fields
    assert fields["status"] == PRODUCT_NOT_SERVED and fields["current_count"] == 0


def test_sku_id_is_not_checked(shared_host: RunningHost) -> None:
    p = default_catalog().find("windows-server-2022-standard")
    plaintext = request_plaintext(
        application_id=p.application_id,
        sku_id=uuid.uuid4(),
        kms_count_id=p.kms_count_id,
        client_machine_id=uuid.uuid4(),
        request_time=filetime_now(),
        required_client_count=5,
    )
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert activate(wire, plaintext).fields["status"] == S_OK


@pytest.mark.parametrize(
    ("offset_hours", "status"),
    [
        (4 + 1 / 60, TIMESTAMP_INVALID),
        (-4 - 1 / 60, TIMESTAMP_INVALID),
        (4 - 1 / 60, S_OK),
        (-4 + 1 / 60, S_OK),
    ],
)
def test_clock_skew(shared_host: RunningHost, offset_hours: float, status: int) -> None:
    plaintext = product_plaintext(request_time=filetime_now(offset_hours * 3600))
    with Wire(shared_host.address) as wire:
        wire.bind()
        fields = activate(wire, plaintext).fields
    assert fields["status"] == status
    assert (fields["current_count"] == 0) == (status != S_OK)


def test_host_checks_in_order(shared_host: RunningHost) -> None:
    """Invalid data before product, product before clock (section 5)."""
    p = default_catalog().find("windows-server-2022-standard")
    skewed = filetime_now(5 * 3600)
    unknown = request_plaintext(
        application_id=p.application_id,
        sku_id=p.sku_id,
        kms_count_id=uuid.uuid4(),
        client_machine_id=uuid.uuid4(),
        request_time=skewed,
        required_client_count=5,
    )
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert activate(wire, unknown, call_id=2).fields["status"] == PRODUCT_NOT_SERVED
        invalid = _with(unknown, 4, struct.pack("<I", 99))
        assert activate(wire, invalid, call_id=3).fields["status"] == INVALID_DATA


def test_envelope_checks_in_order(shared_host: RunningHost) -> None:
    """Size, magic and major version come before the key id; a 40-byte envelope opens."""
    stranger = derive_keys("a secret the host does not hold")
    with Wire(shared_host.address) as wire:
        wire.bind()
        bad_magic = seal_request(stranger, os.urandom(12), b"x" * 232, magic=b"KMS1")
        assert stub_status(wire, bad_magic, 2) == INVALID_DATA
        bad_major = seal_request(stranger, os.urandom(12), b"x" * 232, major=3)
        assert stub_status(wire, bad_major, 3) == INVALID_DATA
        assert stub_status(wire, seal_request(stranger, os.urandom(12), b""), 4) == ACCESS_DENIED
        # 40 bytes under the lab key: an empty plaintext, answered inside an envelope
        empty = activate(wire, b"", call_id=5).fields
        assert empty["status"] == INVALID_DATA
        assert empty["client_machine_id"] == NIL and empty["request_time"] == 0


@pytest.mark.parametrize("tail", ["0300-000000000000", "0100-000000000000", "ffff-0123456789ab"])
def test_bind_time_feature_negotiation_any_tail(shared_host: RunningHost, tail: str) -> None:
    btfn = syntax(f"6cb71c2c-9812-4540-{tail}", 1)
    with Wire(shared_host.address) as wire:
        ack = wire.bind(contexts=[(0, KLP_IF, [NDR20]), (1, KLP_IF, [btfn]), (2, OTHER_IF, [btfn])])
        assert ack["results"] == [(0, 0, NDR20), (3, 0, ZERO_SYNTAX), (3, 0, ZERO_SYNTAX)]


def test_bind_ack_minor_version_is_0(shared_host: RunningHost) -> None:
    pdu = bytearray(bind_pdu(4, [(0, KLP_IF, [NDR20])]))
    pdu[1] = 1  # rpc_vers_minor 1 from the client
    with Wire(shared_host.address) as wire:
        wire.send(bytes(pdu))
        parse_bind_ack(wire.recv_pdu(), 4)  # checks (5, 0)


def test_connections_in_parallel(shared_host: RunningHost) -> None:
    wires = [Wire(shared_host.address) for _ in range(16)]
    try:
        groups = {wire.bind(call_id=1)["assoc_group"] for wire in wires}
        assert 0 not in groups
        for call_id, wire in enumerate(reversed(wires), start=2):
            assert activate(wire, product_plaintext(), call_id=call_id).fields["status"] == S_OK
    finally:
        for wire in wires:
            wire.sock.close()


def test_host_with_several_secrets(tmp_path: Path, klp_vectors: dict[str, Any]) -> None:
    secrets = ["kmsemu-lab", klp_vectors["exchanges"][1]["secret"]]
    host = start_host_process(tmp_path / "host", "--secret", secrets[0], "--secret", secrets[1])
    try:
        with Wire(host.address) as wire:
            wire.bind()
            for call_id, secret in enumerate(secrets, start=2):
                keys = derive_keys(secret)  # open_response checks the response key id
                assert (
                    activate(wire, product_plaintext(), call_id=call_id, keys=keys).fields["status"]
                    == S_OK
                )
            envelope = seal_request(derive_keys("third"), os.urandom(12), product_plaintext())
            assert stub_status(wire, envelope, 9) == ACCESS_DENIED
    finally:
        assert stop_host_process(host) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"flags": 0xFFFFFFFF},  # VM bit and bits "ignored on receipt"
        {"workstation_name": "pc-\U0001f600-é"},  # a surrogate pair is valid UTF-16
        {"workstation_name": "n" * 63},  # 63 code units and the NUL fill the field
        *({"license_status": status} for status in range(7)),
    ],
)
def test_valid_request_variants(shared_host: RunningHost, fields: dict[str, Any]) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        assert activate(wire, product_plaintext(**fields)).fields["status"] == S_OK


def test_error_responses_carry_the_host_identity(shared_host: RunningHost) -> None:
    with Wire(shared_host.address) as wire:
        wire.bind()
        ok = activate(wire, product_plaintext(), call_id=2).fields
        skewed = activate(
            wire, product_plaintext(request_time=filetime_now(-5 * 3600)), call_id=3
        ).fields
        invalid = activate(wire, b"\x00" * 232, call_id=4).fields
    for error in (skewed, invalid):
        assert error["status"] != S_OK and error["current_count"] == 0
        assert error["host_id"] == ok["host_id"]
        assert error["host_epid"] == ok["host_epid"]
        assert (error["activation_interval"], error["renewal_interval"]) == (120, 10080)


def test_previous_cmid_is_replaced(host_process: RunningHost) -> None:
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with Wire(host_process.address) as wire:
        wire.bind()
        counts = [
            activate(wire, product_plaintext(cmid=first), call_id=2),
            activate(wire, product_plaintext(cmid=second), call_id=3),
            activate(
                wire, product_plaintext(cmid=third, previous_client_machine_id=first), call_id=4
            ),
            # another product of the same application id shares the count
            activate(wire, product_plaintext("windows-11-pro"), call_id=5),
        ]
    assert [c.fields["current_count"] for c in counts] == [1, 2, 2, 3]


def test_many_small_fragments_under_64_kib(shared_host: RunningHost) -> None:
    nonce = os.urandom(12)
    plaintext = product_plaintext()
    plaintext += bytes(4 * 1025 - 8 - 40 - len(plaintext))
    stub = request_stub(seal_request(LAB, nonce, plaintext))
    assert len(stub) == 4 * 1025
    pieces = [stub[i : i + 4] for i in range(0, len(stub), 4)]
    data = b"".join(
        request_pdu(
            2, 0, 0, piece, flags=(FIRST if i == 0 else 0) | (LAST if i == len(pieces) - 1 else 0)
        )
        for i, piece in enumerate(pieces)
    )
    with Wire(shared_host.address) as wire:
        wire.bind()
        wire.send(data)
        pdu = wire.recv_pdu()
        assert pdu[2] == RESPONSE, f"answered with {pdu.hex()}"
        envelope, _ = parse_response_stub(parse_response(pdu, 2))
        assert parse_response_plaintext(open_response(LAB, envelope)[1])["request_nonce"] == nonce
