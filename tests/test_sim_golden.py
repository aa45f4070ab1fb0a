"""The simulator's output, byte for byte: every built-in scenario and the bench scenario
give the timeline.json and timeline.csv stored in tests/golden/sim/.

The bench scenario at 100,000 clients is too big to store: only the SHA-256 digests of its
two files are (``bench-100000.sha256``, computed with the engine as it was before issue 15's
changes, at 462fca7).

A faster engine must not change what a scenario means. When a change is *meant* to
change the outcome, regenerate with ``KMSEMU_UPDATE_GOLDEN=1 python -m pytest
tests/test_sim_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from kmsemu.sim.fast import run_fast
from kmsemu.sim.scenario import Scenario, builtin_names, load_scenario, parse_scenario

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchkit.sim import scenario_text  # the bench's own scenario

GOLDEN = Path(__file__).parent / "golden" / "sim"
#: The bench scenario at two sizes (scripts/bench-sim runs it at 10,000 clients).
BENCH = {"bench-2000": 2_000, "bench-10000": 10_000}


def scenario(name: str) -> Scenario:
    if name in BENCH:
        return parse_scenario(scenario_text(BENCH[name], 365), name)
    return load_scenario(name)


@pytest.mark.parametrize("name", [*builtin_names(), *BENCH])
def test_the_timeline_is_the_stored_one(name: str, tmp_path: Path) -> None:
    run_fast(scenario(name)).write(tmp_path)
    for suffix in ("json", "csv"):
        got = (tmp_path / f"timeline.{suffix}").read_bytes()
        stored = GOLDEN / f"{name}.{suffix}"
        if os.environ.get("KMSEMU_UPDATE_GOLDEN") == "1":
            stored.write_bytes(got)
        assert got == stored.read_bytes(), f"{name}: timeline.{suffix} differs from {stored}"


def test_the_100000_client_bench_timeline_has_the_stored_digests(tmp_path: Path) -> None:
    """issue 15's big bench scenario, a year of 100,000 clients (about 20 s in fast mode)."""
    run_fast(parse_scenario(scenario_text(100_000, 365), "bench-100000")).write(tmp_path)
    got = "".join(
        f"{hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("timeline.json", "timeline.csv")
    )
    stored = GOLDEN / "bench-100000.sha256"
    if os.environ.get("KMSEMU_UPDATE_GOLDEN") == "1":
        stored.write_text(got)
    assert got == stored.read_text()
