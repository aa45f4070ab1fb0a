"""DCE/RPC 5.0 connection-oriented PDUs (C706 chapter 12, MS-RPCE), as KLP/1 uses them.

Pure codec: frozen dataclasses with ``to_bytes`` / ``from_bytes``, plus
``parse_header`` which applies KLP/1's "valid header" rule. Only the
little-endian, ASCII, IEEE data representation is produced; only
little-endian is accepted. No authentication verifiers (KLP/1 uses none).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final


class PType(IntEnum):
    """The PDU types KLP/1 uses (the ``ptype`` header byte)."""

    REQUEST = 0
    RESPONSE = 2
    FAULT = 3
    BIND = 11
    BIND_ACK = 12
    BIND_NAK = 13
    ALTER_CONTEXT = 14
    ALTER_CONTEXT_RESP = 15


class PFC(IntFlag):
    """The header's ``pfc_flags`` bits."""

    FIRST_FRAG = 0x01
    LAST_FRAG = 0x02
    PENDING_CANCEL = 0x04
    CONC_MPX = 0x10
    DID_NOT_EXECUTE = 0x20
    MAYBE = 0x40
    OBJECT_UUID = 0x80


class NcaStatus(IntEnum):
    """FAULT statuses KLP/1 uses (klp-v1.md section 1, fault table)."""

    NCA_S_OP_RNG_ERROR = 0x1C010002
    NCA_S_UNK_IF = 0x1C010003
    NCA_S_PROTO_ERROR = 0x1C01000B
    NCA_S_FAULT_NDR = 0x000006F7


FIRST_LAST: Final = int(PFC.FIRST_FRAG | PFC.LAST_FRAG)
DREP_LE: Final = b"\x10\x00\x00\x00"
HEADER_SIZE: Final = 16
REQUEST_HEADER_SIZE: Final = 24
RESPONSE_HEADER_SIZE: Final = 24
FAULT_SIZE: Final = 32
MAX_FRAG: Final = 5840
MIN_FRAG: Final = 1432

#: Smallest length of each PDU type's fixed part; unknown types need only the header.
FIXED_SIZE: Final[dict[int, int]] = {
    PType.REQUEST: 24,
    PType.RESPONSE: 24,
    PType.FAULT: 32,
    PType.BIND: 28,
    PType.ALTER_CONTEXT: 28,
    PType.BIND_ACK: 26,
    PType.ALTER_CONTEXT_RESP: 26,
    PType.BIND_NAK: 18,
}

HEADER: Final = struct.Struct("<BBBB4sHHI")
_REQUEST_FIXED = struct.Struct("<IHH")
_RESPONSE_FIXED = struct.Struct("<IHBB")
#: A whole RESPONSE's header and fixed fields in one (``encode_response``'s usual case).
_WHOLE_RESPONSE = struct.Struct(HEADER.format + _RESPONSE_FIXED.format.lstrip("<"))
_RESPONSE: Final = int(PType.RESPONSE)
_FAULT_BODY = struct.Struct("<IHBBII")
_BIND_FIXED = struct.Struct("<HHIB3x")
_CTX_ITEM = struct.Struct("<HBx")
_BIND_ACK_FIXED = struct.Struct("<HHI")
_RESULT = struct.Struct("<HH")


class PduError(ValueError):
    """Bytes that are not a valid PDU; the connection that sent them is closed."""


@dataclass(frozen=True, slots=True)
class SyntaxId:
    """An interface or transfer syntax: UUID plus a u32 version (major | minor << 16)."""

    uuid: uuid.UUID
    version: int

    SIZE = 20

    def to_bytes(self) -> bytes:
        """The 20 bytes on the wire: UUID (mixed-endian), then the u32 version."""
        return self.uuid.bytes_le + struct.pack("<I", self.version)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, offset: int = 0) -> SyntaxId:
        """The syntax id at ``offset``; PduError when fewer than 20 bytes are left."""
        raw = bytes(data[offset : offset + 20])
        if len(raw) != 20:
            raise PduError("truncated syntax id")
        return cls(uuid.UUID(bytes_le=raw[:16]), struct.unpack_from("<I", raw, 16)[0])

    @classmethod
    def of(cls, text: str, major: int, minor: int = 0) -> SyntaxId:
        """A syntax id from its UUID text and major (and minor) version."""
        return cls(uuid.UUID(text), major | (minor << 16))


