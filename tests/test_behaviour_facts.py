"""Facts of /work/shared/spec/behaviour.md that no other test pinned (issue 16, point 5).

Every expectation here is written out as a literal (a number, a string, a line of
output), never read from the code under test, so that changing the fact in the code
makes a test fail. Each test quotes the behaviour.md wording it pins.

Most tests drive the pure parts with ``now`` passed in: the licence machine, a
``Machine`` whose clock, KLP/1 exchange and DNS discovery are stand-ins, the host's
rules and event log, the DNS authority fed the host's own RFC 2136 update; a few go
through the command line with click's ``CliRunner``.
"""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from dnslib import QTYPE, DNSRecord

from kmsemu.catalog import default_catalog
from kmsemu.cli import main
from kmsemu.client import slmgr
from kmsemu.client.discovery import Candidate, DiscoveryError
from kmsemu.client.exchange import Exchange
from kmsemu.client.licence import (
    Activated,
    HardwareChanged,
    KeyInstalled,
    Licence,
    Policy,
    Rearmed,
    TimePassed,
    apply,
)
from kmsemu.client.machine import Machine
from kmsemu.client.profile import Profile, ProfileStore, new_hardware
from kmsemu.dns.authority import Authority
from kmsemu.dns.zone import Zone
from kmsemu.errors import ActivationError, HResult
from kmsemu.host.events import EventLog
from kmsemu.host.publish import Publication, Publisher
from kmsemu.host.rules import HostIdentity, HostRules, HostSettings
from kmsemu.host.server import product_names
from kmsemu.host.store import LoggedRequest
from kmsemu.keys.product_key import setup_key
from kmsemu.klp.messages import ActivationRequest, ActivationResponse, LicenseStatus

#: 2026-11-22 12:00:00 UTC: every pure test's clock starts here.
T0 = 1_795_348_800.0
DAY = 86_400.0
SERVER_KEY = str(setup_key(6))  # Windows Server 2022 Standard, threshold 5
OFFICE_KEY = str(setup_key(10))  # Office LTSC Professional Plus 2021, threshold 5
CMID = "11111111-2222-4333-8444-555555555555"
EPID = "06401-00206-042-123456-03-1033-9600.0000-3262026"


# -- a client machine on a stand-in clock, network and DNS ---------------------------------


class Net:
    """KMS hosts and DNS as a client machine meets them: what it asked, what answered."""

    def __init__(self, count: int = 5) -> None:
        self.count = count
        self.exchanged: list[tuple[str, int]] = []
        self.lookups: list[list[str]] = []
        self.down: set[tuple[str, int]] = set()
        self.found = [
            Candidate(("10.0.0.1", 1688), "kms1.lab.test."),
            Candidate(("10.0.0.2", 1688), "kms2.lab.test."),
        ]

    def exchange(self, address: tuple[str, int], request: ActivationRequest, key: Any) -> Exchange:
        self.exchanged.append(address)
        if address in self.down:
            raise ActivationError(
                HResult.NO_KMS_HOST, "cannot connect", cause=HResult.RPC_SERVER_UNAVAILABLE
            )
        response = ActivationResponse(
            0,
            bytes(12),
            request.client_machine_id,
            request.request_time,
            request.request_time,
            self.count,
            60,
            1440,
            b"hostid01",
            EPID,
        )
        return Exchange(response, address, 1)

    def discover(
        self, domains: list[str], servers: list[str], rng: random.Random
    ) -> list[Candidate]:
        self.lookups.append(list(domains))
        if not self.found:
            raise DiscoveryError(HResult.DNS_NAME_DOES_NOT_EXIST, "no such name")
        return list(self.found)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def machine(
    net: Net | None = None,
    clock: Clock | None = None,
    profile: Profile | None = None,
) -> Machine:
    net = net or Net()
    return Machine(
        profile or Profile("pc", "PC-1", new_hardware(random.Random(1)), cmids={"windows": CMID}),
        default_catalog(),
        real_now=clock or Clock(),
        secret="kmsemu-lab",
        exchange=net.exchange,
        discover=net.discover,
        new_cmid=lambda: "99999999-8888-4777-8666-555555555555",
        rng=random.Random(1),
    )


