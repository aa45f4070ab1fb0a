"""A volume-licensed install's licence, as one pure state machine (behaviour.md).

Theory of operation: a ``Licence`` is an immutable value; ``apply(licence,
event)`` returns the next value and what the event produced (an error
HRESULT, a new CMID). Every ``(status, event type)`` pair is a row of
``TRANSITIONS``; a pair missing from it is a bug, never a silent no-op.

Time is an input: ``TimePassed(now)`` fires whatever fell due by ``now``
(a KMS activation expiring after 180 days without renewal, a grace period
running out). Scheduling is an output: ``next_attempt`` says when the client
should next contact its KMS host: the renewal interval after a success, the
activation interval after a failure, both adopted from the host's answers.

    setup key ──► Initial grace ──(KMS success)──► Licensed ◄──(renewal)──┐
                      │                              │  └──────────────────┘
               (grace ends)              (180 days without renewal, or
                      ▼                   a significant hardware change)
                Notification ◄──(grace ends)── Out-of-tolerance grace

A MAK, retail or KMS host key (``kms_client`` False) has the same grace
periods but nothing scheduled (``next_attempt`` stays None: it activates
only when asked, online or by phone); ``PermanentlyActivated`` makes it
Licensed with no expiry (``valid_until`` None), which time never ends and
only a significant hardware change (out-of-tolerance grace), a rearm or a
new key leaves. The two kinds of activation do not mix: ``Activated`` (KMS)
on a MAK-type install and ``PermanentlyActivated`` on a KMS client are
refused with 0xC004F050 and change nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from kmsemu.errors import HResult
from kmsemu.klp.messages import LicenseStatus

DAY: Final = 86_400.0
MINUTE: Final = 60.0
VALIDITY_DAYS: Final = 180
#: Read on every request in the fleet simulator: a module constant costs less than an enum
#: member lookup.
_LICENSED: Final = LicenseStatus.LICENSED
_VALIDITY: Final = VALIDITY_DAYS * DAY
_tuple_new: Final = tuple.__new__


@dataclass(frozen=True, slots=True)
class Policy:
    """What a product family's licensing allows (behaviour.md "KMS client timers")."""

    initial_grace_days: int
    out_of_tolerance_days: int
    rearm_grace_days: int
    rearms: int
    rearm_bonus_after_activation: int

    @classmethod
    def for_family(cls, family: str) -> Policy:
        """The timers of a catalog family: Office's, or Windows' for any other."""
        if family == "office":  # notifications after 25 days; 5 rearms, +1 after KMS
            return cls(25, 30, 30, 5, 1)
        return cls(30, 30, 30, 3, 0)


# Not slots=True: with an instance ``__dict__``, ``_evolve`` can copy a licence in one step
# (the fleet simulator copies one on every request).
@dataclass(frozen=True)
class Licence:
    """Where an install stands: status, installed key, and the times that matter next."""

    status: LicenseStatus = LicenseStatus.UNLICENSED
    key_installed: bool = False
    #: End of the current grace period (initial, rearm or out of tolerance).
    grace_ends: float | None = None
    #: End of the KMS activation's validity (180 days after the last success).
    valid_until: float | None = None
    #: When the client should next contact KMS (renewal or retry); None: not at all.
    next_attempt: float | None = None
    activation_interval: int = 120
    renewal_interval: int = 10_080
    #: Rearms this installation has left; set by the first key installed, then kept.
    rearms_left: int | None = None
    bonus_rearm_given: bool = False
    #: Why the licence is in Notification or out-of-tolerance grace (0xC004F009, 0xC004F00F).
    reason: int = 0
    last_hresult: int = 0
    last_activation: float | None = None
    #: The installed product's rules (set when its key is installed).
    policy: Policy = dataclasses.field(default_factory=lambda: Policy.for_family("windows"))
    #: The key activates against KMS by itself (renewals, retries); False for a MAK, retail
    #: or KMS host key, activated on demand and then permanently.
    kms_client: bool = True

    @property
    def permanent(self) -> bool:
        """Licensed with no expiry (a MAK, retail or KMS host key activated)."""
        return self.status is LicenseStatus.LICENSED and not self.kms_client

    def minutes_remaining(self, now: float) -> int:
        """slmgr's "N minute(s)": to the end of validity when licensed, else of the grace
        (0 when there is no end: a permanent activation)."""
        end = self.valid_until if self.status is _LICENSED else self.grace_ends
        if end is None:
            return 0
        minutes = int((end - now) // MINUTE)
        return minutes if minutes > 0 else 0

    def schedule(self, when: float) -> float | None:
        """``when`` for a KMS client; None (nothing automatic) for the other keys."""
        return when if self.kms_client else None


_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Licence))
_FIELD_COUNT: Final = len(_FIELDS)
# object's own __new__ and __setattr__, looked up once (an attribute of a class is looked up
# afresh on every use)
_new_object: Final = object.__new__
_set_attribute: Final = object.__setattr__