KLP_INTERFACE: Final = SyntaxId.of("6e8f4bef-ca86-4ca5-981e-95096d715f4b", 1, 0)
NDR20: Final = SyntaxId.of("8a885d04-1ceb-11c9-9fe8-08002b104860", 2)
NDR64: Final = SyntaxId.of("71710533-beba-4937-8319-b5dbef9ccc36", 1)
#: Bind-time feature negotiation: ``6cb71c2c-9812-4540-xxxx-xxxxxxxxxxxx``.
BTFN_PREFIX: Final = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]
ZERO_SYNTAX: Final = SyntaxId(uuid.UUID(int=0), 0)


def is_btfn(syntax: SyntaxId) -> bool:
    """Whether a transfer syntax is a bind-time feature negotiation offer."""
    return syntax.uuid.bytes_le[:8] == BTFN_PREFIX


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of a PDU's 16-byte common header that KLP/1 reads."""

    rpc_vers_minor: int
    ptype: int
    flags: int
    frag_length: int
    auth_length: int
    call_id: int


def parse_header(data: bytes | bytearray | memoryview, max_frag: int) -> Header:
    """Decode and check a 16-byte common header per KLP/1's "valid header" rule.

    The fixed-part check needs only ``frag_length``, so it is done here too.
    """
    if len(data) < HEADER_SIZE:
        raise PduError("short header")
    vers, minor, ptype, flags, drep, frag_length, auth_length, call_id = HEADER.unpack_from(data)
    if vers != 5 or minor > 1:
        raise PduError(f"rpc version {vers}.{minor}")
    if drep[0] & 0xF0 != 0x10:
        raise PduError("not little-endian")
    if not HEADER_SIZE <= frag_length <= max_frag:
        raise PduError(f"frag_length {frag_length} outside 16..{max_frag}")
    if auth_length > frag_length - HEADER_SIZE:
        raise PduError(f"auth_length {auth_length} exceeds the fragment")
    if frag_length < FIXED_SIZE.get(ptype, HEADER_SIZE):
        raise PduError(f"PDU type {ptype} shorter than its fixed part")
    return Header(minor, ptype, flags, frag_length, auth_length, call_id)


def pack_header(
    ptype: int, flags: int, frag_length: int, call_id: int, auth_length: int = 0
) -> bytes:
    """A version 5.0, little-endian common header."""
    return HEADER.pack(5, 0, ptype, flags, DREP_LE, frag_length, auth_length, call_id)


def _pad4(n: int) -> int:
    return -n % 4


