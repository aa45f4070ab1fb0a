"""The KMS host bench (bench-host, bench-echo): one server process per scenario, driven by
forked blocking clients (``traffic.kms.client_main``), measured on /proc.

For every scenario (mode x number of clients) a fresh server starts on 127.0.0.1 port 0
with a fresh state directory. After a warm-up, the timed window is measured on the server
itself: utime+stime (CPU per activation), activations completed by the clients inside the
window, VmRSS/VmHWM idle before the load and after it. The server is pinned to the first
CPU and the clients to the others; the machine is given time to be quiet first, a window
perturbed by other processes is measured again, and --repeat interleaves rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchkit import options, waits
from benchkit.env import kmsemu_argv, tool
from benchkit.machine import changed_note, machine_info, machine_line, mark_end
from benchkit.procs import ServerProcess, Worker
from benchkit.profile import Components, finish_py_spy, print_profile, start_py_spy
from benchkit.report import (
    emit,
    fmt,
    mib,
    perturbation_notes,
    repeat_table,
    span,
    table,
    update_section,
)
from benchkit.stats import Perturbable, interleaved, least_perturbed, median_carrying, ratio
from benchkit.traffic.kms import SOCKET_TIMEOUT, client_main, verify_samples

PRODUCT = "windows-server-2022-standard"
MODES = ("new", "persistent")
#: Requests pre-built per client and per second of load (warm-up + window); past that, reused.
POOL_RATE = 16000
POOL_MAX = 250_000
#: CPU % of one core used by other processes during a window above which it is re-measured.
PERTURBED = 10.0

HOST_COMPONENTS = Components(
    scope="kmsemu/",
    exclude="kmsemu/cli/",
    lines=(
        (
            "kmsemu/",
            r"\.write\(",
            "transport.write: C + kernel TCP send (loopback delivers to the client)",
        ),
        ("kmsemu/", r"\.(close|abort)\(\)", "transport.close/abort: C + kernel"),
    ),
    parts=(
        ("kmsemu/host/events.py", "event log: formatting log lines"),
        ("kmsemu/host/store.py", "SQLite store: batched rows and cache changes"),
        ("kmsemu/klp/envelope.py", "AES-GCM envelope open/seal"),
        ("kmsemu/klp/messages.py", "plaintext parse/pack"),
        ("kmsemu/wire.py", "plaintext parse/pack"),
        ("kmsemu/rpc/", "DCE/RPC connection machine and PDU codecs"),
        ("kmsemu/host/rules.py", "host rules and count cache"),
        ("kmsemu/host/service.py", "KmsHost.handle glue"),
        ("kmsemu/host/server.py", "server glue: protocol object, per-connection setup, dispatch"),
    ),
    loop="event loop itself: accept, read, close, epoll, callbacks (C + kernel)",
    other="other (startup, sweeper, flush timer)",
)


@dataclass
class ServerSpec:
    """How to start the server under test: argv from (loop, state dir), ready-line prefix."""

    name: str
    argv: Callable[[str, Path], list[str]]
    ready_prefix: str
    verify: bool = True
    #: Requests pre-built per client when --pool is not given (None: enough to never reuse one).
    pool: int | None = None
    #: Environment variables set for the server on top of this process's own.
    env: dict[str, str] = field(default_factory=dict)
    #: The build it measures ("pure", "core"; "" for a server with no such choice).
    build: str = ""


#: ``--core`` values: the builds of the host measured, each as ``KMSEMU_CORE`` selects it.
CORE_BUILDS = {"auto": ("auto",), "pure": ("off",), "core": ("on",), "both": ("off", "on")}
BUILD_NAMES = {"auto": "", "off": "pure", "on": "core"}


def kmsemu_host_spec(
    log_format: str = "text", ack: str = "durable", core: str = "auto"
) -> ServerSpec:
    """``kmsemu host serve`` with ``--ack ack``; ``core`` is its ``KMSEMU_CORE`` (auto: as
    this process's environment has it; off: the pure-Python build; on: the compiled core,
    and the host does not start without it)."""
    base = kmsemu_argv()

    def argv(loop: str, state: Path) -> list[str]:
        return [
            *base,
            "host",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            str(state),
            "--loop",
            loop,
            "--log-format",
            log_format,
            "--ack",
            ack,
        ]

    name = "kmsemu host" if ack == "durable" else f"kmsemu host --ack {ack}"
    build = BUILD_NAMES[core]
    if build:
        name += f" ({build})"
    env = {} if core == "auto" else {"KMSEMU_CORE": core}
    return ServerSpec(name, argv, "ready kms-host ", env=env, build=build)


def echo_spec() -> ServerSpec:
    """The floor: scripts/bench-echo's bare server (same sizes, no work)."""
    script = Path(__file__).resolve().parent.parent / "bench-echo"

    def argv(loop: str, state: Path) -> list[str]:
        return [sys.executable, str(script), "--serve", "--loop", loop]

    # Nothing is decrypted: a small pool of requests, reused, is as good as distinct ones.
    return ServerSpec("echo", argv, "ready echo-host ", verify=False, pool=2000)


