"""The host side of one DCE/RPC connection, as a state machine fed with bytes.

Theory of operation (the h11 pattern): the server hands every received
chunk to ``receive_data`` (``b""`` at end of stream) and then calls
``next_event`` until it returns ``NEED_DATA``. Events are:

- ``Send``: bytes the connection answered by itself (BIND_ACK, BIND_NAK,
  ALTER_CONTEXT_RESP, a FAULT that does not end the connection);
- ``Call``: a complete, reassembled REQUEST on an accepted context and a
  known opnum, for the application to answer with ``respond`` (or
  ``fault``, e.g. for stub data that does not parse);
- ``Closed``: the connection is over (end of stream, or a protocol error);
  send ``Closed.data`` if any, then close. Every later call returns it again.

Everything that changes the state lives in ``_TRANSITIONS``, one
``(state, PDU type) -> handler`` table; a pair missing from it is a
protocol error (FAULT ``nca_s_proto_error``, then close). No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from functools import lru_cache
from typing import Final, NamedTuple

from kmsemu.rpc.ndr import MAX_STUB
from kmsemu.rpc.pdu import (
    FIXED_SIZE,
    HEADER,
    HEADER_SIZE,
    KLP_INTERFACE,
    MAX_FRAG,
    MIN_FRAG,
    NDR20,
    PFC,
    Bind,
    BindNak,
    ContextElement,
    ContextResult,
    Fault,
    NcaStatus,
    PduError,
    PType,
    RejectReason,
    ResultCode,
    SyntaxId,
    encode_bind_ack,
    encode_response,
    encode_results,
    is_btfn,
    secondary_address_block,
)


class State(Enum):
    """Where a connection is: waiting for its BIND, bound to the interface, or over."""

    AWAIT_BIND = "await_bind"
    BOUND = "bound"
    CLOSED = "closed"


class Send(NamedTuple):
    """Bytes to send that the connection produced by itself; it stays open."""

    data: bytes
    #: Why, when the bytes refuse something (a FAULT or BIND_NAK that keeps the
    #: connection open): for the server's log. Empty for ordinary answers.
    refusal: str = ""


class Call(NamedTuple):
    """A complete REQUEST for the application to answer with ``respond`` or ``fault``."""

    call_id: int
    context_id: int
    opnum: int
    stub: bytes


class Closed(NamedTuple):
    """The connection is over: why, bytes to send before closing, whether it was an error."""

    reason: str
    data: bytes = b""
    error: bool = False


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
_PEER_CLOSED: Final = Closed("peer closed")
Event = Send | Call | Closed | _NeedData

_REQUEST_FIXED = struct.Struct("<IHH")
_LENGTHS = struct.Struct("<HHI")  # frag_length, auth_length, call_id at offset 8
_BIND_FIXED = struct.Struct("<HHI")  # max_xmit_frag, max_recv_frag, assoc_group_id
_NO_SECONDARY_ADDRESS: Final = secondary_address_block(b"")
_NEGOTIATED: dict[tuple[SyntaxId, bytes, bytes], tuple[bytes, frozenset[int]]] = {}
_NEGOTIATED_MAX: Final = 256
_FIRST: Final = int(PFC.FIRST_FRAG)
_LAST: Final = int(PFC.LAST_FRAG)
_OBJECT_UUID: Final = int(PFC.OBJECT_UUID)
#: Fragmented calls a peer may interleave (each may reach the 64 KiB stub limit).
MAX_CALLS_IN_PROGRESS: Final = 4


class ServerConnection:
    """One accepted TCP connection speaking DCE/RPC to a single interface."""

    __slots__ = (
        "_assoc_group_id",
        "_buffer",
        "_closed",
        "_eof",
        "_interface",
        "_max_frag",
        "_max_stub",
        "_opnums",
        "_partial",
        "_secondary",
        "contexts",
        "recv_limit",
        "state",
        "xmit_limit",
    )

    def __init__(
        self,
        *,
        port: int,
        assoc_group_id: int,
        interface: SyntaxId = KLP_INTERFACE,
        opnums: int = 1,
        max_frag: int = MAX_FRAG,
        max_stub: int = MAX_STUB,
    ) -> None:
        if not assoc_group_id:
            raise ValueError("assoc_group_id must be non-zero")
        self.state = State.AWAIT_BIND
        self._secondary = _address_block(port)
        self._assoc_group_id = assoc_group_id
        self._interface = interface
        self._opnums = opnums
        self._max_frag = max_frag
        self._max_stub = max_stub
        self.recv_limit = max_frag
        self.xmit_limit = max_frag
        self.contexts: set[int] = set()
        # bytes while it holds one chunk as received (the usual case: no copy),
        # a bytearray once chunks have to be joined
        self._buffer: bytes | bytearray = b""
        self._eof = False
        self._closed: Closed | None = None
        self._partial: dict[int, tuple[int, int, bytearray]] = {}

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; ``b""`` is the end of stream. Ignored once closed."""
        if self._closed is not None:
            return
        if not data:
            self._eof = True
        elif not self._buffer:
            self._buffer = data
        elif isinstance(self._buffer, bytearray):
            self._buffer += data
        else:
            self._buffer = bytearray(self._buffer) + data

    def next_event(self) -> Event:
        """What the bytes received so far amount to; ``NEED_DATA`` when more are needed."""
        if self._closed is not None:
            return self._closed
        buf = self._buffer
        while len(buf) >= HEADER_SIZE:
            try:
                frag_length = self._check_header(buf)
            except PduError as exc:
                return self._close(f"invalid header: {exc}", error=True)
            if len(buf) < frag_length:
                break
            pdu = bytes(buf[:frag_length])
            buf = self._buffer = buf[frag_length:]
            event = self._dispatch(pdu)
            if event is not None:
                return event
        if self._eof:
            if buf or self._partial:
                return self._close("peer closed in the middle of a PDU", error=True)
            self.state = State.CLOSED
            self._closed = _PEER_CLOSED
            return _PEER_CLOSED
        return NEED_DATA

    @property
    def buffering(self) -> bool:
        """Whether part of a PDU or of a fragmented call is waiting for more bytes."""
        return bool(self._buffer or self._partial)

    def _check_header(self, buf: bytes | bytearray) -> int:
        vers, minor, ptype, _flags, drep, frag_length, auth_length, _call = HEADER.unpack_from(buf)
        if vers != 5 or minor > 1:
            raise PduError(f"rpc version {vers}.{minor}")
        if drep[0] & 0xF0 != 0x10:
            raise PduError("not little-endian")
        if not HEADER_SIZE <= frag_length <= self.recv_limit:
            raise PduError(f"frag_length {frag_length} outside 16..{self.recv_limit}")
        if auth_length > frag_length - HEADER_SIZE:
            raise PduError(f"auth_length {auth_length} exceeds the fragment")
        if frag_length < FIXED_SIZE.get(ptype, HEADER_SIZE):
            raise PduError(f"PDU type {ptype} shorter than its fixed part")
        return int(frag_length)

    def _dispatch(self, pdu: bytes) -> Event | None:
        ptype = pdu[2]
        handler = _TRANSITIONS.get((self.state, ptype))
        if handler is None:
            call_id = HEADER.unpack_from(pdu)[7]
            return self._proto_error(
                call_id, 0, f"PDU type {ptype} not served in {self.state.value}"
            )
        return handler(self, pdu)

    # -- output for the application ---------------------------------------------

    def respond(self, call: Call, stub: bytes) -> bytes:
        """The RESPONSE PDU(s) answering ``call`` with ``stub``."""
        return encode_response(call.call_id, call.context_id, stub, self.xmit_limit)

    def fault(self, call: Call, status: int) -> bytes:
        """A FAULT for ``call`` that leaves the connection open."""
        return Fault(call.call_id, status, call.context_id).to_bytes()

    # -- handlers (the values of _TRANSITIONS) ---------------------------------

    def _on_bind(self, pdu: bytes) -> Event:
        """BIND_ACK with a result per context (BIND_NAK and close if malformed); now bound."""
        try:
            call_id, max_xmit, max_recv, assoc, results = self._negotiate(pdu)
        except PduError as exc:
            nak = BindNak(_call_id(pdu), RejectReason.NOT_SPECIFIED).to_bytes()
            return self._close(f"malformed BIND: {exc}", data=nak, error=True)
        self.xmit_limit = max(min(max_recv, self._max_frag), MIN_FRAG)
        self.recv_limit = max(min(max_xmit, self._max_frag), MIN_FRAG)
        self.state = State.BOUND
        self._assoc_group_id = assoc or self._assoc_group_id
        return Send(
            encode_bind_ack(
                call_id,
                self.xmit_limit,
                self.recv_limit,
                self._assoc_group_id,
                self._secondary,
                results,
            )
        )

    def _on_second_bind(self, pdu: bytes) -> Event:
        """BIND_NAK reason 0; contexts and fragment sizes unchanged."""
        nak = BindNak(_call_id(pdu), RejectReason.NOT_SPECIFIED).to_bytes()
        return Send(nak, "BIND_NAK: a second BIND on a bound connection")

    def _on_alter_context(self, pdu: bytes) -> Event:
        """ALTER_CONTEXT_RESP by the rules of BIND; accepted contexts are added."""
        try:
            call_id, _, _, _, results = self._negotiate(pdu)
        except PduError as exc:
            return self._proto_error(_call_id(pdu), 0, f"malformed ALTER_CONTEXT: {exc}")
        return Send(
            encode_bind_ack(
                call_id,
                self.xmit_limit,
                self.recv_limit,
                self._assoc_group_id,  # the association's, whatever the ALTER_CONTEXT says
                _NO_SECONDARY_ADDRESS,
                results,
                PType.ALTER_CONTEXT_RESP,
            )
        )

    def _negotiate(self, pdu: bytes) -> tuple[int, int, int, int, bytes]:
        """Answer a BIND or ALTER_CONTEXT's contexts; accepted ones join ``self.contexts``.

        Clients send the same context list again and again, so the encoded
        answer is cached by the list's bytes (bounded: a hostile peer only misses).
        """
        frag_length, _, call_id = _LENGTHS.unpack_from(pdu, 8)
        max_xmit, max_recv, assoc = _BIND_FIXED.unpack_from(pdu, HEADER_SIZE)
        key = (self._interface, pdu[8:12], pdu[24:frag_length])  # lengths, then the contexts
        cached = _NEGOTIATED.get(key)
        if cached is None:
            cached = negotiate(self._interface, Bind.from_bytes(pdu).contexts)
            if len(_NEGOTIATED) >= _NEGOTIATED_MAX:
                _NEGOTIATED.clear()
            _NEGOTIATED[key] = cached
        results, accepted = cached
        self.contexts.update(accepted)
        return call_id, max_xmit, max_recv, assoc, results

    def _on_request(self, pdu: bytes) -> Event | None:
        """Reassemble; a Call for the host, or FAULT unk_if / op_rng_error (open) or
        proto_error (close)."""
        _v, _m, _t, flags, _d, frag_length, auth_length, call_id = HEADER.unpack_from(pdu)
        _hint, context_id, opnum = _REQUEST_FIXED.unpack_from(pdu, HEADER_SIZE)
        if auth_length:
            return self._proto_error(call_id, context_id, "REQUEST with authentication")
        start = 40 if flags & _OBJECT_UUID else 24
        if start > frag_length:
            return self._proto_error(call_id, context_id, "object UUID runs past the PDU")
        stub = pdu[start:frag_length]
        first, last = flags & _FIRST, flags & _LAST
        if first and last and call_id not in self._partial:
            return self._complete(call_id, context_id, opnum, stub)
        if first:
            if call_id in self._partial:
                return self._proto_error(
                    call_id, context_id, "FIRST fragment of a call in progress"
                )
            if len(self._partial) >= MAX_CALLS_IN_PROGRESS:
                return self._proto_error(call_id, context_id, "too many calls in progress")
            self._partial[call_id] = (context_id, opnum, bytearray())
        elif call_id not in self._partial:
            return self._proto_error(call_id, context_id, "fragment of an unknown call")
        context_id, opnum, parts = self._partial[call_id]
        parts += stub
        if len(parts) > self._max_stub:
            return self._proto_error(call_id, context_id, "reassembled stub over 64 KiB")
        if not last:
            return None
        del self._partial[call_id]
        return self._complete(call_id, context_id, opnum, bytes(parts))

    def _complete(self, call_id: int, context_id: int, opnum: int, stub: bytes) -> Event:
        if len(stub) > self._max_stub:
            return self._proto_error(call_id, context_id, "stub over 64 KiB")
        if context_id not in self.contexts:
            fault = Fault(call_id, NcaStatus.NCA_S_UNK_IF, context_id).to_bytes()
            return Send(fault, f"nca_s_unk_if: context {context_id} is not accepted")
        if opnum >= self._opnums:
            fault = Fault(call_id, NcaStatus.NCA_S_OP_RNG_ERROR, context_id).to_bytes()
            return Send(fault, f"nca_s_op_rng_error: opnum {opnum}")
        return Call(call_id, context_id, opnum, stub)

    # -- closing ---------------------------------------------------------------

    def _proto_error(self, call_id: int, context_id: int, reason: str) -> Closed:
        fault = Fault(call_id, NcaStatus.NCA_S_PROTO_ERROR, context_id).to_bytes()
        return self._close(reason, data=fault, error=True)

    def _close(self, reason: str, *, data: bytes = b"", error: bool = False) -> Closed:
        self.state = State.CLOSED
        self._buffer = b""
        self._partial.clear()
        self._closed = Closed(reason, b"", error)
        return Closed(reason, data, error)


