"""The licence state machine (kmsemu/client/licence.py): every row, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsemu.client.licence import (
    DAY,
    EVENT_TYPES,
    MINUTE,
    TRANSITIONS,
    Activated,
    ActivationFailed,
    Event,
    HardwareChanged,
    KeyInstalled,
    KeyUninstalled,
    Licence,
    PermanentlyActivated,
    Policy,
    Rearmed,
    TimePassed,
    apply,
)
from kmsemu.errors import HResult
from kmsemu.klp.messages import LicenseStatus as S

T0 = 1_790_000_000.0
WINDOWS = Policy.for_family("windows-client")
OFFICE = Policy.for_family("office")


def run(*events: Event, start: Licence | None = None) -> Licence:
    licence = start or Licence()
    for event in events:
        licence = apply(licence, event).licence
    return licence


def installed(policy: Policy = WINDOWS, at: float = T0, *, kms: bool = True) -> Licence:
    return run(KeyInstalled(at, policy, kms_client=kms))


def licensed(at: float = T0) -> Licence:
    return run(Activated(at, 120, 10_080), start=installed(at=at))


def mak_installed(policy: Policy = WINDOWS, at: float = T0) -> Licence:
    """A MAK (or retail, or KMS host key): grace, but nothing scheduled."""
    return installed(policy, at, kms=False)


def permanent(at: float = T0) -> Licence:
    return run(PermanentlyActivated(at), start=mak_installed(at=at))


def test_the_table_is_total() -> None:
    """No event can meet a status without a row (so no sequence reaches an undefined state)."""
    assert set(TRANSITIONS) == {(s, e) for s in S for e in EVENT_TYPES}


# -- setup key and grace -------------------------------------------------------------------


def test_setup_key_starts_initial_grace_and_an_attempt_now() -> None:
    lic = installed()
    assert lic.status is S.INITIAL_GRACE and lic.key_installed
    assert lic.grace_ends == T0 + 30 * DAY and lic.next_attempt == T0
    assert lic.rearms_left == 3 and lic.minutes_remaining(T0) == 30 * 24 * 60


def test_office_notifies_after_25_days_and_has_5_rearms() -> None:
    lic = installed(OFFICE)
    assert lic.grace_ends == T0 + 25 * DAY and lic.rearms_left == 5
    assert run(TimePassed(T0 + 25 * DAY), start=lic).status is S.NOTIFICATION


def test_grace_runs_out_into_notification() -> None:
    lic = installed()
    assert run(TimePassed(T0 + 30 * DAY - 1), start=lic).status is S.INITIAL_GRACE
    late = run(TimePassed(T0 + 30 * DAY), start=lic)
    assert (late.status, late.reason) == (S.NOTIFICATION, HResult.GRACE_EXPIRED)


def test_uninstall_leaves_unlicensed_and_keeps_rearms() -> None:
    lic = run(Rearmed(T0), KeyUninstalled(T0), start=installed())
    assert lic.status is S.UNLICENSED and not lic.key_installed and lic.rearms_left == 2
    assert run(KeyInstalled(T0, WINDOWS), start=lic).rearms_left == 2


@pytest.mark.parametrize(
    "event", [Activated(T0, 120, 10_080), ActivationFailed(T0, 1), Rearmed(T0)]
)
def test_without_a_key_there_is_nothing_to_activate_or_rearm(event: Event) -> None:
    step = apply(Licence(), event)
    assert step.error == HResult.PRODUCT_KEY_INVALID and step.licence == Licence()


@pytest.mark.parametrize("event", [HardwareChanged(T0), TimePassed(T0 + 400 * DAY)])
def test_unlicensed_ignores_time_and_hardware(event: Event) -> None:
    assert apply(Licence(), event).licence == Licence()


# -- activation, renewal, expiry -------------------------------------------------------


def test_activation_gives_180_days_and_adopts_the_hosts_intervals() -> None:
    lic = run(Activated(T0, 60, 1440), start=installed())
    assert lic.status is S.LICENSED and lic.valid_until == T0 + 180 * DAY
    assert (lic.activation_interval, lic.renewal_interval) == (60, 1440)
    assert lic.next_attempt == T0 + 1440 * MINUTE and lic.grace_ends is None


def test_a_failed_attempt_retries_after_the_activation_interval() -> None:
    step = apply(installed(), ActivationFailed(T0, HResult.COUNT_INSUFFICIENT, 90, 2000))
    lic = step.licence
    assert lic.status is S.INITIAL_GRACE and lic.last_hresult == HResult.COUNT_INSUFFICIENT
    assert lic.next_attempt == T0 + 90 * MINUTE and lic.renewal_interval == 2000
    assert apply(lic, ActivationFailed(T0, HResult.NO_KMS_HOST)).licence.next_attempt == (
        T0 + 90 * MINUTE
    )


def test_renewal_restarts_the_180_days() -> None:
    lic = run(Activated(T0 + 7 * DAY, 120, 10_080), start=licensed())
    assert lic.valid_until == T0 + 187 * DAY


def test_a_failed_renewal_stays_licensed_until_expiry() -> None:
    lic = run(ActivationFailed(T0 + 7 * DAY, HResult.NO_KMS_HOST), start=licensed())
    assert lic.status is S.LICENSED and lic.next_attempt == T0 + 7 * DAY + 120 * MINUTE


def test_181_days_without_renewal_is_out_of_tolerance_then_notification() -> None:
    lic = run(TimePassed(T0 + 181 * DAY), start=licensed())
    assert (lic.status, lic.reason) == (S.OUT_OF_TOLERANCE_GRACE, HResult.HARDWARE_OUT_OF_TOLERANCE)
    assert lic.grace_ends == T0 + 210 * DAY
    assert run(TimePassed(T0 + 210 * DAY), start=lic).status is S.NOTIFICATION
    # a jump straight past both ends lands in Notification
    assert run(TimePassed(T0 + 400 * DAY), start=licensed()).status is S.NOTIFICATION


def test_out_of_tolerance_and_notification_recover_by_activating() -> None:
    for start in (
        run(TimePassed(T0 + 181 * DAY), start=licensed()),
        run(TimePassed(T0 + 31 * DAY), start=installed()),
    ):
        lic = run(Activated(T0 + 300 * DAY, 120, 10_080), start=start)
        assert lic.status is S.LICENSED and lic.reason == 0


def test_notification_keeps_retrying() -> None:
    lic = run(TimePassed(T0 + 31 * DAY), ActivationFailed(T0 + 31 * DAY, 5), start=installed())
    assert lic.status is S.NOTIFICATION and lic.next_attempt == T0 + 31 * DAY + 120 * MINUTE
    assert apply(lic, HardwareChanged(T0)).licence == lic


def test_significant_hardware_change_puts_a_licensed_machine_out_of_tolerance() -> None:
    lic = run(HardwareChanged(T0 + DAY), start=licensed())
    assert (lic.status, lic.reason) == (S.OUT_OF_TOLERANCE_GRACE, HResult.HARDWARE_OUT_OF_TOLERANCE)
    assert lic.next_attempt == T0 + DAY and lic.valid_until is None
    assert apply(installed(), HardwareChanged(T0)).licence == installed()  # grace goes on


# -- MAK, retail and KMS host keys: activated on demand, then permanently ------------------


def test_a_mak_starts_the_initial_grace_with_nothing_scheduled() -> None:
    lic = mak_installed()
    assert lic.status is S.INITIAL_GRACE and not lic.kms_client
    assert lic.grace_ends == T0 + 30 * DAY and lic.next_attempt is None
    failed = run(ActivationFailed(T0, HResult.MAK_LIMIT_EXCEEDED), start=lic)
    assert failed.last_hresult == HResult.MAK_LIMIT_EXCEEDED and failed.next_attempt is None
    assert failed.status is S.INITIAL_GRACE


def test_permanent_activation_has_no_expiry_and_time_never_ends_it() -> None:
    lic = permanent()
    assert lic.status is S.LICENSED and lic.permanent
    assert (lic.valid_until, lic.next_attempt, lic.grace_ends) == (None, None, None)
    assert lic.last_activation == T0 and lic.minutes_remaining(T0) == 0
    assert run(TimePassed(T0 + 10 * 365 * DAY), start=lic) == lic
    # a failed reactivation (service down) keeps it licensed and records the HRESULT
    failed = run(ActivationFailed(T0 + DAY, HResult.CANNOT_CONNECT), start=lic)
    assert failed.permanent and failed.last_hresult == HResult.CANNOT_CONNECT
    assert failed.next_attempt is None


def test_kms_licences_are_never_permanent() -> None:
    assert not licensed().permanent and not mak_installed().permanent


def test_hardware_change_then_reactivation_of_a_permanent_licence() -> None:
    lic = run(HardwareChanged(T0 + DAY), start=permanent())
    assert (lic.status, lic.reason) == (S.OUT_OF_TOLERANCE_GRACE, HResult.HARDWARE_OUT_OF_TOLERANCE)
    assert lic.grace_ends == T0 + 31 * DAY and lic.next_attempt is None
    again = run(PermanentlyActivated(T0 + 2 * DAY), start=lic)
    assert again.permanent and again.reason == 0 and again.grace_ends is None
    # never reactivated: the out-of-tolerance grace runs out into Notification
    lapsed = run(TimePassed(T0 + 31 * DAY), start=lic)
    assert (lapsed.status, lapsed.reason) == (S.NOTIFICATION, HResult.GRACE_EXPIRED)
    assert run(PermanentlyActivated(T0 + 40 * DAY), start=lapsed).permanent


def test_rearm_of_a_permanent_licence_returns_it_to_grace_without_scheduling() -> None:
    step = apply(permanent(), Rearmed(T0 + DAY))
    assert step.new_cmid and step.licence.status is S.INITIAL_GRACE
    assert step.licence.next_attempt is None and not step.licence.kms_client


def test_the_two_kinds_of_activation_do_not_mix() -> None:
    step = apply(mak_installed(), Activated(T0, 120, 10_080))
    assert step.error == HResult.PRODUCT_KEY_INVALID and step.licence == mak_installed()
    step = apply(installed(), PermanentlyActivated(T0))
    assert step.error == HResult.PRODUCT_KEY_INVALID and step.licence == installed()


def test_office_gets_no_rearm_bonus_from_a_mak_activation() -> None:
    lic = run(PermanentlyActivated(T0), start=mak_installed(OFFICE))
    assert lic.rearms_left == 5 and not lic.bonus_rearm_given


def test_a_setup_key_after_a_mak_schedules_kms_attempts_again() -> None:
    lic = run(KeyInstalled(T0 + DAY, WINDOWS), start=permanent())
    assert lic.kms_client and lic.next_attempt == T0 + DAY and lic.status is S.INITIAL_GRACE


# -- rearm and keys ------------------------------------------------------------------------


def test_rearm_gives_30_days_a_new_cmid_and_counts_down() -> None:
    lic = installed()
    for left in (2, 1, 0):
        step = apply(run(TimePassed(T0 + 31 * DAY), start=lic), Rearmed(T0 + 31 * DAY))
        assert step.new_cmid and step.error is None
        lic = step.licence
        assert lic.status is S.INITIAL_GRACE and lic.rearms_left == left
        assert lic.grace_ends == T0 + 61 * DAY
    step = apply(lic, Rearmed(T0 + 31 * DAY))
    assert step.error == HResult.REARM_LIMIT_EXCEEDED and step.licence == lic
    assert not step.new_cmid


def test_rearm_on_a_licensed_machine_returns_it_to_grace() -> None:
    step = apply(licensed(), Rearmed(T0 + DAY))
    assert step.licence.status is S.INITIAL_GRACE and step.licence.valid_until is None


def test_office_gets_one_more_rearm_after_its_first_kms_activation() -> None:
    lic = run(Activated(T0, 120, 10_080), Activated(T0 + DAY, 120, 10_080), start=installed(OFFICE))
    assert lic.rearms_left == 6 and lic.bonus_rearm_given
    assert run(Activated(T0, 120, 10_080), start=installed()).rearms_left == 3  # Windows: none


@pytest.mark.parametrize(
    "status_maker", [installed, licensed, lambda: run(TimePassed(T0 + 31 * DAY), start=installed())]
)
def test_a_new_key_starts_a_new_grace(status_maker) -> None:  # type: ignore[no-untyped-def]
    lic = apply(status_maker(), KeyInstalled(T0 + 2 * DAY, WINDOWS)).licence
    assert lic.status is S.INITIAL_GRACE and lic.grace_ends == T0 + 32 * DAY


@pytest.mark.parametrize("status", [S.NON_GENUINE_GRACE, S.EXTENDED_GRACE])
def test_the_other_graces_behave_like_grace(status: S) -> None:
    lic = Licence(status=status, key_installed=True, grace_ends=T0 + DAY, rearms_left=1)
    assert run(TimePassed(T0 + DAY), start=lic).status is S.NOTIFICATION
    assert run(Activated(T0, 120, 10_080), start=lic).status is S.LICENSED


# -- properties ------------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "install",
                "mak-install",
                "uninstall",
                "ok",
                "permanent",
                "fail",
                "rearm",
                "hardware",
                "time",
            ]
        ),
        st.floats(0, 60 * DAY, allow_nan=False),
        st.sampled_from(["windows-client", "office"]),
    ),
    max_size=40,
)


def _event(kind: str, now: float, family: str) -> Event:
    return {
        "install": lambda: KeyInstalled(now, Policy.for_family(family)),
        "mak-install": lambda: KeyInstalled(now, Policy.for_family(family), kms_client=False),
        "uninstall": lambda: KeyUninstalled(now),
        "ok": lambda: Activated(now, 120, 10_080),
        "permanent": lambda: PermanentlyActivated(now),
        "fail": lambda: ActivationFailed(now, HResult.NO_KMS_HOST),
        "rearm": lambda: Rearmed(now),
        "hardware": lambda: HardwareChanged(now),
        "time": lambda: TimePassed(now),
    }[kind]()


@settings(max_examples=300, deadline=None)
@given(events)
def test_invariants_hold_for_any_event_sequence(seq: list[tuple[str, float, str]]) -> None:
    lic, now, last_success = Licence(), T0, None
    for kind, step, family in seq:
        now += step
        result = apply(lic, _event(kind, now, family))
        lic = result.licence
        if kind == "ok" and result.error is None:
            last_success = now
        lic = apply(lic, TimePassed(now)).licence
        assert lic.status in set(S)
        assert lic.key_installed == (lic.status is not S.UNLICENSED)
        if lic.status is S.LICENSED and not lic.kms_client:
            # a MAK-type key: licensed for good, nothing scheduled
            assert lic.permanent and lic.valid_until is None and lic.grace_ends is None
        elif lic.status is S.LICENSED:
            # Licensed by KMS never outlives 180 days without a successful renewal
            assert last_success is not None and now - last_success < 180 * DAY
            assert lic.valid_until is not None and lic.valid_until > now
        if not lic.kms_client:
            assert lic.next_attempt is None  # no automatic attempts for MAK-type keys
        if lic.status in (S.INITIAL_GRACE, S.OUT_OF_TOLERANCE_GRACE):
            assert lic.grace_ends is not None and lic.grace_ends > now
        if lic.rearms_left is not None:
            assert 0 <= lic.rearms_left <= 6


# -- every row of the table, against an expectation written out here ---------------------

_KEYED = {
    S.INITIAL_GRACE,
    S.LICENSED,
    S.OUT_OF_TOLERANCE_GRACE,
    S.NON_GENUINE_GRACE,
    S.NOTIFICATION,
    S.EXTENDED_GRACE,
}


def _in_status(status: S, kms: bool = True) -> Licence:
    if status is S.UNLICENSED:
        return Licence()
    if status is S.LICENSED:
        return _licensed_at(T0, kms)
    if status is S.NOTIFICATION:
        return run(TimePassed(T0 + 31 * DAY), start=installed(at=T0 - 31 * DAY, kms=kms))
    return Licence(
        status=status,
        key_installed=True,
        rearms_left=2,
        next_attempt=T0 if kms else None,
        grace_ends=T0 + 10 * DAY,
        kms_client=kms,
    )


def _licensed_at(at: float, kms: bool = True) -> Licence:
    if not kms:
        return permanent(at - DAY)
    return run(Activated(at - DAY, 120, 10_080), start=installed(at=at - DAY))


def _expected(status: S, event: type, kms: bool = True) -> S | str:
    """What each (status, event) must give; 'error' keeps the licence and reports."""
    if event is KeyInstalled:
        return S.INITIAL_GRACE
    if event is KeyUninstalled:
        return S.UNLICENSED
    if status is S.UNLICENSED:
        return (
            "error"
            if event in (Activated, PermanentlyActivated, ActivationFailed, Rearmed)
            else S.UNLICENSED
        )
    if event is Activated:
        return S.LICENSED if kms else "error"
    if event is PermanentlyActivated:
        return "error" if kms else S.LICENSED
    if event in (ActivationFailed, TimePassed):
        return status
    if event is Rearmed:
        return S.INITIAL_GRACE
    if event is HardwareChanged:
        return S.OUT_OF_TOLERANCE_GRACE if status is S.LICENSED else status
    raise AssertionError(event)


def _make(event: type) -> Event:
    return {
        KeyInstalled: KeyInstalled(T0, WINDOWS),
        KeyUninstalled: KeyUninstalled(T0),
        Activated: Activated(T0, 120, 10_080),
        PermanentlyActivated: PermanentlyActivated(T0),
        ActivationFailed: ActivationFailed(T0, 5),
        Rearmed: Rearmed(T0),
        HardwareChanged: HardwareChanged(T0),
        TimePassed: TimePassed(T0 + DAY),
    }[event]


@pytest.mark.parametrize("kms", [True, False], ids=["kms-client", "mak"])
@pytest.mark.parametrize(
    ("status", "event"),
    sorted(TRANSITIONS, key=lambda k: (k[0], k[1].__name__)),
    ids=lambda v: v.name if isinstance(v, S) else v.__name__,
)
def test_every_transition(status: S, event: type, kms: bool) -> None:
    start = _in_status(status, kms)
    assert start.status is status
    step = apply(start, _make(event))
    expected = _expected(status, event, kms)
    if expected == "error":
        assert step.error is not None and step.licence == start
    else:
        assert step.error is None
        assert step.licence.status is expected
        assert step.licence.key_installed == (expected in _KEYED)
        if expected is not S.UNLICENSED and event is not KeyInstalled:
            assert step.licence.kms_client == kms  # only a new key changes the kind
        if not step.licence.kms_client:
            assert step.licence.next_attempt is None
