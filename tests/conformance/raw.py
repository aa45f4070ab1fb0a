"""Raw-socket helpers shared by the conformance tests (no kmsemu code)."""

from __future__ import annotations

import socket
import struct


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU: the 16-byte header, then the rest of ``frag_length``."""
    data = b""
    while len(data) < 16 or len(data) < struct.unpack_from("<H", data, 8)[0]:
        want = 16 if len(data) < 16 else struct.unpack_from("<H", data, 8)[0]
        chunk = sock.recv(want - len(data))
        if not chunk:
            raise EOFError("host closed the connection")
        data += chunk
    return data