#: The report's table (see benchkit.report.table).
COLUMNS = (
    "| server | loop | mode | clients> | activations/s> | host CPU µs/act> | host CPU %> "
    "| client CPU µs/act> | other CPU %> | steal %> | errors> | RSS idle MiB> "
    "| HWM idle MiB> | HWM after MiB> |"
)


@dataclass
class Result(Perturbable):
    server: str
    loop: str
    mode: str
    clients: int
    window_seconds: float
    activations: int
    errors: int
    per_second: float
    host_cpu_seconds: float
    host_cpu_us_per_activation: float | None
    host_cpu_percent: float
    client_cpu_us_per_activation: float | None
    hwm_idle_kib: int
    reused_requests: int
    verified: int = 0
    last_error: str = ""


def run_scenario(
    spec: ServerSpec,
    loop: str,
    mode: str,
    clients: int,
    duration: float,
    warmup: float,
    pool: int | None,
    py_spy: Path | None = None,
    native: bool = False,
    quiet_wait: float = 0.0,
    pin: bool = True,
) -> Result:
    busy_before = waits.wait_until_quiet(quiet_wait) if quiet_wait > 0 else None
    server_cpus, client_cpus = waits.placement(pin)
    workdir = Path(tempfile.mkdtemp(prefix="kmsemu-bench-"))
    server = ServerProcess(
        spec.argv(loop, workdir / "state"),
        workdir,
        re.escape(spec.ready_prefix) + r"(\S+):(\d+)",
        name=spec.name,
        cpus=server_cpus,
        env={**os.environ, **spec.env} if spec.env else None,
    )
    address = (server.match.group(1), int(server.match.group(2)))
    loop_seen = re.search(r"\bloop=(\w+)", server.log_text())
    server_loop = loop_seen.group(1) if loop_seen else loop
    workers: list[Worker] = []
    spy = None
    try:
        time.sleep(0.3)  # let the server settle before reading its idle memory
        idle = server.memory_kib()
        per_client = (
            pool or spec.pool or min(POOL_MAX, math.ceil((warmup + duration + 1) * POOL_RATE))
        )
        for index in range(clients):
            args = (index, mode, address, per_client, client_cpus, PRODUCT)
            workers.append(Worker("a client", client_main, *args))
        for worker in workers:
            if worker.recv(300, "get ready") != "ready":
                raise RuntimeError("a client did not get ready")
        go = time.monotonic() + 0.1
        start, end = go + warmup, go + warmup + duration
        for worker in workers:
            worker.send((go, start, end))
        if py_spy is not None:
            name = f"{spec.name}-{server_loop}-{mode}-{clients}"
            spy = start_py_spy(py_spy, server.pid, name, start, duration, native)
        waits.sleep_until(start)
        cpu0, busy0, wall0 = server.cpu_seconds(), waits.machine_ticks(), time.monotonic()
        waits.sleep_until(end)
        cpu1, busy1, wall1 = server.cpu_seconds(), waits.machine_ticks(), time.monotonic()
        results = [w.recv(SOCKET_TIMEOUT * 4 + 10, "report") for w in workers]
        after = server.memory_kib()
    finally:
        for worker in workers:
            worker.stop()
        if spy is not None:
            print_profile(finish_py_spy(spy), HOST_COMPONENTS, whole_loop=True)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    activations = sum(r["activations"] for r in results)
    errors = sum(r["errors"] for r in results)
    host_cpu = cpu1 - cpu0
    window = wall1 - wall0
    client_cpu = sum(r["cpu_seconds"] for r in results)
    busy = waits.busy_seconds(busy0, busy1)
    verified, problems = (
        verify_samples([s for r in results for s in r["samples"]]) if spec.verify else (0, [])
    )
    return Result(
        server=spec.name,
        loop=server_loop,
        mode=mode,
        clients=clients,
        window_seconds=round(window, 3),
        activations=activations,
        errors=errors,
        per_second=round(activations / duration, 1),
        host_cpu_seconds=round(host_cpu, 3),
        host_cpu_us_per_activation=round(host_cpu / activations * 1e6, 1) if activations else None,
        host_cpu_percent=round(100 * host_cpu / window, 1),
        client_cpu_us_per_activation=(
            round(client_cpu / activations * 1e6, 1) if activations else None
        ),
        machine_busy_percent=round(waits.tick_share(busy0, busy1, 0), 1),
        other_cpu_percent=round(100 * max(0.0, busy - host_cpu - client_cpu) / window, 1),
        steal_percent=round(waits.tick_share(busy0, busy1, 2), 1),
        rss_idle_kib=idle.get("VmRSS", 0),
        hwm_idle_kib=idle.get("VmHWM", 0),
        hwm_after_kib=after.get("VmHWM", 0),
        rss_after_kib=after.get("VmRSS", 0),
        reused_requests=sum(r["reused"] for r in results) if spec.verify else 0,
        busy_before_percent=busy_before,
        server_cpus=waits.cpus_text(server_cpus),
        client_cpus=waits.cpus_text(client_cpus),
        verified=verified,
        problems=problems,
        last_error=next((r["last_error"] for r in results if r["last_error"]), ""),
    )


