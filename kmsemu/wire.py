"""Small wire helpers shared by the codecs: FILETIME, GUIDs, fixed UTF-16 fields.

All pure. FILETIME is an unsigned 64-bit count of 100 ns intervals since
1601-01-01T00:00:00Z; GUIDs travel in Microsoft's mixed-endian layout
(``uuid.UUID.bytes_le``).
"""

from __future__ import annotations

import codecs
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

#: 100 ns intervals between 1601-01-01 and 1970-01-01.
EPOCH_AS_FILETIME = 116_444_736_000_000_000
FILETIME_PER_SECOND = 10_000_000
FILETIME_MAX = 2**64 - 1

NIL_GUID = uuid.UUID(int=0)
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def filetime_from_unix(seconds: float) -> int:
    """POSIX seconds (UTC) to FILETIME, clamped to the u64 range."""
    value = EPOCH_AS_FILETIME + round(seconds * FILETIME_PER_SECOND)
    return min(max(value, 0), FILETIME_MAX)


def unix_from_filetime(filetime: int) -> float:
    """FILETIME to POSIX seconds (UTC), unclamped."""
    return (filetime - EPOCH_AS_FILETIME) / FILETIME_PER_SECOND


def datetime_from_filetime(filetime: int) -> datetime:
    """FILETIME to an aware UTC datetime (microsecond precision)."""
    return UNIX_EPOCH + timedelta(microseconds=(filetime - EPOCH_AS_FILETIME) // 10)


def filetime_from_datetime(when: datetime) -> int:
    """An aware datetime to FILETIME; a naive one is refused (ValueError)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (UTC)")
    return EPOCH_AS_FILETIME + (when - UNIX_EPOCH) // timedelta(microseconds=1) * 10


def guid_text(le: bytes) -> str:
    """``str(uuid.UUID(bytes_le=le))`` without building a UUID (the host's log path)."""
    h = (le[3::-1] + le[5:3:-1] + le[7:5:-1] + le[8:16]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_utf_16_le_decode: Final = codecs.utf_16_le_decode


class TextFieldError(ValueError):
    """A fixed UTF-16LE field is unterminated or not valid UTF-16."""


def encode_utf16_field(text: str, size: int) -> bytes:
    """Text as UTF-16LE, then a NUL code unit, NUL padded to ``size`` bytes.

    At most ``size // 2 - 1`` code units fit; longer text is an error.
    """
    raw = text.encode("utf-16-le")
    if len(raw) > size - 2:
        raise ValueError(f"text of {len(raw) // 2} UTF-16 code units exceeds {size // 2 - 1}")
    return raw + bytes(size - len(raw))


def decode_utf16_field(data: bytes) -> str:
    """Decode up to the first NUL code unit; bytes after it are ignored."""
    end = data.find(b"\x00\x00")
    while end > 0 and end % 2:  # a NUL pair straddling two code units is not a NUL code unit
        end = data.find(b"\x00\x00", end + 1)
    if end < 0:
        raise TextFieldError("no terminating NUL code unit")
    try:
        return _utf_16_le_decode(data[:end], "strict", True)[0]  # no codec lookup
    except UnicodeDecodeError as exc:
        raise TextFieldError("not valid UTF-16") from exc
