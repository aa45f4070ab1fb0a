"""The lean path against the reference: same byte streams in, same bytes, events and state out.

``LeanConnection.take`` answers whole BINDs and whole REQUESTs without the general
machine; ``ServerConnection`` stays the reference. Hypothesis builds streams of PDUs
(the common exchange, and everything that must leave the lean path: fragments, object
UUIDs, ALTER_CONTEXT, a second BIND, unknown contexts and opnums, bad headers, garbage),
splits them at arbitrary points and feeds both. Then the same through the host's
protocol: the bytes written, the log lines, the stored rows and the count cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kmsemu.catalog import default_catalog
from kmsemu.host.events import EventLog
from kmsemu.host.journal import Journal
from kmsemu.host.journal import read as read_journal
from kmsemu.host.rules import CountCache, HostIdentity, HostRules, HostSettings
from kmsemu.host.server import KmsServer, _KmsProtocol, product_names
from kmsemu.host.service import KmsHost
from kmsemu.klp.envelope import Keyring, LabKey, seal_request
from kmsemu.rpc import lean
from kmsemu.rpc.connection import NEED_DATA, Call, ServerConnection
from kmsemu.rpc.lean import LeanConnection
from tests.test_connection import (
    BIND,
    FIRST,
    FIRST_LAST,
    KLP,
    LAST,
    NDR20,
    OTHER_IFACE,
    alter_pdu,
    bind_pdu,
    ctx_item,
    header,
    klp_ctx,
    request_pdu,
    syntax,
)

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
PORT = 1688
ASSOC = 0x00012345
#: A host's answer to every Call, so that responses can be compared as bytes.
ANSWER = b"\x01\x02\x03\x04" * 9


class Reference(ServerConnection):
    """The general machine alone: it never takes a shortcut."""

    __slots__ = ()

    def take(self, data: bytes) -> None:
        return None


def state_of(conn: ServerConnection) -> dict[str, Any]:
    return {
        "state": conn.state,
        "contexts": set(conn.contexts),
        "recv_limit": conn.recv_limit,
        "xmit_limit": conn.xmit_limit,
        "buffering": conn.buffering,
        "assoc": conn._assoc_group_id,
    }


def run(conn: ServerConnection, chunks: list[bytes], eof: bool) -> list[Any]:
    """Feed chunks the way the host's protocol does: ``take`` first, the general path if it
    declines. What came out: events (a Call as the RESPONSE bytes it gets), then state."""
    out: list[Any] = []

    def note(event: Any) -> bool:
        if isinstance(event, Call):
            out.append(("call", event, conn.respond(event, ANSWER)))
        else:
            out.append(event)
        return type(event).__name__ != "Closed"

    def pump() -> None:
        for _ in range(10_000):  # bounded: every event consumes input or closes
            event = conn.next_event()
            if event is NEED_DATA or not note(event):
                return
        raise AssertionError("the machine never asked for more data")

    for chunk in [*chunks, *([b""] if eof else [])]:
        taken = conn.take(chunk) if chunk else None  # type: ignore[attr-defined]
        if taken is None:
            conn.receive_data(chunk)
            pump()
        else:
            assert conn.next_event() is NEED_DATA, "take left an event behind"
            note(taken)
        out.append(("state", state_of(conn)))
    return out


def split_pdus(data: bytes) -> list[bytes]:
    """``data`` cut where its PDUs end by their frag_length (the rest as one chunk)."""
    chunks, at = [], 0
    while len(data) - at >= 16:
        length = struct.unpack_from("<H", data, at + 8)[0]
        if length < 16 or at + length > len(data):
            break
        chunks.append(data[at : at + length])
        at += length
    return chunks + ([data[at:]] if at < len(data) else [])


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- streams ---------------------------------------------------------------------------

stubs = st.one_of(st.binary(max_size=64), st.binary(min_size=41, max_size=80))
call_ids = st.integers(0, 5)
requests = st.builds(
    lambda stub, call_id, ctx, opnum, flags, minor: request_pdu(
        stub, call_id=call_id, ctx=ctx, opnum=opnum, flags=flags, minor=minor
    ),
    stubs,
    call_ids,
    st.sampled_from([0, 0, 0, 1, 7]),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([FIRST_LAST, FIRST_LAST, FIRST, LAST, 0, FIRST_LAST | 0x20]),
    st.sampled_from([0, 0, 1, 2]),
)
with_uuid = st.builds(lambda stub: request_pdu(stub, object_uuid=uuid.UUID(int=7)), stubs)
with_auth = st.builds(lambda stub: request_pdu(stub, auth_value=b"\x00" * 8), stubs)
binds = st.builds(
    lambda items, call_id, xmit, recv, assoc, minor: bind_pdu(
        *items, call_id=call_id, max_xmit=xmit, max_recv=recv, assoc=assoc, minor=minor
    ),
    st.lists(
        st.sampled_from(
            [
                klp_ctx(0),
                klp_ctx(1),
                ctx_item(0, syntax(OTHER_IFACE, 1), NDR20),
                ctx_item(2, KLP, syntax(OTHER_IFACE, 2)),
            ]
        ),
        max_size=3,
    ),
    call_ids,
    st.sampled_from([5840, 5840, 1000, 65535]),
    st.sampled_from([5840, 5840, 1432, 100]),
    st.sampled_from([0, 0, 0x7777]),
    st.sampled_from([0, 0, 1, 3]),
)
alters = st.builds(lambda: alter_pdu(klp_ctx(1)))
#: over a small negotiated frame limit, or the largest one
large = st.builds(lambda n: request_pdu(bytes(n)), st.sampled_from([1500, 2000, 5817, 5900]))
#: a FIRST fragment, then a whole call with the same id while it is in progress
interleaved = st.builds(
    lambda call_id: (
        request_pdu(b"a", call_id=call_id, flags=FIRST) + request_pdu(b"b", call_id=call_id)
    ),
    call_ids,
)
bad_headers = st.sampled_from(
    [
        header(0, FIRST_LAST, 8, 1),  # frag_length under 16
        header(BIND, FIRST_LAST, 20, 1),  # a BIND shorter than its fixed part
        header(0, FIRST_LAST, 24, 1, vers=4) + bytes(8),
        header(0, FIRST_LAST, 24, 1, drep=b"\x00\x00\x00\x00") + bytes(8),
        header(0, FIRST_LAST, 24, 1, auth_length=20) + bytes(8),
        header(0, FIRST_LAST, 60000, 1),  # over the frame limit
        header(99, FIRST_LAST, 16, 1),
    ]
)
garbage = st.binary(min_size=1, max_size=40)
pdus = st.one_of(
    requests,
    requests,
    requests,
    binds,
    with_uuid,
    with_auth,
    alters,
    large,
    interleaved,
    bad_headers,
    garbage,
)
streams = st.tuples(st.one_of(binds, st.just(bind_pdu())), st.lists(pdus, max_size=8)).map(
    lambda t: [t[0], *t[1]]
)


@SETTINGS
@given(
    streams,
    st.lists(st.integers(0, 2000), max_size=10),
    st.sampled_from([True, True, False]),
    st.booleans(),
    st.sampled_from([64 * 1024, 64 * 1024, 40]),
)
@example([bind_pdu(), request_pdu(bytes(41))], [], True, False, 40)  # over the stub limit
@example([bind_pdu(max_xmit=1432), request_pdu(bytes(1500))], [], True, False, 64 * 1024)
def test_lean_connection_equals_the_general_machine(
    stream: list[bytes], cuts: list[int], whole: bool, eof: bool, max_stub: int
) -> None:
    # whole: every PDU its own chunk (the lean path's case); else cut anywhere
    data = b"".join(stream)
    chunks = split_pdus(data) if whole else splits(data, cuts)
    # max_stub 40: a whole call can be over the stub limit too
    reference = run(Reference(port=PORT, assoc_group_id=ASSOC, max_stub=max_stub), chunks, eof)
    fast = run(LeanConnection(port=PORT, assoc_group_id=ASSOC, max_stub=max_stub), chunks, eof)
    assert fast == reference


def test_the_common_exchange_takes_the_lean_path() -> None:
    """A whole BIND, then whole REQUESTs: every one is taken, none reaches the general path
    (the BIND's template is learnt by the first connection and reused by the second)."""
    lean._ACKS.clear()
    for _ in range(2):
        conn = LeanConnection(port=PORT, assoc_group_id=ASSOC)
        ack = conn.take(bind_pdu(call_id=9))
        assert ack is not None and ack.data[12:16] == struct.pack("<I", 9)
        assert ack.data[20:24] == struct.pack("<I", ASSOC)
        for call_id in (2, 3):
            call = conn.take(request_pdu(b"stub", call_id=call_id))
            assert call == Call(call_id, 0, 0, b"stub")
    assert len(lean._ACKS) == 1


# -- the host's protocol, lean and general -----------------------------------------------

CATALOG = default_catalog()
SECRET = "kmsemu-lab"
KEY = LabKey.derive(SECRET)
NOW = 133_000_000_000_000_000
PRODUCT = CATALOG.find("windows-server-2022-standard")
IDENTITY = HostIdentity(b"HOSTID!!", "06401-00206-123-456789-03-1033-9600.0000-0012026")


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 50000)


