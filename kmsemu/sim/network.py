"""The simulator's network mode: real servers on loopback, on the scenario's virtual clock.

Each scenario host is a real KMS host (``KmsServer``, SQLite state in a
temporary directory) on 127.0.0.1; the DNS records are served by a real
``DnsServer`` and looked up with dnspython; MAK keys are registered with a
real MAK service and activated over HTTP. Clients speak KLP/1 over TCP with
the lab secret (``request_activation``). Every server reads one shared
``FakeClock`` that the engine sets to the virtual time before each request,
so a year passes as fast as the requests do. A host in an outage is reached
at an address that refuses connections, as a host that is down does.

The engine is the fast mode's (``kmsemu.sim.engine.Engine``): only the
``Backend`` differs, so one seed gives the same outcome in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from kmsemu.catalog import Catalog, default_catalog
from kmsemu.client.discovery import Srv
from kmsemu.client.exchange import request_activation
from kmsemu.clock import FakeClock
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import Authority, SrvTarget, Zone
from kmsemu.errors import ActivationError
from kmsemu.host.rules import HostSettings
from kmsemu.keys.product_key import KeyType, mint
from kmsemu.klp.envelope import DEFAULT_SECRET, LabKey
from kmsemu.klp.messages import ActivationRequest, RequestFields
from kmsemu.sim.engine import Engine, KmsReply
from kmsemu.sim.scenario import DAY, Scenario
from kmsemu.sim.timeline import Timeline
from kmsemu.testing.host import BackgroundHost
from kmsemu.testing.mak import BackgroundMak
from kmsemu.wire import filetime_from_unix
from mak.client import MakClient, RemoteError

TIMEOUT = 10.0


class _BackgroundDns:
    """A ``DnsServer`` on 127.0.0.1 in a thread of its own."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.server = DnsServer(Authority([zone]), updates="none")
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # set from the caller's thread through the loop
        self._thread = threading.Thread(target=self._run, daemon=True, name="sim-dns")
        self._ready = threading.Event()

    def start(self) -> _BackgroundDns:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("the simulator's DNS server did not start")
        return self

    def _run(self) -> None:
        async def main() -> None:
            self.address = await self.server.start("127.0.0.1", 0)
            self._ready.set()
            await self._stop.wait()
            await self.server.close()

        self._loop.run_until_complete(main())
        self._loop.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)


class NetworkBackend:
    """Real servers for a scenario; use as a context manager."""

    def __init__(self, scenario: Scenario, catalog: Catalog | None = None,
                 secret: str = DEFAULT_SECRET) -> None:
        self.scenario = scenario
        self.catalog = catalog or default_catalog()
        self.clock = FakeClock(scenario.start)
        self.key = LabKey.derive(secret)
        self.secret = secret
        self.hosts: dict[str, BackgroundHost] = {}
        self.mak_service: BackgroundMak | None = None
        self.mak_keys: dict[str, str] = {}  # scenario name -> lab key text
        self.dns: _BackgroundDns | None = None
        self._day = -1
        self._stack = contextlib.ExitStack()
        self._dead = socket.socket()  # bound, never listening: connections are refused
        self.apps = sorted({p.application_id.bytes_le for p in self.catalog.volume})

    def __enter__(self) -> NetworkBackend:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        s = self.scenario
        self._dead.bind(("127.0.0.1", 0))
        self._stack.callback(self._dead.close)
        home = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="kmsemu-sim-")))
        for host in s.hosts:
            settings = HostSettings(host.activation_interval, host.renewal_interval,
                                    host.min_count)
            background = BackgroundHost(home / host.name, secrets=(self.secret,),
                                        settings=settings, clock=self.clock,
                                        clock_offset=host.clock_offset, catalog=self.catalog)
            self.hosts[host.name] = self._stack.enter_context(background)
        self.dns = _BackgroundDns(Zone.build(s.domain)).start()
        self._stack.callback(self.dns.stop)
        if s.mak_keys:
            self.mak_service = self._stack.enter_context(BackgroundMak(
                clock=self.clock, secret=self.secret, catalog=self.catalog))
            for n, key in enumerate(s.mak_keys):
                text = str(mint(KeyType.MAK, key.product.number, serial=10_000 + n))
                self.mak_service.service.register(text, limit=key.limit)
                self.mak_keys[key.name] = text
            self._mak = MakClient(self.mak_service.url)
            self._stack.callback(self._mak.close)

    # -- Backend ----------------------------------------------------------------------

    def kms(self, host: str, request: RequestFields, now: float) -> KmsReply | None:
        self.clock.current = now
        spec = self.scenario.host(host)
        running = self.hosts[host]
        down = spec.down((now - self.scenario.start) / DAY)
        address = self._dead.getsockname()[:2] if down else running.address
        try:
            exchange = request_activation(address, ActivationRequest.from_fields(request), self.key,
                                          timeout=TIMEOUT)
        except ActivationError:
            return None
        r = exchange.response
        return KmsReply(r.status, r.current_count, r.activation_interval, r.renewal_interval)

    def mak(self, key: str, hardware_id: bytes, now: float) -> str | None:
        self.clock.current = now
        try:
            self._mak.activate(self.mak_keys[key], hardware_id.hex())
        except RemoteError as exc:
            return exc.code
        return None

    def srv(self, day: int) -> list[Srv]:
        assert self.dns is not None
        self._publish(day)
        query = dns.message.make_query(f"_vlmcs._tcp.{self.scenario.domain}",
                                       dns.rdatatype.SRV)
        answer = dns.query.udp(query, self.dns.address[0], port=self.dns.address[1],
                               timeout=TIMEOUT)
        by_port = {b.address[1]: name for name, b in self.hosts.items()}
        return [Srv(rd.priority, rd.weight, rd.port, by_port[rd.port])
                for rrset in answer.answer for rd in rrset
                if rrset.rdtype == dns.rdatatype.SRV]

    def _publish(self, day: int) -> None:
        """The zone as the scenario has it on ``day`` (changed at most once a day)."""
        if day == self._day or self.dns is None:
            return
        self._day = day
        s = self.scenario
        records = [r for r in s.records if r.window.covers(day)]
        zone = Zone.build(s.domain, srv=[SrvTarget(r.host, self.hosts[r.host].address[1],
                                                   r.priority, r.weight) for r in records],
                          addresses=[(h, "127.0.0.1") for h in self.hosts])
        self.dns.zone.records[:] = zone.records  # one assignment: the server sees old or new

    def counts(self, now: float) -> dict[str, dict[bytes, int]]:
        result: dict[str, dict[bytes, int]] = {}
        for name, running in self.hosts.items():
            assert running.server is not None
            rules = running.server.host.rules
            at = filetime_from_unix(now + self.scenario.host(name).clock_offset)
            result[name] = {app: rules.count(app, at) for app in self.apps}
        return result

    def mak_remaining(self) -> dict[str, int]:
        if self.mak_service is None:
            return {}
        store = self.mak_service.store
        by_fingerprint = {r.fingerprint: r.remaining for r in store.keys()}  # noqa: SIM118
        service = self.mak_service.service
        return {name: by_fingerprint[service.fingerprint_of(text)]
                for name, text in self.mak_keys.items()}


def run_network(scenario: Scenario, catalog: Catalog | None = None,
                progress: Callable[[int], None] | None = None) -> Timeline:
    """The scenario with real servers on loopback."""
    with NetworkBackend(scenario, catalog) as backend:
        timeline = Engine(scenario, backend, catalog).run(progress)
    timeline.mode = "network"
    return timeline

