"""Tests that kill mutants mutmut left surviving in the pure modules (docs/quality.md).

Every expectation is a literal written here (behaviour.md's numbers), not read from the code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import pytest

from kmsemu.catalog import default_catalog
from kmsemu.client import slmgr
from kmsemu.client.discovery import Candidate, Srv, describe, failure, rfc2782_order
from kmsemu.client.licence import (
    Activated,
    ActivationFailed,
    KeyInstalled,
    KeyUninstalled,
    Licence,
    PermanentlyActivated,
    Policy,
    Rearmed,
    TimePassed,
    TransitionError,
    apply,
    kms_answer,
)
from kmsemu.client.machine import Machine
from kmsemu.client.profile import Profile, new_hardware
from kmsemu.host.rules import (
    CountCache,
    HostIdentity,
    HostRules,
    HostSettings,
    LogRecord,
    client_hresult,
    new_identity,
)
from kmsemu.keys.product_key import KeyType, mint, setup_key
from kmsemu.klp.messages import ActivationRequest, LicenseStatus
from mak import rules as mak_rules
from mak.rules import Decision, KeyRecord, MachineRecord

WINDOWS = Policy(30, 30, 30, 3, 0)
OFFICE = Policy(25, 30, 30, 5, 1)


# -- licence.py --------------------------------------------------------------------------


def test_family_policies_are_behaviour_md_timers() -> None:
    assert Policy.for_family("office") == Policy(25, 30, 30, 5, 1)
    assert Policy.for_family("windows") == Policy(30, 30, 30, 3, 0)
    assert Policy.for_family("server") == Policy(30, 30, 30, 3, 0)


def test_minutes_remaining_rounds_down_and_stops_at_zero() -> None:
    grace = Licence(status=LicenseStatus.INITIAL_GRACE, grace_ends=1000.0)
    assert grace.minutes_remaining(1000.0 - 90) == 1
    assert grace.minutes_remaining(1000.0 - 59) == 0
    assert grace.minutes_remaining(1000.0 + 600) == 0


def test_install_and_uninstall_keep_intervals_policy_and_the_bonus_rearm() -> None:
    lic = Licence(
        status=LicenseStatus.LICENSED,
        key_installed=True,
        activation_interval=15,
        renewal_interval=45,
        rearms_left=2,
        bonus_rearm_given=True,
        policy=OFFICE,
    )
    installed = apply(lic, KeyInstalled(100.0, OFFICE)).licence
    assert (installed.activation_interval, installed.renewal_interval) == (15, 45)
    assert installed.bonus_rearm_given is True
    removed = apply(lic, KeyUninstalled(100.0)).licence
    assert (removed.activation_interval, removed.renewal_interval) == (15, 45)
    assert removed.policy == Policy(25, 30, 30, 5, 1)
    assert removed.rearms_left == 2
    assert removed.bonus_rearm_given is True
    assert removed.status is LicenseStatus.UNLICENSED


def test_a_windows_activation_gives_no_bonus_rearm_and_keeps_zero_rearms() -> None:
    lic = Licence(
        status=LicenseStatus.INITIAL_GRACE,
        key_installed=True,
        grace_ends=1e9,
        rearms_left=0,
        last_hresult=0xC004F074,
        policy=WINDOWS,
    )
    after = apply(lic, Activated(500.0, 120, 10080)).licence
    assert after.bonus_rearm_given is False
    assert after.rearms_left == 0
    assert after.last_hresult == 0
    assert after.last_activation == 500.0
    assert after.valid_until == 500.0 + 180 * 86400


def test_a_permanent_activation_clears_validity_schedule_and_last_error() -> None:
    lic = Licence(
        status=LicenseStatus.INITIAL_GRACE,
        key_installed=True,
        grace_ends=9000.0,
        valid_until=5000.0,
        next_attempt=7000.0,
        last_hresult=0xC004F074,
        rearms_left=3,
        kms_client=False,
    )
    step = apply(lic, PermanentlyActivated(100.0))
    assert step.error is None
    after = step.licence
    assert after.status is LicenseStatus.LICENSED
    assert after.valid_until is None
    assert after.next_attempt is None
    assert after.last_hresult == 0
    assert after.last_activation == 100.0


def test_a_lapsed_kms_activation_has_no_validity_left() -> None:
    lic = Licence(
        status=LicenseStatus.LICENSED, key_installed=True, valid_until=1000.0, rearms_left=3
    )
    after = apply(lic, TimePassed(1000.0)).licence
    assert after.status is LicenseStatus.OUT_OF_TOLERANCE_GRACE
    assert after.valid_until is None
    assert after.grace_ends == 1000.0 + 30 * 86400
    assert after.reason == 0xC004F00F


def test_a_rearm_schedules_a_kms_attempt_now_and_clears_the_reason() -> None:
    lic = Licence(
        status=LicenseStatus.NOTIFICATION,
        key_installed=True,
        next_attempt=None,
        rearms_left=2,
        reason=0xC004F009,
    )
    step = apply(lic, Rearmed(3000.0))
    assert step.new_cmid is True
    assert step.licence.next_attempt == 3000.0
    assert step.licence.reason == 0
    assert step.licence.rearms_left == 1
    assert step.licence.grace_ends == 3000.0 + 30 * 86400


def test_kms_answer_keeps_the_hosts_intervals_on_failure() -> None:
    assert kms_answer(10.0, 0xC004F042, 0, 25, 30, 60) == ActivationFailed(10.0, 0xC004F042, 30, 60)
    assert kms_answer(10.0, 0xC004F06C, 0, 25, 30, 60) == ActivationFailed(10.0, 0xC004F074, 30, 60)
    assert kms_answer(10.0, 0, 24, 25, 30, 60) == ActivationFailed(10.0, 0xC004F038, 30, 60)
    assert kms_answer(10.0, 0, 25, 25, 30, 60) == Activated(10.0, 30, 60)


def test_a_missing_transition_names_the_status_and_the_event() -> None:
    with pytest.raises(TransitionError, match="no transition for UNLICENSED on str"):
        apply(Licence(), "not an event")  # type: ignore[arg-type]


def test_evolving_a_licence_with_an_unknown_field_is_refused_by_name() -> None:
    from kmsemu.client.licence import _evolve

    with pytest.raises(AssertionError, match=re.escape("not Licence fields: {'colour'}")):
        _evolve(Licence(), colour="blue")


# -- mak/rules.py ------------------------------------------------------------------------

HW = bytes(range(10))


def _key(kind: KeyType, limit: int, **fields: object) -> KeyRecord:
    return KeyRecord("fp", "ABCDE", kind, 1, limit, 0.0, **fields)  # type: ignore[arg-type]


def test_an_unknown_key_is_refused_with_no_detail() -> None:
    assert mak_rules.decide(None, [], HW, 0.0) == Decision(None, refusal="key_unknown", detail="")
    assert mak_rules.refuse("key_blocked") == Decision(None, refusal="key_blocked", detail="")


def test_mak_refusals_say_why_in_their_detail() -> None:
    wrong = mak_rules.decide(_key(KeyType.KMS_CLIENT, 5), [], HW, 0.0)
    assert (wrong.refusal, wrong.detail) == ("key_wrong_type", "a kms-client key")

    host = _key(KeyType.KMS_HOST, 6, reactivations=9)
    spent = mak_rules.decide(host, [MachineRecord(7, HW, reactivations=9)], HW, 0.0)
    assert (spent.refusal, spent.detail) == (
        "key_unlock_limit",
        "this host was reactivated 9 times",
    )

    retail = mak_rules.decide(_key(KeyType.RETAIL, 1, used=1), [], HW, 0.0)
    assert (retail.refusal, retail.detail) == ("key_unlock_limit", "1 of 1 machines")

    extended = mak_rules.decide(_key(KeyType.MAK, 2, increased=1, used=3), [], HW, 0.0)
    assert (extended.refusal, extended.detail) == (
        "mak_extension_limit_exceeded",
        "3 of 3 activations",
    )

    plain = mak_rules.decide(_key(KeyType.MAK, 2, used=2), [], HW, 0.0)
    assert (plain.refusal, plain.detail) == ("mak_limit_exceeded", "2 of 2 activations")


# -- kmsemu/host/rules.py ----------------------------------------------------------------

APP = bytes(range(16))
FT_DAY = 86_400 * 10_000_000
FT_HOUR = 3_600 * 10_000_000
HOST_T0 = 133_000_000_000_000_000
HOST_ID = HostIdentity(b"hostid01", "06401-00206-042-123456-03-1033-20348.0000-3262026")
SERVER = default_catalog().find("windows-server-2022-standard")


@contextlib.contextmanager
def local_time_zone(name: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _request(at: int, **fields: object) -> bytes:
    return ActivationRequest(
        application_id=fields.pop("application_id", SERVER.application_id),
        sku_id=SERVER.sku_id,
        kms_count_id=SERVER.kms_count_id,
        client_machine_id=uuid.UUID(int=7),
        request_time=at,
        required_client_count=5,
        previous_client_machine_id=uuid.UUID(int=0),
        **fields,  # type: ignore[arg-type]
    ).to_bytes()


def _rules(**settings: int) -> HostRules:
    return HostRules(default_catalog(), HostSettings(**settings), HOST_ID)


def test_client_hresult_is_count_insufficient_only_below_the_threshold_of_a_success() -> None:
    assert client_hresult(0, 4, 5) == 0xC004F038
    assert client_hresult(0, 5, 5) == 0
    assert client_hresult(0xC004F042, 0, 5) == 0xC004F042
    assert client_hresult(0xC004F042, 9, 5) == 0xC004F042
    assert client_hresult(1, 0, 5) == 1


def test_live_counts_cmids_seen_in_the_last_thirty_days_only() -> None:
    window = 30 * FT_DAY
    cache = CountCache()
    cache.entries[APP] = OrderedDict([(b"a" * 16, 1000), (b"b" * 16, 2000)])
    assert cache.live(APP, 2000) == 2
    assert cache.live(APP, 1000 + window - 1) == 2
    assert cache.live(APP, 1000 + window) == 1
    assert cache.live(APP, 2000 + window) == 0
    assert cache.live(b"x" * 16, 2000) == 0


def test_the_reported_count_is_at_least_the_minimum_count() -> None:
    rules = _rules(min_count=3)
    assert rules.count(APP, HOST_T0) == 3
    rules.cache.entries[APP] = OrderedDict((bytes([n]) * 16, HOST_T0) for n in range(4))
    assert rules.count(APP, HOST_T0) == 4
    assert _rules().count(APP, HOST_T0 + 31 * FT_DAY) == 0


def test_a_bare_log_record_has_no_count_request_or_cmid() -> None:
    assert LogRecord.bare(5, 0xC004F042) == (5, 0xC004F042, 0, None, bytes(16), 0)


def test_capacity_is_twice_the_threshold_up_to_2000() -> None:
    cache = CountCache()
    cache.activate(APP, b"c" * 16, bytes(16), 1001, HOST_T0)
    assert cache.capacity[APP] == 2000
    cache.activate(b"o" * 16, b"c" * 16, bytes(16), 25, HOST_T0)
    assert cache.capacity[b"o" * 16] == 50


def test_a_restored_cache_is_oldest_first_whatever_the_row_order() -> None:
    rows = [(APP, b"B" * 16, 100), (APP, b"A" * 16, 200), (APP, b"C" * 16, 50)]
    cache = CountCache.restore(rows, {APP: 10})
    assert list(cache.entries[APP].items()) == [
        (b"C" * 16, 50),
        (b"B" * 16, 100),
        (b"A" * 16, 200),
    ]


def test_a_snapshot_of_an_application_with_nothing_recorded_is_empty() -> None:
    cache = CountCache(dirty={APP})
    assert cache.take_snapshot() == {APP: (0, [])}
    assert cache.dirty == set()


def test_host_identity_refusals_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^host_id must be 8 bytes$"):
        HostIdentity(b"short", "06401-00206-042-123456-03-1033-20348.0000-3262026")
    with pytest.raises(ValueError, match=r"^ePID 'nonsense' does not match the KLP/1 form$"):
        HostIdentity(b"hostid01", "nonsense")


def test_new_identity_draws_three_and_six_digit_groups_on_the_utc_day() -> None:
    # seed 523 draws 1000 first (rejected by randrange(1000)); seed 1118262 then 1000000
    first = new_identity(random.Random(523), datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert first.epid.startswith("06401-00206-")
    assert first.epid.endswith("-03-1033-9600.0000-3652026")
    second = new_identity(random.Random(1118262), datetime(2026, 1, 2, 0, 0, tzinfo=UTC))
    assert len(second.epid.split("-")[3]) == 6
    with local_time_zone("Asia/Tokyo"):
        late = new_identity(random.Random(1), datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert late.epid.endswith("-9600.0000-3652026")


def test_host_settings_min_count_is_a_32_bit_unsigned() -> None:
    assert HostSettings(min_count=4_294_967_295).min_count == 4_294_967_295
    with pytest.raises(ValueError, match=r"^min_count 4294967296 is negative or too large$"):
        HostSettings(min_count=4_294_967_296)
    with pytest.raises(ValueError, match=r"^min_count -1 is negative or too large$"):
        HostSettings(min_count=-1)


def test_host_rules_keep_the_count_cache_they_are_given() -> None:
    cache = CountCache()
    assert HostRules(default_catalog(), HostSettings(), HOST_ID, cache).cache is cache


def test_an_unreadable_request_is_answered_invalid_data_with_the_reason() -> None:
    answer = _rules().answer(bytes(10), bytes(12), HOST_T0)
    assert answer.log == (HOST_T0, 0x8007000D, 0, None, bytes(16), 0)
    assert answer.reason == "request plaintext of 10 bytes is under 232"


def test_refusals_carry_their_reason_through_answer() -> None:
    rules = _rules()
    other = rules.answer(_request(HOST_T0, application_id=uuid.UUID(int=99)), bytes(12), HOST_T0)
    assert (other.log.status, other.reason) == (0xC004F042, "product not in the catalog")
    ahead = rules.answer(_request(HOST_T0 + 5 * FT_HOUR), bytes(12), HOST_T0)
    assert (ahead.log.status, ahead.reason) == (0xC004F06C, "client clock +5.0 h off")


def test_lab_time_travel_moves_the_request_time_with_the_host() -> None:
    rules = _rules()
    rules.travel = 5 * FT_HOUR
    moved = rules.answer(_request(HOST_T0 - 5 * FT_HOUR), bytes(12), HOST_T0)
    assert (moved.log.status, moved.reason) == (0, "")
    rules.travel = FT_HOUR
    skewed = rules.answer(_request(HOST_T0 + 6 * FT_HOUR), bytes(12), HOST_T0)
    assert (skewed.log.status, skewed.reason) == (0xC004F06C, "client clock +7.0 h off")


# -- kmsemu/client/discovery.py (the pure part) ------------------------------------------


class HighestDraw(random.Random):
    """An rng whose ``randint(a, b)`` is always ``b``: the last record of each pool."""

    def randint(self, a: int, b: int) -> int:
        return b


class LowestDraw(random.Random):
    def randint(self, a: int, b: int) -> int:
        return a


def test_rfc2782_order_picks_by_running_weight_sum() -> None:
    records = [Srv(10, 1, 1688, "a."), Srv(10, 1, 1688, "b."), Srv(0, 5, 1688, "c.")]
    assert [r.target for r in rfc2782_order(records, HighestDraw())] == ["c.", "b.", "a."]
    assert [r.target for r in rfc2782_order(records, LowestDraw())] == ["c.", "a.", "b."]
    zero = [Srv(0, 3, 1688, "w."), Srv(0, 0, 1688, "z.")]
    assert [r.target for r in rfc2782_order(zero, LowestDraw())] == ["z.", "w."]


def test_dns_failures_keep_the_query_name_and_the_resolver_message() -> None:
    qname = "_vlmcs._tcp.lab.test."
    cases = [
        (dns.resolver.NXDOMAIN(), 0x8007232B, "_vlmcs._tcp.lab.test. does not exist"),
        (dns.resolver.NoAnswer(), 0x8007251D, "_vlmcs._tcp.lab.test. has no records of that type"),
        (
            dns.exception.Timeout(),
            0x800705B4,
            "_vlmcs._tcp.lab.test.: no DNS server answered in time",
        ),
        (
            dns.resolver.NoNameservers(),
            0x8007232A,
            "_vlmcs._tcp.lab.test.: All nameservers failed to answer the query.",
        ),
        (
            dns.name.LabelTooLong(),
            0x8007232B,
            "_vlmcs._tcp.lab.test.: A DNS label is > 63 octets long.",
        ),
    ]
    for exc, hresult, detail in cases:
        error = failure(exc, qname)
        assert (error.hresult, error.detail) == (hresult, detail)


def test_a_candidate_displays_as_dns_named_it() -> None:
    host = Candidate(("10.0.0.1", 1688), "kms1.lab.test.")
    assert host.display == "kms1.lab.test:1688"
    assert describe(host) == "10.0.0.1:1688"
    assert describe(Candidate(("fd00::1", 1689), "kms6.lab.test.")) == "[fd00::1]:1689"


# -- kmsemu/client/slmgr.py --------------------------------------------------------------

CLIENT_T0 = 1_795_348_800.0  # 2026-11-22 12:00:00 UTC
CLIENT_CMID = "11111111-2222-4333-8444-555555555555"


def _machine(key: str | None) -> Machine:
    m = Machine(
        Profile("pc", "PC-1", new_hardware(random.Random(1)), cmids={"windows": CLIENT_CMID}),
        default_catalog(),
        real_now=lambda: CLIENT_T0,
        secret="kmsemu-lab",
        new_cmid=lambda: "99999999-8888-4777-8666-555555555555",
        rng=random.Random(1),
    )
    if key is not None:
        assert m.install_key(key).hresult == 0
    return m


def _set(m: Machine, **fields: Any) -> None:
    m.install.licence = dataclasses.replace(m.install.licence, **fields)


SERVER_HEAD = [
    "Name: Windows Server 2022 Standard, VOLUME_KMSCLIENT channel",
    "Description: Windows(R) Operating System, VOLUME_KMSCLIENT channel",
]
SERVER_IDS = [
    "Activation ID: be497d04-241c-55ed-80a5-ec5561d80d71",
    "Application ID: 55c92734-d682-4d71-983e-d6ec3f16059f",
    "Extended PID: 03612-00226-854-911333-03-1033-9600.0000-0012026",
]


def test_slmgr_dli_of_a_kms_client_in_initial_grace() -> None:
    m = _machine(str(setup_key(6)))
    assert slmgr.licence_lines(m, verbose=False) == [
        *SERVER_HEAD,
        "Partial Product Key: M3BVT",
        "License Status: Initial grace period",
        "Time remaining: 43200 minute(s) (30 day(s))",
        "Remaining Windows rearm count: 3",
        "Trusted time: 11/22/2026 12:00:00 PM",
    ]
    assert slmgr.licence_lines(m, verbose=True) == [
        *SERVER_HEAD,
        *SERVER_IDS,
        "Product Key Channel: Volume:GVLK",
        "Installation ID: 000375289260109146295942902649150758360302253709549982242438405",
        "Partial Product Key: M3BVT",
        "License Status: Initial grace period",
        "Time remaining: 43200 minute(s) (30 day(s))",
        "Remaining Windows rearm count: 3",
        "Trusted time: 11/22/2026 12:00:00 PM",
        "",
        "Key Management Service client information",
        "    Client Machine ID (CMID): 11111111-2222-4333-8444-555555555555",
        "    DNS auto-discovery: KMS name not available",
        "    Activation interval: 120 minutes",
        "    Renewal interval: 10080 minutes",
        "    KMS host caching is enabled",
    ]
    assert slmgr.expiry_lines(m) == [
        "Windows Server 2022 Standard:",
        "    Initial grace period ends 12/22/2026 12:00:00 PM",
    ]


def test_slmgr_dli_of_a_licensed_kms_client_found_in_dns() -> None:
    m = _machine(str(setup_key(6)))
    _set(
        m,
        status=LicenseStatus.LICENSED,
        grace_ends=None,
        valid_until=CLIENT_T0 + 180 * 86400 - 30,
        rearms_left=0,
    )
    m.install.last_kms = {"source": "dns", "name": "kms1.lab.test.", "ip": "10.0.0.1"}
    m.install.last_kms["epid"] = "06401-00206-042-123456-03-1033-9600.0000-3262026"
    kms_part = [
        "",
        "Key Management Service client information",
        "    Client Machine ID (CMID): 11111111-2222-4333-8444-555555555555",
        "    KMS machine name from DNS: kms1.lab.test.",
        "    KMS machine IP address: 10.0.0.1",
        "    KMS machine extended PID: 06401-00206-042-123456-03-1033-9600.0000-3262026",
        "    Activation interval: 120 minutes",
        "    Renewal interval: 10080 minutes",
        "    KMS host caching is enabled",
    ]
    assert slmgr.licence_lines(m, verbose=False) == [
        *SERVER_HEAD,
        "Partial Product Key: M3BVT",
        "License Status: Licensed",
        "Volume activation expiration: 259199 minute(s) (179 day(s))",
        "Remaining Windows rearm count: 0",
        "Trusted time: 11/22/2026 12:00:00 PM",
        *kms_part,
    ]
    assert slmgr.expiry_lines(m) == [
        "Windows Server 2022 Standard:",
        "    Volume activation will expire 05/21/2027 11:59:30 AM",
    ]
    m.install.last_kms = {"source": "dns", "name": "kms1.lab.test."}
    assert slmgr.licence_lines(m, verbose=True)[-5:-3] == [
        "    KMS machine IP address: not available",
        "    KMS machine extended PID: ",
    ]


def test_slmgr_names_office_rearms_as_office() -> None:
    lines = slmgr.licence_lines(_machine(str(setup_key(10))), verbose=False)
    assert lines[-2:] == [
        "Remaining Office rearm count: 5",
        "Trusted time: 11/22/2026 12:00:00 PM",
    ]
    assert lines[1] == "Description: Office 21, VOLUME_KMSCLIENT channel"


def test_slmgr_dlv_of_a_permanently_activated_mak_has_no_kms_part() -> None:
    m = _machine(str(mint(KeyType.MAK, 6, 1)))
    _set(m, status=LicenseStatus.LICENSED, grace_ends=None, valid_until=None, next_attempt=None)
    assert slmgr.licence_lines(m, verbose=True) == [
        "Name: Windows Server 2022 Standard, VOLUME_MAK channel",
        "Description: Windows(R) Operating System, VOLUME_MAK channel",
        *SERVER_IDS,
        "Product Key Channel: Volume:MAK",
        "Installation ID: 000377661125868294843338493577090910790423743068565916808376325",
        "Partial Product Key: R644T",
        "License Status: Licensed",
        "Remaining Windows rearm count: 3",
        "Trusted time: 11/22/2026 12:00:00 PM",
    ]
    assert slmgr.expiry_lines(m) == [
        "Windows Server 2022 Standard:",
        "    The machine is permanently activated.",
    ]
    assert slmgr.deposited(m) == (
        "Confirmation ID for product be497d04-241c-55ed-80a5-ec5561d80d71 deposited successfully."
    )


def test_slmgr_without_a_key() -> None:
    m = _machine(None)
    assert slmgr.licence_lines(m, verbose=True) == ["Error: product key not found."]
    assert slmgr.expiry_lines(m) == ["Error: product key not found."]
    assert slmgr.error_line(0xC004F074) == (
        "Error: 0xC004F074 No Key Management Service (KMS) could be contacted."
    )


def test_slmgr_shows_times_in_utc_whatever_the_local_zone() -> None:
    m = _machine(str(setup_key(6)))
    with local_time_zone("Asia/Tokyo"):
        lines = slmgr.licence_lines(m, verbose=False)
    assert lines[-1] == "Trusted time: 11/22/2026 12:00:00 PM"


def test_slmgr_dlv_of_a_profile_whose_key_no_longer_checks() -> None:
    m = _machine(str(setup_key(6)))
    m.install.product_key = "B" * 25  # a damaged profile: the key text fails its check
    lines = slmgr.licence_lines(m, verbose=True)
    assert lines[0] == "Name: Windows Server 2022 Standard, VOLUME_KMSCLIENT channel"
    assert lines[5:8] == [
        "Product Key Channel: Volume:GVLK",
        "Installation ID: ",
        "Partial Product Key: BBBBB",
    ]
    m.install.product_key = None  # the product recorded without its key
    assert slmgr.licence_lines(m, verbose=True) == ["Error: product key not found."]


def test_a_clock_skew_is_reported_in_hours_to_a_tenth() -> None:
    answer = _rules().answer(_request(HOST_T0 + 360 * FT_HOUR), bytes(12), HOST_T0)
    assert answer.reason == "client clock +360.0 h off"
    behind = _rules().answer(_request(HOST_T0 - 4 * FT_HOUR - 3_600_000_000), bytes(12), HOST_T0)
    assert behind.reason == "client clock -4.1 h off"
