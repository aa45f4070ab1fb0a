"""ServerConnection fed bytes, no sockets: the DCE/RPC rules of klp-v1.md section 1.

Inputs are built here with ``struct`` (not with the codec under test) and outputs are
checked byte for byte against the layouts the spec gives, so a codec bug cannot hide
behind a matching decoder.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import uuid
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.rpc import connection
from kmsemu.rpc.connection import NEED_DATA, Call, Closed, Send, ServerConnection
from kmsemu.rpc.pdu import (
    Bind,
    BindAck,
    BindNak,
    ContextElement,
    ContextResult,
    Fault,
    PduError,
    Request,
    Response,
    SyntaxId,
    parse_header,
)

PORT = 1688
HOST_ASSOC = 0x00012345
DREP = b"\x10\x00\x00\x00"
MAX_FRAG = 5840
MIN_FRAG = 1432

KLP_IFACE = uuid.UUID("6e8f4bef-ca86-4ca5-981e-95096d715f4b")
NDR20_UUID = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
NDR64_UUID = uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36")
OTHER_IFACE = uuid.UUID("12345678-1234-abcd-ef00-0123456789ab")

UNK_IF = 0x1C010003
OP_RNG_ERROR = 0x1C010002
PROTO_ERROR = 0x1C01000B
FAULT_NDR = 0x000006F7

REQUEST, RESPONSE, FAULT = 0, 2, 3
BIND, BIND_ACK, BIND_NAK, ALTER_CONTEXT, ALTER_CONTEXT_RESP = 11, 12, 13, 14, 15
FIRST, LAST, FIRST_LAST, OBJECT_UUID = 0x01, 0x02, 0x03, 0x80

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


# -- building PDUs ------------------------------------------------------------------


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


def syntax(value: uuid.UUID | str, major: int, minor: int = 0) -> bytes:
    return uuid.UUID(str(value)).bytes_le + struct.pack("<HH", major, minor)


NDR20 = syntax(NDR20_UUID, 2)
NDR64 = syntax(NDR64_UUID, 1)
KLP = syntax(KLP_IFACE, 1, 0)
ZERO20 = bytes(20)


def btfn(last8: bytes = bytes(8)) -> bytes:
    """The bind-time feature negotiation syntax 6cb71c2c-9812-4540-xxxx-xxxxxxxxxxxx, version 1."""
    return uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8] + last8 + b"\1\0\0\0"


def ctx_item(ctx_id: int, abstract: bytes, *transfers: bytes) -> bytes:
    return struct.pack("<HBx", ctx_id, len(transfers)) + abstract + b"".join(transfers)


def klp_ctx(ctx_id: int = 0) -> bytes:
    return ctx_item(ctx_id, KLP, NDR20)


def bind_pdu(
    *items: bytes,
    call_id: int = 1,
    max_xmit: int = MAX_FRAG,
    max_recv: int = MAX_FRAG,
    assoc: int = 0,
    ptype: int = BIND,
    flags: int = FIRST_LAST,
    minor: int = 0,
) -> bytes:
    items = items or (klp_ctx(0),)
    body = struct.pack("<HHIB3x", max_xmit, max_recv, assoc, len(items)) + b"".join(items)
    return header(ptype, flags, 16 + len(body), call_id, minor=minor) + body


def alter_pdu(*items: bytes, **kw: Any) -> bytes:
    return bind_pdu(*items, ptype=ALTER_CONTEXT, **kw)


def request_pdu(
    stub: bytes = b"",
    *,
    call_id: int = 2,
    ctx: int = 0,
    opnum: int = 0,
    flags: int = FIRST_LAST,
    alloc_hint: int | None = None,
    object_uuid: uuid.UUID | None = None,
    auth_value: bytes = b"",
    minor: int = 0,
) -> bytes:
    obj = b""
    if object_uuid is not None:
        flags |= OBJECT_UUID
        obj = object_uuid.bytes_le
    trailer = b""
    if auth_value:  # sec_trailer: auth_type 10 (NTLM), level 6, pad 0, reserved, context id
        trailer = struct.pack("<BBBBI", 10, 6, 0, 0, 0) + auth_value
    hint = len(stub) if alloc_hint is None else alloc_hint
    body = struct.pack("<IHH", hint, ctx, opnum) + obj + stub + trailer
    return header(REQUEST, flags, 16 + len(body), call_id, len(auth_value), minor=minor) + body


def raw_pdu(ptype: int, length: int = 32, call_id: int = 7, flags: int = FIRST_LAST) -> bytes:
    """A PDU of any type: a valid header and zero bytes up to ``length``."""
    return header(ptype, flags, length, call_id) + bytes(length - 16)


def stub_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


# -- reading what the connection says -------------------------------------------------


def new_conn(port: int = PORT, assoc: int = HOST_ASSOC) -> ServerConnection:
    return ServerConnection(port=port, assoc_group_id=assoc)


def drain(conn: ServerConnection, limit: int = 10_000) -> list[Any]:
    """Events up to NEED_DATA (not included) or the first Closed (included)."""
    events: list[Any] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, Closed):
            return events
    raise AssertionError("next_event neither asked for data nor closed")


def feed(conn: ServerConnection, data: bytes) -> list[Any]:
    conn.receive_data(data)
    return drain(conn)


def bound(*items: bytes, **kw: Any) -> tuple[ServerConnection, AckInfo]:
    conn = new_conn()
    [event] = feed(conn, bind_pdu(*items, **kw))
    assert isinstance(event, Send)
    return conn, parse_ack(event.data)


def fault_bytes(call_id: int, ctx: int, status: int) -> bytes:
    """The FAULT the spec prescribes, byte for byte."""
    return header(FAULT, 0x23, 32, call_id) + struct.pack("<IHBBII", 0, ctx, 0, 0, status, 0)


def assert_open_fault(events: list[Any], call_id: int, ctx: int, status: int) -> None:
    assert [type(e) for e in events] == [Send]
    assert events[0].data == fault_bytes(call_id, ctx, status)
    assert events[0].refusal  # the server logs why


def assert_closing_fault(events: list[Any], call_id: int, ctx: int = 0) -> None:
    assert len(events) == 1
    [closed] = events
    assert isinstance(closed, Closed)
    assert closed.error
    assert closed.data == fault_bytes(call_id, ctx, PROTO_ERROR)


def assert_closed_silently(events: list[Any]) -> None:
    assert len(events) == 1, events
    [closed] = events
    assert isinstance(closed, Closed)
    assert closed.error
    assert closed.data == b""


def check_common_header(pdu: bytes, ptype: int) -> tuple[int, int]:
    """Checks what every PDU the host sends must have; returns (flags, call_id)."""
    vers, minor, got_type, flags, drep, frag_length, auth_length, call_id = struct.unpack_from(
        "<BBBB4sHHI", pdu
    )
    assert (vers, minor, got_type, drep) == (5, 0, ptype, DREP)
    assert frag_length == len(pdu)
    assert auth_length == 0
    return flags, call_id


@dataclass
class AckInfo:
    ptype: int
    flags: int
    call_id: int
    max_xmit: int
    max_recv: int
    assoc: int
    secondary: bytes
    results: list[tuple[int, int, bytes]]


def parse_ack(pdu: bytes, ptype: int = BIND_ACK) -> AckInfo:
    flags, call_id = check_common_header(pdu, ptype)
    max_xmit, max_recv, assoc, sec_len = struct.unpack_from("<HHIH", pdu, 16)
    offset = 26
    secondary = pdu[offset : offset + sec_len]
    offset += sec_len
    pad = -offset % 4
    assert pdu[offset : offset + pad] == bytes(pad)
    offset += pad
    assert offset % 4 == 0
    count = pdu[offset]
    assert pdu[offset + 1 : offset + 4] == b"\0\0\0"
    offset += 4
    results = []
    for _ in range(count):
        result, reason = struct.unpack_from("<HH", pdu, offset)
        results.append((result, reason, pdu[offset + 4 : offset + 24]))
        offset += 24
    assert offset == len(pdu), "no auth verifier, nothing after the result list"
    return AckInfo(ptype, flags, call_id, max_xmit, max_recv, assoc, secondary, results)


def split_pdus(data: bytes) -> list[bytes]:
    pdus = []
    while data:
        frag_length = struct.unpack_from("<H", data, 8)[0]
        assert 16 <= frag_length <= len(data)
        pdus.append(data[:frag_length])
        data = data[frag_length:]
    return pdus


def one_call(conn: ServerConnection, **kw: Any) -> Call:
    events = feed(conn, request_pdu(**kw))
    assert len(events) == 1 and isinstance(events[0], Call), events
    return events[0]


# -- the FAULT table ------------------------------------------------------------------


def test_request_before_bind_is_unk_if_and_leaves_the_connection_open() -> None:
    conn = new_conn()
    assert_open_fault(feed(conn, request_pdu(b"abcd", call_id=9, ctx=0)), 9, 0, UNK_IF)
    [ack] = feed(conn, bind_pdu())
    assert isinstance(ack, Send) and parse_ack(ack.data).results[0][0] == 0
    assert feed(conn, request_pdu(b"abcd", call_id=10)) == [Call(10, 0, 0, b"abcd")]


def test_request_on_a_context_never_proposed_is_unk_if() -> None:
    conn, _ = bound(klp_ctx(0))
    assert_open_fault(feed(conn, request_pdu(b"x", call_id=3, ctx=1)), 3, 1, UNK_IF)
    assert feed(conn, request_pdu(b"y", call_id=4, ctx=0)) == [Call(4, 0, 0, b"y")]


def test_request_on_a_rejected_context_is_unk_if() -> None:
    conn, ack = bound(klp_ctx(0), ctx_item(1, KLP, NDR64), ctx_item(2, KLP, btfn()))
    assert [r[:2] for r in ack.results] == [(0, 0), (2, 2), (3, 0)]
    assert_open_fault(feed(conn, request_pdu(call_id=5, ctx=1)), 5, 1, UNK_IF)
    assert_open_fault(feed(conn, request_pdu(call_id=6, ctx=2)), 6, 2, UNK_IF)


@pytest.mark.parametrize("opnum", [1, 2, 0xFFFF])
def test_opnum_other_than_zero_is_op_rng_error(opnum: int) -> None:
    conn, _ = bound()
    assert_open_fault(feed(conn, request_pdu(b"zz", call_id=2, opnum=opnum)), 2, 0, OP_RNG_ERROR)
    assert feed(conn, request_pdu(b"zz", call_id=3)) == [Call(3, 0, 0, b"zz")]


UNSERVED_TYPES = [
    pytest.param(RESPONSE, id="RESPONSE"),
    pytest.param(FAULT, id="FAULT"),
    pytest.param(1, id="PING"),
    pytest.param(BIND_ACK, id="BIND_ACK"),
    pytest.param(BIND_NAK, id="BIND_NAK"),
    pytest.param(ALTER_CONTEXT_RESP, id="ALTER_CONTEXT_RESP"),
    pytest.param(16, id="AUTH3"),
    pytest.param(17, id="SHUTDOWN"),
    pytest.param(18, id="CO_CANCEL"),
    pytest.param(19, id="ORPHANED"),
    pytest.param(99, id="type99"),
    pytest.param(255, id="type255"),
]


@pytest.mark.parametrize("ptype", UNSERVED_TYPES)
@pytest.mark.parametrize("after_bind", [False, True], ids=["unbound", "bound"])
def test_pdu_type_not_served_is_proto_error_then_close(ptype: int, after_bind: bool) -> None:
    conn = bound()[0] if after_bind else new_conn()
    events = feed(conn, raw_pdu(ptype, 32, call_id=0x01020304) + bind_pdu(call_id=8))
    assert_closing_fault(events, 0x01020304, 0)
    assert conn.next_event() == Closed(events[0].reason, b"", True)


def test_request_with_authentication_is_proto_error_then_close() -> None:
    conn, _ = bound()
    events = feed(conn, request_pdu(b"stub", call_id=4, ctx=0, auth_value=bytes(16)))
    assert_closing_fault(events, 4, 0)


def test_request_with_authentication_before_bind_is_proto_error_too() -> None:
    events = feed(new_conn(), request_pdu(b"stub", call_id=4, auth_value=b"\x01" * 8))
    assert_closing_fault(events, 4, 0)


@pytest.mark.parametrize("flags", [LAST, 0], ids=["last", "middle"])
def test_non_first_fragment_of_an_unknown_call_is_proto_error(flags: int) -> None:
    conn, _ = bound()
    assert_closing_fault(feed(conn, request_pdu(b"abc", call_id=12, flags=flags)), 12, 0)


def test_last_fragment_of_another_call_than_the_one_in_progress_is_proto_error() -> None:
    conn, _ = bound()
    assert feed(conn, request_pdu(b"a", call_id=4, flags=FIRST)) == []
    assert_closing_fault(feed(conn, request_pdu(b"b", call_id=5, flags=LAST)), 5, 0)


def fragments(stub: bytes, size: int, **kw: Any) -> bytes:
    """A REQUEST in fragments of at most ``size`` stub bytes each."""
    out = []
    pieces = [stub[i : i + size] for i in range(0, len(stub), size)] or [b""]
    for i, piece in enumerate(pieces):
        flags = (FIRST if i == 0 else 0) | (LAST if i == len(pieces) - 1 else 0)
        out.append(request_pdu(piece, flags=flags, alloc_hint=len(stub) - i * size, **kw))
    return b"".join(out)


def test_reassembled_stub_of_exactly_64_kib_is_a_call() -> None:
    conn, _ = bound()
    stub = stub_of(64 * 1024)
    assert feed(conn, fragments(stub, 5000, call_id=2)) == [Call(2, 0, 0, stub)]


def test_reassembled_stub_over_64_kib_is_proto_error_then_close() -> None:
    conn, _ = bound(klp_ctx(0), klp_ctx(3))
    events = feed(conn, fragments(stub_of(64 * 1024 + 1), 5000, call_id=2, ctx=3))
    assert_closing_fault(events, 2, 3)


def test_interleaved_calls_each_under_64_kib_are_both_served() -> None:
    """The 64 KiB limit is per reassembled stub (spec), not per connection."""
    conn, _ = bound()
    a, b = stub_of(40_000, 1), stub_of(40_000, 2)
    frags_a = split_pdus(fragments(a, 4000, call_id=2))
    frags_b = split_pdus(fragments(b, 4000, call_id=3))
    data = b"".join(x + y for x, y in zip(frags_a, frags_b, strict=True))
    assert feed(conn, data) == [Call(2, 0, 0, a), Call(3, 0, 0, b)]


# -- the FAULT PDU ----------------------------------------------------------------------


def test_fault_layout_is_exactly_the_spec() -> None:
    conn, _ = bound(klp_ctx(0), klp_ctx(0x1234))
    [event] = feed(conn, request_pdu(b"s", call_id=0xA1B2C3D4, ctx=0x1234, opnum=7))
    assert isinstance(event, Send)
    pdu = event.data
    assert len(pdu) == 32
    assert pdu[:16] == bytes.fromhex("05000323 10000000 2000 0000") + struct.pack("<I", 0xA1B2C3D4)
    assert pdu[16:20] == bytes(4)  # alloc_hint 0
    assert pdu[20:22] == struct.pack("<H", 0x1234)  # p_cont_id of the request
    assert pdu[22:24] == b"\0\0"  # cancel_count 0, reserved
    assert pdu[24:28] == struct.pack("<I", OP_RNG_ERROR)
    assert pdu[28:32] == bytes(4)


def test_application_fault_leaves_the_connection_open() -> None:
    conn, _ = bound(klp_ctx(0), klp_ctx(5))
    call = one_call(conn, stub=b"bad", call_id=2, ctx=5)
    assert conn.fault(call, FAULT_NDR) == fault_bytes(2, 5, FAULT_NDR)
    assert feed(conn, request_pdu(b"good", call_id=3, ctx=5)) == [Call(3, 5, 0, b"good")]


# -- BIND -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param(ctx_item(0, KLP, NDR20), (0, 0, NDR20), id="accept"),
        pytest.param(ctx_item(0, KLP, NDR64, NDR20), (0, 0, NDR20), id="accept-ndr20-second"),
        pytest.param(ctx_item(0, KLP, NDR20, btfn()), (0, 0, NDR20), id="accept-with-btfn"),
        pytest.param(ctx_item(0, KLP, NDR64), (2, 2, ZERO20), id="ndr64-only"),
        pytest.param(ctx_item(0, KLP, syntax(NDR20_UUID, 1)), (2, 2, ZERO20), id="ndr-v1"),
        pytest.param(ctx_item(0, KLP), (2, 2, ZERO20), id="no-transfer-syntax"),
        pytest.param(
            ctx_item(0, syntax(OTHER_IFACE, 1), NDR20), (2, 1, ZERO20), id="unknown-interface"
        ),
        pytest.param(ctx_item(0, syntax(KLP_IFACE, 1, 1), NDR20), (2, 1, ZERO20), id="v1.1"),
        pytest.param(ctx_item(0, syntax(KLP_IFACE, 2, 0), NDR20), (2, 1, ZERO20), id="v2.0"),
        pytest.param(ctx_item(0, syntax(KLP_IFACE, 0, 1), NDR20), (2, 1, ZERO20), id="v0.1"),
        pytest.param(
            ctx_item(0, syntax(KLP_IFACE, 2, 0), NDR64),
            (2, 1, ZERO20),
            id="v2.0-ndr64-reason-1-first",
        ),
        pytest.param(ctx_item(0, KLP, btfn()), (3, 0, ZERO20), id="btfn"),
        pytest.param(
            ctx_item(0, KLP, btfn(bytes.fromhex("0300000000000000"))),
            (3, 0, ZERO20),
            id="btfn-0300",
        ),
        pytest.param(ctx_item(0, KLP, btfn(b"\xff" * 8)), (3, 0, ZERO20), id="btfn-any-tail"),
        pytest.param(
            ctx_item(0, syntax(OTHER_IFACE, 1), btfn()), (3, 0, ZERO20), id="btfn-other-interface"
        ),
        pytest.param(ctx_item(0, KLP, btfn(), btfn()), (2, 2, ZERO20), id="btfn-twice"),
        pytest.param(
            ctx_item(0, KLP, syntax("6cb71c2c-9812-4541-0000-000000000000", 1)),
            (2, 2, ZERO20),
            id="not-btfn",
        ),
    ],
)
def test_bind_result_per_context(item: bytes, expected: tuple[int, int, bytes]) -> None:
    conn = new_conn()
    [event] = feed(conn, bind_pdu(item))
    ack = parse_ack(event.data)
    assert ack.results == [expected]


def test_bind_results_come_in_order_and_only_accepted_contexts_serve() -> None:
    items = [
        ctx_item(4, KLP, NDR64),
        ctx_item(9, KLP, btfn()),
        klp_ctx(7),
        ctx_item(1, syntax(OTHER_IFACE, 1), NDR20),
        klp_ctx(2),
    ]
    conn, ack = bound(*items)
    assert [r[:2] for r in ack.results] == [(2, 2), (3, 0), (0, 0), (2, 1), (0, 0)]
    assert feed(conn, request_pdu(b"q", call_id=2, ctx=7)) == [Call(2, 7, 0, b"q")]
    assert feed(conn, request_pdu(b"q", call_id=3, ctx=2)) == [Call(3, 2, 0, b"q")]
    for n, ctx in enumerate((4, 9, 1), start=4):
        assert_open_fault(feed(conn, request_pdu(call_id=n, ctx=ctx)), n, ctx, UNK_IF)


def test_bind_with_every_context_rejected_still_gets_bind_ack() -> None:
    conn, ack = bound(ctx_item(0, KLP, NDR64), ctx_item(1, syntax(OTHER_IFACE, 3), NDR20))
    assert ack.ptype == BIND_ACK
    assert ack.results == [(2, 2, ZERO20), (2, 1, ZERO20)]
    assert_open_fault(feed(conn, request_pdu(call_id=2, ctx=0)), 2, 0, UNK_IF)


def test_bind_ack_header_fields() -> None:
    conn = new_conn()
    [event] = feed(conn, bind_pdu(call_id=0xDEADBEEF, flags=0x07, minor=1))
    ack = parse_ack(event.data)  # checks rpc_vers 5.0, drep, auth_length 0, frag_length
    assert ack.flags == FIRST_LAST
    assert ack.call_id == 0xDEADBEEF
    assert ack.secondary == b"1688\0"


@pytest.mark.parametrize(
    ("port", "secondary"),
    [
        (1688, b"1688\0"),
        (80, b"80\0"),
        (135, b"135\0"),
        (7, b"7\0"),
        (65535, b"65535\0"),
        (10000, b"10000\0"),
    ],
)
def test_bind_ack_secondary_address_is_the_port_and_results_are_aligned(
    port: int, secondary: bytes
) -> None:
    conn = new_conn(port=port)
    [event] = feed(conn, bind_pdu())
    ack = parse_ack(event.data)  # asserts the result list starts at a multiple of 4
    assert ack.secondary == secondary
    sec_len = struct.unpack_from("<H", event.data, 24)[0]
    assert sec_len == len(secondary)


@pytest.mark.parametrize(
    ("client_xmit", "client_recv", "ack_xmit", "ack_recv"),
    [
        (5840, 5840, 5840, 5840),
        (4280, 4280, 4280, 4280),
        (2048, 4096, 4096, 2048),
        (65535, 65535, 5840, 5840),
        (5841, 1432, 1432, 5840),
        (1431, 1000, 1432, 1432),
        (0, 0, 1432, 1432),
        (16, 65535, 5840, 1432),
    ],
)
def test_bind_ack_fragment_sizes(
    client_xmit: int, client_recv: int, ack_xmit: int, ack_recv: int
) -> None:
    _, ack = bound(max_xmit=client_xmit, max_recv=client_recv)
    assert (ack.max_xmit, ack.max_recv) == (ack_xmit, ack_recv)


def test_bind_ack_assoc_group_is_the_clients_when_non_zero() -> None:
    assert bound(assoc=0x0BADF00D)[1].assoc == 0x0BADF00D
    zero = bound(assoc=0)[1].assoc
    assert zero != 0
    assert zero == HOST_ASSOC


def test_second_bind_gets_bind_nak_reason_0() -> None:
    conn, _ = bound()
    [event] = feed(conn, bind_pdu(call_id=0x55))
    assert isinstance(event, Send)
    nak = event.data
    flags, call_id = check_common_header(nak, BIND_NAK)
    assert (flags, call_id) == (FIRST_LAST, 0x55)
    # reason 0 (u16), one supported version (u8 count), 5.0, then zero padding
    assert nak[16:21] == bytes.fromhex("0000 01 05 00")
    assert nak[21:] == bytes(len(nak) - 21)
    assert len(nak) % 4 == 0


def test_second_bind_does_not_change_the_negotiated_contexts_or_sizes() -> None:
    conn, _ = bound(klp_ctx(0), max_xmit=2048)
    feed(conn, bind_pdu(klp_ctx(1), max_xmit=5840))
    assert_open_fault(feed(conn, request_pdu(call_id=3, ctx=1)), 3, 1, UNK_IF)
    assert isinstance(feed(conn, request_pdu(bytes(2048 - 24), call_id=4))[0], Call)
    assert_closed_silently(feed(conn, request_pdu(bytes(2049 - 24), call_id=5)))


def test_the_answer_to_a_bind_does_not_depend_on_other_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pure state machine: the same bytes on a fresh connection give the same events."""
    monkeypatch.setattr(connection, "_NEGOTIATED", {}, raising=False)  # an empty answer cache

    def bind_with_auth(n_contexts: int) -> bytes:
        # frag_length 28 with auth_length 12: the context list would have to fit in 0 bytes
        return header(BIND, FIRST_LAST, 28, 1, 12) + struct.pack(
            "<HHIB3x", 5840, 5840, 0, n_contexts
        )

    first = feed(new_conn(), bind_with_auth(3))
    feed(new_conn(), bind_with_auth(0))
    assert feed(new_conn(), bind_with_auth(3)) == first


