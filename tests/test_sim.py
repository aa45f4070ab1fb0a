"""The fleet simulator: each built-in scenario's key facts, worked out by hand here, and the
scenario format, determinism and the CLI."""

from __future__ import annotations

import gc
import heapq
import json
import math
import random
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.errors import ConfigError
from kmsemu.sim.engine import Client, Engine, Reply, request
from kmsemu.sim.fast import FastBackend, run_fast
from kmsemu.sim.network import run_network
from kmsemu.sim.queue import DayQueue
from kmsemu.sim.scenario import DAY, Scenario, builtin_names, load_scenario, parse_scenario
from kmsemu.wire import filetime_from_unix


@cache
def timeline(name: str) -> dict[str, Any]:
    document: dict[str, Any] = run_fast(load_scenario(name)).to_json()
    return document


def column(doc: dict[str, Any], state: str) -> list[int]:
    return [d["states"][state] for d in doc["days"]]


def count(doc: dict[str, Any], host: str, app: str = "Windows") -> list[int]:
    return [d["counts"][host][app] for d in doc["days"]]


def days_with(doc: dict[str, Any], kind: str) -> list[int]:
    return [e["day"] for e in doc["events"] if e["kind"] == kind]


def test_the_built_ins_are_the_seven_teaching_scenarios() -> None:
    assert builtin_names() == [
        "clock-skew",
        "cloned-image",
        "host-failover",
        "kms-threshold",
        "kms-vs-mak",
        "mak-exhausted",
        "renewal-lapse",
    ]


def test_kms_threshold_nobody_activates_until_the_25th_pc() -> None:
    doc = timeline("kms-threshold")
    # PC n joins on day n and is counted at once: 25 PCs on day 24
    assert count(doc, "kms1")[:26] == list(range(1, 27))
    assert column(doc, "licensed")[:24] == [0] * 24
    assert days_with(doc, "threshold") == [24]
    # on day 24: the 25th PC on its first request, the 24 waiting ones within two hours
    assert doc["days"][24]["activations"] == 25
    # then each newcomer activates on its first request
    assert column(doc, "licensed")[24:40] == list(range(25, 41))
    assert days_with(doc, "all_licensed") == [39]
    assert doc["summary"]["final_states"]["licensed"] == 40


def test_kms_vs_mak_the_mak_clients_activate_the_kms_ones_never() -> None:
    doc = timeline("kms-vs-mak")
    assert count(doc, "kms1") == [10] * 45  # ten KMS clients: far below 25
    assert column(doc, "licensed") == [10] * 45  # the MAK clients, from day 0, for good
    assert doc["days"][0]["mak_activations"] == 10
    assert doc["summary"]["mak_remaining"] == {"office-mak": 90}
    # the KMS clients' 30-day initial grace ends on day 30
    assert column(doc, "initial_grace")[:30] == [10] * 30
    assert column(doc, "notification")[30:] == [10] * 15
    assert days_with(doc, "notification") == [30]


def test_renewal_lapse_the_cut_off_branch_lapses_180_days_after_its_last_renewal() -> None:
    doc = timeline("renewal-lapse")
    # last renewal on day 28 (every 7 days from day 0); offline from day 30
    assert days_with(doc, "lapsed") == [208]  # 28 + 180
    assert doc["days"][208]["lapsed"] == 10
    assert days_with(doc, "notification") == [238]  # 30 days of out-of-tolerance grace
    assert column(doc, "out_of_tolerance_grace")[208:238] == [10] * 30
    # the host drops the branch's CMIDs 30 days after day 28: counted at the end of day 57
    assert count(doc, "kms1")[56] == 40 and count(doc, "kms1")[57] == 30
    # headquarters keeps renewing (30 >= 25): licensed all along
    assert column(doc, "licensed")[:208] == [40] * 208
    assert column(doc, "licensed")[208:] == [30] * (300 - 208)
    # the branch tries every 2 hours while cut off: 12 a day, from day 30
    assert doc["days"][100]["failures"] == {"0xC004F074": 120}


