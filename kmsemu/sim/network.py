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

import contextlib
import io
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from kmsemu.addresses import format_address
from kmsemu.catalog import Catalog, default_catalog
from kmsemu.client.discovery import Srv
from kmsemu.client.exchange import request_activation
from kmsemu.clock import FakeClock, OffsetClock
from kmsemu.dns.authority import Authority
from kmsemu.dns.server import DnsServer
from kmsemu.dns.zone import SrvTarget, Zone
from kmsemu.errors import ActivationError
from kmsemu.host.rules import HostSettings
from kmsemu.keys.product_key import KeyType, mint
from kmsemu.klp import DEFAULT_SECRET
from kmsemu.klp.envelope import LabKey
from kmsemu.klp.messages import ActivationRequest
from kmsemu.run.dns import DnsThread
from kmsemu.run.host import HostConfig, HostThread
from kmsemu.run.mak import MakConfig, MakThread
from kmsemu.sim.engine import Client, Engine, KmsReply, request
from kmsemu.sim.scenario import DAY, Scenario
from kmsemu.sim.timeline import Timeline
from kmsemu.wire import filetime_from_unix
from mak.client import MakClient, RemoteError

TIMEOUT = 10.0


class NetworkBackend:
    """Real servers for a scenario; use as a context manager."""

    def __init__(
        self, scenario: Scenario, catalog: Catalog | None = None, secret: str = DEFAULT_SECRET
    ) -> None:
        self.scenario = scenario
        self.catalog = catalog or default_catalog()
        self.clock = FakeClock(scenario.start)
        self.key = LabKey.derive(secret)
        self.secret = secret
        self.hosts: dict[str, HostThread] = {}
        self.mak_service: MakThread | None = None
        self.mak_keys: dict[str, str] = {}  # scenario name -> lab key text
        self.dns: DnsThread | None = None
        self.zone = Zone.build(scenario.domain)
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
            settings = HostSettings(host.activation_interval, host.renewal_interval, host.min_count)
            config = HostConfig(
                home / host.name,
                self.catalog,
                settings,
                [self.secret],
                OffsetClock(self.clock, host.clock_offset),
                [("127.0.0.1", 0)],
                log_stream=io.StringIO(),
            )
            self.hosts[host.name] = self._stack.enter_context(HostThread(config))
        self.dns = self._stack.enter_context(
            DnsThread(DnsServer(Authority([self.zone]), updates="none"))
        )
        if s.mak_keys:
            self.mak_service = MakThread(
                MakConfig(
                    home / "mak",
                    self.secret,
                    self.clock,
                    self.catalog,
                    db=":memory:",
                    admin_token="simulator",
                )
            )
            self._stack.callback(self.mak_service.mak.close)
            self._stack.enter_context(self.mak_service)
            for n, key in enumerate(s.mak_keys):
                text = str(mint(KeyType.MAK, key.product.number, serial=10_000 + n))
                self.mak_service.mak.service.register(text, limit=key.limit)
                self.mak_keys[key.name] = text
            self._mak = MakClient(f"http://{format_address(*self.mak_service.address)}")
            self._stack.callback(self._mak.close)

    # -- Backend ----------------------------------------------------------------------

    def kms(self, host: str, client: Client, now: float) -> KmsReply | None:
        """One KLP/1 exchange with the host's server (a dead port during an outage)."""
        self.clock.current = now
        spec = self.scenario.host(host)
        running = self.hosts[host]
        down = spec.down((now - self.scenario.start) / DAY)
        address = self._dead.getsockname()[:2] if down else running.address
        try:
            exchange = request_activation(
                address,
                ActivationRequest.from_fields(request(client, now)),
                self.key,
                timeout=TIMEOUT,
            )
        except ActivationError:
            return None
        r = exchange.response
        return KmsReply(r.status, r.current_count, r.activation_interval, r.renewal_interval)

    def mak(self, key: str, hardware_id: bytes, now: float) -> str | None:
        """An online activation over the MAK service's HTTP API; its error code if refused."""
        self.clock.current = now
        try:
            self._mak.activate(self.mak_keys[key], hardware_id.hex())
        except RemoteError as exc:
            return exc.code
        return None

    def srv(self, day: int) -> list[Srv]:
        """What the lab DNS server answers for SRV on ``day``, once that day's zone is up."""
        assert self.dns is not None
        self._publish(day)
        query = dns.message.make_query(f"_vlmcs._tcp.{self.scenario.domain}", dns.rdatatype.SRV)
        answer = dns.query.udp(
            query, self.dns.address[0], port=self.dns.address[1], timeout=TIMEOUT
        )
        by_port = {b.address[1]: name for name, b in self.hosts.items()}
        return [
            Srv(rd.priority, rd.weight, rd.port, by_port[rd.port])
            for rrset in answer.answer
            for rd in rrset
            if rrset.rdtype == dns.rdatatype.SRV
        ]

    def _publish(self, day: int) -> None:
        """The zone as the scenario has it on ``day`` (changed at most once a day)."""
        if day == self._day or self.dns is None:
            return
        self._day = day
        s = self.scenario
        records = [r for r in s.records if r.window.covers(day)]
        zone = Zone.build(
            s.domain,
            srv=[
                SrvTarget(r.host, self.hosts[r.host].address[1], r.priority, r.weight)
                for r in records
            ],
            addresses=[(h, "127.0.0.1") for h in self.hosts],
        )
        self.zone.replace_records(zone.records)  # one swap: the server sees old or new

    def counts(self, now: float) -> dict[str, dict[bytes, int]]:
        """Each running host's count per volume application, at its own clock."""
        result: dict[str, dict[bytes, int]] = {}
        for name, running in self.hosts.items():
            assert running.running_host is not None
            rules = running.running_host.server.host.rules
            at = filetime_from_unix(now + self.scenario.host(name).clock_offset)
            result[name] = {app: rules.count(app, at) for app in self.apps}
        return result

    def mak_remaining(self) -> dict[str, int]:
        """The activations each MAK key has left, read from the service's store."""
        if self.mak_service is None:
            return {}
        store = self.mak_service.mak.store
        by_fingerprint = {r.fingerprint: r.remaining for r in store.keys()}  # noqa: SIM118
        service = self.mak_service.mak.service
        return {
            name: by_fingerprint[service.fingerprint_of(text)]
            for name, text in self.mak_keys.items()
        }


def run_network(
    scenario: Scenario,
    catalog: Catalog | None = None,
    progress: Callable[[int], None] | None = None,
) -> Timeline:
    """The scenario with real servers on loopback."""
    with NetworkBackend(scenario, catalog) as backend:
        timeline = Engine(scenario, backend, catalog).run(progress)
    timeline.mode = "network"
    return timeline