# -- ALTER_CONTEXT ------------------------------------------------------------------------


def test_alter_context_adds_contexts_with_bind_rules() -> None:
    conn, bind_ack = bound(klp_ctx(0), max_xmit=2048, max_recv=4096, assoc=0x777)
    [event] = feed(
        conn,
        alter_pdu(
            klp_ctx(1),
            ctx_item(2, syntax(OTHER_IFACE, 1), NDR20),
            ctx_item(3, KLP, NDR64),
            ctx_item(4, KLP, btfn()),
            call_id=9,
            max_xmit=5840,
            max_recv=5840,
            assoc=0x777,
        ),
    )
    resp = parse_ack(event.data, ALTER_CONTEXT_RESP)
    assert resp.flags == FIRST_LAST and resp.call_id == 9
    assert resp.secondary == b""
    assert struct.unpack_from("<H", event.data, 24)[0] == 0
    assert (resp.max_xmit, resp.max_recv) == (bind_ack.max_xmit, bind_ack.max_recv) == (4096, 2048)
    assert resp.results == [(0, 0, NDR20), (2, 1, ZERO20), (2, 2, ZERO20), (3, 0, ZERO20)]
    assert feed(conn, request_pdu(b"a", call_id=10, ctx=1)) == [Call(10, 1, 0, b"a")]
    assert feed(conn, request_pdu(b"b", call_id=11, ctx=0)) == [Call(11, 0, 0, b"b")]
    for ctx in (2, 3, 4):
        assert_open_fault(feed(conn, request_pdu(call_id=12, ctx=ctx)), 12, ctx, UNK_IF)


