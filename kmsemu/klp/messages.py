"""KLP/1 plaintexts (klp-v1.md section 4): the activation request and response.

Frozen dataclasses that validate when built and when parsed, each with a
``to_bytes`` / ``from_bytes`` pair. Parsing errors raise ``MessageError``;
the host answers them with status 0x8007000D (invalid data).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from kmsemu.wire import (
    NIL_GUID,
    TextFieldError,
    decode_utf16_field,
    encode_utf16_field,
)

REQUEST_SIZE: Final = 232
RESPONSE_SIZE: Final = 196
NAME_FIELD_SIZE: Final = 128
FLAG_VIRTUAL_MACHINE: Final = 0x1

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

# flags, status, grace, app, sku, count id, cmid, required, time, previous cmid
_REQUEST = struct.Struct("<III16s16s16s16sIQ16s")
# status, nonce, cmid, request time, response time, count, act, renew, host id
_RESPONSE = struct.Struct("<I12s16sQQIII8s")


class LicenseStatus(IntEnum):
    """klp-v1.md section 6, with slmgr's wording in ``text``."""

    UNLICENSED = 0
    LICENSED = 1
    INITIAL_GRACE = 2
    OUT_OF_TOLERANCE_GRACE = 3
    NON_GENUINE_GRACE = 4
    NOTIFICATION = 5
    EXTENDED_GRACE = 6

    @property
    def text(self) -> str:
        """The status as slmgr words it (``Initial grace period``...)."""
        return _STATUS_TEXT[self]


_STATUS_TEXT = {
    LicenseStatus.UNLICENSED: "Unlicensed",
    LicenseStatus.LICENSED: "Licensed",
    LicenseStatus.INITIAL_GRACE: "Initial grace period",
    LicenseStatus.OUT_OF_TOLERANCE_GRACE: (
        "Additional grace period (KMS license expired or hardware out of tolerance)"
    ),
    LicenseStatus.NON_GENUINE_GRACE: "Non-genuine grace period",
    LicenseStatus.NOTIFICATION: "Notification",
    LicenseStatus.EXTENDED_GRACE: "Extended grace period",
}


class MessageError(ValueError):
    """A plaintext that does not follow klp-v1.md section 4."""


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise MessageError(f"{name} {value} is outside u32")


@dataclass(frozen=True, slots=True)
class ActivationRequest:
    """Section 4.1: what a client sends, sealed in a request envelope."""

    application_id: uuid.UUID
    sku_id: uuid.UUID
    kms_count_id: uuid.UUID
    client_machine_id: uuid.UUID
    request_time: int
    required_client_count: int
    license_status: int = LicenseStatus.INITIAL_GRACE
    grace_minutes_remaining: int = 43_200
    workstation_name: str = ""
    previous_client_machine_id: uuid.UUID = NIL_GUID
    flags: int = 0

    def __post_init__(self) -> None:
        for name in ("flags", "grace_minutes_remaining", "required_client_count"):
            _check_u32(name, getattr(self, name))
        if self.license_status not in _VALID_STATUSES:
            raise MessageError(f"license_status {self.license_status} is not 0-6")
        if self.client_machine_id == NIL_GUID:
            raise MessageError("the client machine id is nil")
        if not 0 <= self.request_time <= _U64_MAX:
            raise MessageError("request_time is outside u64")
        try:
            encode_utf16_field(self.workstation_name, NAME_FIELD_SIZE)
        except (ValueError, UnicodeEncodeError) as exc:
            raise MessageError(f"workstation name: {exc}") from exc

    @property
    def is_virtual_machine(self) -> bool:
        """Whether the client says it runs in a virtual machine."""
        return bool(self.flags & FLAG_VIRTUAL_MACHINE)

    def to_bytes(self) -> bytes:
        """The request plaintext, ``REQUEST_SIZE`` bytes (klp-v1.md section 4.1)."""
        return _REQUEST.pack(
            self.flags,
            self.license_status,
            self.grace_minutes_remaining,
            self.application_id.bytes_le,
            self.sku_id.bytes_le,
            self.kms_count_id.bytes_le,
            self.client_machine_id.bytes_le,
            self.required_client_count,
            self.request_time,
            self.previous_client_machine_id.bytes_le,
        ) + encode_utf16_field(self.workstation_name, NAME_FIELD_SIZE)

    @classmethod
    def from_bytes(cls, data: bytes) -> ActivationRequest:
        """Parse a plaintext; bytes past the v1.0 layout are ignored."""
        return cls.from_fields(parse_request(data))

    @classmethod
    def from_fields(cls, f: RequestFields) -> ActivationRequest:
        """The request whose fields (GUIDs in wire form) are ``f``."""
        return cls(
            application_id=uuid.UUID(bytes_le=f.application_id),
            sku_id=uuid.UUID(bytes_le=f.sku_id),
            kms_count_id=uuid.UUID(bytes_le=f.kms_count_id),
            client_machine_id=uuid.UUID(bytes_le=f.client_machine_id),
            request_time=f.request_time,
            required_client_count=f.required_client_count,
            license_status=f.license_status,
            grace_minutes_remaining=f.grace_minutes_remaining,
            workstation_name=f.workstation_name,
            previous_client_machine_id=uuid.UUID(bytes_le=f.previous_client_machine_id),
            flags=f.flags,
        )