def test_cloned_image_one_cmid_counts_once_and_nobody_activates() -> None:
    doc = timeline("cloned-image")
    assert count(doc, "kms1") == [1] * 40
    assert column(doc, "licensed") == [0] * 40
    assert days_with(doc, "cloned") == [0]
    assert days_with(doc, "notification") == [30]
    assert doc["summary"]["final_states"]["notification"] == 30


def test_clock_skew_the_skewed_servers_are_refused_and_never_counted() -> None:
    doc = timeline("clock-skew")
    # the five skewed servers are never counted; the twenty fill the host's cache, which
    # holds twice the server threshold of 5 while only servers have asked: the count is 10
    assert count(doc, "kms1") == [10] * 40
    assert column(doc, "licensed") == [20] * 40  # threshold 5 reached at once
    # five servers retrying every 2 hours, refused with 0xC004F06C each time
    assert [d["failures"].get("0xC004F06C", 0) for d in doc["days"]] == [60] * 40
    assert days_with(doc, "notification") == [30]


def test_mak_exhausted_the_51st_machine_is_refused() -> None:
    doc = timeline("mak-exhausted")
    # two PCs a day: PC n at day n/2; the 50th (n = 49) on day 24
    remaining = [d["mak_remaining"]["mak-50"] for d in doc["days"]]
    assert remaining[23] == 2 and remaining[24] == 0
    assert days_with(doc, "mak_exhausted") == [24]
    assert doc["summary"]["failures"] == {"0xC004C020": 10}
    assert column(doc, "licensed")[-1] == 50
    # the ten refused PCs (days 25 to 29.5) end their 30-day grace on days 55 to 59
    assert days_with(doc, "notification") == [55, 56, 57, 58, 59]


def test_host_failover_renewals_move_to_the_backup_and_nobody_lapses() -> None:
    doc = timeline("host-failover")
    assert count(doc, "kms2")[:30] == [0] * 30  # the backup sees nobody while kms1 is up
    assert days_with(doc, "outage_start") == [30] and days_with(doc, "outage_end") == [40]
    licensed = column(doc, "licensed")
    assert licensed[6:] == [60] * (90 - 6)  # all licensed after the first week, for good
    assert doc["summary"]["lapsed"] == 0
    # the 25 PCs that activated together on day 2 renew together on day 30, on kms2
    assert doc["summary"]["first_threshold_day"] == {"kms1/Windows": 2, "kms2/Windows": 30}
    assert max(count(doc, "kms2")) == 50  # its cache holds twice the client threshold


def test_one_seed_one_outcome() -> None:
    scenario = load_scenario("host-failover")
    first = run_fast(scenario).to_json()
    assert run_fast(scenario).to_json() == first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[scenario]\nname = 'x'\n[[clients]]\nname = 'a'\nproduct = 'windows-11-pro'\n",
            "at least one KMS host",
        ),
        ("[scenario]\nname = 'x'\n[[hosts]]\nname = 'h'\n", "at least one group of clients"),
        ("[scenario]\nname = 'x'\ndays = 0\n", "scenario.days: 0 is outside 1"),
        ("[scenario]\nname = 'x'\nwhen = 1\n", "unknown key 'when'"),
        (
            "[scenario]\nname = 'x'\n[[hosts]]\nname = 'h'\n[[clients]]\nname = 'a'\n"
            "product = 'windows-99'\n",
            "no product 'windows-99'",
        ),
        (
            "[scenario]\nname = 'x'\n[[hosts]]\nname = 'h'\n[[clients]]\nname = 'a'\n"
            "product = 'windows-11-pro'\nkms_host = 'nope'\n",
            "'nope' is not one of the hosts",
        ),
        (
            "[scenario]\nname = 'x'\n[[hosts]]\nname = 'h'\n"
            "outages = [{from_day = 5, to_day = 5}]\n"
            "[[clients]]\nname = 'a'\nproduct = 'windows-11-pro'\n",
            "to_day must be after from_day",
        ),
        ("[scenario\n", "scenario_test"),
    ],
)
def test_a_bad_scenario_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "scenario_test")
    assert caught.value.code == "scenario_invalid"
    assert message in str(caught.value)