def test_alter_context_after_an_all_rejected_bind_can_add_the_interface() -> None:
    conn, _ = bound(ctx_item(0, KLP, NDR64))
    [event] = feed(conn, alter_pdu(klp_ctx(0), call_id=3))
    assert parse_ack(event.data, ALTER_CONTEXT_RESP).results == [(0, 0, NDR20)]
    assert feed(conn, request_pdu(b"ok", call_id=4)) == [Call(4, 0, 0, b"ok")]


# -- golden vectors -------------------------------------------------------------------------


def test_golden_bind_gets_the_golden_bind_ack(klp_vectors: dict[str, Any]) -> None:
    conn = ServerConnection(port=1688, assoc_group_id=0x00012345)
    events = feed(conn, bytes.fromhex(klp_vectors["bind"]["pdu"]))
    assert events == [Send(bytes.fromhex(klp_vectors["bind_ack"]["pdu"]))]


def test_golden_bad_opnum_request_gets_the_golden_fault(klp_vectors: dict[str, Any]) -> None:
    conn = ServerConnection(port=1688, assoc_group_id=0x00012345)
    feed(conn, bytes.fromhex(klp_vectors["bind"]["pdu"]))
    vec = klp_vectors["fault_bad_opnum"]
    events = feed(conn, bytes.fromhex(vec["request_pdu"]))
    assert [e.data for e in events] == [bytes.fromhex(vec["fault_pdu"])]
    assert events[0].refusal.startswith("nca_s_op_rng_error")
    assert struct.unpack_from("<I", events[0].data, 24)[0] == vec["status"] == OP_RNG_ERROR


