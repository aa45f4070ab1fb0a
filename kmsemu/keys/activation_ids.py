"""Hardware ids, installation ids and confirmation ids (keys.md sections 2-4).

Phone activation: the client shows an installation id (IID: 63 digits in
nine groups of seven) built from its key and hardware; the activation centre
answers with a confirmation id (CID: 48 digits in eight groups of six), an
HMAC of the IID under a key derived from the lab secret, which the client
can recompute. Every group carries a mod-7 check digit so typing errors are
caught per group.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from typing import Final, NamedTuple

from kmsemu.keys.product_key import KeyType

COMPONENTS: Final = 10
SAME_MACHINE_MIN_EQUAL: Final = 7
IID_VERSION: Final = 1
_SEPARATORS = re.compile(r"[-\s]")


class IdError(ValueError):
    """An IID or CID that does not parse; ``failed_groups`` are 1-based."""

    def __init__(self, message: str, failed_groups: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.failed_groups = failed_groups


# -- hardware ----------------------------------------------------------------------------


def hardware_id(components: list[str] | tuple[str, ...]) -> bytes:
    """10 bytes: byte i is the first byte of SHA-256 of component i (UTF-8, as given)."""
    if len(components) != COMPONENTS:
        raise ValueError(f"a hardware id needs {COMPONENTS} components, not {len(components)}")
    return bytes(hashlib.sha256(c.encode("utf-8")).digest()[0] for c in components)


def equal_bytes(a: bytes, b: bytes) -> int:
    """How many positions hold the same byte in two hardware ids of one length."""
    return sum(x == y for x, y in zip(a, b, strict=True))


def same_machine(a: bytes, b: bytes) -> bool:
    """At least 7 of 10 bytes equal, position by position; fewer is a significant change."""
    return equal_bytes(a, b) >= SAME_MACHINE_MIN_EQUAL


# -- digit groups with mod-7 check digits -------------------------------------------------


def _ascii_digits(text: str) -> bool:
    """Only 0-9: ``str.isdigit`` also takes '²' and '٣', which ``int`` refuses or reads."""
    return text.isascii() and text.isdigit()


def _check_digit(digits: str) -> int:
    return sum(int(d) * (2 if i % 2 else 1) for i, d in enumerate(digits)) % 7


def _group(number: int, total_digits: int, group: int) -> str:
    digits = str(number).zfill(total_digits)
    if len(digits) > total_digits:
        raise ValueError("number too large for its id")
    groups = [digits[i : i + group] for i in range(0, total_digits, group)]
    return "-".join(g + str(_check_digit(g)) for g in groups)


def _ungroup(text: str, groups: int, group: int, what: str) -> tuple[str, int]:
    """Check digits verified, the data digits joined, and the digits with checks."""
    digits = _SEPARATORS.sub("", text)
    size = group + 1
    if not _ascii_digits(digits) or len(digits) != groups * size:
        raise IdError(f"{what} has {groups * size} digits in {groups} groups of {size}")
    parts = [digits[i : i + size] for i in range(0, len(digits), size)]
    failed = tuple(n for n, p in enumerate(parts, 1) if _check_digit(p[:group]) != int(p[group]))
    if failed:
        listed = ", ".join(map(str, failed))
        raise IdError(f"{what}: group(s) {listed} mistyped (check digit)", failed)
    return "".join(p[:group] for p in parts), int("".join(p[:group] for p in parts))


# -- installation id ----------------------------------------------------------------------


class Installation(NamedTuple):
    """What an installation ID carries: key type, key fingerprint, hardware id."""

    key_type: KeyType
    fingerprint: str
    hardware_id: bytes


def installation_id(key_type: KeyType, fingerprint: str, hw_id: bytes) -> str:
    """Nine groups of seven digits (the seventh of each a check digit)."""
    if len(hw_id) != COMPONENTS:
        raise ValueError("hardware id must be 10 bytes")
    data = bytes([IID_VERSION, key_type]) + bytes.fromhex(fingerprint) + hw_id + bytes(2)
    return _group(int.from_bytes(data, "big"), 54, 6)


def parse_installation_id(text: str) -> Installation:
    """The fields of a typed IID; check digits, version and reserved bytes verified."""
    _, number = _ungroup(text, 9, 6, "an installation ID")
    data = number.to_bytes(22, "big") if number < 2**176 else b""
    if not data:
        raise IdError("an installation ID holds 22 bytes")
    if data[0] != IID_VERSION:
        raise IdError(f"installation ID version {data[0]} is not {IID_VERSION}")
    if not 1 <= data[1] <= 5:
        raise IdError(f"installation ID names key type {data[1]}")
    if data[20:] != bytes(2):
        raise IdError("installation ID reserved bytes are not zero")
    return Installation(KeyType(data[1]), data[2:10].hex(), data[10:20])


def iid_digits(text: str) -> str:
    """The 63 digits of an IID, check digits included, no separators (what the CID signs)."""
    _ungroup(text, 9, 6, "an installation ID")
    return _SEPARATORS.sub("", text)


# -- confirmation id ------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def cid_key(secret: str) -> bytes:
    """The key that signs confirmation IDs under ``secret`` (HKDF-SHA256, keys.md)."""
    from cryptography.hazmat.primitives import hashes  # only phone activation needs it
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"KLP1", info=b"kmsemu confirmation id"
    ).derive(secret.encode("utf-8"))


def confirmation_id(iid: str, secret: str) -> str:
    """Eight groups of six digits that only the holder of the lab secret can compute."""
    mac = hmac.new(cid_key(secret), iid_digits(iid).encode("ascii"), hashlib.sha256).digest()
    return _group(int.from_bytes(mac[:16], "big"), 40, 5)


class CidCheck(NamedTuple):
    """A typed CID judged: valid, groups with bad check digits, groups that differ."""

    valid: bool
    failed_groups: tuple[int, ...]
    mismatched_groups: tuple[int, ...]


def verify_confirmation_id(iid: str, cid: str, secret: str) -> CidCheck:
    """Compare a typed CID with the one recomputed from the client's own IID."""
    expected = confirmation_id(iid, secret).split("-")
    digits = _SEPARATORS.sub("", cid)
    if not _ascii_digits(digits) or len(digits) != 48:
        return CidCheck(False, tuple(range(1, 9)), tuple(range(1, 9)))
    typed = [digits[i : i + 6] for i in range(0, 48, 6)]
    failed = tuple(n for n, g in enumerate(typed, 1) if _check_digit(g[:5]) != int(g[5]))
    mismatched = tuple(n for n, (a, b) in enumerate(zip(typed, expected, strict=True), 1) if a != b)
    return CidCheck(not mismatched, failed, mismatched)