def _evolve(lic: Licence, **changes: Any) -> Licence:
    """``dataclasses.replace(lic, **changes)`` at about a third of the cost."""
    return _licence(lic.__dict__ | changes)


def _licence(values: dict[str, Any]) -> Licence:
    """The licence with these field values (every field's): a frozen dataclass's
    ``__init__`` sets every field through ``object.__setattr__``, this sets the instance's
    ``__dict__`` once. ``Licence`` has no ``__post_init__``, so that gives the same value."""
    assert len(values) == _FIELD_COUNT, f"not Licence fields: {values.keys() - _FIELDS}"
    new = _new_object(Licence)
    _set_attribute(new, "__dict__", values)  # past the frozen __setattr__, as __init__ goes
    return new


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyInstalled:
    """A key was installed (slmgr /ipk): a KMS client setup key, or (``kms_client``
    False) a MAK, retail or KMS host key."""

    now: float
    policy: Policy
    kms_client: bool = True


@dataclass(frozen=True, slots=True)
class KeyUninstalled:
    """The product key was removed (slmgr /upk)."""

    now: float


@dataclass(frozen=True, slots=True)
class Activated:
    """The host answered with status 0 and a count that reached the threshold."""

    now: float
    activation_interval: int
    renewal_interval: int


@dataclass(frozen=True, slots=True)
class PermanentlyActivated:
    """A MAK, retail or KMS host key was activated (online, or a confirmation ID deposited)."""

    now: float


@dataclass(frozen=True, slots=True)
class ActivationFailed:
    """An attempt failed (no host, count too low, refused...); intervals seen, if any."""

    now: float
    hresult: int
    activation_interval: int | None = None
    renewal_interval: int | None = None


@dataclass(frozen=True, slots=True)
class Rearmed:
    """The licensing timers were reset (slmgr /rearm)."""

    now: float


@dataclass(frozen=True, slots=True)
class HardwareChanged:
    """A significant hardware change (fewer than 7 of 10 hardware-id bytes equal)."""

    now: float


@dataclass(frozen=True, slots=True)
class TimePassed:
    """The clock reached ``now``: grace periods and validity may have run out."""

    now: float


Event = (
    KeyInstalled
    | KeyUninstalled
    | Activated
    | PermanentlyActivated
    | ActivationFailed
    | Rearmed
    | HardwareChanged
    | TimePassed
)
EVENT_TYPES: Final = (
    KeyInstalled,
    KeyUninstalled,
    Activated,
    PermanentlyActivated,
    ActivationFailed,
    Rearmed,
    HardwareChanged,
    TimePassed,
)


class Step(NamedTuple):
    """What ``apply`` returns: the new licence, an error to report, a new CMID due."""

    licence: Licence
    error: int | None = None  # an HRESULT the command reports; the licence may still change
    new_cmid: bool = False  # the install must take a new client machine id (rearm)


# -- handlers ----------------------------------------------------------------------------


def _install(lic: Licence, e: Event) -> Step:
    assert isinstance(e, KeyInstalled)
    rearms = lic.rearms_left if lic.rearms_left is not None else e.policy.rearms
    return Step(
        Licence(
            status=LicenseStatus.INITIAL_GRACE,
            key_installed=True,
            grace_ends=e.now + e.policy.initial_grace_days * DAY,
            next_attempt=e.now if e.kms_client else None,
            activation_interval=lic.activation_interval,
            renewal_interval=lic.renewal_interval,
            rearms_left=rearms,
            bonus_rearm_given=lic.bonus_rearm_given,
            policy=e.policy,
            kms_client=e.kms_client,
        )
    )


def _uninstall(lic: Licence, e: Event) -> Step:
    return Step(
        Licence(
            activation_interval=lic.activation_interval,
            renewal_interval=lic.renewal_interval,
            rearms_left=lic.rearms_left,
            bonus_rearm_given=lic.bonus_rearm_given,
            policy=lic.policy,
        )
    )


