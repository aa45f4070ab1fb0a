"""One KLP/1 activation exchange from the client side, over a blocking socket.

``request_activation`` binds, sends one opnum-0 REQUEST and returns the
host's opened ``ActivationResponse`` (whatever its status). Anything that
keeps a usable response from arriving raises ``ActivationError`` with
0xC004F074 ("no KMS host could be contacted") and the underlying cause
(0x800706BA when nothing listens, the stub status for a wrong secret...).
The RPC and KLP codecs are pure; this module only adds the socket.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from kmsemu.client import DEFAULT_TIMEOUT
from kmsemu.errors import ActivationError, HResult
from kmsemu.klp.envelope import EnvelopeError, LabKey, open_response, seal_request
from kmsemu.klp.messages import ActivationRequest, ActivationResponse, MessageError
from kmsemu.rpc.ndr import NdrError, decode_response_stub, encode_request_stub
from kmsemu.rpc.pdu import (
    HEADER_SIZE,
    KLP_INTERFACE,
    MAX_FRAG,
    NDR20,
    PFC,
    Bind,
    BindAck,
    ContextElement,
    Fault,
    PduError,
    PType,
    Response,
    encode_request,
    parse_header,
)

_MAX_RESPONSE_STUB = 64 * 1024


@dataclass(frozen=True, slots=True)
class Exchange:
    """A response and what the client saw on the way."""

    response: ActivationResponse
    address: tuple[str, int]
    assoc_group_id: int


class _Unusable(Exception):
    def __init__(self, detail: str, cause: int | None = None) -> None:
        super().__init__(detail)
        self.cause = cause


def request_activation(
    address: tuple[str, int],
    request: ActivationRequest,
    key: LabKey,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    nonce: Callable[[int], bytes] = os.urandom,
) -> Exchange:
    """Perform one activation against the host at ``address``."""
    request_nonce = nonce(12)
    envelope = seal_request(key, request.to_bytes(), request_nonce)
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
        raise ActivationError(
            HResult.NO_KMS_HOST,
            f"cannot connect: {getattr(exc, 'strerror', None) or exc}",
            cause=HResult.RPC_SERVER_UNAVAILABLE,
        ) from exc
    try:
        with sock:
            stub, assoc = _call(sock, encode_request_stub(envelope))
        response = _open(stub, key, request_nonce, request)
    except _Unusable as exc:
        raise ActivationError(HResult.NO_KMS_HOST, str(exc), cause=exc.cause) from exc
    except OSError as exc:
        raise ActivationError(
            HResult.NO_KMS_HOST, f"connection failed: {exc}", cause=HResult.RPC_SERVER_UNAVAILABLE
        ) from exc
    return Exchange(response, address, assoc)


def _call(sock: socket.socket, stub: bytes) -> tuple[bytes, int]:
    bind = Bind(call_id=1, contexts=(ContextElement(0, KLP_INTERFACE, (NDR20,)),))
    sock.sendall(bind.to_bytes())
    pdu = _read_pdu(sock)
    if pdu[2] != PType.BIND_ACK:
        raise _Unusable(f"bind answered with PDU type {pdu[2]}")
    try:
        ack = BindAck.from_bytes(pdu)
    except PduError as exc:
        raise _Unusable(f"malformed BIND_ACK: {exc}") from exc
    if not ack.results or ack.results[0].result != 0:
        raise _Unusable("the host rejected the KLP/1 interface")
    sock.sendall(encode_request(2, 0, 0, stub, ack.max_recv_frag))
    parts = []
    while True:
        pdu = _read_pdu(sock)
        try:
            if pdu[2] == PType.FAULT:
                fault = Fault.from_bytes(pdu)
                raise _Unusable(f"RPC fault 0x{fault.status:08X}", fault.status)
            if pdu[2] != PType.RESPONSE:
                raise _Unusable(f"request answered with PDU type {pdu[2]}")
            fragment = Response.from_bytes(pdu)
        except PduError as exc:
            raise _Unusable(f"malformed response: {exc}") from exc
        if fragment.call_id != 2:
            raise _Unusable(f"response for call {fragment.call_id}, expected 2")
        parts.append(fragment.stub)
        if sum(map(len, parts)) > _MAX_RESPONSE_STUB:
            raise _Unusable("response stub over 64 KiB")
        if fragment.flags & PFC.LAST_FRAG:
            return b"".join(parts), ack.assoc_group_id


def _read_pdu(sock: socket.socket) -> bytes:
    header = _read_exact(sock, HEADER_SIZE)
    try:
        frag_length = parse_header(header, MAX_FRAG).frag_length
    except PduError as exc:
        raise _Unusable(f"invalid PDU header: {exc}") from exc
    return header + _read_exact(sock, frag_length - HEADER_SIZE)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise _Unusable("the host closed the connection", HResult.RPC_SERVER_UNAVAILABLE)
        chunks += chunk
    return bytes(chunks)


def _open(
    stub: bytes, key: LabKey, request_nonce: bytes, request: ActivationRequest
) -> ActivationResponse:
    try:
        envelope, status = decode_response_stub(stub)
    except NdrError as exc:
        raise _Unusable(f"malformed response stub: {exc}") from exc
    if bool(envelope) == bool(status):
        raise _Unusable(
            f"response stub with {len(envelope)} envelope bytes and status 0x{status:08X}"
        )
    if status:
        raise _Unusable(f"the host answered 0x{status:08X} without a response", status)
    try:
        response = ActivationResponse.from_bytes(open_response(key, envelope).plaintext)
    except (EnvelopeError, MessageError) as exc:
        raise _Unusable(f"unusable response: {exc}") from exc
    if response.request_nonce != request_nonce:
        raise _Unusable("response answers another request (nonce differs)")
    if response.status == 0 and response.client_machine_id != request.client_machine_id:
        raise _Unusable("response names another client machine id")
    return response