def installed(key: str = SERVER_KEY, net: Net | None = None, clock: Clock | None = None) -> Machine:
    m = machine(net, clock)
    assert m.install_key(key).hresult == 0
    return m


# -- KMS client timers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["activation_interval", "renewal_interval"])
def test_intervals_are_15_to_43200_minutes(name: str) -> None:
    """behaviour.md, KMS client timers: activation and renewal interval "15–43,200 min"."""
    assert getattr(HostSettings(**{name: 15}), name) == 15
    assert getattr(HostSettings(**{name: 43_200}), name) == 43_200
    for outside in (14, 43_201):
        with pytest.raises(ValueError, match=f"{name} {outside} is outside 15..43200 minutes"):
            HostSettings(**{name: outside})


@pytest.mark.parametrize(
    "args, shown",
    [
        (["host", "serve", "--activation-interval", "14"], "--activation-interval"),
        (["host", "serve", "--renewal-interval", "43201"], "--renewal-interval"),
        (["lab", "--activation-interval", "43201"], "--activation-interval"),
        (["lab", "--renewal-interval", "14"], "--renewal-interval"),
    ],
)
def test_an_interval_outside_15_to_43200_is_a_usage_error(args: list[str], shown: str) -> None:
    """behaviour.md: "15–43,200 min; set on the host (`/sai`)" (and `/sri`)."""
    # A bad --log-format after it: should the interval pass, click names that one instead
    # (options are checked in the order typed), and nothing starts serving.
    result = CliRunner().invoke(main, [*args, "--log-format", "neither"])
    assert result.exit_code == 2
    assert f"Invalid value for '{shown}': {args[-1]} is not in the range 15<=x<=43200." in (
        result.output
    )


def test_office_rearm_gives_thirty_days_of_grace() -> None:
    """behaviour.md, Office grace: "rearm resets the grace to 30 days and resets the CMID"."""
    office = Policy.for_family("office")
    licence = apply(Licence(), KeyInstalled(T0, office)).licence
    step = apply(licence, Rearmed(T0 + 10 * DAY))
    assert step.new_cmid
    assert step.licence.status is LicenseStatus.INITIAL_GRACE
    assert step.licence.grace_ends == T0 + 10 * DAY + 2_592_000  # 30 days in seconds
    assert step.licence.rearms_left == 4  # of Office's 5


def test_office_out_of_tolerance_lasts_thirty_days_then_notification() -> None:
    """behaviour.md, after 180 days without renewal: "Office: 30 days out of tolerance with
    notifications, then "Unlicensed notification""."""
    office = Policy.for_family("office")
    licence = apply(Licence(), KeyInstalled(T0, office)).licence
    licence = apply(licence, Activated(T0, 120, 10_080)).licence
    lapsed = apply(licence, TimePassed(T0 + 180 * DAY)).licence
    assert lapsed.status is LicenseStatus.OUT_OF_TOLERANCE_GRACE
    assert lapsed.grace_ends == T0 + 210 * DAY  # 180 days valid, then 30 out of tolerance
    assert lapsed.reason == 0xC004F00F
    still = apply(lapsed, TimePassed(T0 + 210 * DAY - 1)).licence
    assert still.status is LicenseStatus.OUT_OF_TOLERANCE_GRACE
    over = apply(lapsed, TimePassed(T0 + 210 * DAY)).licence
    assert (over.status, over.reason) == (LicenseStatus.NOTIFICATION, 0xC004F009)
    moved = apply(licence, HardwareChanged(T0 + 5 * DAY)).licence  # hardware out of tolerance
    assert moved.grace_ends == T0 + 35 * DAY