def _activated(lic: Licence, e: Event) -> Step:
    assert isinstance(e, Activated)
    if not lic.kms_client:
        return Step(lic, HResult.PRODUCT_KEY_INVALID)  # a MAK-type key has no KMS activation
    extra = lic.policy.rearm_bonus_after_activation
    bonus = not lic.bonus_rearm_given and extra > 0
    # Every renewal of a KMS client comes here (millions in a year of a large simulated
    # fleet): the fields set one by one on a copy of the licence's cost a quarter less than
    # _evolve's keywords merged in, and Step(...) would run the NamedTuple's generated
    # Python __new__.
    now = e.now
    values = lic.__dict__.copy()
    values["status"] = _LICENSED
    values["grace_ends"] = None
    values["valid_until"] = now + _VALIDITY
    values["next_attempt"] = now + e.renewal_interval * MINUTE
    values["activation_interval"] = e.activation_interval
    values["renewal_interval"] = e.renewal_interval
    values["rearms_left"] = (lic.rearms_left or 0) + (extra if bonus else 0)
    values["bonus_rearm_given"] = lic.bonus_rearm_given or bonus
    values["reason"] = 0
    values["last_hresult"] = 0
    values["last_activation"] = now
    return _tuple_new(Step, (_licence(values), None, False))


def _permanent(lic: Licence, e: Event) -> Step:
    """Licensed for good: no expiry, nothing scheduled; the rearm bonus is KMS-only."""
    assert isinstance(e, PermanentlyActivated)
    if lic.kms_client:
        return Step(lic, HResult.PRODUCT_KEY_INVALID)  # a KMS client activates against KMS
    return Step(
        _evolve(
            lic,
            status=LicenseStatus.LICENSED,
            grace_ends=None,
            valid_until=None,
            next_attempt=None,
            reason=0,
            last_hresult=0,
            last_activation=e.now,
        )
    )


def _failed(lic: Licence, e: Event) -> Step:
    assert isinstance(e, ActivationFailed)
    act = e.activation_interval or lic.activation_interval
    return Step(
        _evolve(
            lic,
            next_attempt=lic.schedule(e.now + act * MINUTE),
            activation_interval=act,
            renewal_interval=e.renewal_interval or lic.renewal_interval,
            last_hresult=e.hresult,
        )
    )


def _no_key(lic: Licence, e: Event) -> Step:
    """Nothing to activate or rearm without a key (slmgr: product key not found)."""
    return Step(lic, HResult.PRODUCT_KEY_INVALID)


def _rearm(lic: Licence, e: Event) -> Step:
    assert isinstance(e, Rearmed)
    if not lic.rearms_left:
        return Step(lic, HResult.REARM_LIMIT_EXCEEDED)
    return Step(
        _evolve(
            lic,
            status=LicenseStatus.INITIAL_GRACE,
            grace_ends=e.now + lic.policy.rearm_grace_days * DAY,
            valid_until=None,
            next_attempt=lic.schedule(e.now),
            rearms_left=lic.rearms_left - 1,
            reason=0,
        ),
        new_cmid=True,
    )


def _hardware_out_of_tolerance(lic: Licence, e: Event) -> Step:
    assert isinstance(e, HardwareChanged)
    return Step(
        _evolve(
            lic,
            status=LicenseStatus.OUT_OF_TOLERANCE_GRACE,
            grace_ends=e.now + lic.policy.out_of_tolerance_days * DAY,
            valid_until=None,
            next_attempt=lic.schedule(e.now),
            reason=HResult.HARDWARE_OUT_OF_TOLERANCE,
        )
    )


def _unchanged(lic: Licence, e: Event) -> Step:
    return Step(lic)


def _licensed_time(lic: Licence, e: Event) -> Step:
    """180 days without a successful renewal: out-of-tolerance grace, then maybe more.
    A permanent activation (no ``valid_until``) never expires."""
    assert isinstance(e, TimePassed)
    if lic.valid_until is None or e.now < lic.valid_until:
        return Step(lic)
    lapsed = _evolve(
        lic,
        status=LicenseStatus.OUT_OF_TOLERANCE_GRACE,
        grace_ends=lic.valid_until + lic.policy.out_of_tolerance_days * DAY,
        valid_until=None,
        reason=HResult.HARDWARE_OUT_OF_TOLERANCE,
    )
    return _grace_time(lapsed, e)


