"""Types of the optional compiled core (kmsemu/_core.c, built by scripts/build-core)."""

from mmap import mmap
from typing import Final

OPENSSL_VERSION: Final[str]

class InvalidTag(Exception): ...

def activation_line(
    time: int,
    status: int,
    product: str,
    activation_id: str,
    count: int,
    name: str,
    cmid: bytes,
    flags: int,
    license_status: int,
    minutes: int,
    required: int,
    peer: str,
) -> str | None: ...
def journal_add(
    map: mmap | bytearray, at: int, seq: int, row: tuple[object, ...], previous: bytes | None
) -> int: ...

class AesGcm:
    def __init__(self, key: bytes) -> None: ...
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

class HostCore:
    def __init__(
        self,
        keys: list[tuple[bytes, bytes, bytes]],
        host_id: bytes,
        epid_field: bytes,
        fields_type: type[tuple[object, ...]],
    ) -> None: ...
    def open(self, stub: bytes) -> tuple[tuple[object, ...], bytes, int] | None: ...
    def seal(
        self,
        index: int,
        status: int,
        request_nonce: bytes,
        cmid: bytes,
        request_time: int,
        response_time: int,
        count: int,
        activation_interval: int,
        renewal_interval: int,
        nonce: bytes,
    ) -> bytes: ...
