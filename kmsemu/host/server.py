"""The KMS host's asyncio TCP server: the only host module that touches sockets.

One ``asyncio.Protocol`` per connection feeds a pure ``LeanConnection`` (the
general ``ServerConnection`` with a fast path for whole BINDs and REQUESTs)
and hands complete calls to ``KmsHost``. Batches of count-cache changes and
request-log rows go to the store every ``flush_interval`` seconds and at
shutdown, so no request waits for a transaction; with a journal, each
answered request is copied into it before its response leaves
(``kmsemu.host.journal``), so an answer survives a killed process. A sweeper
closes connections idle longer than ``idle_timeout``; a connection arriving when ``max_connections``
are open closes the oldest one (a KMS client holds its connection for one
exchange, so the oldest is the idle or slow peer that would keep real clients
out). Every failure is confined to its own connection.

Faults (``kmsemu.host.faults``) live in a file beside the database; a timer
looks at its ``os.stat`` every ``FAULT_POLL`` seconds and reloads it when it
changed. While none is in force, connections are plain ``_KmsProtocol``s (the
one test is at accept); otherwise they are ``_FaultyProtocol``s, which look
for a fault at accept, after the BIND and at each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import math
import os
import random
import socket
import sqlite3
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any, Final, cast

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog
from kmsemu.clock import Clock, as_datetime, filetime_reader
from kmsemu.errors import KmsemuError
from kmsemu.host.events import EventLog
from kmsemu.host.faults import (
    GARBAGE,
    GARBAGE_BYTES,
    RESET,
    SLOW,
    STALL,
    Fault,
    FaultSet,
    FaultStore,
    Phase,
    forced_answer,
)
from kmsemu.host.journal import Journal
from kmsemu.host.options import ServerOptions
from kmsemu.host.overrides import Overrides, OverridesStore
from kmsemu.host.publish import Publication, Publisher
from kmsemu.host.rules import HostRules, HostSettings
from kmsemu.host.service import KmsHost
from kmsemu.host.store import HostStore, LoggedRequest
from kmsemu.klp.envelope import EnvelopeError, Keyring, NoncePool, Opened, seal_response
from kmsemu.klp.messages import MessageError, RequestFields, parse_request
from kmsemu.rpc.connection import NEED_DATA, Call, Closed, Event, Send
from kmsemu.rpc.lean import LeanConnection
from kmsemu.rpc.ndr import NdrError, decode_request_stub, encode_response_stub
from kmsemu.rpc.pdu import NcaStatus, PType
from kmsemu.wire import guid_text, unix_from_filetime

RETRY_PUBLISH: Final = 60.0
#: Seconds between two looks at the faults file.
FAULT_POLL: Final = 0.25
#: Request-log rows kept in memory while the store refuses them (a full disk, a locked
#: file); past it the host takes no new requests until the store takes them again (with
#: durable answers every one answered is in the journal too, so a restart loses none).
MAX_PENDING_ROWS: Final = 50_000
#: While the store keeps failing, one ``flush-failed`` line per this many seconds.
FLUSH_FAILED_EVERY: Final = 60.0
_BIND_ACK: Final = int(PType.BIND_ACK)
#: ``struct linger`` on: 0 seconds (a close then resets the connection).
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)
#: tuple.__new__: a NamedTuple's own constructor runs its generated Python ``__new__``.
_tuple_new: Final = tuple.__new__


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
        faults: FaultStore | None = None,
        overrides: OverridesStore | None = None,
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
        #: Open connections, oldest first (a dict: insertion order, O(1) eviction).
        self.connections: dict[_KmsProtocol, None] = {}
        #: ``requests`` rows of answered requests the store has not got yet.
        self._pending: list[tuple[Any, ...]] = []
        #: Why the store refused the last flush ("" : it took it), since when (monotonic),
        #: and flushes refused since the start (``/readyz``, ``/metrics``).
        self.store_failure = ""
        self._failing_since = 0.0
        self._failure_logged = 0.0
        self.store_failures = 0
        #: True while the rows kept for a failing store reach ``MAX_PENDING_ROWS``: new
        #: connections and requests are refused, nothing more is answered.
        self.backlogged = False
        self._bug_logged = False
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
        #: The faults file (None: no faults, ever).
        self.fault_store = faults
        #: Settings changed while it runs (slmgr /sai, /sri, /cdns, /sdns; None: never).
        self.overrides = overrides
        #: Whether the publishing loop publishes (slmgr /cdns stops it, /sdns resumes it);
        #: the event wakes the loop when it changes.
        self.dns_publish = True
        self._publish_turn = asyncio.Event()
        #: Called with the settings file's content whenever a running host takes it (the
        #: lab publishes into its own zone through this).
        self.settings_observers: list[Callable[[Overrides], None]] = []
        #: The faults in force (None: none, and connections are plain).
        self.faults: FaultSet | None = None
        #: Faults fired since the start, by kind.
        self.fault_counts: dict[str, int] = {}

    async def start(self, listen: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on every ``(host, port)``; port 0 binds one free port shared by all."""
        loop = asyncio.get_running_loop()
        shared_port: int | None = None
        if self.fault_store is not None:  # a restart obeys the faults from the first accept
            self.reload_faults()
        for host, port in listen:
            if port == 0 and shared_port is not None:
                port = shared_port
            # The protocol learns its listening port from here, not from a getsockname()
            # per connection; the cell is filled in before the loop accepts anything.
            cell = [port]
            try:
                server = await loop.create_server(
                    lambda cell=cell: (  # type: ignore[misc]
                        _KmsProtocol if self.faults is None else _FaultyProtocol
                    )(self, cell[0]),
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
        if self.overrides is not None:
            self.overrides.changed()  # the start took the file as it is now
        if self.fault_store is not None or self.overrides is not None:
            self._tasks.append(asyncio.create_task(self._watch_loop()))
        return self.addresses

    # -- faults -------------------------------------------------------------------------

    def host_time(self) -> float:
        """The host's clock in Unix seconds (what fault expiries are on)."""
        return unix_from_filetime(self.now())

    def reload_faults(self) -> None:
        """Read the faults file again (now, whether or not it changed); a file that
        cannot be read keeps the faults as they were and logs ``faults-invalid``."""
        store = self.fault_store
        if store is None:
            return
        store.changed()
        try:
            faults = store.load()
        except (OSError, KmsemuError) as exc:
            self.log.event("faults-invalid", self.now(), {"error": str(exc)})
            return
        self._set_faults(faults, announce=True)
        self._faults_taken()

    def _faults_taken(self) -> None:
        """Tell ``kmsemu host fault set`` which version of the file this host obeys (it
        waits for it, so that the next request after it returns meets the fault)."""
        if self.store is not None and self.fault_store is not None:
            self.store.set_meta(faults_seen=str(self.fault_store.seen_ns()))

    def _set_faults(self, faults: FaultSet, *, announce: bool = False) -> None:
        live = faults.live(self.host_time())
        before = self.faults
        self.faults = faults if live else None
        if announce and (live or before is not None):
            self.log.event(
                "faults", self.now(), {"count": len(live), "kinds": ",".join(f.kind for f in live)}
            )

    async def _watch_loop(self) -> None:
        """Every ``FAULT_POLL`` seconds, one look at each file other processes write: the
        faults (and the expiry of the last one in force), the settings."""
        faults, settings = self.fault_store, self.overrides
        while True:
            await asyncio.sleep(FAULT_POLL)
            if faults is not None:
                if faults.changed():
                    self.reload_faults()
                elif self.faults is not None and not self.faults.live(self.host_time()):
                    self._set_faults(self.faults, announce=True)  # the last one expired
            if settings is not None and settings.changed():
                self.reload_settings()

    def reload_settings(self) -> None:
        """Take the intervals of the settings file into the next responses (slmgr /sai and
        /sri on a running host); a file that cannot be read changes nothing and is logged."""
        if self.overrides is None:
            return
        try:
            overrides = self.overrides.load()
        except (OSError, KmsemuError) as exc:
            self.log.event("settings-invalid", self.now(), {"error": str(exc)})
            return
        rules = self.host.rules
        rules.settings = overrides.applied(rules.settings)
        if self.dns_publish != (overrides.dns_publish is not False):
            self.dns_publish = not self.dns_publish
            self._publish_turn.set()
        for observer in self.settings_observers:
            observer(overrides)
        if self.store is not None:  # kmsemu host status shows them
            self.store.set_meta(
                activation_interval=str(rules.settings.activation_interval),
                renewal_interval=str(rules.settings.renewal_interval),
            )
        self.log.event(
            "settings",
            self.now(),
            {
                "activation_interval": rules.settings.activation_interval,
                "renewal_interval": rules.settings.renewal_interval,
                "dns_publish": "on" if self.dns_publish else "off",
            },
        )

    def fire(
        self,
        phase: Phase,
        peer: str,
        sku_id: bytes | None = None,
        cmid: bytes | None = None,
    ) -> Fault | None:
        """The fault that fires for this event, spent (in the file, under its lock, when
        it has a count), logged and counted; None when none does."""
        faults = self.faults
        if faults is None:
            return None
        fault = faults.first_match(phase, self.host_time(), sku_id, cmid)
        if fault is None:
            return None
        if fault.remaining is not None:
            store = self.fault_store
            try:
                if store is not None:
                    after, fired = store.spend(fault.id)
                    store.changed()  # our own write: nothing to reload
                    self._faults_taken()  # (it holds every change written before it)
                else:
                    after, fired = faults.spend(fault.id)
            except (OSError, KmsemuError) as exc:
                self.log.event("faults-invalid", self.now(), {"error": str(exc)})
                return None
            self._set_faults(after)
            if fired is None:  # spent by another process meanwhile
                return None
            fault = fired
        self.fault_counts[fault.kind] = self.fault_counts.get(fault.kind, 0) + 1
        fields: dict[str, Any] = {"kind": fault.kind, "fault": fault.id, "peer": peer}
        if cmid is not None:
            fields["cmid"] = guid_text(cmid)
        if fault.product is not None:
            fields["product"] = fault.product
        if fault.remaining is not None:
            fields["remaining"] = fault.remaining
        self.log.event("fault", self.now(), fields)
        return fault

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
            if self.store is not None:  # kmsemu host status: publishing, or not (/cdns)
                zones = " ".join(p.zone for p in publications) if self.dns_publish else ""
                self.store.set_meta(dns_publish=zones)
            failed = False
            for publication in publications if self.dns_publish else ():
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
            # a failure is retried within a minute (the DNS server may start after the host);
            # /cdns or /sdns wakes the loop at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._publish_turn.wait(), min(interval, RETRY_PUBLISH) if failed else interval
                )
            self._publish_turn.clear()

    async def close(self) -> None:
        """Stop listening, drop every connection and task, then flush what is left (the
        journal goes once the store holds everything; a store that refuses it now is
        logged, and the journal stays for the next start to recover)."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.transport_close()
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        try:
            self.flush()
        except (sqlite3.Error, OSError) as exc:  # a full disk at the stop: said, and kept
            self._flush_failed(exc)  # (durable: the journal keeps every answered request
            if self.journal is not None:  # for the next start to recover)
                self.journal.close(remove=False)
            return
        if self.journal is not None:
            self.journal.close(remove=True)

    def record(self, logged: LoggedRequest, started: float = 0.0) -> bool:
        """Log an answered request, queue it for the store and, with a journal, copy it
        into the journal; False when the journal refused it (its answer may not go: the
        row stays queued, the host did count it). Observers get its time taken."""
        row = logged.row()
        self._pending.append(row)
        journaled = True
        record, peer, reason = logged
        if self.journal is not None:
            self._seq += 1
            q = record.request
            previous = q.previous_client_machine_id if q is not None else None
            try:
                self.journal.add(self._seq, row, previous)
            except OSError as exc:
                self.log.event("journal-failed", self.now(), {"error": str(exc)})
                journaled = False
        self.log.activation(record, peer, reason)
        if self.observers:
            elapsed = time.perf_counter() - started
            for observer in self.observers:
                observer(logged, elapsed)
        return journaled

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
                    with self.store.not_waiting():  # a lock held elsewhere: the next flush
                        self.store.save_rows(snapshot, pending, seq)
                except Exception:  # keep it all for the next attempt
                    cache.dirty.update(snapshot)
                    self._pending[:0] = pending
                    raise
            if self.journal is not None:
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
            except (sqlite3.Error, OSError) as exc:  # a full disk must not stop activations
                self._flush_failed(exc)
            except Exception as exc:  # a bug: its traceback once, then as a failing store
                if not self._bug_logged:
                    self._bug_logged = True
                    self.log.event(
                        "flush_internal_error", self.now(), {"traceback": traceback.format_exc()}
                    )
                self._flush_failed(exc)
            else:
                self._flush_succeeded()

    @property
    def pending_rows(self) -> int:
        """Request-log rows waiting for the store."""
        return len(self._pending)

    def _flush_failed(self, exc: BaseException) -> None:
        """The store refused the rows (they stay queued): log it once, then once a minute
        while it lasts, with how many rows wait; refuse new work past the bound."""
        now = time.monotonic()
        self.store_failures += 1
        if not self.store_failure:
            self._failing_since = now
        first = not self.store_failure
        self.store_failure = f"{type(exc).__name__}: {exc}"
        self.backlogged = len(self._pending) >= MAX_PENDING_ROWS
        if first or now - self._failure_logged >= FLUSH_FAILED_EVERY:
            self._failure_logged = now
            self.log.event(
                "flush-failed",
                self.now(),
                {
                    "error": self.store_failure,
                    "pending": len(self._pending),
                    "failures": self.store_failures,
                    "refusing": self.backlogged,
                },
            )
            self.log.flush()

    def _flush_succeeded(self) -> None:
        if self.store_failure:
            self.log.event(
                "flush-recovered",
                self.now(),
                {"after_seconds": round(time.monotonic() - self._failing_since, 3)},
            )
        self.store_failure = ""
        self.backlogged = False

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
        "_conn",
        "_host",
        "_peer",
        "_peer_text",
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
        self._peer_text: str | None = None
        self.last_tick = server.tick

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        self._peer = transport.get_extra_info("peername")
        if server.backlogged:  # the store refuses rows: take no more work (see MAX_PENDING_ROWS)
            server.log.event(
                "connection-refused", server.now(), {"peer": self.peer, "reason": "store backlog"}
            )
            self._transport.abort()
            return
        connections = server.connections
        if len(connections) >= server.options.max_connections:  # full: evict, not refuse
            oldest = next(iter(connections))
            del connections[oldest]
            oldest.close_with("max connections: the oldest connection makes way")
        connections[self] = None
        self._conn = server.connection(port=self._port, assoc_group_id=server.next_assoc_group())

    @property
    def peer(self) -> str:
        """``ADDR:PORT`` of the client (made once: every log line and row names it)."""
        text = self._peer_text
        if text is None:
            peer = self._peer
            text = self._peer_text = format_address(peer[0], peer[1]) if peer else "?"
        return text

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
            self._write(self._answer(conn, event))
        else:
            self._act(conn, event)

    def eof_received(self) -> bool:
        conn = self._conn
        if conn is not None and conn.buffering:  # let the machine judge a truncated PDU
            conn.receive_data(b"")
            self._pump(conn)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.pop(self, None)
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
            self._write(self._answer(conn, event))
            return self._conn is not None  # not dropped for a journal that refused it
        if isinstance(event, Send):
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
            if self._transport is not None:
                self._transport.close()
            return False
        return True

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None:
            self._transport.write(data)

    def _recorded(self, logged: LoggedRequest, started: float = 0.0) -> bool:
        """Record an answered request; False when the journal refused it: its answer may
        not go, and the connection ends."""
        if self._server.record(logged, started):
            return True
        self._conn = None
        if self._transport is not None:
            self._transport.abort()
        return False

    def _answer(self, conn: LeanConnection, call: Call) -> bytes:
        server = self._server
        if server.backlogged:  # an open connection asks again: no answer, not counted
            self.close_with("store backlog")
            return b""
        started = time.perf_counter() if server.observers else 0.0
        try:
            outcome = self._host.handle(call.stub)
        except NdrError as exc:
            self._log_refusal(f"nca_s_fault_ndr: {exc}")
            return conn.fault(call, NcaStatus.NCA_S_FAULT_NDR)
        logged = _tuple_new(LoggedRequest, (outcome.log, self.peer, outcome.reason))
        if not self._recorded(logged, started):
            return b""
        return conn.respond(call, outcome.stub)

    def _log_refusal(self, reason: str) -> None:
        self._server.log.event("refused", self._server.now(), {"peer": self.peer, "reason": reason})


class _FaultyProtocol(_KmsProtocol):
    """A connection accepted while faults are in force: it looks for one at accept, after
    its BIND_ACK and at each request, and otherwise behaves as ``_KmsProtocol``."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self._peer = transport.get_extra_info("peername")
        if server.fire(Phase.ACCEPT, self.peer) is not None:  # refuse
            self._transport = cast(asyncio.Transport, transport)
            self._transport.abort()
            return
        super().connection_made(transport)

    def _act(self, conn: LeanConnection, event: Event) -> bool:
        if (
            type(event) is Send
            and event.data[2] == _BIND_ACK
            and self._server.fire(Phase.BIND, self.peer) is not None  # close-after-bind
        ):
            self._write(event.data)
            self._conn = None
            if self._transport is not None:
                self._transport.close()
            return False
        return super()._act(conn, event)

    def _answer(self, conn: LeanConnection, call: Call) -> bytes:
        """The answer, or b"" when a fault sends something else (or nothing)."""
        server = self._server
        peeked = self._peek(call.stub)
        if peeked is None:  # unreadable: answered as always
            return super()._answer(conn, call)
        opened, request = peeked
        fault = server.fire(Phase.REQUEST, self.peer, request.sku_id, request.client_machine_id)
        if fault is None:
            return super()._answer(conn, call)
        if fault.status is not None:
            answer = forced_answer(
                self._host.rules, request, fault.status, opened.nonce, server.now()
            )
            sealed = seal_response(opened.key, answer.plaintext, os.urandom(12))
            if not self._recorded(LoggedRequest(answer.log, self.peer, f"fault {fault.id}")):
                return b""
            return conn.respond(call, encode_response_stub(sealed, 0))
        transport = self._transport
        if fault.kind == SLOW:
            response = super()._answer(conn, call)
            asyncio.get_running_loop().call_later(fault.delay, self._late, response)
        elif fault.kind == RESET and transport is not None:
            part = conn.respond(call, encode_response_stub(None, 0x800706BA))
            transport.write(part[: len(part) // 2])
            sock = transport.get_extra_info("socket")
            if sock is not None:  # close with SO_LINGER 0: an RST, not a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            transport.abort()
        elif fault.kind == GARBAGE and transport is not None:
            transport.write(GARBAGE_BYTES)
            transport.close()
        # STALL: nothing is sent; the connection stays until the client or the sweeper ends it
        assert fault.kind in (SLOW, RESET, GARBAGE, STALL)
        return b""

    def _late(self, response: bytes) -> None:
        """A slow answer's time has come (it is in the journal already): out it goes."""
        if self._conn is not None:
            self._write(response)

    def _peek(self, stub: bytes) -> tuple[Opened, RequestFields] | None:
        """The opened envelope and the fields of a request, when it opens and parses."""
        try:
            opened = self._host.keyring.open_request(decode_request_stub(stub))
            return opened, parse_request(opened.plaintext)
        except (NdrError, EnvelopeError, MessageError):
            return None


# -- composition --------------------------------------------------------------------


def build_host(
    store: HostStore, catalog: Catalog, settings: HostSettings, secrets: list[str], clock: Clock
) -> KmsHost:
    """A host over ``store``'s identity and count cache, answering on ``clock``."""
    identity = store.identity(random.SystemRandom(), as_datetime(clock.now()))
    rules = HostRules(catalog, settings, identity, store.load_cache())
    return KmsHost(rules, Keyring(secrets), filetime_reader(clock), nonce=NoncePool())


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