def _grace_time(lic: Licence, e: Event) -> Step:
    assert isinstance(e, TimePassed)
    if lic.grace_ends is None or e.now < lic.grace_ends:
        return Step(lic)
    return Step(_evolve(lic, status=LicenseStatus.NOTIFICATION, reason=HResult.GRACE_EXPIRED))


Handler = Callable[[Licence, Event], Step]
_S = LicenseStatus
_GRACES: Final = (
    _S.INITIAL_GRACE,
    _S.OUT_OF_TOLERANCE_GRACE,
    _S.NON_GENUINE_GRACE,
    _S.EXTENDED_GRACE,
)

#: Every (status, event) pair and what it does. Unlicensed means no key is installed.
TRANSITIONS: Final[dict[tuple[LicenseStatus, type], Handler]] = {
    (_S.UNLICENSED, KeyInstalled): _install,
    (_S.UNLICENSED, KeyUninstalled): _uninstall,
    (_S.UNLICENSED, Activated): _no_key,
    (_S.UNLICENSED, PermanentlyActivated): _no_key,
    (_S.UNLICENSED, ActivationFailed): _no_key,
    (_S.UNLICENSED, Rearmed): _no_key,
    (_S.UNLICENSED, HardwareChanged): _unchanged,
    (_S.UNLICENSED, TimePassed): _unchanged,
    (_S.LICENSED, KeyInstalled): _install,
    (_S.LICENSED, KeyUninstalled): _uninstall,
    (_S.LICENSED, Activated): _activated,
    (_S.LICENSED, PermanentlyActivated): _permanent,
    (_S.LICENSED, ActivationFailed): _failed,
    (_S.LICENSED, Rearmed): _rearm,
    (_S.LICENSED, HardwareChanged): _hardware_out_of_tolerance,
    (_S.LICENSED, TimePassed): _licensed_time,
    (_S.NOTIFICATION, KeyInstalled): _install,
    (_S.NOTIFICATION, KeyUninstalled): _uninstall,
    (_S.NOTIFICATION, Activated): _activated,
    (_S.NOTIFICATION, PermanentlyActivated): _permanent,
    (_S.NOTIFICATION, ActivationFailed): _failed,
    (_S.NOTIFICATION, Rearmed): _rearm,
    (_S.NOTIFICATION, HardwareChanged): _unchanged,
    (_S.NOTIFICATION, TimePassed): _unchanged,
    **{(grace, KeyInstalled): _install for grace in _GRACES},
    **{(grace, KeyUninstalled): _uninstall for grace in _GRACES},
    **{(grace, Activated): _activated for grace in _GRACES},
    **{(grace, PermanentlyActivated): _permanent for grace in _GRACES},
    **{(grace, ActivationFailed): _failed for grace in _GRACES},
    **{(grace, Rearmed): _rearm for grace in _GRACES},
    **{(grace, HardwareChanged): _unchanged for grace in _GRACES},
    **{(grace, TimePassed): _grace_time for grace in _GRACES},
}


#: Host statuses a client shows as they are; any other refusal shows as 0xC004F074.
SHOWN_AS_IS: Final = frozenset({HResult.PRODUCT_NOT_SERVED})


def kms_answer(
    now: float,
    status: int,
    count: int,
    threshold: int,
    activation_interval: int,
    renewal_interval: int,
) -> Activated | ActivationFailed:
    """What a KMS host's answer means to the client: activated when the host said 0 and
    its count reached the product's threshold; else a failure, 0xC004F038 below the
    threshold (the host's intervals are adopted either way)."""
    if status != 0:
        shown = status if status in SHOWN_AS_IS else HResult.NO_KMS_HOST
        return ActivationFailed(now, shown, activation_interval, renewal_interval)
    if count < threshold:
        return ActivationFailed(
            now, HResult.COUNT_INSUFFICIENT, activation_interval, renewal_interval
        )
    return Activated(now, activation_interval, renewal_interval)


class TransitionError(KeyError):
    """A (status, event) pair with no row: a bug in the table, never a user error."""


def apply(licence: Licence, event: Event) -> Step:
    """The licence after ``event``, and what the event produced."""
    handler = TRANSITIONS.get((licence.status, type(event)))
    if handler is None:
        raise TransitionError(f"no transition for {licence.status.name} on {type(event).__name__}")
    return handler(licence, event)
