"""Lab product keys (keys.md section 1): mint, decode, check, and help with typos.

A key is 25 symbols of ``BCDFGHJKMPQRTVWXY2346789`` read as one base-24
number V < 2^112 whose fields are, from the top: type (8 bits), product
number (16), serial (40), quantity (16) and a 32-bit check derived with
SHA-256 from the other 80 bits. These are this project's own lab keys: no
real product key is ever minted or accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from enum import IntEnum
from typing import Final, NamedTuple

ALPHABET: Final = "BCDFGHJKMPQRTVWXY2346789"
KEY_LENGTH: Final = 25
MAX_VALUE: Final = 2**112
MAX_SERIAL: Final = 2**40 - 1
MAX_QUANTITY: Final = 2**16 - 1
MAX_PRODUCT: Final = 2**16 - 1
MAX_CANDIDATES: Final = 5
_INDEX: Final = {symbol: i for i, symbol in enumerate(ALPHABET)}


class KeyType(IntEnum):
    """What a key is for, the first field of every lab key (keys.md section 1)."""

    KMS_CLIENT = 1
    MAK = 2
    RETAIL = 3
    KMS_HOST = 4
    SUBSCRIPTION = 5

    @property
    def label(self) -> str:
        """The CLI's name: ``kms-client``, ``mak``, ``retail``, ``kms-host``, ``subscription``."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> KeyType:
        """The type a CLI name names (``kms-host``); KeyError for any other."""
        return cls[label.upper().replace("-", "_")]


class ProductKey(NamedTuple):
    """A well-formed key's fields."""

    type: KeyType
    product: int
    serial: int
    quantity: int
    check: int

    @property
    def value(self) -> int:
        """The key as its 112-bit number: the fields, then the 32-bit check."""
        return _high80(self.type, self.product, self.serial, self.quantity) << 32 | self.check

    @property
    def symbols(self) -> str:
        """The 25 symbols without separators."""
        value, out = self.value, []
        for _ in range(KEY_LENGTH):
            value, digit = divmod(value, 24)
            out.append(ALPHABET[digit])
        return "".join(reversed(out))

    def __str__(self) -> str:
        return format_key(self.symbols)

    @property
    def fingerprint(self) -> str:
        """The key's 16-hex-digit fingerprint, what logs and databases hold instead."""
        return fingerprint(self.symbols)

    @property
    def last5(self) -> str:
        """The last five symbols, as slmgr shows a partial key."""
        return self.symbols[-5:]


class Problem(NamedTuple):
    """One thing wrong with a typed key (``position`` is 1-based, in the normalised text)."""

    code: str
    message: str
    position: int | None = None
    character: str | None = None

    def to_json(self) -> dict[str, object]:
        """The problem as ``keys check --json`` prints it (position and character if known)."""
        data: dict[str, object] = {"code": self.code}
        if self.position is not None:
            data["position"] = self.position
        if self.character is not None:
            data["character"] = self.character
        data["message"] = self.message
        return data


class Diagnosis(NamedTuple):
    """What ``check`` found: the key if well formed, else the problems and likely keys."""

    normalised: str
    key: ProductKey | None
    problems: tuple[Problem, ...]
    candidates: tuple[str, ...]
    candidates_total: int

    @property
    def well_formed(self) -> bool:
        """Whether the text is a valid key."""
        return self.key is not None


def _high80(key_type: int, product: int, serial: int, quantity: int) -> int:
    return key_type << 72 | product << 56 | serial << 16 | quantity


def _check_of(high80: int) -> int:
    digest = hashlib.sha256(b"kmsemu key v1" + high80.to_bytes(10, "big")).digest()
    return int.from_bytes(digest[:4], "big")


def mint(key_type: KeyType, product: int, serial: int = 0, quantity: int = 0) -> ProductKey:
    """The key with these fields (quantity is for subscription keys; others mint 0)."""
    if not 0 <= product <= MAX_PRODUCT:
        raise ValueError(f"product number {product} is outside 0..{MAX_PRODUCT}")
    if not 0 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial {serial} is outside 0..{MAX_SERIAL}")
    if not 0 <= quantity <= MAX_QUANTITY:
        raise ValueError(f"quantity {quantity} is outside 0..{MAX_QUANTITY}")
    if quantity and key_type is not KeyType.SUBSCRIPTION:
        raise ValueError("only subscription keys carry a quantity")
    check = _check_of(_high80(key_type, product, serial, quantity))
    return ProductKey(KeyType(key_type), product, serial, quantity, check)