class Store:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def save_rows(self, snapshot: Any, rows: Any, journal_seq: int | None = None) -> None:
        self.rows += list(rows)

    def journal_seq(self) -> int:
        return 0

    def not_waiting(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def activation(cmid: int, when: int, name: str) -> bytes:
    """A REQUEST stub's envelope plaintext, sealed with a nonce from ``cmid``."""
    from kmsemu.klp.messages import ActivationRequest
    from kmsemu.rpc.ndr import encode_request_stub

    text = ActivationRequest(
        application_id=PRODUCT.application_id,
        sku_id=PRODUCT.sku_id,
        kms_count_id=PRODUCT.kms_count_id,
        client_machine_id=uuid.UUID(int=cmid + 1),
        request_time=when,
        required_client_count=PRODUCT.threshold,
        workstation_name=name,
    ).to_bytes()
    return encode_request_stub(seal_request(KEY, text, cmid.to_bytes(12, "little")))


def serve(connection: type[ServerConnection], streams: list[list[bytes]]) -> dict[str, Any]:
    """Every stream on its own connection, in turn, on a host with a journal (each answer
    written once the journal has its request); what the host wrote, logged, journaled and kept."""
    return asyncio.run(_serve(connection, streams))


async def _serve(connection: type[ServerConnection], streams: list[list[bytes]]) -> dict[str, Any]:
    stream_log = io.StringIO()
    rules = HostRules(CATALOG, HostSettings(), IDENTITY, CountCache())
    nonces = iter(range(1, 10**6))
    host = KmsHost(rules, Keyring([SECRET]), lambda: NOW, nonce=lambda n: next(nonces).to_bytes(n))
    store = Store()
    log = EventLog(stream_log, "text", product_names(CATALOG))
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "host.sqlite3.answered")
        server = KmsServer(host, store, log, now=lambda: NOW, journal=journal)  # type: ignore[arg-type]
        server.connection = connection  # type: ignore[assignment]
        server._assoc = iter(range(100, 10**6))  # type: ignore[assignment]
        written = []
        for chunks in streams:
            protocol = _KmsProtocol(server, PORT)
            transport = Transport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            for chunk in chunks:
                protocol.data_received(chunk)
            protocol.eof_received()
            protocol.connection_lost(None)
            written.append((transport.written, transport.closed))
        journaled = list(read_journal(journal.path))
        server.flush()
        journal.close(remove=True)
    return {
        "written": written,
        "log": stream_log.getvalue(),
        "rows": store.rows,
        "journal": journaled,
        "cache": rules.cache.entries,
        "capacity": rules.cache.capacity,
    }