def negotiate(
    interface: SyntaxId, contexts: tuple[ContextElement, ...]
) -> tuple[bytes, frozenset[int]]:
    """The encoded result list for proposed contexts, and the ids it accepts (klp-v1.md 1)."""
    results = []
    accepted = set()
    for ctx in contexts:
        if ctx.abstract_syntax == interface and NDR20 in ctx.transfer_syntaxes:
            results.append(ContextResult(ResultCode.ACCEPTANCE, 0, NDR20))
            accepted.add(ctx.context_id)
        elif len(ctx.transfer_syntaxes) == 1 and is_btfn(ctx.transfer_syntaxes[0]):
            results.append(ContextResult(ResultCode.NEGOTIATE_ACK))
        elif ctx.abstract_syntax != interface:
            reason = RejectReason.ABSTRACT_SYNTAX_NOT_SUPPORTED
            results.append(ContextResult(ResultCode.PROVIDER_REJECTION, reason))
        else:
            reason = RejectReason.PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED
            results.append(ContextResult(ResultCode.PROVIDER_REJECTION, reason))
    return encode_results(tuple(results)), frozenset(accepted)


@lru_cache(maxsize=64)
def _address_block(port: int) -> bytes:
    return secondary_address_block(str(port).encode("ascii") + b"\x00")


