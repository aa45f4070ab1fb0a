"""Failures on demand: what a KMS host is told to get wrong, and where that is kept.

A fault is a kind (an HRESULT the host answers with, or a network failure), the
requests it applies to (a product, a client machine), how often it fires
(``remaining``; None: until cleared) and until when (``expires``, on the host's
clock, in Unix seconds). Each kind acts at one phase of a connection:

    accept   refuse             close the connection as it arrives
    bind     close-after-bind   send the BIND_ACK, then close
    request  0x........         answer the request with that status (not counted)
             stall              never answer; hold the connection
             reset              send part of an answer, then reset (RST)
             garbage            answer bytes that are no DCE/RPC PDU, then close
             slow               answer normally after ``delay`` seconds

Only request-phase faults can name a product or a client: the earlier phases
come before the host knows either. The first fault that matches fires.

The top of this module is pure (``Fault``, ``FaultSet``, ``new_fault``,
``parse_kind``: values in, values out, ``now`` passed in). ``FaultStore`` at
the end is the file they live in, beside the host's database: written
atomically (a temporary file and ``os.replace``), changed under an ``flock``
so that several processes spending one ``--times`` count spend N in total, and
watched by a running host through its ``os.stat`` signature.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Final

from kmsemu.errors import ConfigError, HResult, format_hresult
from kmsemu.host.rules import Answer, HostRules, LogRecord
from kmsemu.host.watch import FileWatch
from kmsemu.klp.messages import NAME_FIELD_SIZE, RequestFields, pack_response
from kmsemu.wire import encode_utf16_field

REFUSE: Final = "refuse"
CLOSE_AFTER_BIND: Final = "close-after-bind"
STALL: Final = "stall"
RESET: Final = "reset"
GARBAGE: Final = "garbage"
SLOW: Final = "slow"
#: The network faults, in the order the docs list them.
NETWORK_KINDS: Final = (REFUSE, CLOSE_AFTER_BIND, STALL, RESET, GARBAGE, SLOW)
#: The most a ``--times`` may say, a ``--for`` may last and a ``slow`` may wait.
MAX_TIMES: Final = 1_000_000
MAX_DURATION: Final = 366 * 86_400.0
MAX_DELAY: Final = 3_600.0
#: What ``garbage`` answers: its first byte is no DCE/RPC version (5), so no client can
#: take it for a PDU.
GARBAGE_BYTES: Final = b"KMSEMU FAULT: garbage, not a DCE/RPC PDU\r\n" * 2
FORMAT: Final = 1


class Phase(Enum):
    """When in a connection a fault acts."""

    ACCEPT = "accept"
    BIND = "bind"
    REQUEST = "request"


_PHASES: Final = {REFUSE: Phase.ACCEPT, CLOSE_AFTER_BIND: Phase.BIND}
#: The activation HRESULTs a fault may answer with: the registry's, but S_OK.
_STATUSES: Final = frozenset(int(h) for h in HResult if h != HResult.S_OK)


def parse_kind(text: str) -> tuple[str, int | None]:
    """``(kind, status)`` for a KIND as typed: a network fault's name, or an activation
    HRESULT by its hex (``0xC004F042``) or registry name (``product_not_served``), whose
    kind is its hex; ConfigError for anything else (S_OK is no fault)."""
    typed = text.strip()
    lowered = typed.lower()
    if lowered in NETWORK_KINDS:
        return lowered, None
    status: int | None = None
    if lowered.startswith("0x"):
        with contextlib.suppress(ValueError):
            status = int(lowered, 16)
    else:
        member = HResult.__members__.get(typed.upper().replace("-", "_"))
        status = int(member) if member is not None else None
    if status is not None and status in _STATUSES:
        return format_hresult(status), status
    raise ConfigError(
        f"{text!r} is neither an activation HRESULT of the registry (0xC004F042, "
        f"product_not_served...) nor a network fault ({', '.join(NETWORK_KINDS)})"
    )


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault as set; ``sku_id`` and ``client`` are GUID text (lower case)."""

    id: int
    kind: str
    status: int | None = None
    delay: float = 0.0
    remaining: int | None = None
    product: str | None = None
    sku_id: str | None = None
    client: str | None = None
    expires: float | None = None
    set_at: float = 0.0

    @property
    def phase(self) -> Phase:
        """When this fault acts."""
        return _PHASES.get(self.kind, Phase.REQUEST)

    def live(self, now: float) -> bool:
        """Not spent and not expired at ``now`` (host clock, Unix seconds)."""
        return (self.remaining is None or self.remaining > 0) and (
            self.expires is None or now < self.expires
        )

    def matches(
        self, phase: Phase, now: float, sku_id: bytes | None = None, cmid: bytes | None = None
    ) -> bool:
        """Whether this fault fires for a ``phase`` event at ``now``, for a request of
        ``sku_id`` from ``cmid`` (``bytes_le``; None: not known, so only a fault naming
        neither matches)."""
        if phase is not self.phase or not self.live(now):
            return False
        if self.sku_id is not None and (
            sku_id is None or uuid.UUID(bytes_le=sku_id) != uuid.UUID(self.sku_id)
        ):
            return False
        return self.client is None or (
            cmid is not None and uuid.UUID(bytes_le=cmid) == uuid.UUID(self.client)
        )

    def to_json(self) -> dict[str, Any]:
        """The fault as the file and ``fault show --json`` hold it."""
        data = asdict(self)
        if self.status is not None:
            data["status"] = format_hresult(self.status)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        """A fault read back (``ValueError``/``KeyError``/``TypeError`` when it is not one)."""
        status = data.get("status")
        kind, parsed = parse_kind(str(data["kind"]))
        if (parsed is None) != (status is None):
            raise ValueError(f"fault {data.get('id')}: kind and status disagree")
        return cls(
            id=int(data["id"]),
            kind=kind,
            status=parsed,
            delay=float(data.get("delay") or 0.0),
            remaining=None if data.get("remaining") is None else int(data["remaining"]),
            product=data.get("product"),
            sku_id=data.get("sku_id"),
            client=data.get("client"),
            expires=None if data.get("expires") is None else float(data["expires"]),
            set_at=float(data.get("set_at") or 0.0),
        )