def test_golden_request_and_response_pdus(klp_vectors: dict[str, Any]) -> None:
    for exchange in klp_vectors["exchanges"]:
        conn = ServerConnection(port=1688, assoc_group_id=0x00012345)
        feed(conn, bytes.fromhex(klp_vectors["bind"]["pdu"]))
        request = exchange["request"]
        [call] = feed(conn, bytes.fromhex(request["pdu_call_id_2_ctx_0"]))
        assert call == Call(2, 0, 0, bytes.fromhex(request["stub"]))
        response = exchange["response"]
        answer = conn.respond(call, bytes.fromhex(response["stub"]))
        assert answer == bytes.fromhex(response["pdu_call_id_2_ctx_0"])


# -- REQUEST fragments, object UUID, RESPONSE fragments -----------------------------------------


def test_fragmented_request_is_one_call_with_the_first_fragments_context_and_opnum() -> None:
    conn, _ = bound(klp_ctx(0), klp_ctx(5), klp_ctx(6))
    first = request_pdu(b"AAAA", call_id=3, ctx=5, opnum=0, flags=FIRST, alloc_hint=12)
    middle = request_pdu(b"BBBB", call_id=3, ctx=6, opnum=3, flags=0, alloc_hint=8)
    last = request_pdu(b"CCCC", call_id=3, ctx=99, opnum=9, flags=LAST, alloc_hint=4)
    assert feed(conn, first) == []
    assert feed(conn, middle) == []
    assert feed(conn, last) == [Call(3, 5, 0, b"AAAABBBBCCCC")]
    assert feed(conn, request_pdu(b"next", call_id=4)) == [Call(4, 0, 0, b"next")]