def setup_key(product: int) -> ProductKey:
    """The published KMS client setup key of a product number: type 1, serial 0."""
    return mint(KeyType.KMS_CLIENT, product)


def normalise(text: str) -> str:
    """Drop spaces and ``-``, upper-case a-z; every other character stays to be diagnosed."""
    return "".join(c.upper() if "a" <= c <= "z" else c for c in text if c not in " -")


def format_key(symbols: str) -> str:
    """Symbols in dash-separated groups of five: ``XXXXX-XXXXX-...``."""
    return "-".join(symbols[i : i + 5] for i in range(0, len(symbols), 5))


def fingerprint(text: str) -> str:
    """16 hex digits identifying a key in logs and databases (never the key itself)."""
    return hashlib.sha256(b"kmsemu fingerprint v1" + normalise(text).encode("ascii")).hexdigest()[
        :16
    ]


def _decode(symbols: str) -> ProductKey | None:
    """The key if these 25 alphabet symbols are well formed, else None."""
    value = 0
    for c in symbols:
        value = value * 24 + _INDEX[c]
    if value >= MAX_VALUE:
        return None
    high, check = value >> 32, value & 0xFFFFFFFF
    key_type = high >> 72
    if not 1 <= key_type <= 5 or _check_of(high) != check:
        return None
    return ProductKey(
        KeyType(key_type), high >> 56 & 0xFFFF, high >> 16 & MAX_SERIAL, high & 0xFFFF, check
    )


def parse(text: str) -> ProductKey:
    """A well-formed key, or ValueError with the first problem's message."""
    diagnosis = check(text)
    if diagnosis.key is None:
        raise ValueError(diagnosis.problems[0].message)
    return diagnosis.key


def check(text: str) -> Diagnosis:
    """Normalise and check in the order of keys.md; say what is wrong and what was meant."""
    symbols = normalise(text)
    if len(symbols) != KEY_LENGTH:
        problem = Problem(
            "wrong_length",
            f"a key has {KEY_LENGTH} characters (without dashes); this has {len(symbols)}",
        )
        return Diagnosis(symbols, None, (problem,), (), 0)
    foreign = [
        Problem(
            "invalid_character",
            f"position {i}: keys never use {c!r} (no vowels, and none of 0 1 5 L N S Z)",
            i,
            c,
        )
        for i, c in enumerate(symbols, 1)
        if c not in _INDEX
    ]
    if foreign:
        found = _candidates(symbols, foreign[0].position) if len(foreign) == 1 else []
        return Diagnosis(symbols, None, tuple(foreign), tuple(found[:MAX_CANDIDATES]), len(found))
    key = _decode(symbols)
    if key is not None:
        return Diagnosis(symbols, key, (), (), 0)
    found = _candidates(symbols, None)
    return Diagnosis(
        symbols, None, (_structural_problem(symbols),), tuple(found[:MAX_CANDIDATES]), len(found)
    )


def _structural_problem(symbols: str) -> Problem:
    value = 0
    for c in symbols:
        value = value * 24 + _INDEX[c]
    if value >= MAX_VALUE:
        return Problem("out_of_range", "this is not a key: its value is out of range")
    key_type = value >> 104
    if not 1 <= key_type <= 5:
        return Problem("unknown_type", f"this is not a key: unknown key type {key_type}")
    return Problem("check_failed", "a character is mistyped: the key's check does not match")


def _candidates(symbols: str, only_position: int | None) -> list[str]:
    """Well-formed keys one substitution (or, with no foreign character, one swap) away."""
    return [format_key(c) for c in _variants(symbols, only_position) if _decode(c) is not None]


def _variants(symbols: str, only_position: int | None) -> Iterator[str]:
    positions = [only_position] if only_position else range(1, KEY_LENGTH + 1)
    for position in positions:
        i = position - 1
        for symbol in ALPHABET:
            if symbol != symbols[i]:
                yield symbols[:i] + symbol + symbols[i + 1 :]
    if only_position is None:
        for i in range(KEY_LENGTH - 1):
            if symbols[i] != symbols[i + 1]:
                yield symbols[:i] + symbols[i + 1] + symbols[i] + symbols[i + 2 :]
