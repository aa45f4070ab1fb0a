"""The simulator's output, byte for byte: every built-in scenario and the bench scenario
give the timeline.json and timeline.csv stored in tests/golden/sim/.

A faster engine must not change what a scenario means. When a change is *meant* to
change the outcome, regenerate with ``KMSEMU_UPDATE_GOLDEN=1 python -m pytest
tests/test_sim_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kmsemu.sim.engine import run_fast
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
