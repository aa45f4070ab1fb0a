"""Instructions per request of the KMS host's request path, counted by callgrind.

On a shared machine a wall-clock figure moves by half; the number of instructions a
request costs does not move. The driver (``python scripts/benchkit/instructions.py``,
with ROOT, N, POOL, ACK and MODE in its environment) assembles a host from ROOT's tree
as ``kmsemu host serve`` does, over a fresh store, but with no socket and no loop: the
server's protocol is fed whole PDUs through a transport that drops what it is written,
and the event log writes to nowhere. It builds POOL + WARM requests (however many it will
drive, so that building them costs the same in every run), answers WARM of them, then N
more: all on one connection (MODE=persistent), or each on a connection of its own with
its BIND (MODE=new). The store is flushed every FLUSH_EVERY requests, as the server's
loop would; ACK=durable puts a journal beside it, ACK=batched none.

scripts/bench-instructions runs the driver under callgrind with N=0 and with N and takes
``(total(N) - total(0)) / N``: start-up, imports, building the requests and the warm-up
cancel out, what is left is what N requests cost. The rest of this module is the bench's
pure part: callgrind's total out of its stderr, the figures and the report.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

if __name__ == "__main__":
    # Run as the driver: the kit on the path rather than its own folder, whose profile.py
    # would shadow the standard library's.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchkit.report import fmt, table
from benchkit.stats import ratio

#: The builds, by the KMSEMU_CORE each runs with.
BUILDS = {"core": "on", "pure": "off"}
ACKS = ("durable", "batched")
MODES = ("persistent", "new")
#: Requests answered before the measured ones (caches, the count cache, first pages).
WARM = 200
FLUSH_EVERY = 1000
COLLECTED = re.compile(r"Collected : (\d+)")
#: A line of valgrind's own (``==123== ...``), not the program's.
VALGRIND_LINE = re.compile(r"^==\d+==")
TAIL_LINES = 3


class Job(NamedTuple):
    """One run of the driver under callgrind; ``requests`` 0 is a (tree, build, ack)'s
    baseline, shared by its modes (the mode only matters once there are requests)."""

    tree: str
    build: str
    ack: str
    mode: str
    requests: int

    def label(self) -> str:
        return f"{self.tree} {self.build} {self.ack} {self.mode} N={self.requests}"


#: What a run gave: callgrind's total, or what went wrong.
Outcome = int | str


@dataclass(frozen=True)
class Row:
    """A scenario's instructions per request, here and (with --against) in the revision."""

    build: str
    mode: str
    ack: str
    current: float | None
    against: float | None = None

    @property
    def ratio(self) -> float | None:
        """current / against."""
        return ratio(self.current, self.against)


# -- running ----------------------------------------------------------------------------


def jobs(
    trees: Mapping[str, Sequence[str]],
    acks: Sequence[str],
    modes: Sequence[str],
    requests: int,
) -> list[Job]:
    """Every run the figures need: for each tree's builds and each ack, a baseline and one
    run per mode (``trees``: the builds available in each tree, by tree)."""
    out = []
    for tree, builds in trees.items():
        for build in builds:
            for ack in acks:
                out.append(Job(tree, build, ack, MODES[0], 0))
                out += [Job(tree, build, ack, mode, requests) for mode in modes]
    return out


def job_env(job: Job, root: Path, pool: int) -> dict[str, str]:
    """The driver's environment for ``job`` on the tree at ``root`` (``pool``: the most
    requests any run drives)."""
    return {
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "KMSEMU_CORE": BUILDS[job.build],
        "ROOT": str(root),
        "N": str(job.requests),
        "POOL": str(pool),
        "ACK": job.ack,
        "MODE": job.mode,
    }


def callgrind_argv(valgrind: str, python: str) -> list[str]:
    """The driver (this file) under callgrind, its profile thrown away: only the total."""
    return [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        python,
        str(Path(__file__).resolve()),
    ]


def collected(stderr: str) -> int | None:
    """The instructions callgrind counted (its ``Collected : N`` line), None without one."""
    match = COLLECTED.search(stderr)
    return int(match.group(1)) if match else None


