"""asyncio stream helpers shared by the generators."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
#: How long one exchange may take, connecting included.
REQUEST_TIMEOUT = 10.0


def split_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:1688`` or ``[::1]:1688`` (or a URL) to (host, port)."""
    if "://" in text:
        parts = urlsplit(text)
        return parts.hostname or "127.0.0.1", parts.port or 80
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def http_request(request_line: str, host: str, body: bytes = b"", extra: str = "") -> bytes:
    """An HTTP/1.1 request with a JSON body (``extra``: more header lines, CRLF-ended)."""
    return (
        f"{request_line}\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def read_http(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, head, body


async def read_to_eof(reader: asyncio.StreamReader, limit: float) -> tuple[str, bytes, float]:
    """Read until the peer closes: ('eof'|'reset'|'open', bytes read, seconds waited)."""
    start = time.monotonic()
    data = bytearray()
    try:
        async with asyncio.timeout(limit):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return "eof", bytes(data), time.monotonic() - start
                data += chunk
    except TimeoutError:
        return "open", bytes(data), time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return "reset", bytes(data), time.monotonic() - start


def close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


def error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by the lab"
    if isinstance(exc, OSError):
        return f"os error {exc.errno}"
    return type(exc).__name__


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def one_shot(
    rec: Any,
    kind: str,
    due: float,
    address: tuple[str, int],
    talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[T]],
) -> T | None:
    """A connection of its own for one exchange (``talk``), closed after it; None when it
    failed (recorded as an error of ``kind``)."""
    writer = None
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(*address)
            return await talk(reader, writer)
    except Exception as exc:
        rec.error(kind, due, error_name(exc), repr(exc))
        return None
    finally:
        close_writer(writer)


class KeptAlive:
    """One kept-alive connection of a pool: opened when needed, renewed when the peer closed
    it or it idled longer than ``idle`` s, dropped after an error. ``calls`` counts the
    exchanges on the current connection."""

    def __init__(
        self,
        rec: Any,
        label: str,
        idle: float,
        connect: Callable[[], Awaitable[Streams]],
    ) -> None:
        self.rec = rec
        self.label = label
        self.idle = idle
        self.connect = connect
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last = 0.0
        self.calls = 0

    async def streams(self) -> Streams:
        stale = self.reader is not None and (
            self.reader.at_eof() or time.monotonic() - self.last > self.idle
        )
        if stale:
            self.rec.counters[f"{self.label} keep-alive connections renewed"] += 1
            self.drop()
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await self.connect()
            self.rec.counters[f"{self.label} keep-alive connections opened"] += 1
            self.calls = 0
        self.calls += 1
        return self.reader, self.writer

    def drop(self) -> None:
        close_writer(self.writer)
        self.reader = self.writer = None

    async def serve(
        self,
        queue: asyncio.Queue[float | None],
        kind: str,
        talk: Callable[[KeptAlive], Awaitable[T]],
        judge: Callable[[float, T], None],
    ) -> None:
        """For every due time from ``queue`` (None: stop), ``talk`` on this connection and
        ``judge`` the outcome; an exchange that fails is an error of ``kind``."""
        while (due := await queue.get()) is not None:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    outcome = await talk(self)
            except Exception as exc:
                self.rec.error(kind, due, error_name(exc), repr(exc))
                self.drop()
                continue
            self.last = time.monotonic()
            judge(due, outcome)
        self.drop()