def new_fault(
    kind_text: str,
    *,
    now: float,
    times: int | None = None,
    product: tuple[str, str] | None = None,
    client: str | None = None,
    duration: float | None = None,
    delay: float | None = None,
) -> Fault:
    """A fault from what was typed, checked (ConfigError naming what is wrong); its id is
    given when it joins a ``FaultSet``. ``product`` is ``(key, SKU id)``, ``now`` the host's
    clock (Unix seconds)."""
    kind, status = parse_kind(kind_text)
    if times is not None and not 1 <= times <= MAX_TIMES:
        raise ConfigError(
            f"--times {times}: give 1 to {MAX_TIMES} (none: until cleared)", field="times"
        )
    if duration is not None and not (math.isfinite(duration) and 0 < duration <= MAX_DURATION):
        raise ConfigError(f"--for {duration:g} s: give more than 0 and at most 366d", field="for")
    if kind == SLOW:
        if delay is None:
            raise ConfigError("slow needs a delay: 'slow 2s' or --delay 2s", field="delay")
        if not (math.isfinite(delay) and 0 < delay <= MAX_DELAY):
            raise ConfigError(f"delay {delay:g} s: give more than 0 and at most 1h", field="delay")
    elif delay is not None:
        raise ConfigError(f"a delay is for slow only, not {kind}", field="delay")
    if (product is not None or client is not None) and kind in _PHASES:
        raise ConfigError(
            f"{kind} acts before any request is read: --product and --client cannot apply",
            field="product" if product is not None else "client",
        )
    if client is not None:
        try:
            client = str(uuid.UUID(client))
        except ValueError:
            raise ConfigError(
                f"--client {client!r} is not a CMID (a GUID)", field="client"
            ) from None
    return Fault(
        id=0,
        kind=kind,
        status=status,
        delay=delay or 0.0,
        remaining=times,
        product=product[0] if product else None,
        sku_id=str(uuid.UUID(product[1])) if product else None,
        client=client,
        expires=now + duration if duration is not None else None,
        set_at=now,
    )


