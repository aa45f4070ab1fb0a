"""NDR stubs of KLP/1 opnum 0, ``RequestActivation`` (klp-v1.md section 2).

Request: ``requestSize u32 | max_count u32 | envelope`` (0-3 zero bytes may trail).
Response: ``responseSize u32 | referent u32 | [max_count u32] | envelope | pad | status u32``.
"""

from __future__ import annotations

import struct
from typing import Final

REFERENT_ID: Final = 0x00020000
MAX_STUB: Final = 64 * 1024

_TWO_U32 = struct.Struct("<II")
_U32 = struct.Struct("<I")


class NdrError(ValueError):
    """A stub that does not parse; the host answers FAULT ``nca_s_fault_ndr``."""


def encode_request_stub(envelope: bytes) -> bytes:
    """A REQUEST stub around an envelope: its size twice (conformant array), then the bytes."""
    n = len(envelope)
    return _TWO_U32.pack(n, n) + envelope


def decode_request_stub(stub: bytes | memoryview) -> bytes:
    """The request envelope inside a REQUEST stub."""
    if len(stub) < 8:
        raise NdrError(f"stub of {len(stub)} bytes is under 8")
    size, max_count = _TWO_U32.unpack_from(stub)
    if size != max_count:
        raise NdrError(f"requestSize {size} differs from max_count {max_count}")
    trailing = len(stub) - 8 - size
    if trailing < 0:
        raise NdrError("the array runs past the stub")
    if trailing > 3:
        raise NdrError(f"{trailing} trailing bytes")
    if trailing and any(stub[8 + size :]):
        raise NdrError("non-zero trailing bytes")
    return bytes(stub[8 : 8 + size])


def encode_response_stub(envelope: bytes | None, status: int) -> bytes:
    """A RESPONSE stub: the envelope with status 0, or no envelope and an error status."""
    if not envelope:
        return _TWO_U32.pack(0, 0) + _U32.pack(status)
    n = len(envelope)
    return b"".join(
        (_U32.pack(n), _TWO_U32.pack(REFERENT_ID, n), envelope, bytes(-n % 4), _U32.pack(status))
    )


def decode_response_stub(stub: bytes | memoryview) -> tuple[bytes, int]:
    """``(envelope, status)`` from a RESPONSE stub; the envelope is empty when M is 0."""
    if len(stub) < 12:
        raise NdrError(f"response stub of {len(stub)} bytes is under 12")
    size, referent = _TWO_U32.unpack_from(stub)
    status = _U32.unpack_from(stub, len(stub) - 4)[0]
    if referent == 0:
        if size != 0 or len(stub) != 12:
            raise NdrError("null pointer with a size or extra bytes")
        return b"", status
    max_count = _U32.unpack_from(stub, 8)[0]
    if max_count != size:
        raise NdrError(f"responseSize {size} differs from max_count {max_count}")
    end = 12 + size
    if len(stub) != end + (-size % 4) + 4:
        raise NdrError("stub length does not match responseSize")
    return bytes(stub[12:end]), status
