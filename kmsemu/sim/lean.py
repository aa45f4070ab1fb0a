"""The fast mode's lean renewal, in pure functions (``Engine._renew`` uses them).

A renewal that succeeds changes nothing of a licence but its three times, and
of the host nothing but the client's place in its count cache. These functions
do exactly that much, for the cases they can prove are such a renewal, and
tests/test_sim_fast.py checks them against the licence machine and
``CountCache.activate``: whenever they act, they give what those would.
"""

from __future__ import annotations

from typing import Final

from kmsemu.client.licence import VALIDITY_DAYS, Licence
from kmsemu.host.rules import LIVE_WINDOW, CountCache
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


def renewal_count(cache: CountCache, app: bytes, cmid: bytes, required: int, at: int) -> int | None:
    """``cache.activate(app, cmid, NIL, required, at)`` where it has nothing to do but count
    the client again: the application's capacity already fits ``required`` and ``at`` is
    not before its newest entry (so no capacity to raise, no reordering). None, having
    changed nothing, elsewhere: then ``activate`` itself runs."""
    entries = cache.entries.get(app)
    if not entries:
        return None
    capacity = cache.capacity.get(app, 0)
    wanted = 2 if required < 1 else 2000 if required > 1000 else 2 * required
    if wanted > capacity or entries[next(reversed(entries))] > at:
        return None
    cache.dirty.add(app)
    entries[cmid] = at
    entries.move_to_end(cmid)
    while len(entries) > capacity:
        entries.popitem(last=False)
    while entries:  # expire from the oldest end
        oldest = next(iter(entries))
        if at - entries[oldest] < LIVE_WINDOW:
            break
        del entries[oldest]
    return len(entries)
