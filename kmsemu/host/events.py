"""The host's event log: one line per event on a stream, as text or JSON.

Lines are buffered and written when the server flushes (every fraction of a
second and at shutdown), so a busy host makes one write call per batch. With the
optional compiled core (``kmsemu.klp._fastcore``), the plain activation line (a
catalog product, a name needing no quotes, no reason) is formatted in C; the f-string
here stays the reference, and ``tests/test_core.py`` holds the two to the same text.
"""

from __future__ import annotations

import json
import re
import sys
import time
from types import ModuleType
from typing import Any, Protocol

from kmsemu.host.rules import LogRecord
from kmsemu.klp._fastcore import CORE
from kmsemu.wire import (
    FILETIME_PER_SECOND,
    datetime_from_filetime,
    filetime_from_unix,
    guid_text,
    unix_from_filetime,
)


class TextSink(Protocol):
    """Where the log goes: a text stream such as ``sys.stderr`` or an open file."""

    def write(self, text: str, /) -> int:
        """Take the text (buffered, maybe); the count of characters written."""
        ...

    def flush(self) -> None:
        """Push what was written on to its destination."""
        ...


class EventLog:
    """The host's event lines, buffered until ``flush``: text for people, JSON for collectors."""

    def __init__(
        self,
        stream: TextSink | None = None,
        fmt: str = "text",
        product_names: dict[bytes, str] | None = None,
        core: ModuleType | None = CORE,
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError("log format must be text or json")
        self._stream = stream if stream is not None else sys.stderr
        self._json = fmt == "json"
        self._products = product_names or {}
        #: The Activation ID's text of each catalog SKU, made once (an unknown SKU is
        #: formatted on each line: a hostile client cannot grow this).
        self._activation_ids = {sku: guid_text(sku) for sku in self._products}
        self._lines: list[str] = []
        #: The compiled core's formatter of the plain activation line (None: Python's).
        self._core_line = None if core is None or self._json else core.activation_line
        self._second = -1
        self._second_text = ""

    def activation(self, record: LogRecord, peer: str, reason: str) -> None:
        """One line with the fields of event 12290 and what the host answered."""
        q = record.request
        if q is not None and not self._json:  # the busy path
            # unpacked, not read field by field: each NamedTuple field by name is a lookup
            when, status, count, _, cmid, _ = record
            flags, licence, minutes, _, sku, _, _, required, _, _, name = q
            activation_id = self._activation_ids.get(sku)
            core_line = self._core_line
            if core_line is not None and activation_id is not None and not reason:  # in C
                line = core_line(when, status, self._products[sku] or activation_id,
                                 activation_id, count, name, cmid, flags, licence, minutes,
                                 required, peer)  # fmt: skip
                if line is not None:
                    self._lines.append(line)
                    return
            if not name or _NEEDS_QUOTES.search(name):  # as one f-string
                name = json.dumps(name)
            activation_id = activation_id or guid_text(sku)
            product = self._products.get(sku) or activation_id
            line = (
                f"{self._stamp(when)} activation status=0x{status:08X} "
                f"product={product} activation_id={activation_id} "
                f"count={count} client={name} cmid={guid_text(cmid)} vm={flags & 1} "
                f"license_status={licence} minutes={minutes} required={required} peer={peer}"
            )
            if reason:
                line += f" reason={json.dumps(reason)}"
            self._lines.append(line + "\n")
            return
        fields: dict[str, Any] = {"status": f"0x{record.status:08X}"}
        if q is not None:
            fields["activation_id"] = guid_text(q.sku_id)
            fields["product"] = self._products.get(q.sku_id) or fields["activation_id"]
            fields["count"] = record.current_count
            fields["client"] = q.workstation_name
            fields["cmid"] = guid_text(record.client_machine_id)
            fields["vm"] = q.flags & 1
            fields["license_status"] = q.license_status
            fields["minutes_to_expiration"] = q.grace_minutes_remaining
            fields["client_time"] = _filetime_iso(q.request_time)
            fields["required"] = q.required_client_count
        fields["peer"] = peer
        if reason:
            fields["reason"] = reason
        self.event("activation", record.time, fields)

    def event(
        self, name: str, filetime: int | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        """Buffer one event line: name and fields at ``filetime`` (JSON lines: now if none)."""
        fields = fields or {}
        if self._json:  # a log collector wants a time on every line: the wall clock's
            stamp = self._stamp(filetime or filetime_from_unix(time.time()))
            self._lines.append(json.dumps({"time": stamp, "event": name, **fields}) + "\n")
        else:
            parts = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            self._lines.append(f"{self._stamp(filetime)} {name} {parts}\n".lstrip())

    def flush(self) -> None:
        """Write the buffered lines in one call, then flush the stream."""
        if self._lines:
            self._stream.write("".join(self._lines))
            self._lines.clear()
        self._stream.flush()

    def _stamp(self, filetime: int | None) -> str:
        """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the seconds part cached: most lines share it)."""
        if not filetime:
            return ""
        seconds, rest = divmod(filetime, FILETIME_PER_SECOND)
        if seconds != self._second:
            self._second = seconds
            utc = time.gmtime(unix_from_filetime(seconds * FILETIME_PER_SECOND))
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", utc)
        return f"{self._second_text}.{rest // 10_000:03d}Z"


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _filetime_iso(filetime: int) -> str | None:
    """A client's FILETIME as ISO 8601 UTC; None for one no calendar holds (a hostile or
    broken client can send any 64-bit value)."""
    try:
        return datetime_from_filetime(filetime).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError):
        return None


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text
