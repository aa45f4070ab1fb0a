"""Raw HTTP for the service tests: one request on a fresh connection, or exact bytes."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from email.message import Message
from typing import Any

TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    headers: Message
    body: Any
    raw: bytes


def _reply(response: http.client.HTTPResponse) -> Reply:
    raw = response.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:  # not JSON (/metrics, a page): read ``raw``
        body = None
    return Reply(response.status, response.headers, body, raw)


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a fresh connection; ``body`` is JSON-encoded unless it is bytes."""
    sent = {"Accept": "application/json", **(headers or {})}
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=sent)
        return _reply(conn.getresponse())
    finally:
        conn.close()


def exchange(address: tuple[str, int], head: bytes, *pieces: bytes) -> Reply:
    """Send exactly these bytes on a socket and read one HTTP response."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(head)
        for piece in pieces:
            sock.sendall(piece)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        return _reply(response)
