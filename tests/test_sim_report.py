"""The simulator's report: files, deterministic PNGs, a self-contained and escaped HTML page."""

from __future__ import annotations

import re
import struct
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from kmsemu.errors import describe
from kmsemu.sim.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATES = (
    "unlicensed",
    "licensed",
    "initial_grace",
    "out_of_tolerance_grace",
    "non_genuine_grace",
    "notification",
    "extended_grace",
)


def make_timeline(
    days: int = 40,
    *,
    mak: bool = True,
    hosts: tuple[str, ...] = ("kms1",),
    events: list[dict[str, Any]] | None = None,
    title: str = "The count climbs to 25",
) -> dict[str, Any]:
    """A small fleet by hand: one client arrives a day, the count reaches 25 on day 24,
    later clients activate at once, and a MAK key runs down from 10."""
    start = date(2027, 1, 4)
    rows = []
    for d in range(days):
        arrived = min(d + 1, 30)
        licensed = arrived if d >= 24 else 0
        count = min(arrived, 50)
        row: dict[str, Any] = {
            "day": d,
            "date": (start + timedelta(days=d)).isoformat(),
            "states": {s: 0 for s in STATES}
            | {"licensed": licensed, "initial_grace": arrived - licensed},
            "offline": 1 if d % 7 == 3 else 0,
            "counts": {h: {"Windows": count, "Office": 0} for h in hosts},
            "thresholds": {"Windows": 25, "Office": 5},
            "activations": 25 if d == 24 else (1 if 24 < d < 30 else 0),
            "renewals": 3 if d > 30 and d % 7 == 0 else 0,
            "mak_activations": 1 if mak and d < 10 else 0,
            "failures": {"0xC004F038": arrived} if d < 24 else {},
        }
        if mak:
            row["mak_remaining"] = {"mak1": max(10 - (d + 1), 0)}
        rows.append(row)
    if events is None:
        events = [
            {
                "day": 0,
                "time": "2027-01-04T09:00:00Z",
                "kind": "first_activation",
                "text": "first client asked kms1; 0xC004F038 (count 1 of 25)",
            },
            {
                "day": 9,
                "time": "2027-01-13T15:30:00Z",
                "kind": "mak_exhausted",
                "text": "MAK mak1 has no activations left",
            },
            {
                "day": 15,
                "time": "2027-01-19T08:00:00Z",
                "kind": "outage_start",
                "text": "kms1 stopped",
            },
            {
                "day": 17,
                "time": "2027-01-21T08:00:00Z",
                "kind": "outage_end",
                "text": "kms1 is back",
            },
            {
                "day": 24,
                "time": "2027-01-28T10:00:00Z",
                "kind": "threshold",
                "text": "count reached 25 on kms1 (Windows); 25 clients activated",
            },
        ]
    return {
        "scenario": {
            "name": "kms-threshold",
            "title": title,
            "description": "Thirty PCs arrive one a day; nothing activates until 25.",
            "days": days,
            "seed": 1,
            "mode": "fast",
            "start": "2027-01-04T00:00:00Z",
            "clients": 30,
            "hosts": list(hosts),
            "mak_keys": ["mak1"] if mak else [],
        },
        "days": rows,
        "events": events,
        "summary": {
            "final_states": rows[-1]["states"],
            "activated_ever": 30,
            "lapsed": 0,
            "failures": {"0xC004F038": 300, "0xC004F074": 4},
            "mak_remaining": {"mak1": 0} if mak else {},
            "first_threshold_day": {"kms1/Windows": 24} if days > 24 else {},
        },
    }


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def report(tmp_path: Path, timeline: dict[str, Any]) -> str:
    write_report(timeline, tmp_path)
    return (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    """The report of make_timeline(), written once for the tests that only read it."""
    out = tmp_path_factory.mktemp("standard")
    written = write_report(make_timeline(), out)
    return written, (out / "report.html").read_text(encoding="utf-8")


def test_writes_every_chart_and_the_page(standard: tuple[list[Path], str]) -> None:
    written = standard[0]
    names = ["states.png", "counts.png", "activity.png", "mak.png", "report.html"]
    assert [p.name for p in written] == names
    assert all(p.parent == written[0].parent and p.stat().st_size > 0 for p in written)
    for png in written[:-1]:
        assert png_size(png) == (1000, 400)
        assert matplotlib.image.imread(png).shape[:2] == (400, 1000)


def test_no_mak_chart_without_mak_keys(tmp_path: Path) -> None:
    written = write_report(make_timeline(days=5, mak=False), tmp_path)
    assert [p.name for p in written] == ["states.png", "counts.png", "activity.png", "report.html"]
    assert not (tmp_path / "mak.png").exists()


def test_same_timeline_same_bytes(tmp_path: Path, standard: tuple[list[Path], str]) -> None:
    again = write_report(make_timeline(), tmp_path)
    for x, y in zip(standard[0], again, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_png_metadata_has_no_software_or_date(standard: tuple[list[Path], str]) -> None:
    for png in standard[0][:-1]:
        data = png.read_bytes()
        assert b"Software" not in data and b"tIME" not in data


def test_page_is_self_contained(standard: tuple[list[Path], str]) -> None:
    page = standard[1]
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link)\b", page)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(re.search(r'<img [^>]*alt="[^"]+"', img) for img in re.findall(r"<img [^>]*>", page))


def test_narrative_tells_each_event_with_its_day_and_date(standard: tuple[list[Path], str]) -> None:
    page = standard[1]
    assert "count reached 25 on kms1 (Windows); 25 clients activated" in page
    assert "Day 24 <span>(2027-01-28)</span>" in page
    for text in ("kms1 stopped", "kms1 is back", "MAK mak1 has no activations left"):
        assert text in page
    assert '<p class="more">' not in page


def test_scenario_facts_and_last_day(standard: tuple[list[Path], str]) -> None:
    page = standard[1]
    assert "Thirty PCs arrive one a day" in page
    for fact in (
        "<dt>Seed</dt><dd>1</dd>",
        "<dt>Mode</dt><dd>fast</dd>",
        "<dt>KMS hosts</dt><dd>kms1</dd>",
        "<dt>MAK keys</dt><dd>mak1</dd>",
    ):
        assert fact in page
    assert "Day 39 (2027-02-12), at the end of the day." in page
    assert "Count on kms1, Windows</td><td>30 (threshold 25)" in page


def test_hostile_strings_are_escaped(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    timeline = make_timeline(
        days=3,
        title=hostile,
        events=[{"day": 1, "time": "2027-01-05T00:00:00Z", "kind": "note", "text": hostile}],
    )
    timeline["scenario"]["hosts"] = ['kms"><img src=x onerror=alert(1)>']
    page = report(tmp_path, timeline)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_chart_text_is_never_mathtext(tmp_path: Path) -> None:
    timeline = make_timeline(days=3)
    timeline["scenario"]["name"] = r"lab $\nosuch{$"
    timeline["days"][0]["counts"][r"$\nosuch$"] = {r"$\x$": 1}
    timeline["days"][-1]["states"]["$_weird_state"] = 1
    timeline["days"][0]["mak_remaining"]["_mak$"] = 1
    written = write_report(timeline, tmp_path)
    assert len(written) == 5
    assert "$ weird state clients" in (tmp_path / "report.html").read_text()


def test_each_failure_hresult_with_its_meaning(standard: tuple[list[Path], str]) -> None:
    page = standard[1]
    for code in (0xC004F038, 0xC004F074):
        assert f"0x{code:08X}" in page
        assert describe(code).message in page


def test_unknown_failure_code_does_not_break_the_page(tmp_path: Path) -> None:
    timeline = make_timeline(days=3)
    timeline["summary"]["failures"] = {"0x12345678": 2, "timeout": 1}
    timeline["days"][0]["failures"] = {"0x12345678": 2, "timeout": 1}
    page = report(tmp_path, timeline)
    assert "Unknown error 0x12345678." in page and "timeout" in page


def test_no_events(tmp_path: Path) -> None:
    page = report(tmp_path, make_timeline(days=3, events=[]))
    assert "No events were recorded." in page


def test_one_day_timeline(tmp_path: Path) -> None:
    written = write_report(make_timeline(days=1), tmp_path)
    assert len(written) == 5
    assert all(png_size(p) == (1000, 400) for p in written if p.suffix == ".png")
    assert "Day 0 (2027-01-04), at the end of the day." in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    "timeline",
    [
        {},
        {"scenario": {"name": "bare"}, "days": [], "events": []},
        {
            "scenario": {"name": "mak-only", "clients": 2, "mak_keys": ["m"]},
            "days": [
                {
                    "day": 0,
                    "states": {"licensed": 2},
                    "mak_activations": 2,
                    "mak_remaining": {"m": 3},
                }
            ],
        },
    ],
    ids=["empty", "no-days", "mak-only"],
)
def test_sparse_timelines(tmp_path: Path, timeline: dict[str, Any]) -> None:
    written = write_report(timeline, tmp_path)
    assert (tmp_path / "report.html") in written
    assert all(png_size(p) == (1000, 400) for p in written if p.suffix == ".png")


def test_long_narrative_is_capped_and_keeps_the_key_moments(tmp_path: Path) -> None:
    events = [
        {
            "day": d % 40,
            "time": f"2027-01-04T{d % 24:02d}:00:00Z",
            "kind": "offline_start",
            "text": f"pc{d} went offline",
        }
        for d in range(300)
    ]
    events.append(
        {
            "day": 39,
            "time": "2027-02-12T23:00:00Z",
            "kind": "all_licensed",
            "text": "every client is licensed",
        }
    )
    events.append(
        {
            "day": 38,
            "time": "2027-02-11T12:00:00Z",
            "kind": "dns_change",
            "text": "DNS publishes kms2",
        }
    )
    page = report(tmp_path, make_timeline(days=5, events=events))
    assert page.count('<li class="ev') == 60
    assert "every client is licensed" in page and "DNS publishes kms2" in page
    assert "and 242 more events (242 offline start)" in page
    days = [int(d) for d in re.findall(r'<div class="when">Day (\d+)', page)]
    assert days == sorted(days) and days[-1] == 39
