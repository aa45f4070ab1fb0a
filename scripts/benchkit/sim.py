"""The fleet simulator's bench scenario, shared by scripts/bench-sim and the golden
timelines of tests/test_sim_golden.py (which keep a faster simulator's output the same),
and one timed run of it (what scripts/bench-sim runs in a fresh process per run)."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any


def scenario_text(clients: int, days: int) -> str:
    """``clients`` clients over ``days`` days: 80 % Windows 11 PCs arriving over 30 days,
    15 % servers, 5 % Office; two published hosts, one down ten days mid-way."""
    pcs, servers = clients * 80 // 100, clients * 15 // 100
    office = clients - pcs - servers
    outage = max(1, days // 2)
    return f"""
[scenario]
name = "bench-{clients}"
days = {days}
seed = 7

[[hosts]]
name = "kms1"
outages = [{{ from_day = {outage}, to_day = {min(days, outage + 10)} }}]

[[hosts]]
name = "kms2"

[dns]
records = [{{ host = "kms1", priority = 0 }}, {{ host = "kms2", priority = 10 }}]

[[clients]]
name = "pc"
count = {pcs}
product = "windows-11-pro"
arrive_over_days = 30
vm_share = 0.3

[[clients]]
name = "server"
count = {servers}
product = "windows-server-2022-standard"

[[clients]]
name = "office"
count = {office}
product = "office-ltsc-2021-proplus"
"""


def peak_rss_kib() -> int:
    """This process's peak resident set (KiB): VmHWM from /proc/self/status, else
    ``ru_maxrss`` (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_once(clients: int, days: int, network: bool) -> dict[str, Any]:
    """One run of the bench scenario in this process: ``run_fast`` (or ``run_network``)
    alone timed, the KMS requests the engine made, and the process's peak RSS after it."""
    from kmsemu.sim.fast import run_fast
    from kmsemu.sim.network import run_network
    from kmsemu.sim.scenario import parse_scenario

    scenario = parse_scenario(scenario_text(clients, days), "bench")
    engine = run_network if network else run_fast
    started = time.perf_counter()
    timeline = engine(scenario)
    seconds = time.perf_counter() - started
    requests = sum(d.activations + d.renewals + sum(d.failures.values()) for d in timeline.days)
    return {"seconds": seconds, "kms_requests": requests, "peak_rss_kib": peak_rss_kib()}