def test_fragmented_request_first_fragment_decides_the_fault() -> None:
    conn, _ = bound()
    data = request_pdu(b"A", call_id=3, ctx=0, opnum=1, flags=FIRST) + request_pdu(
        b"B", call_id=3, ctx=0, opnum=0, flags=LAST
    )
    assert_open_fault(feed(conn, data), 3, 0, OP_RNG_ERROR)


def test_fragments_of_two_calls_are_reassembled_by_call_id() -> None:
    conn, _ = bound()
    data = b"".join(
        [
            request_pdu(b"a1", call_id=7, flags=FIRST),
            request_pdu(b"b1", call_id=8, flags=FIRST),
            request_pdu(b"b2", call_id=8, flags=LAST),
            request_pdu(b"a2", call_id=7, flags=0),
            request_pdu(b"a3", call_id=7, flags=LAST),
        ]
    )
    assert feed(conn, data) == [Call(8, 0, 0, b"b1b2"), Call(7, 0, 0, b"a1a2a3")]


def test_object_uuid_is_skipped() -> None:
    conn, _ = bound()
    obj = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    pdu = request_pdu(b"stub-bytes", call_id=2, object_uuid=obj)
    assert pdu[3] & OBJECT_UUID and len(pdu) == 24 + 16 + 10
    assert feed(conn, pdu) == [Call(2, 0, 0, b"stub-bytes")]