# -- Discovery (client side) ---------------------------------------------------------------


def test_skms_domain_is_ignored_while_skms_is_set() -> None:
    """behaviour.md, Discovery 1-2: with `/skms host[:port]` "only it is used";
    "`/skms-domain D` makes the SRV lookup use only `D` (ignored while `/skms` is set)"."""
    net = Net()
    m = installed(net=net)
    m.profile.dns_suffixes = ["lab.test", "corp.test"]
    m.profile.dns_servers = ["10.0.0.53"]
    m.profile.kms_domain = "other.test"
    m.set_kms_host("10.0.0.9:1700")
    assert m.activate().hresult == 0
    assert net.exchanged == [("10.0.0.9", 1700)]
    assert net.lookups == []  # no SRV lookup at all, in other.test or elsewhere
    m.set_kms_host(None)  # /ckms: the lookup domain applies again, alone
    assert m.activate().hresult == 0
    assert net.lookups == [["other.test"]]


def test_host_caching_reuses_the_host_and_asks_dns_only_when_it_fails() -> None:
    """behaviour.md, Discovery 5: "Host caching (`/skhc`, default on) reuses the last host
    that worked and queries DNS only when it fails"."""
    net = Net()
    m = installed(net=net)
    m.profile.dns_suffixes = ["lab.test"]
    m.profile.dns_servers = ["10.0.0.53"]
    assert m.profile.host_caching is True  # on by default
    assert m.activate().hresult == 0
    assert (net.lookups, net.exchanged) == ([["lab.test"]], [("10.0.0.1", 1688)])
    assert m.activate().hresult == 0  # the cached host, no DNS query
    assert (net.lookups, net.exchanged) == ([["lab.test"]], [("10.0.0.1", 1688)] * 2)
    net.down = {("10.0.0.1", 1688)}
    assert m.activate().hresult == 0  # the cached host fails: DNS, then the next host
    assert net.lookups == [["lab.test"], ["lab.test"]]
    assert net.exchanged[2:] == [("10.0.0.1", 1688), ("10.0.0.2", 1688)]
    assert "    KMS machine name from DNS: kms2.lab.test:1688" in slmgr.licence_lines(
        m, verbose=True
    )


def _cli(home: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["client", "--profile", "pc", *args], env={"KMSEMU_HOME": str(home)}
    )


def _two_activations(home: Path, net: Net) -> list[str]:
    """Two `ato`s of the profile kept in ``home`` (a stand-in network), saved after; the
    dlv line about host caching."""
    store = ProfileStore(home / "clients")
    m = machine(net, Clock(time.time()), store.load("pc"))
    assert m.activate().hresult == 0
    assert m.activate().hresult == 0
    store.save(m.profile)
    return [line for line in slmgr.licence_lines(m, verbose=True) if "caching" in line]


def test_ckhc_queries_dns_every_time_and_skhc_turns_caching_back_on(tmp_path: Path) -> None:
    """behaviour.md, Discovery 5: "`/ckhc` queries every time" (host caching, `/skhc`, is
    the default)."""
    assert _cli(tmp_path, "ipk", SERVER_KEY).exit_code == 0
    assert _cli(tmp_path, "dns", "--server", "10.0.0.53", "--suffix", "lab.test").exit_code == 0
    net = Net()
    assert _two_activations(tmp_path, net) == ["    KMS host caching is enabled"]
    assert len(net.lookups) == 1  # the second ato used the cached host
    off = _cli(tmp_path, "ckhc")
    assert (off.exit_code, off.stdout) == (0, "KMS host caching is disabled\n")
    net = Net()
    assert _two_activations(tmp_path, net) == ["    KMS host caching is disabled"]
    assert len(net.lookups) == 2  # every ato asks DNS
    on = _cli(tmp_path, "skhc")
    assert (on.exit_code, on.stdout) == (0, "KMS host caching is enabled\n")
    net = Net()
    assert _two_activations(tmp_path, net) == ["    KMS host caching is enabled"]
    assert len(net.lookups) == 1