# -- the report ----------------------------------------------------------------------------


def markdown_table(results: list[Result]) -> str:
    def row(r: Result) -> list[Any]:
        return [r.server, r.loop, r.mode, r.clients, f"{r.per_second:,.0f}",
                r.host_cpu_us_per_activation, r.host_cpu_percent,
                r.client_cpu_us_per_activation, r.other_cpu_percent, r.steal_percent, r.errors,
                mib(r.rss_idle_kib), mib(r.hwm_idle_kib), mib(r.hwm_after_kib)]  # fmt: skip

    def spans(r: Result) -> list[str]:
        keys = (("per_second", ",.0f"), ("host_cpu_us", ".0f"))
        return [span([x[k] or 0 for x in r.runs], spec, least=2, single="") for k, spec in keys]

    return repeat_table(results, COLUMNS, row, "runs: act/s> | runs: µs/act>", spans, at=6)


def report(results: list[Result], machine: dict[str, Any], argv: list[str]) -> str:
    out = [
        f"command: `{' '.join(argv)}`",
        machine_line(
            machine, f"uvloop {machine['uvloop']}", f"cryptography {machine['cryptography']}"
        ),
        f"loop(s) in use: {', '.join(sorted({r.loop for r in results}))}; "
        f"server on CPU {results[0].server_cpus}, clients on CPU {results[0].client_cpus}"
        if results
        else "",
        "",
        markdown_table(results),
    ]
    notes = []
    for r in results:
        name = f"{r.mode}/{r.clients}"
        if r.reused_requests:
            notes.append(
                f"{name}: {r.reused_requests} pre-built requests reused "
                "(renewals of an already counted CMID); raise --pool"
            )
        notes += perturbation_notes(name, r, PERTURBED, "scenario")
        if r.errors:
            notes.append(f"{name}: {r.errors} errors, last {r.last_error}")
        notes += [f"{name}: sample check failed: {problem}" for problem in r.problems]
    notes += changed_note(machine)
    verified = sum(r.verified for r in results)
    if verified:
        notes.append(
            f"{verified} sampled responses decrypted and checked "
            f"({sum(len(r.problems) for r in results)} problems)"
        )
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def parse_args(argv: list[str] | None, description: str, peer: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="server event loop (default: auto)",
    )
    options.add_options(parser, [
        ("--duration", float, 5.0, "timed seconds per scenario (default 5)"),
        ("--warmup", float, 1.0, "seconds of load before the timed window (default 1)"),
        ("--clients", str, "1,4", "comma-separated client process counts (default 1,4)"),
        ("--modes", str, "new,persistent",
         "new (a connection per activation), persistent (default: both)"),
        ("--pool", int, None, f"requests pre-built per client (default: {POOL_RATE}/s of load)"),
        options.json_option(),
        options.quiet_wait_option(60.0, "scenario"),
        options.repeat_option("scenario", "host CPU per activation"),
        options.no_pin_option(),
        options.retries_option("a scenario", PERTURBED),
        options.py_spy_option("record the server with py-spy during each timed window (figures are "
                              "then perturbed; use separate runs for numbers)"),
        ("--native", bool, False, "py-spy --native"),
    ])  # fmt: skip
    if peer:
        parser.add_argument(
            "--core",
            choices=sorted(CORE_BUILDS),
            default="auto",
            help="which build of the host: auto (KMSEMU_CORE as set here), pure (KMSEMU_CORE=off), "
            "core (the compiled core, KMSEMU_CORE=on; scripts/build-core), both (pure and core "
            "in the same rounds, each against the floor)",
        )
        options.add_options(parser, [
            ("--against-echo", bool, False,
             "run scripts/bench-echo's floor in the same rounds (host, echo, host, echo, ...) "
             "and report host CPU per activation as a ratio of the floor's"),
            ("--against-batched", bool, False,
             "also run the host (each build asked for) with --ack batched in the same rounds "
             "and report what durable answers cost"),
            ("--write", bool, False,
             f"with --against-echo, put the report in docs/benchmarks.md ({SECTION!r})"),
        ])  # fmt: skip
    args = parser.parse_args(argv)
    if not peer:
        args.against_echo = args.against_batched = args.write = False
        args.core = "auto"
    if args.write and not args.against_echo:
        parser.error("--write goes with --against-echo")
    args.client_counts = [int(c) for c in options.split_list(args.clients)]
    try:
        args.mode_list = options.choices("--modes", args.modes, MODES)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.repeat <= 20 or not 0 <= args.retries <= 10:
        parser.error("--repeat must be 1..20 and --retries 0..10")
    if args.duration <= 0 or args.duration > 600 or args.warmup < 0:
        parser.error("--duration must be in (0, 600] and --warmup >= 0")
    if not args.client_counts or min(args.client_counts) < 1 or max(args.client_counts) > 64:
        parser.error("--clients must be 1..64")
    return args