def test_many_requests_on_one_connection_and_call_id_reused_from_bind() -> None:
    conn, _ = bound(call_id=1)
    for n in range(1, 6):
        assert feed(conn, request_pdu(bytes([n]) * n, call_id=1)) == [Call(1, 0, 0, bytes([n]) * n)]


def check_response(data: bytes, call_id: int, ctx: int, stub: bytes, limit: int) -> int:
    """Checks a (possibly fragmented) RESPONSE; returns the number of fragments."""
    pdus = split_pdus(data)
    got = b""
    for i, pdu in enumerate(pdus):
        flags, got_call = check_common_header(pdu, RESPONSE)
        assert len(pdu) <= limit
        assert got_call == call_id
        expected_flags = (FIRST if i == 0 else 0) | (LAST if i == len(pdus) - 1 else 0)
        assert flags == expected_flags
        alloc_hint, got_ctx, cancel_count, _reserved = struct.unpack_from("<IHBB", pdu, 16)
        assert alloc_hint == len(stub) - len(got)
        assert (got_ctx, cancel_count) == (ctx, 0)
        got += pdu[24:]
    assert got == stub
    return len(pdus)


@pytest.mark.parametrize(
    ("client_recv", "stub_len", "n_frags"),
    [
        (5840, 5816, 1),
        (5840, 5817, 2),
        (5840, 3 * 5816, 3),
        (1432, 1408, 1),
        (1432, 1409, 2),
        (1432, 10_000, 8),
        (100, 1409, 2),  # raised to 1432
        (4000, 65_536, 17),
    ],
)
def test_response_is_fragmented_to_the_clients_max_recv_frag(
    client_recv: int, stub_len: int, n_frags: int
) -> None:
    conn, ack = bound(klp_ctx(0), klp_ctx(3), max_recv=client_recv)
    call = one_call(conn, stub=b"req", call_id=0x42, ctx=3)
    stub = stub_of(stub_len)
    assert check_response(conn.respond(call, stub), 0x42, 3, stub, ack.max_xmit) == n_frags


# -- invalid headers ----------------------------------------------------------------------------


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


GOOD_BIND = bind_pdu()
GOOD_REQUEST = request_pdu(b"12345678", call_id=2)

INVALID_HEADERS = [
    pytest.param(_patch(GOOD_REQUEST, 0, b"\x04"), id="rpc_vers-4"),
    pytest.param(_patch(GOOD_REQUEST, 0, b"\x06"), id="rpc_vers-6"),
    pytest.param(_patch(GOOD_REQUEST, 1, b"\x02"), id="minor-2"),
    pytest.param(_patch(GOOD_REQUEST, 1, b"\xff"), id="minor-255"),
    pytest.param(_patch(GOOD_REQUEST, 4, b"\x00"), id="big-endian-drep"),
    pytest.param(_patch(GOOD_REQUEST, 4, b"\x01"), id="big-endian-drep-ebcdic"),
    pytest.param(_patch(GOOD_REQUEST, 4, b"\x20"), id="drep-0x20"),
    pytest.param(_patch(GOOD_REQUEST, 8, struct.pack("<H", 15)), id="frag_length-15"),
    pytest.param(_patch(GOOD_REQUEST, 8, struct.pack("<H", 0)), id="frag_length-0"),
    pytest.param(header(REQUEST, 3, 5841, 2) + bytes(5841 - 16), id="frag_length-5841"),
    pytest.param(header(REQUEST, 3, 0xFFFF, 2), id="frag_length-65535-header-only"),
    pytest.param(header(REQUEST, 3, 40, 2, auth_length=25) + bytes(24), id="auth_length-25-of-40"),
    pytest.param(header(REQUEST, 3, 40, 2, auth_length=0xFFFF) + bytes(24), id="auth_length-big"),
    pytest.param(header(REQUEST, 3, 23, 2) + bytes(7), id="request-shorter-than-24"),
    pytest.param(header(REQUEST, 3, 16, 2), id="request-header-only"),
    pytest.param(header(BIND, 3, 27, 1) + bytes(11), id="bind-shorter-than-28"),
    pytest.param(header(ALTER_CONTEXT, 3, 20, 1) + bytes(4), id="alter-shorter-than-28"),
    pytest.param(header(FAULT, 3, 31, 1) + bytes(15), id="fault-shorter-than-32"),
    pytest.param(header(RESPONSE, 3, 20, 1) + bytes(4), id="response-shorter-than-24"),
    pytest.param(header(BIND_ACK, 3, 25, 1) + bytes(9), id="bind_ack-shorter-than-26"),
]


@pytest.mark.parametrize("data", INVALID_HEADERS)
@pytest.mark.parametrize("after_bind", [False, True], ids=["unbound", "bound"])
def test_invalid_header_closes_without_reply(data: bytes, after_bind: bool) -> None:
    conn = bound()[0] if after_bind else new_conn()
    assert_closed_silently(feed(conn, data + GOOD_REQUEST))


@pytest.mark.parametrize("data", INVALID_HEADERS)
def test_invalid_header_closes_as_soon_as_the_header_is_in(data: bytes) -> None:
    conn = new_conn()
    assert feed(conn, data[:15]) == []
    assert_closed_silently(feed(conn, data[15:16]))