host_pdus = st.one_of(
    st.builds(
        lambda cmid, skew, name, call_id: request_pdu(
            activation(cmid, NOW + skew, name), call_id=call_id
        ),
        st.integers(0, 6),
        st.sampled_from([0, 0, 10**10, 10**12]),
        st.sampled_from(["ws", "PC-1", "naïve é", ""]),
        call_ids,
    ),
    st.builds(lambda: request_pdu(b"\x00" * 12)),  # an NDR fault
    st.builds(lambda stub: request_pdu(stub), stubs),  # an envelope that does not open
    st.builds(lambda: request_pdu(activation(1, NOW, "x"), opnum=1)),
    binds,
    garbage,
)
host_streams = st.lists(
    st.tuples(st.just(bind_pdu()), st.lists(host_pdus, max_size=4)).map(lambda t: [t[0], *t[1]]),
    min_size=1,
    max_size=4,
)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(host_streams, st.lists(st.integers(0, 3000), max_size=6), st.booleans())
def test_the_host_answers_alike_on_either_path(
    streams_: list[list[bytes]], cuts: list[int], whole: bool
) -> None:
    chunked = [s if whole else splits(b"".join(s), cuts) for s in streams_]
    reference = serve(Reference, chunked)
    fast = serve(LeanConnection, chunked)
    assert fast == reference
