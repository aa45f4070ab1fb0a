"""PostgreSQL activations in one round trip: the server-side function and the combiner.

Why: ``SqlStore.activate`` holds the key's row lock from its ``SELECT ... FOR
UPDATE`` until its COMMIT, and the COMMIT waits for the WAL flush. Every
round trip made inside (six: BEGIN, the key, the candidates, the insert, the
update, COMMIT) and the flush are time the key's other activations wait, so a
key's activations run one after another at a few hundred a second however
many clients there are.

``mak_activate`` (``ACTIVATE_FUNCTION``, created with the schema) does the
whole activation in the database: it locks the key, looks for an earlier
answer to the request and for the machine, and writes what
``mak.rules.decide`` allows. It takes a list of activations of one key and
does them in order under one lock and one commit, so one round trip and one
WAL flush serve all the activations of the key that arrived while the
previous call was out (``Combiner``): a batch is what those activations
would have done one after another, and counting stays exact across
processes because every batch holds the key's row.

The function returns, for each activation, the rows it read (the key as it
was before, the machine it matched, an earlier answer to the request) and
what it wrote; ``answer`` decides again from them with ``mak.rules`` in
Python. Refusals and their details come from the rules, and a function that
wrote something other than what the rules allow is an error, never a silent
miscount.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from kmsemu.errors import ServiceError
from kmsemu.keys.activation_ids import SAME_MACHINE_MIN_EQUAL
from mak import rules
from mak.rules import MachineRecord, Verdict
from mak.store.base import Activation, Pending
from mak.store.sql import KEY_COLUMNS, key_record, replayed


def _match(hardware_id: str, groups: Sequence[str]) -> str:
    """``mak.rules.match`` as SQL: the key's ($1) machine sharing a group with the hardware
    ID and 7 of its 10 bytes, an exact match first, else the first recorded. (An OR of the
    groups: PostgreSQL answers it with a BitmapOr of the four indexes, and plans it in a
    third of the time a UNION takes; every plan here is made afresh, see below.)"""
    equal = " + ".join(
        f"(get_byte(c.hardware_id, {n}) = get_byte({hardware_id}, {n}))::int"
        for n in range(rules.HARDWARE_ID_LENGTH)
    )
    shared = " OR ".join(f"c.g{n} = {group}" for n, group in enumerate(groups))
    return (
        "SELECT c.id, c.hardware_id, c.reactivations FROM mak_machines c"
        f" WHERE c.fingerprint = $1 AND ({shared})"
        f" AND (c.hardware_id = {hardware_id} OR {equal} >= {SAME_MACHINE_MIN_EQUAL})"
        f" ORDER BY c.hardware_id <> {hardware_id}, c.id LIMIT 1"
    )


_GROUP_NAMES = [f"g{n}" for n in range(len(rules.GROUPS))]
#: Every activation's machine, as the machines are before the call: arrays by item.
_MATCHES = (
    "SELECT array_agg(m.id ORDER BY q.n), array_agg(m.hardware_id ORDER BY q.n),"
    " array_agg(m.reactivations ORDER BY q.n)"
    f" FROM unnest($2, {', '.join(f'${n + 3}' for n in range(len(rules.GROUPS)))})"
    f" WITH ORDINALITY AS q(hw, {', '.join(_GROUP_NAMES)}, n)"
    f" LEFT JOIN LATERAL ({_match('q.hw', [f'q.{g}' for g in _GROUP_NAMES])}) m ON true"
)
#: One activation's machine, as the machines are now ($2: its hardware ID, $3...: groups).
_MATCH = _match("$2", [f"${n + 3}" for n in range(len(rules.GROUPS))])
_ACTIVATING = ", ".join(str(int(t)) for t in sorted(rules.ACTIVATING_TYPES))
_KEY_OUT = ", ".join(f"k.{c.strip()}" for c in KEY_COLUMNS.split(","))
#: What the function answers for an item it could not record (never while the row is held).
_UNAVAILABLE: Final = "unavailable"

ACTIVATE_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION mak_activate(
    p_fingerprint TEXT, p_hardware_ids BYTEA[],
    p_g0 BYTEA[], p_g1 BYTEA[], p_g2 BYTEA[], p_g3 BYTEA[],
    p_names TEXT[], p_routes TEXT[], p_nows DOUBLE PRECISION[], p_request_ids TEXT[],
    OUT k_fingerprint TEXT, OUT k_last5 TEXT, OUT k_type INTEGER, OUT k_product INTEGER,
    OUT k_limit INTEGER, OUT k_increased INTEGER, OUT k_used INTEGER, OUT k_blocked INTEGER,
    OUT k_expires DOUBLE PRECISION, OUT k_reactivations INTEGER, OUT k_created DOUBLE PRECISION,
    OUT m_id BIGINT, OUT m_hardware_id BYTEA, OUT m_reactivations INTEGER,
    OUT verdict TEXT, OUT machine_id BIGINT,
    OUT r_fingerprint TEXT, OUT r_machine_id BIGINT, OUT r_verdict TEXT, OUT r_hardware_id BYTEA)
RETURNS SETOF RECORD
LANGUAGE plpgsql AS $$
DECLARE
    v_found BOOLEAN;
    v_counted INTEGER := 0;
    -- each activation's machine as the call found them, and what the call changed since
    v_ids BIGINT[];
    v_hws BYTEA[];
    v_reacts INTEGER[];
    v_touched BIGINT[] := '{{}}';
    v_new0 BYTEA[] := '{{}}';
    v_new1 BYTEA[] := '{{}}';
    v_new2 BYTEA[] := '{{}}';
    v_new3 BYTEA[] := '{{}}';
BEGIN
    SELECT {_KEY_OUT}
      INTO k_fingerprint, k_last5, k_type, k_product, k_limit, k_increased, k_used, k_blocked,
           k_expires, k_reactivations, k_created
      FROM mak_keys k WHERE k.fingerprint = p_fingerprint FOR UPDATE;
    v_found := FOUND;
    -- A new statement, a new snapshot: machines committed while we waited for the lock are
    -- seen. EXECUTE plans it afresh, with the table's size as it is: every (fingerprint, gN)
    -- index can serve "fingerprint = $1", and a plan cached while the table was small may
    -- pick the wrong index for each group and read every machine of the key.
    IF v_found THEN
        EXECUTE '{_MATCHES}'
           INTO v_ids, v_hws, v_reacts
          USING p_fingerprint, p_hardware_ids, p_g0, p_g1, p_g2, p_g3;
    END IF;
    FOR n IN 1 .. coalesce(cardinality(p_hardware_ids), 0) LOOP
        m_id := NULL; m_hardware_id := NULL; m_reactivations := NULL;
        verdict := NULL; machine_id := NULL;
        r_fingerprint := NULL; r_machine_id := NULL; r_verdict := NULL; r_hardware_id := NULL;
        IF NOT v_found THEN
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF p_request_ids[n] IS NOT NULL THEN
            SELECT r.fingerprint, r.machine_id, r.verdict
              INTO r_fingerprint, r_machine_id, r_verdict
              FROM mak_requests r WHERE r.request_id = p_request_ids[n];
            IF FOUND THEN
                SELECT m.hardware_id INTO r_hardware_id
                  FROM mak_machines m WHERE m.id = r_machine_id;
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;
        IF p_g0[n] = ANY(v_new0) OR p_g1[n] = ANY(v_new1) OR p_g2[n] = ANY(v_new2)
           OR p_g3[n] = ANY(v_new3) THEN  -- it may be a machine this call recorded
            EXECUTE '{_MATCH}'
               INTO m_id, m_hardware_id, m_reactivations
              USING p_fingerprint, p_hardware_ids[n], p_g0[n], p_g1[n], p_g2[n], p_g3[n];
        ELSE
            m_id := v_ids[n]; m_hardware_id := v_hws[n]; m_reactivations := v_reacts[n];
            IF m_id = ANY(v_touched) THEN
                SELECT m.reactivations INTO m_reactivations FROM mak_machines m WHERE m.id = m_id;
            END IF;
        END IF;
        IF k_type NOT IN ({_ACTIVATING}) OR k_blocked <> 0
           OR (k_expires IS NOT NULL AND p_nows[n] >= k_expires) THEN
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF m_id IS NOT NULL THEN
            IF k_reactivations = 0 THEN
                verdict := '{Verdict.SAME.value}';
            ELSIF m_reactivations >= k_reactivations THEN
                RETURN NEXT;
                CONTINUE;
            ELSE
                verdict := '{Verdict.REACTIVATED.value}';
            END IF;
            machine_id := m_id;
            v_touched := v_touched || m_id;
            UPDATE mak_machines SET last_at = p_nows[n],
                   reactivations = reactivations + (verdict = '{Verdict.REACTIVATED.value}')::int
             WHERE id = m_id;
        ELSIF k_used < k_limit + k_increased THEN
            INSERT INTO mak_machines (fingerprint, hardware_id, g0, g1, g2, g3, machine_name,
                                      route, first_at, last_at, reactivations)
            VALUES (p_fingerprint, p_hardware_ids[n], p_g0[n], p_g1[n], p_g2[n], p_g3[n],
                    p_names[n], p_routes[n], p_nows[n], p_nows[n], 0)
            ON CONFLICT (fingerprint, hardware_id) DO NOTHING
            RETURNING id INTO machine_id;
            IF machine_id IS NULL THEN  -- cannot happen while the key's row is held
                verdict := '{_UNAVAILABLE}';
                RETURN NEXT;
                CONTINUE;
            END IF;
            verdict := '{Verdict.NEW.value}';
            v_new0 := v_new0 || p_g0[n];
            v_new1 := v_new1 || p_g1[n];
            v_new2 := v_new2 || p_g2[n];
            v_new3 := v_new3 || p_g3[n];
        ELSE
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF p_request_ids[n] IS NOT NULL THEN
            INSERT INTO mak_requests (request_id, fingerprint, machine_id, verdict, at)
            VALUES (p_request_ids[n], p_fingerprint, machine_id, verdict, p_nows[n])
            ON CONFLICT (request_id) DO NOTHING;
        END IF;
        RETURN NEXT;  -- the key as this activation found it; the next one finds it used
        IF verdict = '{Verdict.NEW.value}' THEN
            k_used := k_used + 1;
            v_counted := v_counted + 1;
        END IF;
    END LOOP;
    IF v_counted > 0 THEN
        UPDATE mak_keys SET used = used + v_counted WHERE fingerprint = p_fingerprint;
    END IF;
END
$$;
"""
#: prepare=False when executed: preparing would cost a round trip of its own.
CALL: Final = (
    "SELECT * FROM mak_activate(%s::text, %s::bytea[], %s::bytea[], %s::bytea[], %s::bytea[],"
    " %s::bytea[], %s::text[], %s::text[], %s::float8[], %s::text[])"
)