def test_an_unknown_scenario_names_the_built_ins() -> None:
    with pytest.raises(ConfigError, match="kms-threshold") as caught:
        load_scenario("no-such-scenario")
    assert caught.value.code == "unknown_scenario"


def test_sim_run_writes_the_timeline_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["sim", "run", "--builtin", "cloned-image", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    assert reply["scenario"] == "cloned-image" and reply["mode"] == "fast"
    names = {Path(p).name for p in reply["files"]}
    assert {"timeline.json", "timeline.csv", "report.html", "states.png"} <= names
    csv_lines = (out / "timeline.csv").read_text().splitlines()
    assert len(csv_lines) == 41 and csv_lines[0].startswith("day,date,unlicensed,licensed")
    assert json.loads((out / "timeline.json").read_text())["summary"] == reply["summary"]


def test_sim_run_from_a_file_with_another_seed(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        "[scenario]\nname = 'tiny'\ndays = 3\n[[hosts]]\nname = 'h'\n"
        "[[clients]]\nname = 'srv'\ncount = 5\n"
        "product = 'windows-server-2022-standard'\n"
    )
    result = CliRunner().invoke(
        main,
        ["sim", "run", str(scenario), "--out", str(tmp_path / "o"), "--seed", "9", "--no-report"],
    )
    assert result.exit_code == 0, result.output
    assert "tiny: 5 clients, 3 days, seed 9, fast mode" in result.output
    assert "5 licensed" in result.output
    assert not (tmp_path / "o" / "report.html").exists()


def test_sim_run_needs_exactly_one_scenario(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", "run", "--out", str(tmp_path)])
    assert result.exit_code == 2
    result = CliRunner().invoke(
        main, ["sim", "run", "--builtin", "nope", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "unknown_scenario"


def test_sim_list_names_every_built_in() -> None:
    result = CliRunner().invoke(main, ["sim", "list", "--json"])
    assert [s["name"] for s in json.loads(result.output)["scenarios"]] == builtin_names()


@pytest.mark.parametrize("name", ["host-failover", "renewal-lapse", "mak-exhausted", "clock-skew"])
def test_network_mode_gives_the_same_outcome_as_fast_mode(name: str) -> None:
    """Real hosts, DNS and MAK service on loopback, clients speaking KLP/1 and HTTP: every
    day and every event as in fast mode (the other built-ins take longer: they make
    thousands of retries; scripts/bench-sim --network times a year of 200 clients)."""
    scenario = load_scenario(name)
    network = run_network(scenario).to_json()
    fast = timeline(name)
    assert network["scenario"]["mode"] == "network"
    assert network["days"] == fast["days"]
    assert network["events"] == fast["events"]
    assert network["summary"] == fast["summary"]


def test_sim_run_network_from_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "sim",
            "run",
            "--builtin",
            "mak-exhausted",
            "--network",
            "--out",
            str(tmp_path),
            "--no-report",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    assert reply["mode"] == "network"
    assert reply["summary"] == timeline("mak-exhausted")["summary"]


def test_a_hardware_change_reactivates_against_kms_at_once() -> None:
    scenario = parse_scenario(
        "[scenario]\nname = 'hw'\ndays = 20\n[[hosts]]\nname = 'kms1'\n"
        "[[clients]]\nname = 'pc'\ncount = 25\nproduct = 'windows-11-pro'\n"
        "[[clients]]\nname = 'swapped'\ncount = 5\nproduct = 'windows-11-pro'\n"
        "hardware_change_day = 10\n",
        "hw",
    )
    doc = run_fast(scenario).to_json()
    # the change puts the five into out-of-tolerance grace, which asks KMS at once: the
    # host's count is 30 (>= 25), so they are licensed again within the same instant
    assert column(doc, "licensed") == [30] * 20
    assert doc["days"][10]["activations"] == 5
    assert days_with(doc, "hardware_change") == [10]


# -- the fast mode's shortcuts keep the rules' answers -----------------------------------


class DecideToo(FastBackend):
    """Fast mode, and beside it ``HostRules.decide`` on a twin of the hosts, given the
    request the client sends: both must answer alike, request for request. (The lean path
    for renewals is off, so that every request comes here: tests/test_sim_fast.py shows a
    run with it ends as one without.)"""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, lean=False)
        self.twin = FastBackend(scenario)
        self.compared = 0

    def kms(self, host: str, client: Client, now: float) -> Reply | None:
        reply = super().kms(host, client, now)
        spec, rules = self.twin.hosts[host]
        if spec.down((now - self.scenario.start) / DAY):
            assert reply is None
            return reply
        log, _ = rules.decide(request(client, now), filetime_from_unix(now + spec.clock_offset))
        settings = rules.settings
        expected = (
            log.status,
            log.current_count,
            settings.activation_interval,
            settings.renewal_interval,
        )
        assert reply == expected, f"{client.name} at {now}"
        self.compared += 1
        return reply


KMS_SCENARIOS = [n for n in builtin_names() if n != "mak-exhausted"]  # the rest ask KMS


@pytest.mark.parametrize("name", [*KMS_SCENARIOS, "bench"])
def test_the_fast_backend_answers_as_host_rules_decide(name: str) -> None:
    if name == "bench":  # scripts/bench-sim's scenario, smaller
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from benchkit.sim import scenario_text

        scenario = parse_scenario(scenario_text(500, 200), "bench")
    else:
        scenario = load_scenario(name)
    backend = DecideToo(scenario)
    document = Engine(scenario, backend).run().to_json()
    assert backend.compared > 0
    if name != "bench":
        assert document == timeline(name)


# starts where a day's edge rounds to a day too early, or too late (a midnight never does)
@pytest.mark.parametrize("start", [1_234_567.891, -654_321.5])
def test_the_day_queue_runs_events_in_the_order_of_one_heap(start: float) -> None:
    """Events at random times, on day edges (and a hair either side), at one instant, after
    the last day; running an event pushes more (for the same instant or later, as the
    engine's do): the queue runs them on the days and in the order one heap would."""
    days = 20
    edges = [start + d * DAY for d in range(days + 2)]

    def some_time(rng: random.Random, after: float) -> float:
        pick = rng.random()
        if pick < 0.25:
            edge = rng.choice(edges)
            near = rng.choice([edge, math.nextafter(edge, 0), math.nextafter(edge, math.inf)])
            return max(near, after)
        if pick < 0.35:
            return after
        return after + rng.random() * rng.choice([3600.0, DAY, 7 * DAY])

    def follow_up(item: tuple[float, int, int, int]) -> list[tuple[float, int]]:
        rng = random.Random(item[2])  # what an event pushes depends on the event alone
        return [
            (some_time(rng, item[0]), rng.randrange(4)) for _ in range(rng.choice([0, 0, 1, 2]))
        ]

    rng = random.Random(5)
    first = [(some_time(rng, start), rng.randrange(4)) for _ in range(3000)]

    queue, ran = DayQueue(start, days), []
    for client, (when, kind) in enumerate(first, 1):
        queue.push(when, kind, client)
    seq = len(first)
    for day in range(days):
        for item in queue.run(day):
            ran.append((day, item))
            for when, kind in follow_up(item):
                seq += 1
                queue.push(when, kind, seq)

    heap = [(when, kind, n, n) for n, (when, kind) in enumerate(first, 1)]
    heapq.heapify(heap)
    expected, seq = [], len(first)
    for day in range(days):  # the engine's loop before the queue
        while heap and heap[0][0] < edges[day + 1]:
            item = heapq.heappop(heap)
            expected.append((day, item))
            for when, kind in follow_up(item):
                seq += 1
                heapq.heappush(heap, (when, kind, seq, seq))
    assert len(ran) > len(first) and ran == expected


def test_fast_mode_pauses_the_garbage_collector_and_gives_it_back() -> None:
    seen = []
    run_fast(load_scenario("cloned-image"), progress=lambda day: seen.append(gc.isenabled()))
    assert seen and not any(seen) and gc.isenabled()
    gc.disable()
    try:
        run_fast(load_scenario("cloned-image"))
        assert not gc.isenabled()
    finally:
        gc.enable()
