"""The recorded runs of docs/quality.md: each target for a number of executions or seconds.

    .venv/bin/python -m fuzz.longrun [TARGET...] [--runs 1000000] [--seconds 100]

Runs ``nice -n 10 scripts/fuzz TARGET -runs=N -max_total_time=S -rss_limit_mb=2048
-timeout=10``, one target at a time. libFuzzer stops at the first crash: the run is then
started again on the same working corpus (fuzz/work/TARGET) with what is left of the
executions and the time, so a known bug does not end a target's run. Prints one Markdown
table row per target: executions, seconds, execs/s, peak RSS, crashes (restarts) and the
distinct findings saved in fuzz/findings/TARGET/.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("rpc", "klp", "dns", "keys", "http", "lab_config", "scenario", "profile")


def stat(text: str, name: str) -> int:
    found = re.findall(rf"stat::{name}:\s+(\d+)", text)
    return int(found[-1]) if found else 0


def run(target: str, runs: int, seconds: float) -> str:
    findings = ROOT / "fuzz" / "findings" / target
    before = set(findings.iterdir()) if findings.exists() else set()
    executed, peak, crashes, started = 0, 0, 0, time.monotonic()
    while executed < runs:
        left = seconds - (time.monotonic() - started)
        if left < 5:
            break
        proc = subprocess.run(
            ["nice", "-n", "10", str(ROOT / "scripts" / "fuzz"), target,
             f"-runs={runs - executed}", f"-max_total_time={int(left)}",
             "-rss_limit_mb=2048", "-timeout=10"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        executed += stat(proc.stdout, "number_of_executed_units")
        peak = max(peak, stat(proc.stdout, "peak_rss_mb"))
        if proc.returncode == 0:
            break
        crashes += 1
        tail = [line for line in proc.stdout.splitlines() if "Uncaught" in line or "Error" in line]
        print(f"... {target}: crash {crashes}: {' | '.join(tail[:3])[:300]}", file=sys.stderr)
    elapsed = time.monotonic() - started
    new = sorted(p.name for p in set(findings.iterdir()) - before) if findings.exists() else []
    rate = executed / elapsed if elapsed else 0.0
    return (
        f"| {target} | {executed:,} | {elapsed:.0f} s | {rate:,.0f} | {peak} MB | "
        f"{crashes} | {', '.join(new) or 'none'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", default=list(NAMES))
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    print("| target | executions | time | execs/s | peak RSS | crashes | findings |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for target in args.targets:
        print(run(target, args.runs, args.seconds), flush=True)


if __name__ == "__main__":
    main()