@dataclass(frozen=True, slots=True)
class FaultSet:
    """The faults in force, oldest first, and the id the next one gets."""

    faults: tuple[Fault, ...] = ()
    next_id: int = 1

    def add(self, fault: Fault) -> FaultSet:
        """With ``fault`` (a new id); one of the same kind, product and client is replaced."""
        same = (fault.kind, fault.sku_id, fault.client)
        kept = tuple(f for f in self.faults if (f.kind, f.sku_id, f.client) != same)
        return FaultSet((*kept, replace(fault, id=self.next_id)), self.next_id + 1)

    def clear(self, kind: str | None = None) -> tuple[FaultSet, int]:
        """Without the faults of ``kind`` (None: every fault), and how many went."""
        kept = tuple(f for f in self.faults if kind is not None and f.kind != kind)
        return FaultSet(kept, self.next_id), len(self.faults) - len(kept)

    def remove(self, fault_id: int) -> tuple[FaultSet, Fault | None]:
        """Without the fault ``fault_id``, and that fault (None: there is none)."""
        gone = next((f for f in self.faults if f.id == fault_id), None)
        if gone is None:
            return self, None
        return FaultSet(tuple(f for f in self.faults if f is not gone), self.next_id), gone

    def spend(self, fault_id: int) -> tuple[FaultSet, Fault | None]:
        """One firing of the fault ``fault_id`` taken off its count (a spent fault goes);
        the fault as fired, or None when it is no longer there (spent elsewhere)."""
        for i, fault in enumerate(self.faults):
            if fault.id != fault_id:
                continue
            if fault.remaining is None:
                return self, fault
            if fault.remaining < 1:
                break
            left = replace(fault, remaining=fault.remaining - 1)
            rest = self.faults[:i] + ((left,) if left.remaining else ()) + self.faults[i + 1 :]
            return FaultSet(rest, self.next_id), left
        return self, None

    def first_match(
        self, phase: Phase, now: float, sku_id: bytes | None = None, cmid: bytes | None = None
    ) -> Fault | None:
        """The oldest fault that fires for this event, if any."""
        for fault in self.faults:
            if fault.matches(phase, now, sku_id, cmid):
                return fault
        return None

    def live(self, now: float) -> tuple[Fault, ...]:
        """The faults neither spent nor expired at ``now``."""
        return tuple(f for f in self.faults if f.live(now))

    def to_bytes(self) -> bytes:
        """The file's content (JSON)."""
        doc = {
            "format": FORMAT,
            "next_id": self.next_id,
            "faults": [f.to_json() for f in self.faults],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> FaultSet:
        """A set read from the file's content; ConfigError when it is not one."""
        if not data.strip():
            return cls()
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
            faults = tuple(Fault.from_json(f) for f in doc["faults"])
            next_id = max([int(doc["next_id"]), *(f.id + 1 for f in faults)])
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ConfigError(f"the faults file cannot be read: {exc}") from exc
        return cls(faults, next_id)


def forced_answer(
    rules: HostRules, request: RequestFields, status: int, nonce: bytes, now: int
) -> Answer:
    """The host's answer to ``request`` when a fault forces ``status``: that status, count
    0, the host's intervals and identity; nobody is counted (``now`` is a FILETIME)."""
    log = LogRecord(now, status, 0, request, request.client_machine_id, request.request_time)
    plaintext = pack_response(
        status,
        nonce,
        log.client_machine_id,
        log.request_time,
        now,
        0,
        rules.settings.activation_interval,
        rules.settings.renewal_interval,
        rules.identity.host_id,
        encode_utf16_field(rules.identity.epid, NAME_FIELD_SIZE),
    )
    return Answer(plaintext, log, "forced by a fault")


# -- the file -------------------------------------------------------------------------


def faults_path(database: Path) -> Path:
    """The faults file of the host whose SQLite file is ``database``: beside it,
    ``host.faults.json`` (``lab.faults.json`` for the lab's)."""
    return database.with_name(database.stem + ".faults.json")


class FaultStore:
    """The faults file: read, changed under a lock, replaced atomically, watched."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._watch = FileWatch(path)

    def load(self) -> FaultSet:
        """What the file holds (empty when there is none)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return FaultSet()
        return FaultSet.from_bytes(data)

    def changed(self) -> bool:
        """Whether the file changed since the last call (one ``os.stat``); the first call
        says True."""
        return self._watch.changed()

    def seen_ns(self) -> int:
        """The file's modification time when ``changed`` last looked (ns; 0: none)."""
        return self._watch.seen_ns

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, faults: FaultSet) -> None:
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_bytes(faults.to_bytes())
        os.replace(temp, self.path)

    def add(self, fault: Fault) -> Fault:
        """Add ``fault``; the fault as stored (with its id)."""
        with self._locked():
            faults = self.load().add(fault)
            self._write(faults)
        return faults.faults[-1]

    def clear(self, kind: str | None = None) -> int:
        """Remove the faults of ``kind`` (None: all); how many went."""
        with self._locked():
            faults, removed = self.load().clear(kind)
            if removed:
                self._write(faults)
        return removed

    def remove(self, fault_id: int) -> Fault | None:
        """Remove the fault ``fault_id``; the fault removed (None: there was none)."""
        with self._locked():
            faults, gone = self.load().remove(fault_id)
            if gone is not None:
                self._write(faults)
        return gone

    def spend(self, fault_id: int) -> tuple[FaultSet, Fault | None]:
        """Spend one firing of ``fault_id`` in the file (see ``FaultSet.spend``)."""
        with self._locked():
            before = self.load()
            after, fired = before.spend(fault_id)
            if after is not before:
                self._write(after)
        return after, fired
