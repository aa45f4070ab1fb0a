"""The KMS host's asyncio TCP server: the only host module that touches sockets.

One ``asyncio.Protocol`` per connection feeds a pure ``LeanConnection`` (the
general ``ServerConnection`` with a fast path for whole BINDs and REQUESTs)
and hands complete calls to ``KmsHost``. Batches of count-cache changes and
request-log rows go to the store every ``flush_interval`` seconds and at
shutdown, so no request waits for a transaction; with a journal, the
requests a received chunk has answered are appended to it in one write
before their responses leave (``kmsemu.host.journal``), so an answer
survives a killed process. A sweeper closes connections
idle longer than ``idle_timeout``; connections over ``max_connections`` are
closed on arrival. Every failure is confined to its own connection.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import math
import random
import socket
import time
from collections.abc import Callable
from typing import Any, Final, cast

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog
from kmsemu.clock import Clock, as_datetime
from kmsemu.host.events import EventLog
from kmsemu.host.journal import Journal
from kmsemu.host.journal import record as journal_record
from kmsemu.host.options import ServerOptions
from kmsemu.host.publish import Publication, Publisher
from kmsemu.host.rules import HostRules, HostSettings
from kmsemu.host.service import KmsHost
from kmsemu.host.store import HostStore, LoggedRequest
from kmsemu.klp.envelope import Keyring, NoncePool
from kmsemu.rpc.connection import NEED_DATA, Call, Closed, Event, Send
from kmsemu.rpc.lean import LeanConnection
from kmsemu.rpc.ndr import NdrError
from kmsemu.rpc.pdu import NcaStatus
from kmsemu.wire import filetime_from_unix

RETRY_PUBLISH: Final = 60.0


class KmsServer:
    """Serves one ``KmsHost`` on any number of listening sockets."""

    def __init__(
        self,
        host: KmsHost,
        store: HostStore | None,
        log: EventLog,
        options: ServerOptions | None = None,
        *,
        now: Callable[[], int],
        journal: Journal | None = None,
    ) -> None:
        self.host = host
        self.store = store
        #: Where answered requests go before their answers (None: answers go at once).
        self.journal = journal
        self.log = log
        self.options = options or ServerOptions()
        #: The host's clock as a FILETIME (what log lines are stamped with).
        self.now = now
        self._servers: list[asyncio.Server] = []
        self.connections: set[_KmsProtocol] = set()
        #: ``requests`` rows of answered requests the store has not got yet.
        self._pending: list[tuple[Any, ...]] = []
        #: Journal records of answered requests whose answers wait for them (this turn's).
        self._unjournaled: list[bytes] = []
        #: Connections holding answers until the journal has this turn's records.
        self._held: list[_KmsProtocol] = []
        self._seq = store.journal_seq() if journal is not None and store is not None else 0
        self._assoc = itertools.count(random.SystemRandom().randrange(0x10000, 0x7FFF0000))
        self._tasks: list[asyncio.Task[None]] = []
        self.addresses: list[tuple[str, int]] = []
        self.tick = 0
        #: Called with every answered request and the seconds it took (the lab's dashboard
        #: and metrics); with none, requests are not timed.
        self.observers: list[Callable[[LoggedRequest, float], None]] = []
        #: What each accepted connection speaks through (the differential test gives the
        #: general machine alone, to compare).
        self.connection: Callable[..., LeanConnection] = LeanConnection

    async def start(self, listen: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on every ``(host, port)``; port 0 binds one free port shared by all."""
        loop = asyncio.get_running_loop()
        shared_port: int | None = None
        for host, port in listen:
            if port == 0 and shared_port is not None:
                port = shared_port
            # The protocol learns its listening port from here, not from a getsockname()
            # per connection; the cell is filled in before the loop accepts anything.
            cell = [port]
            try:
                server = await loop.create_server(
                    lambda cell=cell: _KmsProtocol(self, cell[0]),  # type: ignore[misc]
                    host,
                    port,
                    backlog=1024,
                    reuse_address=True,
                )
            except OSError as exc:
                if host == "::" and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    self.log.event("listen-skipped", None, {"address": "[::]", "reason": "no IPv6"})
                    continue
                raise
            self._servers.append(server)
            for sock in server.sockets:
                bound = sock.getsockname()
                self.addresses.append((bound[0], bound[1]))
                shared_port = cell[0] = bound[1]
        self._tasks.append(asyncio.create_task(self._flush_loop()))
        self._tasks.append(asyncio.create_task(self._sweep_loop()))
        return self.addresses

    def start_publishing(
        self, publisher: Publisher, publications: list[Publication], interval: float
    ) -> None:
        """Publish in DNS now and every ``interval`` seconds (events 12294 / 12293)."""
        self._tasks.append(
            asyncio.create_task(self._publish_loop(publisher, publications, interval))
        )

    async def _publish_loop(
        self, publisher: Publisher, publications: list[Publication], interval: float
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            failed = False
            for publication in publications:
                hresult, why = await loop.run_in_executor(None, publisher.publish, publication)
                failed = failed or bool(hresult)
                if hresult:
                    self.log.event(
                        "12293",
                        self.now(),
                        {
                            "message": f"Publishing the Key Management Service (KMS) to DNS in "
                            f"the '{publication.zone}' domain failed.",
                            "hresult": f"0x{hresult:08X}",
                            "reason": why,
                        },
                    )
                else:
                    self.log.event(
                        "12294",
                        self.now(),
                        {
                            "message": f"Publishing the KMS to DNS in the '{publication.zone}' "
                            "domain succeeded.",
                            "srv": f"{publication.priority} {publication.weight} {publisher.port} "
                            f"{publisher.host_name}.{publication.zone}.",
                        },
                    )
            self.log.flush()
            # a failure is retried within a minute (the DNS server may start after the host)
            await asyncio.sleep(min(interval, RETRY_PUBLISH) if failed else interval)

    async def close(self) -> None:
        """Stop listening, send the answers held, drop every connection and task, then
        flush what is left (the journal goes once the store holds everything)."""
        for server in self._servers:
            server.close()
        self.commit()
        for conn in list(self.connections):
            conn.transport_close()
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        self.flush()
        if self.journal is not None:
            self.journal.close(remove=True)

    def record(self, logged: LoggedRequest, started: float = 0.0) -> None:
        """Log an answered request and queue it for the store (and the journal, if any);
        observers get its time taken."""
        row = logged.row()
        self._pending.append(row)
        if self.journal is not None:
            self._seq += 1
            q = logged.record.request
            previous = q.previous_client_machine_id if q is not None else None
            self._unjournaled.append(journal_record(self._seq, row, previous))
        self.log.activation(logged.record, logged.peer, logged.reason)
        if self.observers:
            elapsed = time.perf_counter() - started
            for observer in self.observers:
                observer(logged, elapsed)

    def hold(self, conn: _KmsProtocol) -> None:
        """Keep ``conn``'s output until the answered requests are in the journal (``commit``
        at the end of the chunk being handled)."""
        self._held.append(conn)

    def commit(self) -> None:
        """Append the answered requests not yet journaled to the journal in one write, then
        release the answers held; when the journal cannot take them, those connections are
        dropped unanswered (the rows stay queued for the store)."""
        held, self._held = self._held, []
        records, self._unjournaled = self._unjournaled, []
        if not held and not records:
            return
        try:
            if records and self.journal is not None:
                self.journal.append(b"".join(records))
        except OSError as exc:
            self.log.event("journal-failed", self.now(), {"error": str(exc)})
            for conn in held:
                conn.drop_held()
            return
        for conn in held:
            conn.release_held()

    def flush(self) -> None:
        """Persist what changed since the last flush, then flush the log stream; the
        journal is emptied once the store holds all it had."""
        if self.store is not None:
            cache = self.host.rules.cache
            snapshot = cache.take_snapshot()
            if snapshot or self._pending:
                pending, self._pending = self._pending, []
                seq = self._seq if self.journal is not None else None
                try:
                    self.store.save_rows(snapshot, pending, seq)
                except Exception:  # keep it all for the next attempt
                    cache.dirty.update(snapshot)
                    self._pending[:0] = pending
                    raise
            if self.journal is not None and not self._unjournaled:
                self.journal.empty()
        else:
            self._pending.clear()
        self.log.flush()

    def next_assoc_group(self) -> int:
        """A new association group id for a connection's BIND_ACK (32-bit, never 0)."""
        return next(self._assoc) & 0xFFFFFFFF or 1

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval)
            try:
                self.flush()
            except Exception as exc:  # a full disk must not stop activations
                self.log.event("flush-failed", self.now(), {"error": repr(exc)})

    async def _sweep_loop(self) -> None:
        """Advance ``tick`` and close connections silent for more than the idle timeout.

        Connections note the tick of their last data (cheaper than reading a
        clock on every read), so one closes between 1 and 1.25 timeouts idle.
        """
        timeout = self.options.idle_timeout
        interval = min(timeout / 4, 1.0)
        ticks = math.ceil(timeout / interval)
        while True:
            await asyncio.sleep(interval)
            self.tick += 1
            deadline = self.tick - ticks
            for conn in [c for c in self.connections if c.last_tick < deadline]:
                conn.close_with("idle timeout")