def test_rpc_minor_version_1_is_valid() -> None:
    conn = new_conn()
    [event] = feed(conn, bind_pdu(minor=1))
    assert parse_ack(event.data).results[0][0] == 0
    assert feed(conn, request_pdu(b"m", call_id=2, minor=1)) == [Call(2, 0, 0, b"m")]


def test_frag_length_limit_is_5840_before_bind_ack() -> None:
    conn = new_conn()
    assert_open_fault(feed(conn, request_pdu(bytes(5840 - 24), call_id=2)), 2, 0, UNK_IF)
    assert_closed_silently(feed(conn, request_pdu(bytes(5841 - 24), call_id=3)))


def test_a_bind_of_exactly_5840_bytes_is_served() -> None:
    # 28 + (24 + 20 * 255) + (24 + 20 * 31) + (24 + 20 * 1) = 5840
    pdu = bind_pdu(
        ctx_item(1, KLP, *[NDR64] * 254, NDR20), ctx_item(2, KLP, *[NDR64] * 31), klp_ctx(3)
    )
    assert len(pdu) == 5840
    [event] = feed(new_conn(), pdu)
    assert isinstance(event, Send)
    assert parse_ack(event.data).results == [(0, 0, NDR20), (2, 2, ZERO20), (0, 0, NDR20)]


@pytest.mark.parametrize(("client_xmit", "limit"), [(2048, 2048), (100, 1432), (9000, 5840)])
def test_frag_length_limit_is_the_negotiated_max_recv_after_bind_ack(
    client_xmit: int, limit: int
) -> None:
    conn, ack = bound(max_xmit=client_xmit)
    assert ack.max_recv == limit
    stub = bytes(limit - 24)
    assert feed(conn, request_pdu(stub, call_id=2)) == [Call(2, 0, 0, stub)]
    assert_closed_silently(feed(conn, request_pdu(stub + b"\0", call_id=3)))


# -- end of stream --------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 20, 60])
def test_eof_mid_pdu_is_an_error_close(cut: int) -> None:
    conn, _ = bound()
    assert feed(conn, GOOD_BIND[:cut]) == []
    events = feed(conn, b"")
    assert len(events) == 1 and isinstance(events[0], Closed)
    assert events[0].error and events[0].data == b""


def test_eof_in_the_middle_of_a_fragmented_call_is_an_error_close() -> None:
    conn, _ = bound()
    assert feed(conn, request_pdu(b"part", call_id=2, flags=FIRST)) == []
    [closed] = feed(conn, b"")
    assert isinstance(closed, Closed) and closed.error


def test_eof_between_pdus_is_a_clean_close() -> None:
    conn, _ = bound()
    assert feed(conn, request_pdu(b"x", call_id=2)) == [Call(2, 0, 0, b"x")]
    [closed] = feed(conn, b"")
    assert isinstance(closed, Closed)
    assert not closed.error and closed.data == b""
    assert conn.next_event() == closed


def test_complete_pdus_before_eof_are_still_served() -> None:
    conn = new_conn()
    conn.receive_data(bind_pdu() + request_pdu(b"z", call_id=2))
    conn.receive_data(b"")
    events = drain(conn)
    assert isinstance(events[0], Send)
    assert events[1] == Call(2, 0, 0, b"z")
    assert isinstance(events[2], Closed) and not events[2].error


# -- chunking -------------------------------------------------------------------------------------


def _script() -> bytes:
    return b"".join(
        [
            bind_pdu(klp_ctx(0), ctx_item(1, KLP, NDR64), call_id=1, max_recv=2000),
            request_pdu(b"first", call_id=2),
            request_pdu(b"op", call_id=3, opnum=1),
            request_pdu(b"ctx", call_id=4, ctx=1),
            alter_pdu(klp_ctx(1), call_id=5),
            request_pdu(stub_of(30), call_id=6, ctx=1, object_uuid=uuid.UUID(int=5)),
            request_pdu(b"f1", call_id=7, flags=FIRST),
            request_pdu(b"f2", call_id=7, flags=0),
            request_pdu(b"f3", call_id=7, flags=LAST),
            bind_pdu(call_id=8),
            raw_pdu(RESPONSE, 40, call_id=9),
            request_pdu(b"never", call_id=10),
        ]
    )


def test_byte_at_a_time_gives_the_same_events_as_whole_pdus() -> None:
    data = _script()
    whole = feed(new_conn(), data)
    assert [type(e).__name__ for e in whole] == [
        "Send",
        "Call",
        "Send",
        "Send",
        "Send",
        "Call",
        "Call",
        "Send",
        "Closed",
    ]
    conn = new_conn()
    single: list[Any] = []
    for i in range(len(data)):
        single += feed(conn, data[i : i + 1])
        if single and isinstance(single[-1], Closed):
            break
    assert single == whole


# -- property tests -------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)


@st.composite
def pdu_pieces(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["bind", "alter", "request", "frag", "raw", "header", "garbage", "mutant"])
    )
    if kind in ("bind", "alter"):
        items = draw(
            st.lists(
                st.sampled_from(
                    [klp_ctx(0), klp_ctx(1), ctx_item(2, KLP, NDR64), ctx_item(3, KLP, btfn())]
                ),
                max_size=3,
            )
        )
        maker = bind_pdu if kind == "bind" else alter_pdu
        return maker(*items, call_id=draw(u32), max_xmit=draw(u16), max_recv=draw(u16))
    if kind in ("request", "frag"):
        flags = draw(st.sampled_from([0, 1, 2, 3])) if kind == "frag" else FIRST_LAST
        return request_pdu(
            draw(st.binary(max_size=80)),
            call_id=draw(st.integers(0, 3)),
            ctx=draw(st.integers(0, 3)),
            opnum=draw(st.integers(0, 2)),
            flags=flags,
        )
    if kind == "raw":
        return raw_pdu(draw(u8), draw(st.integers(16, 48)), draw(u32), draw(u8))
    if kind == "header":
        return header(
            draw(u8),
            draw(u8),
            draw(u16),
            draw(u32),
            draw(u16),
            vers=draw(st.sampled_from([5, 5, 4])),
            minor=draw(st.sampled_from([0, 1, 2])),
        )
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    base = draw(st.sampled_from([GOOD_BIND, GOOD_REQUEST, raw_pdu(FAULT)]))
    offset = draw(st.integers(0, len(base) - 1))
    return _patch(base, offset, bytes([draw(u8)]))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def check_output_pdu(data: bytes) -> None:
    for pdu in split_pdus(data):
        assert pdu[2] in (FAULT, BIND_ACK, BIND_NAK, ALTER_CONTEXT_RESP)
        check_common_header(pdu, pdu[2])
        if pdu[2] == FAULT:
            assert len(pdu) == 32 and pdu[3] == 0x23


