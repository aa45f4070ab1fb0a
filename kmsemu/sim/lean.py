"""The fast mode's lean renewal, in pure functions (``Engine._renew`` uses them).

A renewal that succeeds changes nothing of a licence but its three times (the
host's side is its own ``CountCache.activate``). These functions do exactly that
much, for the licences they can prove renew so, and tests/test_sim_fast.py
checks them against the licence machine: whenever they act, they give what it
would.
"""

from __future__ import annotations

from typing import Final

from kmsemu.client.licence import VALIDITY_DAYS, Licence
from kmsemu.klp.messages import LicenseStatus
from kmsemu.sim.scenario import DAY

#: A licence's validity, in seconds, as the licence machine adds it.
VALIDITY_SECONDS: Final = VALIDITY_DAYS * DAY
_LICENSED: Final = LicenseStatus.LICENSED
_new_object: Final = object.__new__
_set_attribute: Final = object.__setattr__


def renews_in_place(lic: Licence, activation_interval: int, renewal_interval: int) -> bool:
    """Whether a renewal with these intervals changes only the licence's times (what
    ``renewed`` sets): a KMS activation's licence, licensed with these intervals, its rearm
    bonus given (or none due), no reason or error left from before."""
    return (
        lic.status is _LICENSED
        and lic.kms_client
        and lic.grace_ends is None
        and lic.valid_until is not None
        and lic.activation_interval == activation_interval
        and lic.renewal_interval == renewal_interval
        and lic.rearms_left is not None
        and (lic.bonus_rearm_given or lic.policy.rearm_bonus_after_activation <= 0)
        and lic.reason == 0
        and lic.last_hresult == 0
    )


def renewed(lic: Licence, now: float, next_attempt: float) -> Licence:
    """The licence machine's ``Activated`` at ``now`` on a licence that ``renews_in_place``
    (``next_attempt``: ``now`` plus the renewal interval): the three times alone set on a
    copy of its fields. ``Licence`` keeps its fields in an instance ``__dict__`` and has no
    ``__post_init__``, so setting the copy as the new instance's gives the same value."""
    values = lic.__dict__.copy()
    values["valid_until"] = now + VALIDITY_SECONDS
    values["next_attempt"] = next_attempt
    values["last_activation"] = now
    new: Licence = _new_object(Licence)
    _set_attribute(new, "__dict__", values)  # past the frozen __setattr__
    return new