def tail(stderr: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a run's stderr, the program's own rather than
    valgrind's when there are any, joined with `` / ``."""
    every = [line for line in stderr.splitlines() if VALGRIND_LINE.sub("", line).strip()]
    own = [line for line in every if not VALGRIND_LINE.match(line)]
    return " / ".join((own or every)[-lines:]) or "(no output)"


def outcome(returncode: int, stderr: str) -> Outcome:
    """callgrind's total of a finished run, or why there is none."""
    total = collected(stderr)
    if returncode == 0 and total is not None:
        return total
    why = f"exit {returncode}" if returncode else "no 'Collected' line"
    return f"{why}: {tail(stderr)}"


# -- the figures ------------------------------------------------------------------------


def per_request(baseline: int, total: int, requests: int) -> float:
    """Instructions per request: what ``requests`` requests added to the baseline."""
    return (total - baseline) / requests


def figure(outcomes: Mapping[Job, Outcome], job: Job) -> float | None:
    """``job``'s instructions per request (None when it or its baseline failed or did not
    run)."""
    baseline = outcomes.get(job._replace(mode=MODES[0], requests=0))
    total = outcomes.get(job)
    if not isinstance(baseline, int) or not isinstance(total, int):
        return None
    return per_request(baseline, total, job.requests)


def rows(
    outcomes: Mapping[Job, Outcome],
    scenarios: Iterable[tuple[str, str, str]],
    requests: int,
    against: str | None = None,
) -> list[Row]:
    """A row per (build, mode, ack), from the runs of the tree "current" and of ``against``."""

    def at(tree: str | None, build: str, mode: str, ack: str) -> float | None:
        return None if tree is None else figure(outcomes, Job(tree, build, ack, mode, requests))

    return [
        Row(build, mode, ack, at("current", build, mode, ack), at(against, build, mode, ack))
        for build, mode, ack in scenarios
    ]


def scenarios(
    builds: Sequence[str], modes: Sequence[str], acks: Sequence[str]
) -> list[tuple[str, str, str]]:
    """Every (build, mode, ack), in the table's order."""
    return [(b, m, a) for b in builds for m in modes for a in acks]


# -- the report -------------------------------------------------------------------------


def instructions(value: float | None) -> str:
    return fmt(value, ",.0f")


def markdown_table(table_rows: Sequence[Row], against: str | None = None) -> str:
    """The table: a row per scenario; with ``against`` (a revision's name), its figures and
    the ratio of ours to them."""
    columns = ["build", "mode", "ack", "instructions/request>"]
    if against is not None:
        columns += [f"{against} instructions/request>", "ratio>"]

    def cells(r: Row) -> list[str]:
        out = [r.build, r.mode, r.ack, instructions(r.current)]
        if against is not None:
            out += [instructions(r.against), fmt(r.ratio, ".3f")]
        return out

    return table(columns, [cells(r) for r in table_rows])


def derived_lines(table_rows: Sequence[Row], against: str | None = None) -> list[str]:
    """What the journal costs (durable/batched, each build and mode) and what a connection
    costs (new - persistent, each build and ack), where the table has both rows."""
    by = {(r.build, r.mode, r.ack): r for r in table_rows}
    out = []
    for build, mode in dict.fromkeys((r.build, r.mode) for r in table_rows):
        durable, batched = by.get((build, mode, "durable")), by.get((build, mode, "batched"))
        if durable is None or batched is None:
            continue
        line = (
            f"{build} {mode}: durable/batched {fmt(ratio(durable.current, batched.current), '.3f')}"
            f" (the journal: {instructions(_less(durable.current, batched.current))} "
            "instructions/request)"
        )
        if against is not None:
            line += f"; {against} {fmt(ratio(durable.against, batched.against), '.3f')}"
        out.append(line)
    for build, ack in dict.fromkeys((r.build, r.ack) for r in table_rows):
        new, persistent = by.get((build, "new", ack)), by.get((build, "persistent", ack))
        if new is None or persistent is None:
            continue
        line = (
            f"{build} {ack}: a new connection costs "
            f"{instructions(_less(new.current, persistent.current))} instructions "
            "(new − persistent)"
        )
        if against is not None:
            line += f"; {against} {instructions(_less(new.against, persistent.against))}"
        out.append(line)
    return out


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def failures(outcomes: Mapping[Job, Outcome]) -> list[str]:
    """A note per failed run."""
    return [f"{job.label()}: {o}" for job, o in outcomes.items() if isinstance(o, str)]


def document_rows(table_rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The table's rows for the JSON document."""
    return [
        {"build": r.build, "mode": r.mode, "ack": r.ack, "instructions_per_request": r.current,
         "against_instructions_per_request": r.against, "ratio": r.ratio}
        for r in table_rows
    ]  # fmt: skip


# -- the driver -------------------------------------------------------------------------


class _Transport:
    """A connection's transport that drops what it is written."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    abort = close

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


class _Nowhere:
    """The event log's stream."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def drive(root: Path, requests: int, pool: int, durable: bool, new_connections: bool) -> None:
    """``requests`` requests (of ``pool`` + WARM built) through ROOT's host, after WARM."""
    import gc
    import tempfile

    # ROOT's tree alone: no other checkout (the venv's editable one) to fill in what it
    # lacks, as ``tests``, a namespace package, would from every folder on the path.
    sys.path[:] = [str(root), *(p for p in sys.path if not (Path(p) / "kmsemu").is_dir())]
    from kmsemu.host.events import EventLog
    from kmsemu.host.rules import HostRules, HostSettings
    from kmsemu.host.server import KmsServer, _KmsProtocol, product_names
    from kmsemu.host.service import KmsHost
    from kmsemu.host.store import HostStore
    from kmsemu.klp.envelope import Keyring
    from tests.test_connection import bind_pdu, request_pdu
    from tests.test_lean import CATALOG, IDENTITY, NOW, PORT, SECRET, activation

    options: dict[str, Any] = {}
    try:
        from kmsemu.klp.envelope import NoncePool

        options["nonce"] = NoncePool()
    except ImportError:  # an older tree: the default source
        pass
    pdus = [request_pdu(activation(i, NOW, f"PC{i}")) for i in range(pool + WARM)]
    bind = bind_pdu()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "host.sqlite3"
        store = HostStore(path)
        rules = HostRules(CATALOG, HostSettings(), IDENTITY, store.load_cache())
        host = KmsHost(rules, Keyring([SECRET]), lambda: NOW, **options)
        log = EventLog(_Nowhere(), product_names=product_names(CATALOG))
        server = KmsServer(host, store, log, now=lambda: NOW, journal=_journal(path, durable))

        def connect() -> _KmsProtocol:
            protocol = _KmsProtocol(server, PORT)
            protocol.connection_made(_Transport())  # type: ignore[arg-type]
            protocol.data_received(bind)
            return protocol

        protocol = connect()
        for pdu in pdus[:WARM]:
            protocol.data_received(pdu)
        server.flush()
        gc.collect()
        for i, pdu in enumerate(pdus[WARM : WARM + requests]):
            if new_connections:
                protocol = connect()
                protocol.data_received(pdu)
                protocol.eof_received()
                protocol.connection_lost(None)
            else:
                protocol.data_received(pdu)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                server.flush()
        server.flush()
        store.close()


def _journal(path: Path, durable: bool) -> Any:
    """The journal beside the store at ``path`` for durable answers, else None."""
    if not durable:
        return None
    try:
        from kmsemu.host.journal import Journal
    except ImportError:
        sys.exit("driver: no journal in this tree (kmsemu.host.journal): no durable answers")
    return Journal(path.with_name(path.name + ".answered"))


def main() -> int:
    """The driver, configured by its environment (see the module's docstring)."""
    requests, pool = int(os.environ["N"]), int(os.environ["POOL"])
    if not 0 <= requests <= pool:
        sys.exit(f"driver: N={requests} must be 0..POOL={pool}")
    drive(
        Path(os.environ["ROOT"]),
        requests,
        pool,
        durable=os.environ.get("ACK", ACKS[0]) == "durable",
        new_connections=os.environ.get("MODE", MODES[0]) == "new",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