def run_stream(conn: ServerConnection, chunks: list[bytes]) -> list[Any]:
    events: list[Any] = []
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        events += drain(conn)
        if events and isinstance(events[-1], Closed):
            break
    for event in events:
        assert isinstance(event, Send | Call | Closed)
        if isinstance(event, Send | Closed) and event.data:
            check_output_pdu(event.data)
        if isinstance(event, Call):
            assert event.opnum == 0 and event.context_id in conn.contexts
    assert isinstance(events[-1], Closed)
    assert all(not isinstance(e, Closed) for e in events[:-1])
    return events


@SETTINGS
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    prefix=st.sampled_from([b"", GOOD_BIND]),
)
def test_property_arbitrary_bytes_in_arbitrary_chunks(
    data: bytes, cuts: list[int], prefix: bytes
) -> None:
    run_stream(new_conn(), chunked(prefix + data, cuts))


@SETTINGS
@given(pieces=st.lists(pdu_pieces(), max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_property_pdu_sequences_in_chunks_end_closed_and_stay_closed(
    pieces: list[bytes], cuts: list[int]
) -> None:
    conn = new_conn()
    data = GOOD_BIND + b"".join(pieces)
    events = run_stream(conn, chunked(data, cuts))
    closed = events[-1]
    for more in (GOOD_REQUEST, GOOD_BIND, b"", b"junk"):
        conn.receive_data(more)
        for _ in range(2):
            again = conn.next_event()
            assert isinstance(again, Closed)
            assert (again.reason, again.error, again.data) == (closed.reason, closed.error, b"")


# -- codec round trips and decoder robustness ----------------------------------------------------

syntax_ids = st.builds(SyntaxId, st.uuids(), u32)
context_elements = st.builds(
    ContextElement, u16, syntax_ids, st.lists(syntax_ids, max_size=3).map(tuple)
)
binds = st.builds(
    Bind,
    call_id=u32,
    contexts=st.lists(context_elements, max_size=4).map(tuple),
    max_xmit_frag=u16,
    max_recv_frag=u16,
    assoc_group_id=u32,
    flags=u8,
    ptype=st.sampled_from([BIND, ALTER_CONTEXT]),
)
bind_acks = st.builds(
    BindAck,
    call_id=u32,
    max_xmit_frag=u16,
    max_recv_frag=u16,
    assoc_group_id=u32,
    secondary_address=st.binary(max_size=12),
    results=st.lists(st.builds(ContextResult, u16, u16, syntax_ids), max_size=4).map(tuple),
    flags=u8,
    ptype=st.sampled_from([BIND_ACK, ALTER_CONTEXT_RESP]),
)
bind_naks = st.builds(
    BindNak, call_id=u32, reason=u16, versions=st.lists(st.tuples(u8, u8), max_size=4).map(tuple)
)
requests = st.builds(
    Request,
    call_id=u32,
    context_id=u16,
    opnum=u16,
    stub=st.binary(max_size=120),
    flags=u8.map(lambda f: f & ~OBJECT_UUID),
    alloc_hint=u32,
    object_uuid=st.none() | st.uuids(),
)
responses = st.builds(
    Response,
    call_id=u32,
    context_id=u16,
    stub=st.binary(max_size=120),
    flags=u8,
    alloc_hint=u32,
    cancel_count=u8,
)
faults = st.builds(Fault, call_id=u32, status=u32, context_id=u16, flags=u8)


def _normalised(value: Any) -> Any:
    if isinstance(value, Request) and value.object_uuid is not None:
        return replace(value, flags=value.flags | OBJECT_UUID)
    return value


@SETTINGS
@given(value=st.one_of(binds, bind_acks, bind_naks, requests, responses, faults))
def test_property_pdu_round_trip(value: Any) -> None:
    data = value.to_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == len(data)
    assert data[:2] == b"\x05\x00" and data[4:8] == DREP
    parse_header(data, len(data))
    assert type(value).from_bytes(data) == _normalised(value)
    assert type(value).from_bytes(memoryview(data)) == _normalised(value)


DECODERS = [
    Bind.from_bytes,
    BindAck.from_bytes,
    BindNak.from_bytes,
    Request.from_bytes,
    Response.from_bytes,
    Fault.from_bytes,
    SyntaxId.from_bytes,
    lambda d: parse_header(d, MAX_FRAG),
    lambda d: parse_header(d, 0xFFFF),
]


@st.composite
def plausible_pdus(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=160))
    length = draw(st.one_of(st.just(16 + len(body)), u16))
    return (
        header(
            draw(st.sampled_from([0, 2, 3, 11, 12, 13, 14, 15, 16, 99])),
            draw(u8),
            length,
            draw(u32),
            draw(st.one_of(st.just(0), st.integers(0, 64), u16)),
            minor=draw(st.sampled_from([0, 1])),
        )
        + body
    )


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), plausible_pdus()))
def test_property_decoders_raise_only_pdu_error(data: bytes) -> None:
    for decode in DECODERS:
        for value in (data, memoryview(data)):
            with contextlib.suppress(PduError):
                decode(value)


def test_architecture_doc_holds_the_generated_state_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert connection.transition_table() in doc