class _KmsProtocol(asyncio.Protocol):
    __slots__ = (
        "_close_after",
        "_conn",
        "_held",
        "_host",
        "_peer",
        "_port",
        "_server",
        "_transport",
        "last_tick",
    )

    def __init__(self, server: KmsServer, port: int) -> None:
        self._server = server
        self._port = port
        self._host = server.host
        self._transport: asyncio.Transport | None = None
        self._conn: LeanConnection | None = None
        self._peer: Any = None
        self.last_tick = server.tick
        #: Output waiting for the journal (None: nothing held, write at once).
        self._held: list[bytes] | None = None
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        self._peer = transport.get_extra_info("peername")
        if len(server.connections) >= server.options.max_connections:
            server.log.event(
                "connection-refused",
                server.now(),
                {"peer": self.peer, "reason": "max connections"},
            )
            self._transport.abort()
            return
        server.connections.add(self)
        self._conn = server.connection(port=self._port, assoc_group_id=server.next_assoc_group())

    @property
    def peer(self) -> str:
        peer = self._peer
        return format_address(peer[0], peer[1]) if peer else "?"

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        self.last_tick = self._server.tick
        event = conn.take(data)  # the common exchange: one whole BIND or REQUEST
        if event is None:
            conn.receive_data(data)
            self._pump(conn)
        elif type(event) is Call:
            self._answered(self._answer(conn, event))
        else:
            self._act(conn, event)
        if self._held is not None:  # this chunk's answers: into the journal, then out
            self._server.commit()

    def eof_received(self) -> bool:
        conn = self._conn
        if conn is not None and conn.buffering:  # let the machine judge a truncated PDU
            conn.receive_data(b"")
            self._pump(conn)
        if self._held is not None:  # half-closed: the answers held still go out
            self._close_after = True
            self._server.commit()
            return True
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._conn = None

    def transport_close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def close_with(self, reason: str) -> None:
        self._server.log.event(
            "connection-closed", self._server.now(), {"peer": self.peer, "reason": reason}
        )
        if self._transport is not None:
            self._transport.abort()

    def _pump(self, conn: LeanConnection) -> None:
        while True:
            event = conn.next_event()
            if event is NEED_DATA or not self._act(conn, event):
                return

    def _act(self, conn: LeanConnection, event: Event) -> bool:
        """Send what ``event`` asks for; False once the connection is closed."""
        if isinstance(event, Call):
            self._answered(self._answer(conn, event))
        elif isinstance(event, Send):
            self._write(event.data)
            if event.refusal:
                self._log_refusal(event.refusal)
        elif isinstance(event, Closed):
            if event.data:
                self._write(event.data)
            if event.error:
                self._server.log.event(
                    "connection-closed",
                    self._server.now(),
                    {"peer": self.peer, "reason": event.reason},
                )
            if self._held is not None:
                self._close_after = True
            elif self._transport is not None:
                self._transport.close()
            return False
        return True

    def _answered(self, response: bytes) -> None:
        """An answer to a request the server has recorded: held for the journal, if any."""
        if self._held is None and self._server.journal is not None:
            self._held = []
            self._server.hold(self)
        self._write(response)

    def _write(self, data: bytes) -> None:
        held = self._held
        if held is not None:  # behind an answer that waits: keep the order
            held.append(data)
        elif self._transport is not None:
            self._transport.write(data)

    def release_held(self) -> None:
        """The journal has this connection's answers: send them (and close, if due)."""
        held, self._held = self._held, None
        transport = self._transport
        if held is None or transport is None or self._conn is None or transport.is_closing():
            return  # the connection went meanwhile
        transport.write(held[0] if len(held) == 1 else b"".join(held))
        if self._close_after:
            transport.close()

    def drop_held(self) -> None:
        """The journal refused this connection's answers: none of them may go."""
        self._held = None
        if self._transport is not None:
            self._transport.abort()

    def _answer(self, conn: LeanConnection, call: Call) -> bytes:
        server = self._server
        started = time.perf_counter() if server.observers else 0.0
        try:
            outcome = self._host.handle(call.stub)
        except NdrError as exc:
            self._log_refusal(f"nca_s_fault_ndr: {exc}")
            return conn.fault(call, NcaStatus.NCA_S_FAULT_NDR)
        server.record(LoggedRequest(outcome.log, self.peer, outcome.reason), started)
        return conn.respond(call, outcome.stub)

    def _log_refusal(self, reason: str) -> None:
        self._server.log.event("refused", self._server.now(), {"peer": self.peer, "reason": reason})


# -- composition --------------------------------------------------------------------


def build_host(
    store: HostStore, catalog: Catalog, settings: HostSettings, secrets: list[str], clock: Clock
) -> KmsHost:
    """A host over ``store``'s identity and count cache, answering on ``clock``."""
    identity = store.identity(random.SystemRandom(), as_datetime(clock.now()))
    rules = HostRules(catalog, settings, identity, store.load_cache())
    return KmsHost(
        rules, Keyring(secrets), lambda: filetime_from_unix(clock.now()), nonce=NoncePool()
    )


def product_names(catalog: Catalog) -> dict[bytes, str]:
    """The event log's product names: catalog key by SKU id (``bytes_le``)."""
    return {p.sku_id.bytes_le: p.key for p in catalog}


def ipv6_available() -> bool:
    """Whether this machine can bind an IPv6 socket on ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
