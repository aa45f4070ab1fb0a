"""The KLP/1 envelope (klp-v1.md section 3): keys, seal and open.

An envelope is ``magic "KLP1" | version major u16 | minor u16 | key_id[4] |
nonce[12] | AES-256-GCM ciphertext | tag[16]`` with bytes 0-23 as the
additional authenticated data. Request and response directions use
different HKDF-derived keys, so a response can never be replayed as a
request. Nonces come from the caller (``nonce`` argument), never from here.

AES-GCM comes from ``cryptography`` (the default install) or, when the optional
compiled core is built and in use (``kmsemu.klp._fastcore``), from the same system
libcrypto Python's ssl module loads; then ``cryptography`` is never imported. Either
cipher gives the same bytes (``tests/test_core.py``). HKDF is the standard library's
HMAC-SHA256 (RFC 5869), so no path needs ``cryptography`` for it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from kmsemu.errors import HResult
from kmsemu.klp import DEFAULT_SECRET
from kmsemu.klp._fastcore import CORE

if TYPE_CHECKING or CORE is None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC: Final = b"KLP1"
VERSION_MAJOR: Final = 1
VERSION_MINOR: Final = 0
HEADER_SIZE: Final = 24
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
MIN_SIZE: Final = HEADER_SIZE + TAG_SIZE

_HEADER = struct.Struct("<4sHH4s12s")


class Aead(Protocol):
    """What the envelope needs of a cipher: ``cryptography``'s AESGCM or the core's AesGcm."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Ciphertext and its 16-byte tag."""
        ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """The plaintext; the cipher's InvalidTag when the tag does not verify."""
        ...


if CORE is None:
    _aead: Callable[[bytes], Aead] = AESGCM
    _InvalidTag: type[Exception] = InvalidTag
else:  # the compiled core: the system libcrypto, and no `cryptography` in this process
    _aead = CORE.AesGcm
    _InvalidTag = CORE.InvalidTag


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with salt ``KLP1``, 32 bytes: extract, then one expand block."""
    prk = hmac.digest(b"KLP1", secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def key_id_for(secret: str) -> bytes:
    """The 4-byte id naming ``secret`` in envelope headers (SHA-256, not secret)."""
    return hashlib.sha256(b"klp1 key id" + secret.encode("utf-8")).digest()[:4]


@dataclass(frozen=True)
class LabKey:
    """Everything derived from one lab secret."""

    secret: str = field(repr=False)
    key_id: bytes
    request_key: bytes = field(repr=False)
    response_key: bytes = field(repr=False)
    request_aead: Aead = field(repr=False, compare=False)
    response_aead: Aead = field(repr=False, compare=False)

    @classmethod
    def derive(cls, secret: str) -> LabKey:
        """The request and response keys of a secret (HKDF-SHA256), ciphers ready."""
        raw = secret.encode("utf-8")
        request_key = _hkdf(raw, b"klp1 request")
        response_key = _hkdf(raw, b"klp1 response")
        return cls(
            secret=secret,
            key_id=key_id_for(secret),
            request_key=request_key,
            response_key=response_key,
            request_aead=_aead(request_key),
            response_aead=_aead(response_key),
        )


class NoncePool:
    """Random nonces cut from one ``os.urandom`` call per few hundred (a busy host's source).

    A forked child starts with an empty pool, so parent and child never share
    nonces. Pure code takes any ``Callable[[int], bytes]``; this is one for servers.
    """

    def __init__(self, batch: int = 4096) -> None:
        self._batch = batch
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._pool, self._at = b"", 0

    def __call__(self, size: int) -> bytes:
        at = self._at
        if at + size > len(self._pool):
            self._pool, at = os.urandom(max(self._batch, size)), 0
        self._at = at + size
        return self._pool[at : at + size]


class EnvelopeError(Exception):
    """An envelope that cannot be opened; ``status`` is the stub status to answer with."""

    def __init__(self, status: HResult, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Opened(NamedTuple):
    """An opened envelope: plaintext, its nonce, the key that opened it, minor version."""

    plaintext: bytes
    nonce: bytes
    key: LabKey
    version_minor: int


def _seal(aead: Aead, key_id: bytes, nonce: bytes, plaintext: bytes, minor: int) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    header = _HEADER.pack(MAGIC, VERSION_MAJOR, minor, key_id, nonce)
    return header + aead.encrypt(nonce, plaintext, header)


def seal_request(
    key: LabKey, plaintext: bytes, nonce: bytes, *, minor: int = VERSION_MINOR
) -> bytes:
    """A client's request envelope: header, then AES-GCM over the plaintext."""
    return _seal(key.request_aead, key.key_id, nonce, plaintext, minor)


def seal_response(key: LabKey, plaintext: bytes, nonce: bytes) -> bytes:
    """A host's response envelope, sealed with the key the request came under."""
    return _seal(key.response_aead, key.key_id, nonce, plaintext, VERSION_MINOR)


def _check_header(envelope: bytes) -> tuple[int, bytes, bytes]:
    if len(envelope) < MIN_SIZE:
        raise EnvelopeError(HResult.INVALID_DATA, f"envelope of {len(envelope)} bytes is under 40")
    magic, major, minor, key_id, nonce = _HEADER.unpack_from(envelope)
    if magic != MAGIC:
        raise EnvelopeError(HResult.INVALID_DATA, "wrong magic")
    if major != VERSION_MAJOR:
        raise EnvelopeError(HResult.INVALID_DATA, f"version {major}.{minor} is not 1.x")
    return minor, key_id, nonce


def _open_with(aead: Aead, envelope: bytes, nonce: bytes) -> bytes | None:
    try:
        return aead.decrypt(nonce, envelope[HEADER_SIZE:], envelope[:HEADER_SIZE])
    except _InvalidTag:
        return None


class Keyring:
    """The secrets a host accepts, looked up by key id (several may share one)."""

    def __init__(self, secrets: list[str] | tuple[str, ...] = (DEFAULT_SECRET,)) -> None:
        if not secrets:
            raise ValueError("a keyring needs at least one secret")
        self.keys: tuple[LabKey, ...] = tuple(LabKey.derive(s) for s in dict.fromkeys(secrets))
        self._by_id: dict[bytes, list[LabKey]] = {}
        for key in self.keys:
            self._by_id.setdefault(key.key_id, []).append(key)

    def open_request(self, envelope: bytes) -> Opened:
        """Open a request envelope, or raise EnvelopeError with the stub status."""
        minor, key_id, nonce = _check_header(envelope)
        for key in self._by_id.get(key_id, ()):
            plaintext = _open_with(key.request_aead, envelope, nonce)
            if plaintext is not None:
                return Opened(plaintext, nonce, key, minor)
        if key_id not in self._by_id:
            raise EnvelopeError(HResult.ACCESS_DENIED, "unknown key id")
        raise EnvelopeError(HResult.ACCESS_DENIED, "tag does not verify")


def open_response(key: LabKey, envelope: bytes) -> Opened:
    """Open a response envelope on the client side (must carry ``key``'s key id)."""
    minor, key_id, nonce = _check_header(envelope)
    if key_id != key.key_id:
        raise EnvelopeError(HResult.ACCESS_DENIED, "response carries another key id")
    plaintext = _open_with(key.response_aead, envelope, nonce)
    if plaintext is None:
        raise EnvelopeError(HResult.ACCESS_DENIED, "response tag does not verify")
    return Opened(plaintext, nonce, key, minor)