# -- DNS publishing (host side) ------------------------------------------------------------


def _published(address: str) -> tuple[Authority, list[str]]:
    """A lab zone after the host's own RFC 2136 update, and the update's record lines."""
    publisher = Publisher(("127.0.0.1", 5300), "kms1", address, 1688)
    update = publisher.update(Publication.parse("lab.test"))
    authority = Authority([Zone.build("lab.test")])
    reply = authority.answer(update.to_wire(), udp=True, trusted=True)
    assert reply is not None and DNSRecord.parse(reply).header.rcode == 0
    lines = [rrset.to_text(origin=update.origin, relativize=False) for rrset in update.update]
    return authority, lines


def _ask(authority: Authority, name: str, qtype: str) -> list[tuple[str, int, str]]:
    data = authority.answer(DNSRecord.question(name, qtype).pack(), udp=True)
    assert data is not None
    return [(QTYPE[rr.rtype], rr.ttl, str(rr.rdata)) for rr in DNSRecord.parse(data).rr]


def test_the_host_publishes_srv_0_0_with_ttl_3600_and_its_a_record() -> None:
    """behaviour.md, DNS publishing: "Record: SRV `_vlmcs._tcp.<domain>`, priority 0,
    weight 0, port 1688, target the host's FQDN, plus the host's A/AAAA"; "TTL is not
    documented: **choice** 3600 s"."""
    assert Publication.parse("lab.test") == Publication("lab.test", 0, 0)
    authority, lines = _published("10.0.0.5")
    assert lines == [
        "_vlmcs._tcp.lab.test. 3600 IN SRV 0 0 1688 kms1.lab.test.",
        "kms1.lab.test. ANY A",  # RFC 2136: the old A record goes, the new one comes
        "kms1.lab.test. 3600 IN A 10.0.0.5",
    ]
    assert _ask(authority, "_vlmcs._tcp.lab.test", "SRV") == [
        ("SRV", 3600, "0 0 1688 kms1.lab.test.")
    ]
    assert _ask(authority, "kms1.lab.test", "A") == [("A", 3600, "10.0.0.5")]


def test_a_host_on_ipv6_publishes_its_aaaa_record() -> None:
    """behaviour.md, DNS publishing: "plus the host's A/AAAA"."""
    authority, lines = _published("fd00::5")
    assert lines[-1] == "kms1.lab.test. 3600 IN AAAA fd00::5"
    assert _ask(authority, "kms1.lab.test", "AAAA") == [("AAAA", 3600, "fd00::5")]
    assert _ask(authority, "kms1.lab.test", "A") == []


def test_the_host_re_registers_every_24_hours_by_default() -> None:
    """behaviour.md, DNS publishing: "Published by default, re-registered every 24 h"."""
    from kmsemu.cli.host import serve

    assert isinstance(serve, click.Command)
    refresh = next(p for p in serve.params if p.name == "dns_refresh")
    assert refresh.default == 86_400.0  # seconds: 24 hours