def _call_id(pdu: bytes) -> int:
    return int(HEADER.unpack_from(pdu)[7])


#: The whole state machine: (state, PDU type) -> handler. Anything else is a protocol error.
_TRANSITIONS: Final[dict[tuple[State, int], Callable[[ServerConnection, bytes], Event | None]]] = {
    (State.AWAIT_BIND, PType.BIND): ServerConnection._on_bind,
    (State.AWAIT_BIND, PType.REQUEST): ServerConnection._on_request,
    (State.BOUND, PType.BIND): ServerConnection._on_second_bind,
    (State.BOUND, PType.ALTER_CONTEXT): ServerConnection._on_alter_context,
    (State.BOUND, PType.REQUEST): ServerConnection._on_request,
}


def transition_table() -> str:
    """The state machine as a Markdown table (``docs/architecture.md`` holds it; a test
    keeps them equal)."""
    rows = ["| state | PDU | what happens |", "|---|---|---|"]
    for (state, ptype), handler in _TRANSITIONS.items():
        doc = " ".join((handler.__doc__ or "").split())
        rows.append(f"| {state.value} | {PType(ptype).name} | {doc} |")
    rows.append("| any | any other PDU type | FAULT `nca_s_proto_error`, then close |")
    rows.append("| any | invalid header, end of stream inside a PDU | close, no reply |")
    return "\n".join(rows) + "\n"