def _measure(spec: ServerSpec, args: argparse.Namespace, mode: str, clients: int) -> Result:
    """One scenario, measured again while other processes perturb it (up to --retries)."""

    def once() -> Result:
        return run_scenario(
            spec,
            args.loop,
            mode,
            clients,
            args.duration,
            args.warmup,
            args.pool,
            args.py_spy,
            args.native,
            args.quiet_wait,
            not args.no_pin,
        )

    # py-spy's own CPU counts as "other": don't chase it with retries.
    attempts = 1 + (0 if args.py_spy else args.retries)
    best, made = least_perturbed(once, attempts, lambda r: r.other_cpu_percent, PERTURBED)
    best.attempts = made
    return best


def _median(runs: list[Result]) -> Result:
    """The run with the median host CPU per activation, carrying every run's figures."""

    def figures(r: Result) -> dict[str, Any]:
        return {"per_second": r.per_second, "host_cpu_us": r.host_cpu_us_per_activation,
                "client_cpu_us": r.client_cpu_us_per_activation,
                "steal_percent": r.steal_percent, "rss_idle_kib": r.rss_idle_kib}  # fmt: skip

    key = lambda r: r.host_cpu_us_per_activation or float("inf")  # noqa: E731
    return median_carrying(runs, key, figures, problems=False)