def test_dns_export_defaults_srv_0_0_port_1688_ttl_3600() -> None:
    """behaviour.md, DNS publishing: "priority 0, weight 0, port 1688"; "**choice** 3600 s"
    (the lab DNS's own records, `kmsemu dns serve` and `dns export`, default the same)."""
    zone = ["--zone", "lab.test", "--srv", "kms1", "--a", "kms1=10.0.0.5"]
    result = CliRunner().invoke(
        main, ["dns", "export", *zone, "--format", "nsupdate", "--server", "10.0.0.53"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "server 10.0.0.53\n"
        "zone lab.test.\n"
        "update add _vlmcs._tcp.lab.test. 3600 SRV 0 0 1688 kms1.lab.test.\n"
        "update add kms1.lab.test. 3600 A 10.0.0.5\n"
        "send\n"
    )


# -- Licence states --------------------------------------------------------------------------

STATE_WORDING = [
    (0, "Unlicensed"),
    (1, "Licensed"),
    (2, "Initial grace period"),
    (3, "Additional grace period (KMS license expired or hardware out of tolerance)"),
    (4, "Non-genuine grace period"),
    (5, "Notification"),
    (6, "Extended grace period"),
]


@pytest.mark.parametrize("value, text", STATE_WORDING)
def test_licence_state_wording(value: int, text: str) -> None:
    """behaviour.md, Licence states: the table of values and their slmgr text."""
    assert LicenseStatus(value).text == text


@pytest.mark.parametrize("value, text", [STATE_WORDING[i] for i in (0, 4, 5, 6)])
def test_dli_shows_the_licence_state_as_slmgr_words_it(
    tmp_path: Path, value: int, text: str
) -> None:
    """behaviour.md, Licence states 0, 4, 5 and 6, as `/dli` prints them: `License Status:`
    (a profile that holds the state, as a copied machine file would)."""
    assert _cli(tmp_path, "ipk", SERVER_KEY).exit_code == 0
    path = tmp_path / "clients" / "pc.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["installs"][0]["licence"]["status"] = value
    path.write_text(json.dumps(saved), encoding="utf-8")
    dli = _cli(tmp_path, "dli")
    assert dli.exit_code == 0, dli.output
    assert f"License Status: {text}" in dli.stdout.splitlines()
    summary = json.loads(_cli(tmp_path, "dli", "--json").stdout)
    assert summary["license_status"] == {"value": value, "name": text}


# -- slmgr-style output ------------------------------------------------------------------------


def test_xpr_initial_grace_line() -> None:
    """behaviour.md, `/xpr`: "`<Name>:` then one of ... `Initial grace period ends <date>`"."""
    m = installed()
    assert slmgr.expiry_lines(m) == [
        "Windows Server 2022 Standard:",
        "    Initial grace period ends 12/22/2026 12:00:00 PM",
    ]


def test_xpr_additional_grace_line() -> None:
    """behaviour.md, after 180 days without renewal: the OOT grace (Windows: **choice** 30
    days), which `/xpr` shows as a grace period that ends."""
    clock = Clock()
    m = installed(net=Net(), clock=clock)
    m.set_kms_host("10.0.0.9")
    assert m.activate().hresult == 0
    clock.now = T0 + 181 * DAY
    assert slmgr.expiry_lines(m) == [
        "Windows Server 2022 Standard:",
        "    Additional grace period ends 06/20/2027 12:00:00 PM",  # T0 + 180 + 30 days
    ]


@pytest.mark.parametrize(
    "key, line",
    [
        (SERVER_KEY, "    Windows is in Notification mode"),
        (OFFICE_KEY, "    Office is in Notification mode"),
    ],
)
def test_xpr_notification_line(key: str, line: str) -> None:
    """behaviour.md, `/xpr`: "... `Windows is in Notification mode`"; "grace expired:
    Notification, reason 0xC004F009"."""
    clock = Clock()
    m = installed(key, clock=clock)
    clock.now = T0 + 31 * DAY  # past Windows' 30 days and Office's 25
    assert slmgr.expiry_lines(m)[1] == line


def test_dli_time_remaining_in_minutes_and_days() -> None:
    """behaviour.md, `/dli`: "`Time remaining: …`" in the "`N minute(s) (D day(s))`" shape:
    30 days of initial grace, 90 minutes in."""
    clock = Clock()
    m = installed(clock=clock)
    clock.now = T0 + 90 * 60
    lines = slmgr.licence_lines(m, verbose=False)
    assert "Time remaining: 43110 minute(s) (29 day(s))" in lines
    assert not [line for line in lines if line.startswith("Volume activation expiration")]


def test_dli_volume_activation_expiration_in_minutes_and_days() -> None:
    """behaviour.md, `/dli`: "`Volume activation expiration: N minute(s) (D day(s))`";
    180 days of validity, one day after activating."""
    clock = Clock()
    m = installed(net=Net(), clock=clock)
    m.set_kms_host("10.0.0.9")
    assert m.activate().hresult == 0
    clock.now = T0 + DAY
    lines = slmgr.licence_lines(m, verbose=False)
    assert "Volume activation expiration: 257760 minute(s) (179 day(s))" in lines


def test_dli_notification_reason() -> None:
    """behaviour.md, `/dli`: "or `Notification Reason: 0x…`"; grace expired gives
    "Notification (0xC004F009)"."""
    clock = Clock()
    m = installed(clock=clock)
    clock.now = T0 + 30 * DAY
    lines = slmgr.licence_lines(m, verbose=False)
    assert "License Status: Notification" in lines
    assert "Notification Reason: 0xC004F009." in lines
    assert not [line for line in lines if line.startswith("Time remaining")]


def test_dlv_dns_auto_discovery_kms_name_not_available() -> None:
    """behaviour.md, `/dlv`: "`KMS machine name from DNS: host:port` (or `Registered KMS
    machine name: host:port`, or `DNS auto-discovery: KMS name not available`)"."""
    m = installed()
    lines = slmgr.licence_lines(m, verbose=True)
    assert "    DNS auto-discovery: KMS name not available" in lines
    assert not [line for line in lines if "KMS machine name" in line]


# -- Event records -----------------------------------------------------------------------------


def test_client_events_12288_and_12289_fields() -> None:
    """behaviour.md, Event records: "Client 12288 (request sent): HRESULT, server:port, CMID,
    client time, VM, licence status, minutes to expiration. Client 12289 (response
    processed): HRESULT, activated flag, current count, activation and renewal
    intervals"."""
    clock = Clock()
    net = Net(count=7)
    m = installed(net=net, clock=clock)
    m.profile.vm = True
    m.set_kms_host("10.0.0.9:1700")
    clock.now = T0 + 60
    assert m.activate().hresult == 0
    assert m.install.events == [
        {
            "id": 12288,
            "time": "2026-11-22T12:01:00+00:00",
            "cmid": CMID,
            "client_time": "2026-11-22T12:01:00+00:00",
            "vm": True,
            "license_status": 2,
            "minutes_to_expiration": 43199,
            "hresult": "0x00000000",
            "server": "10.0.0.9:1700",
        },
        {
            "id": 12289,
            "time": "2026-11-22T12:01:00+00:00",
            "hresult": "0x00000000",
            "activated": True,
            "current_count": 7,
            "activation_interval": 60,
            "renewal_interval": 1440,
        },
    ]
    net.down = {("10.0.0.9", 1700)}
    assert m.activate().hresult == 0xC004F074
    assert m.install.events[-1] == {
        "id": 12288,
        "time": "2026-11-22T12:01:00+00:00",
        "cmid": CMID,
        "client_time": "2026-11-22T12:01:00+00:00",
        "vm": True,
        "license_status": 1,
        "minutes_to_expiration": 259200,
        "hresult": "0x800706BA",
        "server": "10.0.0.9:1700",
    }


def test_a_client_time_no_calendar_holds_is_logged_as_null() -> None:
    """A broken or hostile client's FILETIME (the largest 64-bit value) cannot become a
    date: the JSON log line says null rather than failing."""
    catalog = default_catalog()
    product = catalog.find("windows-server-2022-standard")
    rules = HostRules(catalog, HostSettings(), HostIdentity(b"hostid01", EPID))
    request = ActivationRequest(
        application_id=product.application_id,
        sku_id=product.sku_id,
        kms_count_id=product.kms_count_id,
        client_machine_id=uuid.UUID(CMID),
        request_time=2**64 - 1,
        required_client_count=5,
        license_status=2,
        grace_minutes_remaining=0,
        workstation_name="PC-1",
    )
    answer = rules.answer(request.to_bytes(), bytes(12), 134_398_224_000_000_000)
    stream = io.StringIO()
    log = EventLog(stream, "json", product_names=product_names(catalog))
    log.activation(answer.log, "127.0.0.1:50000", answer.reason)
    log.flush()
    line = json.loads(stream.getvalue())
    assert line["client_time"] is None and line["status"] == "0xC004F06C"


def test_host_event_12290_fields() -> None:
    """behaviour.md, Event records: "Host 12290 "An activation request has been processed.":
    HRESULT, minimum count needed, client name, CMID, client timestamp, VM flag, licence
    state, minutes to expiration, activation id" (the log line, and the stored record)."""
    catalog = default_catalog()
    product = catalog.find("windows-server-2022-standard")
    identity = HostIdentity(b"hostid01", EPID)
    rules = HostRules(catalog, HostSettings(), identity)
    sent = 134_398_224_000_000_000 - 600_000_000  # FILETIME 2026-11-22 11:59:00 UTC
    request = ActivationRequest(
        application_id=product.application_id,
        sku_id=product.sku_id,
        kms_count_id=product.kms_count_id,
        client_machine_id=uuid.UUID(CMID),
        request_time=sent,
        required_client_count=5,
        license_status=2,
        grace_minutes_remaining=43_111,
        workstation_name="PC-1",
        flags=1,
    )
    now = 134_398_224_000_000_000  # FILETIME 2026-11-22 12:00:00 UTC
    answer = rules.answer(request.to_bytes(), bytes(12), now)
    stream = io.StringIO()
    log = EventLog(stream, "text", product_names=product_names(catalog))
    log.activation(answer.log, "127.0.0.1:50000", answer.reason)
    log.flush()
    assert stream.getvalue() == (
        "2026-11-22T12:00:00.000Z activation status=0x00000000"
        " product=windows-server-2022-standard"
        " activation_id=be497d04-241c-55ed-80a5-ec5561d80d71 count=1 client=PC-1"
        " cmid=11111111-2222-4333-8444-555555555555 vm=1 license_status=2 minutes=43111"
        " required=5 peer=127.0.0.1:50000\n"
    )
    stream = io.StringIO()
    log = EventLog(stream, "json", product_names=product_names(catalog))
    log.activation(answer.log, "127.0.0.1:50000", answer.reason)
    log.flush()
    assert json.loads(stream.getvalue()) == {
        "time": "2026-11-22T12:00:00.000Z",
        "event": "activation",
        "status": "0x00000000",
        "activation_id": "be497d04-241c-55ed-80a5-ec5561d80d71",
        "product": "windows-server-2022-standard",
        "count": 1,
        "client": "PC-1",
        "cmid": "11111111-2222-4333-8444-555555555555",
        "vm": 1,
        "license_status": 2,
        "minutes_to_expiration": 43111,
        "client_time": "2026-11-22T11:59:00.000+00:00",
        "required": 5,
        "peer": "127.0.0.1:50000",
    }
    row = LoggedRequest(answer.log, "127.0.0.1:50000", answer.reason).row()
    assert row == (
        134_398_224_000_000_000,  # time answered
        0,  # HRESULT
        5,  # minimum count needed
        "PC-1",  # client name
        uuid.UUID(CMID).bytes_le,
        134_398_223_400_000_000,  # client timestamp
        1,  # VM flag
        2,  # licence state
        43_111,  # minutes to expiration
        uuid.UUID("be497d04-241c-55ed-80a5-ec5561d80d71").bytes_le,  # activation (SKU) id
        uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f").bytes_le,  # application id
        product.kms_count_id.bytes_le,
        1,  # current count
        "127.0.0.1:50000",
        "",
    )
