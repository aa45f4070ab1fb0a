"""Opening a KMS host: its state, its sockets, its DNS publishing, and closing it.

``open_host`` is the one way a host starts (``kmsemu host serve`` and ``kmsemu lab``);
``serve_host`` adds the signal handling of a process that is only a host.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog
from kmsemu.clock import OffsetClock, filetime_reader
from kmsemu.errors import ConfigError, LocalError
from kmsemu.host.events import EventLog, TextSink
from kmsemu.host.faults import FaultStore, faults_path
from kmsemu.host.journal import Journal, journal_path, recover
from kmsemu.host.options import ServerOptions
from kmsemu.host.overrides import OverridesStore, overrides_path
from kmsemu.host.publish import Publication, Publisher, parse_server
from kmsemu.host.rules import HostSettings
from kmsemu.host.server import KmsServer, build_host, product_names
from kmsemu.host.store import HostStore, database_path
from kmsemu.klp._fastcore import CORE
from kmsemu.run.background import ServerThread
from kmsemu.run.signals import until_signal
from kmsemu.run.state import discarded_on_failure

#: The shortest ``--dns-refresh``.
MIN_REFRESH: Final = 60.0


def settle_memory() -> None:
    """After start-up: collect what it left and freeze what remains (it lives as long as
    the process: no collection need look at it again)."""
    gc.collect()
    gc.freeze()


@dataclass
class RunningHost:
    """A started KMS host: what ``open_host`` returns and ``close`` stops."""

    server: KmsServer
    store: HostStore
    log: EventLog
    bound: list[tuple[str, int]]

    @property
    def listen(self) -> str:
        """The bound addresses as ``ADDR:PORT ...``."""
        return " ".join(format_address(h, p) for h, p in self.bound)

    async def close(self, reason: str = "signal") -> None:
        """Stop serving, write what is pending and log ``stopped``."""
        try:
            await self.server.close()
            # no host to wait for (kmsemu host fault set); a store that cannot take it now
            # (a full disk) only makes a later fault set wait for a host that is gone
            with contextlib.suppress(sqlite3.Error, OSError):
                self.store.set_meta(pid="")
            self.log.event("stopped", self.server.now(), {"reason": reason})
            self.log.flush()
        finally:
            self.store.close()


def publish_zones(
    publish: tuple[str, ...], *, server: str | None, off: bool, fqdn: str
) -> tuple[str, ...]:
    """The zones the host publishes into (behaviour.md: published by default): the
    ``--dns-publish`` list; with none, once a DNS server is given (``--dns-server``), this
    machine's DNS domain, as Windows publishes into its primary DNS suffix; none with
    ``--no-dns-publish`` (slmgr /cdns). ConfigError naming the flags otherwise."""
    if off:
        if publish:
            raise ConfigError("--no-dns-publish and --dns-publish contradict each other")
        return ()
    if publish or server is None:
        return publish
    domain = fqdn.partition(".")[2].strip(".").lower()
    if not domain:
        raise ConfigError(
            f"--dns-server publishes into this machine's DNS domain, and {fqdn!r} has none: "
            "give --dns-publish ZONE (or --no-dns-publish)"
        )
    return (domain,)


@dataclass(frozen=True)
class Publishing:
    """``--dns-*``: what to publish, where, and how often."""

    publications: list[Publication]
    server: tuple[str, int]
    name: str
    address: str | None
    refresh: float
    tsig: tuple[str, str] | None

    @classmethod
    def parse(
        cls,
        publish: tuple[str, ...],
        server: str,
        name: str | None,
        address: str | None,
        refresh: float,
        tsig: str | None,
    ) -> Publishing | None:
        """The ``--dns-*`` flags checked (ConfigError naming the flag); None: no publishing."""
        if not publish:
            return None
        if refresh < MIN_REFRESH:
            raise ConfigError("--dns-refresh must be at least 60 seconds")
        try:
            if address is not None:
                ipaddress.ip_address(address)
            publications = [Publication.parse(p) for p in publish]
            dns_server = parse_server(server)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        key = None
        if tsig is not None:
            key_name, sep, secret = tsig.partition(":")
            if not sep or not secret:
                raise ConfigError("--dns-tsig: use NAME:BASE64")
            key = (key_name, secret)
        host_name = (name or socket.gethostname().split(".")[0] or "kms").lower()
        return cls(publications, dns_server, host_name, address, refresh, key)

    def publisher(self, bound: list[tuple[str, int]]) -> Publisher:
        """A publisher of the host at ``bound`` (its first specific address by default)."""
        address = self.address
        if address is None:
            specific = [h for h, _ in bound if h not in ("0.0.0.0", "::")]
            address = specific[0] if specific else "127.0.0.1"
        return Publisher(self.server, self.name, address, bound[0][1], tsig=self.tsig)


@dataclass
class HostConfig:
    """Everything a host is opened with.

    ``state`` is a directory or a SQLite file (the lab's); ``clock`` the host's clock, an
    offset of the real one (the lab moves its offset while running)."""

    state: Path
    catalog: Catalog
    settings: HostSettings
    secrets: list[str]
    clock: OffsetClock
    addresses: list[tuple[str, int]]
    options: ServerOptions = field(default_factory=ServerOptions)
    log_format: str = "text"
    loop_name: str = "asyncio"
    publishing: Publishing | None = None
    #: Where the host's log lines go (default: stderr).
    log_stream: TextSink | None = None


async def open_host(config: HostConfig) -> RunningHost:
    """Open the host's state, bind and start serving.

    A host that fails to start closes its store; state it made for the attempt is the
    caller's to discard (``discarded_on_failure``)."""
    c = config
    state, catalog, settings, clock, publishing = (
        c.state,
        c.catalog,
        c.settings,
        c.clock,
        c.publishing,
    )
    store = HostStore(state)
    journal: Journal | None = None
    try:
        path = journal_path(store.path)
        recovered = recover(store, path)  # what a killed host answered comes back
        journal = Journal(path) if c.options.durable else None
        if journal is None:
            path.unlink(missing_ok=True)
        kms = build_host(store, catalog, settings, c.secrets, clock)
        log = EventLog(c.log_stream, c.log_format, product_names=product_names(catalog))
        server = KmsServer(
            kms,
            store,
            log,
            c.options,
            now=filetime_reader(clock),
            journal=journal,
            faults=FaultStore(faults_path(store.path)),
            overrides=OverridesStore(overrides_path(store.path)),
        )
        try:
            bound = await server.start(c.addresses)
            if not bound:
                raise OSError("no address could be bound")
        except BaseException:
            await server.close()
            raise
        if publishing is not None:
            publisher = publishing.publisher(bound)
            server.start_publishing(publisher, publishing.publications, publishing.refresh)
        store.set_meta(
            port=str(bound[0][1]),
            listen=" ".join(format_address(h, p) for h, p in bound),
            min_count=str(settings.min_count),
            activation_interval=str(settings.activation_interval),
            renewal_interval=str(settings.renewal_interval),
            clock_offset=str(clock.offset),
            pid=str(os.getpid()),
            dns_publish=" ".join(p.zone for p in publishing.publications) if publishing else "",
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        # "started", not "ready": scripts wait for the process's one ``ready ...`` line
        if recovered:
            log.event("recovered", server.now(), {"requests": recovered, "from": "journal"})
        log.event(
            "started",
            server.now(),
            {
                "loop": c.loop_name,
                "core": "on" if CORE is not None else "off",  # scripts/build-core, KMSEMU_CORE
                "state": str(state),
                "key_ids": ",".join(k.key_id.hex() for k in kms.keyring.keys),
            },
        )
        log.flush()
    except BaseException:
        if journal is not None:  # recovered: the store holds all it had
            journal.close(remove=True)
        store.close()
        raise
    return RunningHost(server, store, log, bound)


async def serve_host(config: HostConfig, announce: Callable[[RunningHost], None]) -> None:
    """``kmsemu host serve``: open the host, announce it, serve until SIGTERM/SIGINT.

    Nothing is left in the state by a host that could not start; one that cannot bind
    is ``listen_failed``."""
    with discarded_on_failure(database_path(config.state)):
        try:
            running = await open_host(config)
        except OSError as exc:
            wanted = " ".join(format_address(h, p) for h, p in config.addresses)
            raise LocalError("listen_failed", f"{wanted}: {exc.strerror or exc}") from exc
    settle_memory()
    with until_signal() as stopper:
        announce(running)
        await stopper.wait()
        await running.close()


class HostThread(ServerThread):
    """A real host on 127.0.0.1 (a free port) served from a background thread.

    ``running_host`` is the ``RunningHost`` once started; ``address`` its ``(host, port)``."""

    name = "kmsemu-host"

    def __init__(self, config: HostConfig) -> None:
        super().__init__()
        self.config = config
        self.running_host: RunningHost | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def serve(self, ready: Callable[[], None]) -> None:
        """Open the host, report ready, serve until stopped."""
        running = self.running_host = await open_host(self.config)
        self.address = running.bound[0]
        ready()
        await self.stopping.wait()
        await running.close("stopped")
