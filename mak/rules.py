"""What an activation costs: the MAK service's counting rules, pure.

A registered key (``KeyRecord``) allows a number of machines: a MAK its
activation limit plus every increase granted, a retail key one machine, a KMS
host key six hosts. A machine is known by the hardware ID recorded when its
activation was counted; a request whose hardware ID has at least 7 of 10
bytes equal to a recorded one (keys.md section 2) is that machine again.

``decide`` reads the key, the recorded machines that could match, the
request's hardware ID and the time, and answers with a ``Decision``: count a
new machine, reactivate a known one for free, reactivate a KMS host (which
uses one of its 9 reactivations), or refuse with a ``SERVICE_ERRORS`` code.
The stores call it inside the transaction that holds the key's row, so what
it decides is what gets written (PostgreSQL's store decides in the database
and then calls it on the rows it read there, to check what was written and
to word any refusal).

Candidate lookup: two IDs that agree on 7 of 10 bytes disagree on at most
3, so at least one of the four byte groups of ``GROUPS`` is equal in both.
Stores index the groups and fetch only machines sharing one of them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kmsemu.keys.activation_ids import same_machine
from kmsemu.keys.product_key import KeyType

#: Byte ranges of the hardware ID that stores index (any 3 differing bytes leave one intact).
GROUPS: Final = ((0, 3), (3, 6), (6, 8), (8, 10))
HARDWARE_ID_LENGTH: Final = 10
#: Defaults per key type: machines, and reactivations of one machine that count.
RETAIL_MACHINES: Final = 1
KMS_HOST_MACHINES: Final = 6
KMS_HOST_REACTIVATIONS: Final = 9
ACTIVATING_TYPES: Final = frozenset({KeyType.MAK, KeyType.RETAIL, KeyType.KMS_HOST})


def hardware_groups(hardware_id: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """The four indexed slices of a hardware ID."""
    a, b, c, d = (hardware_id[start:end] for start, end in GROUPS)
    return a, b, c, d


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A registered key, as the stores hold it (never the whole key: its fingerprint)."""

    fingerprint: str
    last5: str
    type: KeyType
    product: int
    limit: int
    created: float
    increased: int = 0
    used: int = 0
    blocked: bool = False
    expires: float | None = None
    #: Reactivations of one machine that count (KMS host keys: 9); 0 means free.
    reactivations: int = 0

    @property
    def total(self) -> int:
        """Machines the key allows: its limit plus every increase granted."""
        return self.limit + self.increased

    @property
    def remaining(self) -> int:
        """Machines the key may still activate (never below 0)."""
        return max(0, self.total - self.used)

    def expired(self, now: float) -> bool:
        """Whether the key's expiry has passed at ``now``."""
        return self.expires is not None and now >= self.expires


def default_limit(key_type: KeyType) -> int | None:
    """Machines a key of this type allows when registration names no limit."""
    return {KeyType.RETAIL: RETAIL_MACHINES, KeyType.KMS_HOST: KMS_HOST_MACHINES}.get(key_type)


def default_reactivations(key_type: KeyType) -> int:
    """Reactivations of one machine that count for a key type (KMS host keys only)."""
    return KMS_HOST_REACTIVATIONS if key_type is KeyType.KMS_HOST else 0


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """A machine whose activation was counted against a key."""

    id: int
    hardware_id: bytes
    reactivations: int = 0


class Verdict(enum.Enum):
    """What an activation costs, when it is allowed."""

    NEW = "new"  # a machine not seen before: uses one activation
    SAME = "same"  # a known machine: free
    REACTIVATED = "reactivated"  # a known KMS host: uses one of its reactivations


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``decide`` answers: a verdict and the machine it concerns, or a refusal."""

    verdict: Verdict | None
    #: The recorded machine for SAME and REACTIVATED.
    machine: MachineRecord | None = None
    #: The refusal (a ``SERVICE_ERRORS`` code) when ``verdict`` is None.
    refusal: str | None = None
    detail: str = ""

    @property
    def counted(self) -> bool:
        """Whether the activation uses one of the key's machines."""
        return self.verdict is Verdict.NEW


def refuse(code: str, detail: str = "") -> Decision:
    """A refusal with a ``SERVICE_ERRORS`` code and a detail."""
    return Decision(None, refusal=code, detail=detail)


def match(machines: Sequence[MachineRecord], hardware_id: bytes) -> MachineRecord | None:
    """The first recorded machine the hardware ID belongs to (an exact match first)."""
    for machine in machines:
        if machine.hardware_id == hardware_id:
            return machine
    for machine in machines:
        if same_machine(machine.hardware_id, hardware_id):
            return machine
    return None


def decide(
    key: KeyRecord | None, machines: Sequence[MachineRecord], hardware_id: bytes, now: float
) -> Decision:
    """What one activation of ``key`` from ``hardware_id`` at ``now`` does."""
    if key is None:
        return refuse("key_unknown")
    if key.type not in ACTIVATING_TYPES:
        return refuse("key_wrong_type", f"a {key.type.label} key")
    if key.blocked:
        return refuse("key_blocked")
    if key.expired(now):
        return refuse("key_expired")
    known = match(machines, hardware_id)
    if known is not None:
        if not key.reactivations:
            return Decision(Verdict.SAME, known)
        if known.reactivations >= key.reactivations:
            return refuse(
                "key_unlock_limit", f"this host was reactivated {known.reactivations} times"
            )
        return Decision(Verdict.REACTIVATED, known)
    if key.used < key.total:
        return Decision(Verdict.NEW)
    if key.type is not KeyType.MAK:
        return refuse("key_unlock_limit", f"{key.used} of {key.total} machines")
    if key.increased:
        return refuse("mak_extension_limit_exceeded", f"{key.used} of {key.total} activations")
    return refuse("mak_limit_exceeded", f"{key.used} of {key.total} activations")