def run_all(specs: list[ServerSpec], args: argparse.Namespace, argv_shown: list[str]) -> int:
    machine = machine_info("uvloop", "cryptography")
    scenarios = [
        (index, mode, clients)
        for mode in args.mode_list
        for clients in args.client_counts
        for index in range(len(specs))
    ]
    runs = interleaved(
        args.repeat,
        scenarios,
        lambda s: _measure(specs[s[0]], args, s[1], s[2]),
        lambda s: f"{specs[s[0]].name} loop={args.loop} mode={s[1]} clients={s[2]}",
    )
    results = [_median(runs[s]) for s in scenarios]
    mark_end(machine)
    document: dict[str, Any] = {
        "machine": machine,
        "command": " ".join(argv_shown),
        "results": [asdict(r) for r in results],
    }
    text = report(results, machine, argv_shown)
    names = [spec.name for spec in specs]
    hosts = [i for i, spec in enumerate(specs) if spec.name != "echo" and "--ack" not in spec.name]

    def paired(pairs: list[tuple[int, int]]) -> list[FloorRatio]:
        """Each (floor, host) pair's ratios, named by the host's build."""
        out = []
        for floor, h in pairs:
            for f in floor_ratios(runs, scenarios, floor, h):
                f.build = specs[h].build
                out.append(f)
        return out

    if "echo" in names:
        floors = paired([(names.index("echo"), h) for h in hosts])
        document["against_echo"] = [asdict(f) for f in floors]
        text += "\n\n" + floor_table(floors, args.repeat)
    batched = [i for i, spec in enumerate(specs) if "--ack batched" in spec.name]
    if batched:  # each batched host against the durable host of its build
        costs = paired([(b, next(h for h in hosts if specs[h].build == specs[b].build))
                        for b in batched])  # fmt: skip
        document["against_batched"] = [asdict(f) for f in costs]
        text += "\n\n" + batched_table(costs, args.repeat)
    if len(hosts) > 1 or any(specs[h].build for h in hosts):
        text += "\n\n" + memory_table([r for r in results if r.server in
                                        {specs[h].name for h in hosts}])  # fmt: skip
    emit(document, lambda: text, args.json)
    if args.write:
        update_section(SECTION, floor_section(text))
        print(f"bench-host: wrote the section {SECTION!r} of docs/benchmarks.md", file=sys.stderr)
    bad = any(r.problems or not r.activations for r in results)
    return 1 if bad else 0


# -- against the floor -----------------------------------------------------------------------

SECTION = "KMS host against the echo floor (`scripts/bench-host --against-echo`)"
#: Issue 15's targets: host CPU per activation at most this many times the echo floor's.
FLOOR_TARGETS = {"new": 1.4, "persistent": 2.0}


@dataclass
class FloorRatio:
    """Host against echo for one mode and client count, from the same rounds."""

    mode: str
    clients: int
    host_us: float | None
    echo_us: float | None
    #: The median host run's CPU per activation over the median echo run's.
    ratio: float | None
    #: Round by round (run i of the host over run i of the echo).
    round_ratios: list[float]
    target: float | None
    #: Activations per second of the two median runs, and their ratio round by round.
    host_per_second: float = 0.0
    echo_per_second: float = 0.0
    round_rate_ratios: list[float] = field(default_factory=list)
    #: The host's build ("pure", "core"; "" when not chosen).
    build: str = ""


def floor_ratios(
    runs: dict[tuple[int, str, int], list[Result]],
    scenarios: list[tuple[int, str, int]],
    peer: int,
    subject: int = 0,
) -> list[FloorRatio]:
    """The ``subject``-th server (a host) against the ``peer``-th, scenario by scenario."""
    out = []
    for mode, clients in dict.fromkeys((m, c) for _, m, c in scenarios):
        host, echo = runs[(subject, mode, clients)], runs[(peer, mode, clients)]
        pairs = zip(host, echo, strict=True)
        rounds = [
            round(h.host_cpu_us_per_activation / e.host_cpu_us_per_activation, 3)
            for h, e in pairs
            if h.host_cpu_us_per_activation and e.host_cpu_us_per_activation
        ]
        rates = [round(h.per_second / e.per_second, 3)
                 for h, e in zip(host, echo, strict=True) if e.per_second]  # fmt: skip
        host_median, echo_median = _median(host), _median(echo)
        host_us = host_median.host_cpu_us_per_activation
        echo_us = echo_median.host_cpu_us_per_activation
        value = ratio(host_us, echo_us)
        out.append(FloorRatio(mode, clients, host_us, echo_us,
                              None if value is None else round(value, 3), rounds,
                              FLOOR_TARGETS.get(mode), host_median.per_second,
                              echo_median.per_second, rates))  # fmt: skip
    return out


def floor_table(floors: list[FloorRatio], rounds: int) -> str:
    def row(f: FloorRatio) -> list[Any]:
        met = (
            "—"
            if f.ratio is None or f.target is None
            else ("**met**" if f.ratio <= f.target else "not met")
        )
        return [f.build or "—", f.mode, f.clients, fmt(f.host_us, ".1f"), fmt(f.echo_us, ".1f"),
                fmt(f.ratio, ".2f"), span(f.round_ratios, ".2f"),
                fmt(f.target, ".1f"), met]  # fmt: skip

    columns = (
        "| build | mode | clients> | host CPU µs/act> | echo CPU µs/act> | ratio> "
        "| per-round ratios> | target> | |"
    )
    note = (
        f"Host CPU per activation over the echo floor's, medians of {rounds} interleaved "
        f"round{'s' if rounds != 1 else ''} (host, echo, host, echo, ...: a fresh server each run)."
    )
    return note + "\n\n" + table(columns, [row(f) for f in floors])


