"""``kmsemu sim``: run a fleet scenario and write its timeline, charts and report."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from kmsemu.cli.common import emit, json_option
from kmsemu.errors import LocalError
from kmsemu.sim.scenario import builtin_names, load_scenario


@click.group()
def sim() -> None:
    """The fleet simulator: a year of a network in seconds."""


@sim.command()
@click.argument("scenario", required=False)
@click.option(
    "--builtin", "builtin", metavar="NAME", help="A built-in scenario (see `kmsemu sim list`)."
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for timeline.csv, timeline.json, report.html and the charts.",
)
@click.option(
    "--network",
    is_flag=True,
    help="Real host, DNS and MAK servers on loopback, clients speaking KLP/1.",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's).")
@click.option("--no-report", is_flag=True, help="Write the timeline only (no charts, no HTML).")
@json_option
def run(
    scenario: str | None,
    builtin: str | None,
    out: Path,
    network: bool,
    seed: int | None,
    no_report: bool,
    as_json: bool,
) -> None:
    """Run SCENARIO (a TOML file) or --builtin NAME and write what happened, day by day."""
    if (scenario is None) == (builtin is None):
        raise click.UsageError("name a scenario file or --builtin NAME (one of them)")
    loaded = load_scenario(scenario or builtin or "")
    if seed is not None:
        loaded = dataclasses.replace(loaded, seed=seed)
    _writable(out)
    mode = "network" if network else "fast"
    started = time.perf_counter()
    show = sys.stderr.isatty() and not as_json
    with click.progressbar(
        length=loaded.days, label=f"{loaded.name}: days", file=sys.stderr, hidden=not show
    ) as bar:
        if network:
            from kmsemu.sim.network import run_network as engine
        else:
            from kmsemu.sim.fast import run_fast as engine
        try:
            timeline = engine(loaded, progress=lambda day: bar.update(day - bar.pos))
        except OSError as exc:
            raise LocalError("sim_failed", str(exc.strerror or exc)) from exc
    try:
        document = timeline.write(out)
        written = [out / "timeline.json", out / "timeline.csv"]
        if not no_report:
            from kmsemu.sim.report import write_report

            written += write_report(document, out)
    except OSError as exc:
        raise LocalError("write_failed", f"{exc.filename or out}: {exc.strerror or exc}") from exc
    elapsed = time.perf_counter() - started
    if as_json:
        emit(
            {
                "scenario": loaded.name,
                "mode": mode,
                "seed": loaded.seed,
                "days": loaded.days,
                "clients": loaded.clients,
                "seconds": round(elapsed, 3),
                "files": [str(p) for p in written],
                "summary": document["summary"],
            }
        )
        return
    summary = document["summary"]
    states = ", ".join(
        f"{n} {s.replace('_', ' ')}" for s, n in summary["final_states"].items() if n
    )
    click.echo(
        f"{loaded.name}: {loaded.clients} clients, {loaded.days} days, seed "
        f"{loaded.seed}, {mode} mode, {elapsed:.2f} s"
    )
    click.echo(f"  at the end: {states}")
    for event in document["events"][:12]:
        click.echo(f"  day {event['day']}: {event['text']}")
    if len(document["events"]) > 12:
        click.echo(f"  ... {len(document['events']) - 12} more in the report")
    click.echo(f"  wrote {', '.join(p.name for p in written)} in {out}")


def _writable(out: Path) -> None:
    """Make ``--out`` (and its parents) before the simulation runs, so that a path that
    cannot be written fails at once."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kmsemu-write-test"
        probe.touch()
        probe.unlink()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or str(exc)
        raise LocalError("write_failed", f"--out {out}: {why}") from exc


@sim.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """The built-in teaching scenarios."""
    scenarios = [load_scenario(name) for name in builtin_names()]
    if as_json:
        emit(
            {
                "scenarios": [
                    {"name": s.name, "title": s.title, "days": s.days, "clients": s.clients}
                    for s in scenarios
                ]
            }
        )
        return
    for s in scenarios:
        click.echo(f"{s.name:<16} {s.title} ({s.clients} clients, {s.days} days)")
