"""Host rules (klp-v1.md section 7, behaviour.md "KMS host counting"), pure, on a fake clock."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.catalog import default_catalog
from kmsemu.errors import HResult
from kmsemu.host.rules import (
    EPID_PATTERN,
    LIVE_WINDOW,
    MAX_SKEW,
    CountCache,
    HostIdentity,
    HostRules,
    HostSettings,
    new_identity,
)
from kmsemu.klp.messages import ActivationRequest
from kmsemu.wire import FILETIME_PER_SECOND, NIL_GUID, filetime_from_unix

T0 = filetime_from_unix(1_790_000_000)
DAY = 86_400 * FILETIME_PER_SECOND
NONCE = bytes(12)
IDENTITY = HostIdentity(b"hostid01", "06401-00206-042-123456-03-1033-20348.0000-3262026")
WINDOWS_CLIENT = default_catalog().find("windows-11-pro")
SERVER = default_catalog().find("windows-server-2022-standard")
OFFICE = default_catalog().find("office-ltsc-2021-proplus")


def cmid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


def request(
    n: int,
    *,
    product=SERVER,
    at: int = T0,
    previous: uuid.UUID = NIL_GUID,
    required: int | None = None,
    **extra,
) -> bytes:
    return ActivationRequest(
        application_id=extra.pop("application_id", product.application_id),
        sku_id=product.sku_id,
        kms_count_id=extra.pop("kms_count_id", product.kms_count_id),
        client_machine_id=cmid(n),
        request_time=at,
        required_client_count=product.threshold if required is None else required,
        previous_client_machine_id=previous,
        **extra,
    ).to_bytes()


def make_rules(**settings_kw: int) -> HostRules:
    return HostRules(default_catalog(), HostSettings(**settings_kw), IDENTITY)


def activate(rules: HostRules, n: int, at: int = T0, **kw) -> tuple[int, int]:
    answer = rules.answer(request(n, at=at, **kw), NONCE, at)
    return answer.response.status, answer.response.current_count


def test_count_climbs_per_unique_cmid_and_includes_the_requester() -> None:
    rules = make_rules()
    assert [activate(rules, n)[1] for n in range(5)] == [1, 2, 3, 4, 5]
    assert activate(rules, 0, T0 + 60)[1] == 5  # a renewal refreshes, does not add


def test_one_count_per_application_id() -> None:
    rules = make_rules()
    activate(rules, 1, product=SERVER)
    assert activate(rules, 2, product=WINDOWS_CLIENT)[1] == 2  # clients and servers together
    assert activate(rules, 3, product=OFFICE)[1] == 1  # Office counts apart


def test_cache_holds_ten_until_a_threshold_25_client_asks_then_fifty() -> None:
    rules = make_rules()
    counts = [activate(rules, n, T0 + n)[1] for n in range(12)]
    assert counts[-1] == 10
    assert activate(rules, 100, T0 + 100, product=WINDOWS_CLIENT)[1] == 11
    counts = [activate(rules, 200 + n, T0 + 200 + n)[1] for n in range(60)]
    assert max(counts) == 50 and counts[-1] == 50


def test_cache_never_shrinks_and_evicts_least_recently_seen() -> None:
    rules = make_rules()
    activate(rules, 999, T0, product=WINDOWS_CLIENT)  # capacity 50
    for n in range(49):
        activate(rules, n, T0 + 1 + n)
    activate(rules, 999, T0 + 100, product=WINDOWS_CLIENT)  # refresh: now the newest
    activate(rules, 500, T0 + 200)  # full: the oldest (cmid 0) goes
    app = SERVER.application_id.bytes_le
    entries = rules.cache.entries[app]
    assert len(entries) == 50
    assert cmid(0).bytes_le not in entries and cmid(999).bytes_le in entries
    assert rules.cache.capacity[app] == 50


#: behaviour.md: "The host counts unique client machine IDs (CMIDs) seen in the last
#: **30 days**", written out: 30 days in 100-ns FILETIME units.
THIRTY_DAYS = 25_920_000_000_000


def test_entries_expire_after_thirty_days() -> None:
    rules = make_rules()
    activate(rules, 1, T0)
    activate(rules, 2, T0 + DAY)
    assert activate(rules, 3, T0 + THIRTY_DAYS - 1)[1] == 3
    assert activate(rules, 4, T0 + THIRTY_DAYS)[1] == 3  # cmid 1 is exactly 30 days old: gone
    assert activate(rules, 5, T0 + DAY + THIRTY_DAYS + 1)[1] == 3  # cmid 2 gone too


def test_previous_cmid_is_replaced() -> None:
    rules = make_rules()
    activate(rules, 1)
    activate(rules, 2)
    assert activate(rules, 3, previous=cmid(1))[1] == 2
    assert activate(rules, 4, previous=cmid(77))[1] == 3  # unknown previous: nothing removed


def test_errors_are_not_counted_and_report_zero() -> None:
    rules = make_rules()
    activate(rules, 1)
    status, count = activate(rules, 2, kms_count_id=uuid.uuid4())
    assert (status, count) == (HResult.PRODUCT_NOT_SERVED, 0)
    status, count = activate(rules, 3, application_id=uuid.uuid4())
    assert (status, count) == (HResult.PRODUCT_NOT_SERVED, 0)
    answer = rules.answer(request(4, at=T0 + MAX_SKEW + 1), NONCE, T0)
    assert answer.response.status == HResult.TIMESTAMP_INVALID
    assert answer.response.current_count == 0
    assert activate(rules, 5)[1] == 2


#: behaviour.md: "clock skew tolerated: 4 hours, compared in UTC; beyond it the host answers
#: 0xC004F06C", written out: 4 hours in 100-ns FILETIME units.
FOUR_HOURS = 144_000_000_000


@pytest.mark.parametrize("delta", [FOUR_HOURS, -FOUR_HOURS])
def test_exactly_four_hours_is_accepted(delta: int) -> None:
    answer = make_rules().answer(request(1, at=T0 + delta), NONCE, T0)
    assert answer.response.status == 0


@pytest.mark.parametrize("delta", [FOUR_HOURS + 1, -FOUR_HOURS - 1])
def test_over_four_hours_is_refused(delta: int) -> None:
    answer = make_rules().answer(request(1, at=T0 + delta), NONCE, T0)
    assert answer.response.status == HResult.TIMESTAMP_INVALID
    assert answer.response.request_time == T0 + delta  # echoed


def test_check_order_invalid_then_product_then_clock() -> None:
    rules = make_rules()
    bad_both = request(1, at=T0 + 5 * 3600 * FILETIME_PER_SECOND, kms_count_id=uuid.uuid4())
    assert rules.answer(bad_both, NONCE, T0).response.status == HResult.PRODUCT_NOT_SERVED
    short = bad_both[:100]
    answer = rules.answer(short, NONCE, T0)
    assert answer.response.status == HResult.INVALID_DATA
    assert answer.response.client_machine_id == cmid(1)  # long enough to echo the CMID


def test_invalid_data_echoes_zero_when_too_short() -> None:
    answer = make_rules().answer(b"\x00" * 70, NONCE, T0)
    assert answer.response.status == HResult.INVALID_DATA
    assert answer.response.client_machine_id == NIL_GUID and answer.response.request_time == 0


def test_minimum_reported_count_and_intervals() -> None:
    rules = make_rules(min_count=25, activation_interval=60, renewal_interval=1440)
    answer = rules.answer(request(1), NONCE, T0)
    assert answer.response.current_count == 25
    assert (answer.response.activation_interval, answer.response.renewal_interval) == (60, 1440)
    assert activate(make_rules(min_count=25), 1, kms_count_id=uuid.uuid4())[1] == 0


def test_required_count_clamped_for_capacity() -> None:
    rules = make_rules()
    activate(rules, 1, required=0)
    assert rules.cache.capacity[SERVER.application_id.bytes_le] == 2
    activate(rules, 2, required=5000)
    assert rules.cache.capacity[SERVER.application_id.bytes_le] == 2000


def test_clock_going_back_keeps_oldest_first_order() -> None:
    rules = make_rules()
    activate(rules, 1, T0 + 100)
    activate(rules, 2, T0 + 50)  # host clock moved back
    entries = list(rules.cache.entries[SERVER.application_id.bytes_le].values())
    assert entries == sorted(entries)


def test_restore_round_trip() -> None:
    rules = make_rules()
    for n in range(4):
        activate(rules, n, T0 + n)
    snapshot = rules.cache.take_snapshot()
    rows = [(app, c, t) for app, (_, entries) in snapshot.items() for c, t in entries]
    restored = CountCache.restore(rows, {app: cap for app, (cap, _) in snapshot.items()})
    assert restored.entries == rules.cache.entries
    assert restored.capacity == rules.cache.capacity
    assert rules.cache.take_snapshot() == {}


def test_new_identity_is_valid_and_seeded() -> None:
    when = datetime(2026, 11, 22, tzinfo=UTC)
    first = new_identity(random.Random(1), when)
    assert first == new_identity(random.Random(1), when)
    assert EPID_PATTERN.match(first.epid) and first.epid.endswith("-3262026")
    assert len(first.host_id) == 8


# -- a model check: the cache against a brute-force reading of section 7 ---------------

events = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.integers(0, 12 * DAY // FILETIME_PER_SECOND),
        st.sampled_from([1, 5, 25]),
        st.one_of(st.none(), st.integers(0, 30)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_cache_matches_a_brute_force_model(evs: list[tuple[int, int, int, int | None]]) -> None:
    cache = CountCache()
    model: dict[bytes, int] = {}
    capacity = 0
    now = T0
    app = b"a" * 16
    for who, step, required, prev in evs:
        now += step * FILETIME_PER_SECOND
        capacity = max(capacity, 2 * required)
        me = cmid(who).bytes_le
        previous = cmid(prev).bytes_le if prev is not None else NIL_GUID.bytes_le
        if prev is not None and previous != me:
            model.pop(previous, None)
        model.pop(me, None)
        model[me] = now
        while len(model) > capacity:
            del model[min(model, key=lambda k: model[k])]
        model = {k: t for k, t in model.items() if now - t < LIVE_WINDOW}
        count = cache.activate(app, me, previous, required, now)
        assert count == len(model) <= capacity
        assert dict(cache.entries[app]) == model