def batched_table(costs: list[FloorRatio], rounds: int) -> str:
    """Durable answers (the default) against ``--ack batched``: throughput and CPU."""

    def row(f: FloorRatio) -> list[Any]:
        rate = ratio(f.host_per_second, f.echo_per_second)
        met = "—" if rate is None else ("**met**" if rate >= 0.9 else "not met")
        return [f.build or "—", f.mode, f.clients, f"{f.host_per_second:,.0f}",
                f"{f.echo_per_second:,.0f}",
                fmt(rate, ".3f"), span(f.round_rate_ratios, ".2f"), fmt(f.host_us, ".1f"),
                fmt(f.echo_us, ".1f"), fmt(f.ratio, ".2f"), met]  # fmt: skip

    columns = (
        "| build | mode | clients> | durable act/s> | batched act/s> | throughput ratio> "
        "| per-round> | durable CPU µs/act> | batched CPU µs/act> | CPU ratio> "
        "| within 10% |"
    )
    note = (
        f"Durable answers (`--ack durable`, the default: the journal written before the "
        f"answer) against `--ack batched`, medians of {rounds} interleaved "
        f"round{'s' if rounds != 1 else ''}."
    )
    return note + "\n\n" + table(columns, [row(f) for f in costs])


#: Issue 15's target for the host's idle RSS (MiB).
IDLE_TARGET_MIB = 30.0


def memory_table(results: list[Result]) -> str:
    """Idle RSS of each build of the host (the median run's, and the range over all runs)."""
    rows = []
    for r in results:
        idle = [x["rss_idle_kib"] for x in r.runs] if r.runs else [r.rss_idle_kib]
        worst = max(idle) / 1024
        met = "**met**" if worst <= IDLE_TARGET_MIB else "not met"
        rows.append([r.server, r.mode, mib(r.rss_idle_kib), span([i / 1024 for i in idle], ".1f"),
                     fmt(IDLE_TARGET_MIB, ".0f"), met])  # fmt: skip
    columns = "| server | mode | RSS idle MiB> | runs> | target> | |"
    note = "Idle RSS of each build (before the load; the target holds if every run is under it)."
    return note + "\n\n" + table(columns, rows)


def floor_section(text: str) -> str:
    intro = (
        "Issue 15 asks the KMS host for at most 1.4 times the CPU per activation of the bare "
        "echo server (`scripts/bench-echo`, the floor: same message sizes, no parsing, crypto, "
        "state or logging) with a new connection per activation, and at most 2.0 times on "
        "persistent connections. `scripts/bench-host --against-echo` measures both servers "
        "in the same rounds, with the same load generator and pinning. Written by "
        "`scripts/bench-host --against-echo --write`."
    )
    return f"{textwrap.fill(intro, 90, break_on_hyphens=False)}\n\n{text}\n"


def main(
    spec: ServerSpec,
    description: str,
    name: str,
    argv: list[str] | None = None,
    peer: ServerSpec | None = None,
) -> int:
    """A KMS bench's command line: parse, run every scenario, report. With a ``peer``, the
    command has ``--against-echo`` (run the peer in the same rounds, report ratios)."""
    args = parse_args(argv, description, peer is not None)
    if args.py_spy is not None and not Path(tool("py-spy")).exists():
        print(f"{name}: --py-spy needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    shown = [name, *(sys.argv[1:] if argv is None else argv)]
    if args.core != "auto" and peer is not None:  # bench-host: the builds asked for
        builds = CORE_BUILDS[args.core]
        specs = [kmsemu_host_spec(core=c) for c in builds]
    else:
        builds, specs = CORE_BUILDS["auto"], [spec]
    if args.against_batched:  # each build against its own batched host
        specs += [kmsemu_host_spec(ack="batched", core=c) for c in builds]
    if args.against_echo and peer is not None:
        specs.append(peer)
    return run_all(specs, args, shown)