@dataclass(frozen=True, slots=True)
class Failed:
    """A call that failed (no connection, a database error): every activation in it."""

    detail: str


def call_params(fingerprint: str, batch: Sequence[Pending]) -> tuple[Any, ...]:
    """The parameters of ``CALL`` for activations of one key, in order."""
    groups = [rules.hardware_groups(p.hardware_id) for p in batch]
    return (
        fingerprint,
        [p.hardware_id for p in batch],
        *([g[n] for g in groups] for n in range(len(rules.GROUPS))),
        [p.machine_name for p in batch],
        [p.route for p in batch],
        [p.now for p in batch],
        [p.request_id for p in batch],
    )


def answer(row: Sequence[Any], fingerprint: str, pending: Pending) -> Activation:
    """One activation's answer from its row of ``mak_activate``, decided by ``mak.rules``."""
    key = key_record(row[:11]) if row[0] is not None else None
    if row[16] is not None:
        assert key is not None
        return replayed(key, row[16:20], fingerprint, pending.hardware_id)
    written = row[14]
    if written == _UNAVAILABLE:
        raise ServiceError("unavailable", "machine recorded concurrently")
    known = [MachineRecord(row[11], bytes(row[12]), row[13])] if row[11] is not None else []
    decision = rules.decide(key, known, pending.hardware_id, pending.now)
    if (decision.verdict.value if decision.verdict else None) != written:
        raise RuntimeError(f"mak_activate wrote {written!r} where mak.rules decided {decision}")
    if decision.verdict is None:
        assert decision.refusal is not None
        raise ServiceError(decision.refusal, decision.detail)
    assert key is not None
    if decision.counted:
        key = dataclasses.replace(key, used=key.used + 1)
    return Activation(key, decision.verdict, int(row[15]))


