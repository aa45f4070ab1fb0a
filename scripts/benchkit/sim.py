"""The fleet simulator's bench scenario, shared by scripts/bench-sim and the golden
timelines of tests/test_sim_golden.py (which keep a faster simulator's output the same)."""

from __future__ import annotations


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