class RequestFields(NamedTuple):
    """A validated request plaintext with GUIDs left in wire form (``bytes_le``).

    What the host works with: building ``uuid.UUID`` objects costs more than
    the rest of an activation, and the host only compares and stores them.
    """

    flags: int
    license_status: int
    grace_minutes_remaining: int
    application_id: bytes
    sku_id: bytes
    kms_count_id: bytes
    client_machine_id: bytes
    required_client_count: int
    request_time: int
    previous_client_machine_id: bytes
    workstation_name: str


_NIL_LE = bytes(16)
_tuple_new: Final = tuple.__new__


def parse_request(data: bytes) -> RequestFields:
    """Check a request plaintext against section 4.1 and split it into its fields."""
    if len(data) < REQUEST_SIZE:
        raise MessageError(f"request plaintext of {len(data)} bytes is under {REQUEST_SIZE}")
    fields = _REQUEST.unpack_from(data)
    if fields[1] > 6:
        raise MessageError(f"license_status {fields[1]} is not 0-6")
    if fields[6] == _NIL_LE:
        raise MessageError("the client machine id is nil")
    try:
        name = decode_utf16_field(data[104:REQUEST_SIZE])
    except TextFieldError as exc:
        raise MessageError(f"workstation name: {exc}") from exc
    return _tuple_new(RequestFields, (*fields, name))  # _make without its Python frame


_VALID_STATUSES = frozenset(int(s) for s in LicenseStatus)


def echo_fields(plaintext: bytes) -> tuple[bytes, int]:
    """The CMID (wire form) and request time to echo in an error response, zero if too short."""
    cmid = plaintext[60:76] if len(plaintext) >= 76 else _NIL_LE
    when = int.from_bytes(plaintext[80:88], "little") if len(plaintext) >= 88 else 0
    return cmid, when


@dataclass(frozen=True, slots=True)
class ActivationResponse:
    """Section 4.2: what the host answers, sealed in a response envelope."""

    status: int
    request_nonce: bytes
    client_machine_id: uuid.UUID
    request_time: int
    response_time: int
    current_count: int
    activation_interval: int
    renewal_interval: int
    host_id: bytes
    host_epid: str

    def __post_init__(self) -> None:
        for name in ("status", "current_count", "activation_interval", "renewal_interval"):
            _check_u32(name, getattr(self, name))
        if len(self.request_nonce) != 12:
            raise MessageError("request_nonce must be 12 bytes")
        if len(self.host_id) != 8:
            raise MessageError("host_id must be 8 bytes")
        for name in ("request_time", "response_time"):
            if not 0 <= getattr(self, name) <= _U64_MAX:
                raise MessageError(f"{name} is outside u64")
        try:
            encode_utf16_field(self.host_epid, NAME_FIELD_SIZE)
        except (ValueError, UnicodeEncodeError) as exc:
            raise MessageError(f"host_epid: {exc}") from exc

    def to_bytes(self) -> bytes:
        """The response plaintext, ``RESPONSE_SIZE`` bytes (klp-v1.md section 4.2)."""
        return _RESPONSE.pack(
            self.status,
            self.request_nonce,
            self.client_machine_id.bytes_le,
            self.request_time,
            self.response_time,
            self.current_count,
            self.activation_interval,
            self.renewal_interval,
            self.host_id,
        ) + encode_utf16_field(self.host_epid, NAME_FIELD_SIZE)

    @classmethod
    def from_bytes(cls, data: bytes) -> ActivationResponse:
        """A response plaintext parsed and checked; MessageError when it does not follow 4.2."""
        if len(data) < RESPONSE_SIZE:
            raise MessageError(f"response plaintext of {len(data)} bytes is under {RESPONSE_SIZE}")
        status, nonce, cmid, req_time, resp_time, count, act, renew, host_id = (
            _RESPONSE.unpack_from(data)
        )
        try:
            epid = decode_utf16_field(data[68:RESPONSE_SIZE])
        except TextFieldError as exc:
            raise MessageError(f"host_epid: {exc}") from exc
        return cls(
            status=status,
            request_nonce=nonce,
            client_machine_id=uuid.UUID(bytes_le=cmid),
            request_time=req_time,
            response_time=resp_time,
            current_count=count,
            activation_interval=act,
            renewal_interval=renew,
            host_id=host_id,
            host_epid=epid,
        )


def pack_response(
    status: int,
    request_nonce: bytes,
    client_machine_id: bytes,
    request_time: int,
    response_time: int,
    current_count: int,
    activation_interval: int,
    renewal_interval: int,
    host_id: bytes,
    epid_field: bytes,
) -> bytes:
    """A response plaintext from wire-form values (the host's path; ``epid_field`` pre-encoded).

    Gives the same bytes as ``ActivationResponse(...).to_bytes()``.
    """
    return (
        _RESPONSE.pack(
            status,
            request_nonce,
            client_machine_id,
            request_time,
            response_time,
            current_count,
            activation_interval,
            renewal_interval,
            host_id,
        )
        + epid_field
    )