T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Slot(Generic[T, R]):
    item: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


@dataclass
class _Queue(Generic[T, R]):
    busy: bool = False
    waiting: list[_Slot[T, R]] = field(default_factory=list)


class Combiner(Generic[T, R]):
    """Calls for one key combined while that key's previous call is out.

    ``submit(key, item, run)`` from many threads: when no call for ``key`` is running,
    this thread runs ``run`` with every item of ``key`` waiting (its own among them), and
    hands each thread its result; otherwise it waits for a call that includes its item.
    Different keys never wait for each other. ``run`` returns one result per item, in
    order; should it raise, the thread that ran it raises that and the others a
    RuntimeError (so ``run`` returns expected failures as results, one per item).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue[T, R]] = {}

    def submit(self, key: str, item: T, run: Callable[[list[T]], Sequence[R]]) -> R:
        """``item``'s result from the call for ``key`` that included it."""
        slot: _Slot[T, R] = _Slot(item)
        batch: list[_Slot[T, R]] = []
        with self._cond:
            queue = self._queues.setdefault(key, _Queue())
            queue.waiting.append(slot)
            while queue.busy and not slot.done:
                self._cond.wait()
            if not slot.done:  # no call out, and ours still waiting: this thread calls
                queue.busy = True
                batch, queue.waiting = queue.waiting, []
        if batch:
            self._run(key, queue, batch, run)
            if slot.error is not None:
                raise slot.error
        elif slot.error is not None:  # the instance is the calling thread's to raise
            raise RuntimeError(f"the combined call failed: {slot.error!r}") from slot.error
        return slot.result  # type: ignore[return-value]

    def _run(
        self,
        key: str,
        queue: _Queue[T, R],
        batch: list[_Slot[T, R]],
        run: Callable[[list[T]], Sequence[R]],
    ) -> None:
        try:
            results = run([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            for s, result in zip(batch, results, strict=True):
                s.result = result
        except BaseException as exc:
            for s in batch:
                s.error = exc
        finally:
            with self._cond:
                for s in batch:
                    s.done = True
                queue.busy = False
                if not queue.waiting:
                    del self._queues[key]
                self._cond.notify_all()