# -- BIND and ALTER_CONTEXT ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextElement:
    """One proposed presentation context: its id, interface and transfer syntaxes."""

    context_id: int
    abstract_syntax: SyntaxId
    transfer_syntaxes: tuple[SyntaxId, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """BIND (or ALTER_CONTEXT when ``ptype`` says so): the proposed presentation contexts."""

    call_id: int
    contexts: tuple[ContextElement, ...]
    max_xmit_frag: int = MAX_FRAG
    max_recv_frag: int = MAX_FRAG
    assoc_group_id: int = 0
    flags: int = FIRST_LAST
    ptype: int = PType.BIND

    def to_bytes(self) -> bytes:
        """The BIND (or ALTER_CONTEXT) PDU, one fragment."""
        body = [
            _BIND_FIXED.pack(
                self.max_xmit_frag, self.max_recv_frag, self.assoc_group_id, len(self.contexts)
            )
        ]
        for ctx in self.contexts:
            body.append(_CTX_ITEM.pack(ctx.context_id, len(ctx.transfer_syntaxes)))
            body.append(ctx.abstract_syntax.to_bytes())
            body.extend(ts.to_bytes() for ts in ctx.transfer_syntaxes)
        payload = b"".join(body)
        return (
            pack_header(self.ptype, self.flags, HEADER_SIZE + len(payload), self.call_id) + payload
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> Bind:
        """A BIND or ALTER_CONTEXT parsed; PduError for any other PDU or a truncated one."""
        header = parse_header(pdu, len(pdu))
        if header.ptype not in (PType.BIND, PType.ALTER_CONTEXT):
            raise PduError("not a BIND or ALTER_CONTEXT")
        end = header.frag_length - header.auth_length
        max_xmit, max_recv, assoc, count = _BIND_FIXED.unpack_from(pdu, HEADER_SIZE)
        offset = HEADER_SIZE + _BIND_FIXED.size
        contexts = []
        for _ in range(count):
            if offset + 24 > end:
                raise PduError("context list runs past the PDU")
            ctx_id, n = _CTX_ITEM.unpack_from(pdu, offset)
            abstract = SyntaxId.from_bytes(pdu, offset + 4)
            offset += 24
            if offset + 20 * n > end:
                raise PduError("transfer syntaxes run past the PDU")
            syntaxes = tuple(SyntaxId.from_bytes(pdu, offset + 20 * i) for i in range(n))
            offset += 20 * n
            contexts.append(ContextElement(ctx_id, abstract, syntaxes))
        return cls(
            header.call_id, tuple(contexts), max_xmit, max_recv, assoc, header.flags, header.ptype
        )


# -- BIND_ACK and ALTER_CONTEXT_RESP ------------------------------------------------


class ResultCode(IntEnum):
    """A presentation context result: accepted, or rejected by whom."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    PROVIDER_REJECTION = 2
    NEGOTIATE_ACK = 3


class RejectReason(IntEnum):
    """Why a presentation context was rejected."""

    NOT_SPECIFIED = 0
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
    PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED = 2


@dataclass(frozen=True, slots=True)
class ContextResult:
    """The answer to one proposed context: result, reason, the accepted transfer syntax."""

    result: int
    reason: int = 0
    transfer_syntax: SyntaxId = ZERO_SYNTAX


@dataclass(frozen=True, slots=True)
class BindAck:
    """BIND_ACK (or ALTER_CONTEXT_RESP): one result per proposed context, in order."""

    call_id: int
    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    secondary_address: bytes
    results: tuple[ContextResult, ...]
    flags: int = FIRST_LAST
    ptype: int = PType.BIND_ACK

    def to_bytes(self) -> bytes:
        """The BIND_ACK (or ALTER_CONTEXT_RESP) PDU, one fragment."""
        return encode_bind_ack(
            self.call_id,
            self.max_xmit_frag,
            self.max_recv_frag,
            self.assoc_group_id,
            secondary_address_block(self.secondary_address),
            encode_results(self.results),
            self.ptype,
            self.flags,
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> BindAck:
        """A BIND_ACK or ALTER_CONTEXT_RESP parsed (what a client reads); PduError otherwise."""
        header = parse_header(pdu, len(pdu))
        if header.ptype not in (PType.BIND_ACK, PType.ALTER_CONTEXT_RESP):
            raise PduError("not a BIND_ACK or ALTER_CONTEXT_RESP")
        end = header.frag_length - header.auth_length
        max_xmit, max_recv, assoc, addr_len = struct.unpack_from("<HHIH", pdu, HEADER_SIZE)
        offset = HEADER_SIZE + 10
        addr = bytes(pdu[offset : offset + addr_len])
        offset += addr_len
        offset += _pad4(offset)
        if offset + 4 > end:
            raise PduError("result list runs past the PDU")
        count = pdu[offset]
        offset += 4
        results = []
        for _ in range(count):
            if offset + 24 > end:
                raise PduError("result list runs past the PDU")
            result, reason = _RESULT.unpack_from(pdu, offset)
            results.append(ContextResult(result, reason, SyntaxId.from_bytes(pdu, offset + 4)))
            offset += 24
        return cls(
            header.call_id,
            max_xmit,
            max_recv,
            assoc,
            addr,
            tuple(results),
            header.flags,
            header.ptype,
        )


def secondary_address_block(address: bytes) -> bytes:
    """Length, address and the padding that puts the result list on a multiple of 4."""
    return struct.pack("<H", len(address)) + address + bytes(_pad4(26 + len(address)))


def encode_results(results: tuple[ContextResult, ...]) -> bytes:
    """The p_result_list of a BIND_ACK: count, 3 reserved bytes, then one entry per context."""
    entries = (_RESULT.pack(r.result, r.reason) + r.transfer_syntax.to_bytes() for r in results)
    return struct.pack("<B3x", len(results)) + b"".join(entries)


def encode_bind_ack(
    call_id: int,
    max_xmit_frag: int,
    max_recv_frag: int,
    assoc_group_id: int,
    address_block: bytes,
    results: bytes,
    ptype: int = PType.BIND_ACK,
    flags: int = FIRST_LAST,
) -> bytes:
    """BIND_ACK bytes from pre-encoded parts (what the host sends, without a dataclass)."""
    length = 24 + len(address_block) + len(results)
    return (
        HEADER.pack(5, 0, ptype, flags, DREP_LE, length, 0, call_id)
        + _BIND_ACK_FIXED.pack(max_xmit_frag, max_recv_frag, assoc_group_id)
        + address_block
        + results
    )


@dataclass(frozen=True, slots=True)
class BindNak:
    """BIND_NAK: the BIND is refused, with a reason and the protocol versions supported."""

    call_id: int
    reason: int = 0
    versions: tuple[tuple[int, int], ...] = ((5, 0),)

    def to_bytes(self) -> bytes:
        """The BIND_NAK PDU, padded to a multiple of 4."""
        payload = struct.pack("<HB", self.reason, len(self.versions))
        payload += b"".join(struct.pack("<BB", major, minor) for major, minor in self.versions)
        payload += bytes(_pad4(HEADER_SIZE + len(payload)))
        return (
            pack_header(PType.BIND_NAK, FIRST_LAST, HEADER_SIZE + len(payload), self.call_id)
            + payload
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> BindNak:
        """A BIND_NAK parsed; PduError for any other PDU."""
        header = parse_header(pdu, len(pdu))
        if header.ptype != PType.BIND_NAK:
            raise PduError("not a BIND_NAK")
        reason = struct.unpack_from("<H", pdu, HEADER_SIZE)[0]
        count = pdu[HEADER_SIZE + 2] if header.frag_length > HEADER_SIZE + 2 else 0
        versions = tuple(
            (pdu[HEADER_SIZE + 3 + 2 * i], pdu[HEADER_SIZE + 4 + 2 * i])
            for i in range(count)
            if HEADER_SIZE + 5 + 2 * i <= header.frag_length
        )
        return cls(header.call_id, reason, versions)


# -- REQUEST, RESPONSE, FAULT -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One REQUEST fragment (a whole call when flags hold FIRST and LAST)."""

    call_id: int
    context_id: int
    opnum: int
    stub: bytes
    flags: int = FIRST_LAST
    alloc_hint: int | None = None
    object_uuid: uuid.UUID | None = None

    def to_bytes(self) -> bytes:
        """The REQUEST fragment, with its object UUID when it has one."""
        flags = self.flags | (PFC.OBJECT_UUID if self.object_uuid else 0)
        obj = self.object_uuid.bytes_le if self.object_uuid else b""
        hint = len(self.stub) if self.alloc_hint is None else self.alloc_hint
        length = REQUEST_HEADER_SIZE + len(obj) + len(self.stub)
        return (
            pack_header(PType.REQUEST, flags, length, self.call_id)
            + _REQUEST_FIXED.pack(hint, self.context_id, self.opnum)
            + obj
            + self.stub
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> Request:
        """A REQUEST fragment parsed; PduError for any other PDU."""
        header = parse_header(pdu, len(pdu))
        if header.ptype != PType.REQUEST:
            raise PduError("not a REQUEST")
        hint, ctx, opnum = _REQUEST_FIXED.unpack_from(pdu, HEADER_SIZE)
        start = REQUEST_HEADER_SIZE
        obj = None
        if header.flags & PFC.OBJECT_UUID:
            if header.frag_length < start + 16:
                raise PduError("object UUID runs past the PDU")
            obj = uuid.UUID(bytes_le=bytes(pdu[start : start + 16]))
            start += 16
        stub = bytes(pdu[start : header.frag_length - header.auth_length])
        return cls(header.call_id, ctx, opnum, stub, header.flags, hint, obj)


@dataclass(frozen=True, slots=True)
class Response:
    """One RESPONSE fragment."""

    call_id: int
    context_id: int
    stub: bytes
    flags: int = FIRST_LAST
    alloc_hint: int | None = None
    cancel_count: int = 0

    def to_bytes(self) -> bytes:
        """The RESPONSE fragment."""
        hint = len(self.stub) if self.alloc_hint is None else self.alloc_hint
        return (
            pack_header(
                PType.RESPONSE, self.flags, RESPONSE_HEADER_SIZE + len(self.stub), self.call_id
            )
            + _RESPONSE_FIXED.pack(hint, self.context_id, self.cancel_count, 0)
            + self.stub
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> Response:
        """A RESPONSE fragment parsed (what a client reads); PduError for any other PDU."""
        header = parse_header(pdu, len(pdu))
        if header.ptype != PType.RESPONSE:
            raise PduError("not a RESPONSE")
        hint, ctx, cancel, _ = _RESPONSE_FIXED.unpack_from(pdu, HEADER_SIZE)
        stub = bytes(pdu[RESPONSE_HEADER_SIZE : header.frag_length - header.auth_length])
        return cls(header.call_id, ctx, stub, header.flags, hint, cancel)


@dataclass(frozen=True, slots=True)
class Fault:
    """FAULT: a call failed with an NCA status (``NcaStatus``); by default it did not execute."""

    call_id: int
    status: int
    context_id: int = 0
    flags: int = FIRST_LAST | PFC.DID_NOT_EXECUTE

    def to_bytes(self) -> bytes:
        """The FAULT PDU."""
        return pack_header(PType.FAULT, self.flags, FAULT_SIZE, self.call_id) + _FAULT_BODY.pack(
            0, self.context_id, 0, 0, self.status, 0
        )

    @classmethod
    def from_bytes(cls, pdu: bytes | memoryview) -> Fault:
        """A FAULT parsed; PduError for any other PDU."""
        header = parse_header(pdu, len(pdu))
        if header.ptype != PType.FAULT:
            raise PduError("not a FAULT")
        _, ctx, _, _, status, _ = _FAULT_BODY.unpack_from(pdu, HEADER_SIZE)
        return cls(header.call_id, status, ctx, header.flags)


def fragment_stub(stub: bytes, max_frag: int, header_size: int) -> list[tuple[int, bytes, int]]:
    """Split a stub into ``(flags, chunk, alloc_hint)`` for fragments of at most ``max_frag``.

    ``alloc_hint`` is the number of stub bytes from this fragment to the end.
    """
    chunk = max_frag - header_size
    if chunk <= 0:
        raise ValueError("fragment size too small")
    if len(stub) <= chunk:
        return [(FIRST_LAST, stub, len(stub))]
    pieces = []
    for start in range(0, len(stub), chunk):
        flags = (PFC.FIRST_FRAG if start == 0 else 0) | (
            PFC.LAST_FRAG if start + chunk >= len(stub) else 0
        )
        pieces.append((int(flags), stub[start : start + chunk], len(stub) - start))
    return pieces


def encode_response(call_id: int, context_id: int, stub: bytes, max_frag: int) -> bytes:
    """A whole RESPONSE, fragmented to the peer's limit, as one byte string."""
    size = len(stub)
    if size <= max_frag - RESPONSE_HEADER_SIZE:  # the usual case, without the dataclasses
        return _WHOLE_RESPONSE.pack(
            5, 0, _RESPONSE, FIRST_LAST, DREP_LE, RESPONSE_HEADER_SIZE + size, 0, call_id, size,
            context_id, 0, 0,
        ) + stub  # fmt: skip
    return b"".join(
        Response(call_id, context_id, chunk, flags, hint).to_bytes()
        for flags, chunk, hint in fragment_stub(stub, max_frag, RESPONSE_HEADER_SIZE)
    )


def encode_request(call_id: int, context_id: int, opnum: int, stub: bytes, max_frag: int) -> bytes:
    """A whole REQUEST, fragmented to the peer's limit, as one byte string."""
    return b"".join(
        Request(call_id, context_id, opnum, chunk, flags, hint).to_bytes()
        for flags, chunk, hint in fragment_stub(stub, max_frag, REQUEST_HEADER_SIZE)
    )
