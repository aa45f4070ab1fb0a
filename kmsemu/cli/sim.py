"""``kmsemu sim``: run a fleet scenario and write its timeline, charts and report."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from kmsemu.cli.common import emit, fail, fail_with, json_option
from kmsemu.errors import ConfigError
from kmsemu.sim.engine import run_fast
from kmsemu.sim.network import run_network
from kmsemu.sim.scenario import builtin_names, load_scenario


@click.group()
def sim() -> None:
    """The fleet simulator: a year of a network in seconds."""


@sim.command()
@click.argument("scenario", required=False)
@click.option("--builtin", "builtin", metavar="NAME",
              help="A built-in scenario (see `kmsemu sim list`).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for timeline.csv, timeline.json, report.html and the charts.")
@click.option("--network", is_flag=True,
              help="Real host, DNS and MAK servers on loopback, clients speaking KLP/1.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's).")
@click.option("--no-report", is_flag=True, help="Write the timeline only (no charts, no HTML).")
@json_option
def run(scenario: str | None, builtin: str | None, out: Path, network: bool, seed: int | None,
        no_report: bool, as_json: bool) -> None:
    """Run SCENARIO (a TOML file) or --builtin NAME and write what happened, day by day."""
    if (scenario is None) == (builtin is None):
        raise click.UsageError("name a scenario file or --builtin NAME (one of them)")
    try:
        loaded = load_scenario(scenario or builtin or "")
    except ConfigError as exc:
        fail_with(exc, as_json)
    if seed is not None:
        loaded = dataclasses.replace(loaded, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    mode = "network" if network else "fast"
    started = time.perf_counter()
    show = sys.stderr.isatty() and not as_json
    with click.progressbar(length=loaded.days, label=f"{loaded.name}: days", file=sys.stderr,
                           hidden=not show) as bar:
        engine = run_network if network else run_fast
        try:
            timeline = engine(loaded, progress=lambda day: bar.update(day - bar.pos))
        except OSError as exc:
            fail(f"the simulated network could not start: {exc.strerror or exc}",
                 code="sim_failed", as_json=as_json)
    document = timeline.write(out)
    written = [out / "timeline.json", out / "timeline.csv"]
    if not no_report:
        from kmsemu.sim.report import write_report

        written += write_report(document, out)
    elapsed = time.perf_counter() - started
    if as_json:
        emit({"scenario": loaded.name, "mode": mode, "seed": loaded.seed, "days": loaded.days,
              "clients": loaded.clients, "seconds": round(elapsed, 3),
              "files": [str(p) for p in written], "summary": document["summary"]})
        return
    summary = document["summary"]
    states = ", ".join(f"{n} {s.replace('_', ' ')}"
                       for s, n in summary["final_states"].items() if n)
    click.echo(f"{loaded.name}: {loaded.clients} clients, {loaded.days} days, seed "
               f"{loaded.seed}, {mode} mode, {elapsed:.2f} s")
    click.echo(f"  at the end: {states}")
    for event in document["events"][:12]:
        click.echo(f"  day {event['day']}: {event['text']}")
    if len(document["events"]) > 12:
        click.echo(f"  ... {len(document['events']) - 12} more in the report")
    click.echo(f"  wrote {', '.join(p.name for p in written)} in {out}")


@sim.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """The built-in teaching scenarios."""
    scenarios = [load_scenario(name) for name in builtin_names()]
    if as_json:
        emit({"scenarios": [{"name": s.name, "title": s.title, "days": s.days,
                             "clients": s.clients} for s in scenarios]})
        return
    for s in scenarios:
        click.echo(f"{s.name:<16} {s.title} ({s.clients} clients, {s.days} days)")
