"""The simulator's report: the charts and one self-contained HTML page.

``write_report`` reads the timeline an engine produces (see
``kmsemu.sim.reading``), has ``kmsemu.sim.charts`` draw the PNG charts, and
writes ``report.html`` beside them: facts, summary, narrative and the charts
inlined as data URIs. Every string from the timeline is escaped.

Key events are told in the narrative, day by day, capped at 60 lines with the
key kinds kept first. Every optional part of a timeline may be missing, and the
page is deterministic: nothing read from the clock, no software version.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from kmsemu.errors import describe, format_hresult, hresult_name
from kmsemu.sim.charts import CHART_PX, state_order, state_style, write_charts
from kmsemu.sim.reading import (
    KNOWN_HRESULTS,
    days_of,
    event_x,
    events_of,
    mak_keys,
    num,
    obj,
    parse_hresult,
    seq,
)

__all__ = ["write_report"]

_MAX_NARRATIVE = 60  # narrative lines before "and N more"
#: The key moments: highlighted in the narrative, and kept first when it is cut short.
_KEY_KINDS = frozenset(
    {
        "threshold",
        "first_activation",
        "all_licensed",
        "lapsed",
        "notification",
        "outage_start",
        "outage_end",
        "mak_exhausted",
    }
)
_TONE = {
    "threshold": "ok",
    "first_activation": "ok",
    "all_licensed": "ok",
    "outage_end": "ok",
    "lapsed": "bad",
    "notification": "bad",
    "outage_start": "bad",
    "mak_exhausted": "bad",
    "clock_skew": "warn",
    "cloned": "warn",
    "hardware_change": "warn",
    "dns_change": "warn",
    "offline_start": "warn",
}  # badge colour in the narrative


def write_report(timeline: dict[str, Any], out: Path) -> list[Path]:
    """Write the charts (PNG) and report.html into ``out`` (exists); return the paths written."""
    written = write_charts(timeline, out)
    page = out / "report.html"
    page.write_text(_html(timeline, written), encoding="utf-8")
    return [*written, page]


_CAPTIONS = {
    "states": "Clients in each licence state at the end of each day (stacked); the dotted "
    "line counts clients that were offline.",
    "counts": "The count each KMS host reports, per application, against the threshold a "
    "client needs before it activates.",
    "activity": "Successful activations and renewals per day above the axis; failed attempts "
    "below it, by HRESULT.",
    "mak": "Activations left on each MAK key at the end of each day.",
}

_CSS = """
:root { --bg: #f3f4f6; --panel: #fff; --text: #1f2933; --muted: #6b7280; --line: #e2e5e9;
  --accent: #2f6fb0; --ok: #1e7a46; --ok-soft: #e4f3ea; --warn: #9a5b00; --warn-soft: #fff3dc;
  --bad: #b42318; --bad-soft: #fdecea;
  --mono: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
  --sans: system-ui, -apple-system, "Segoe UI", "Noto Sans", "DejaVu Sans", Roboto, Arial,
    sans-serif; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 15px/1.5 var(--sans); }
main { max-width: 1080px; margin: 0 auto; padding: 28px 24px 40px; }
header, section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 20px 24px; margin-bottom: 18px; }
header { border-top: 4px solid var(--accent); }
.kicker { margin: 0; color: var(--accent); font-size: 12px; font-weight: 600;
  letter-spacing: .06em; text-transform: uppercase; }
h1 { margin: 4px 0 6px; font-size: 26px; line-height: 1.25; }
h2 { margin: 0 0 14px; font-size: 18px; }
h3 { margin: 18px 0 8px; font-size: 14px; color: var(--muted); font-weight: 600; }
.grid h3 { margin-top: 0; }
.lead { margin: 0 0 14px; max-width: 75ch; color: #3a4552; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0; padding-top: 12px;
  border-top: 1px solid var(--line); }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(128px, 1fr)); gap: 12px;
  margin-bottom: 18px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; border-left: 4px solid var(--line); }
.card span { display: block; font-size: 12px; color: var(--muted); }
.card strong { font-size: 24px; font-variant-numeric: tabular-nums; }
.card.ok { border-left-color: var(--ok); } .card.warn { border-left-color: #e0a030; }
.card.bad { border-left-color: var(--bad); }
figure { margin: 0 0 20px; }
figure:last-child { margin-bottom: 0; }
figure img { display: block; width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; }
figcaption { margin-top: 6px; font-size: 13px; color: var(--muted); }
.day { display: grid; grid-template-columns: 170px 1fr; gap: 12px; padding: 8px 0;
  border-top: 1px solid var(--line); }
.day:first-child { border-top: 0; }
.when { font-weight: 600; white-space: nowrap; }
.when span { color: var(--muted); font-weight: normal; font-size: 13px; }
.day ul { list-style: none; margin: 0; padding: 0; }
.ev { display: flex; gap: 10px; align-items: baseline; padding: 2px 0; }
.ev .text { color: #4b5563; }
.ev.key .text { color: var(--text); font-weight: 600; }
.kind { flex: none; min-width: 118px; text-align: center; font-size: 11px; font-weight: 600;
  padding: 1px 8px; border-radius: 10px; background: #eef0f3; color: #4b5563; }
.ok .kind { background: var(--ok-soft); color: var(--ok); }
.warn .kind { background: var(--warn-soft); color: var(--warn); }
.bad .kind { background: var(--bad-soft); color: var(--bad); }
time { flex: none; font: 12px var(--mono); color: var(--muted); }
.more { margin: 12px 0 0; color: var(--muted); font-style: italic; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 24px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { text-align: left; font-size: 12px; color: var(--muted); font-weight: 600;
  border-bottom: 1px solid var(--line); padding: 4px 8px; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
section > table.kv { max-width: 640px; }
table.kv td:last-child, table.num td:nth-child(n+2), table.num th:nth-child(n+2),
table.failures td:last-child, table.failures th:last-child { text-align: right;
  font-variant-numeric: tabular-nums; }
table.failures td:first-child { white-space: nowrap; }
code { font: 13px var(--mono); }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 8px; }
.muted { color: var(--muted); }
td .muted { font-size: 13px; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
@media (max-width: 640px) { .day { grid-template-columns: 1fr; gap: 2px; } }
@media print { body { background: #fff; } header, section { border: 0; padding: 0; }
  figure, .day { break-inside: avoid; } }
"""


# -- report.html --------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _html(timeline: dict[str, Any], charts: list[Path]) -> str:
    scenario = obj(timeline.get("scenario"))
    title = str(scenario.get("title") or scenario.get("name") or "Simulation report")
    body = "\n".join(
        [
            _header(scenario, title),
            _highlights(timeline),
            _section("Charts", "".join(_figure_html(path) for path in charts)),
            _section("What happened", _narrative(timeline)),
            _section("Summary", _summary(timeline)),
            _section("The last day", _last_day(timeline)),
            "<footer>Generated by kmsemu from the simulator's timeline. The same scenario and "
            "seed give the same report.</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)} · kmsemu simulation</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _section(heading: str, content: str) -> str:
    return f"<section>\n<h2>{_e(heading)}</h2>\n{content}\n</section>"


def _header(scenario: dict[str, Any], title: str) -> str:
    facts = [
        ("Scenario", scenario.get("name")),
        ("Days", scenario.get("days")),
        ("Start", scenario.get("start")),
        ("Seed", scenario.get("seed")),
        ("Mode", scenario.get("mode")),
        ("Clients", scenario.get("clients")),
        ("KMS hosts", ", ".join(map(str, seq(scenario.get("hosts")))) or "none"),
        ("MAK keys", ", ".join(map(str, seq(scenario.get("mak_keys")))) or "none"),
    ]
    items = "".join(
        f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts if v is not None
    )
    description = scenario.get("description")
    lead = f'<p class="lead">{_e(description)}</p>' if description else ""
    return (
        f'<header>\n<p class="kicker">kmsemu fleet simulation</p>\n<h1>{_e(title)}</h1>\n'
        f'{lead}\n<dl class="facts">{items}</dl>\n</header>'
    )


def _highlights(timeline: dict[str, Any]) -> str:
    scenario, summary = obj(timeline.get("scenario")), obj(timeline.get("summary"))
    final = obj(summary.get("final_states"))
    failed = sum(num(v) for v in obj(summary.get("failures")).values())
    cards = [
        ("Clients", scenario.get("clients"), ""),
        ("Activated ever", summary.get("activated_ever"), "ok"),
        ("Licensed at end", final.get("licensed"), "ok"),
        ("Lapsed", summary.get("lapsed"), "bad" if num(summary.get("lapsed")) else ""),
        ("Failed attempts", failed, "warn" if failed else ""),
    ]
    reached = [num(v) for v in obj(summary.get("first_threshold_day")).values()]
    if seq(scenario.get("hosts")) or reached:
        cards.append(("First threshold", f"day {min(reached)}" if reached else "never", ""))
    if mak_keys(timeline):
        left = obj(summary.get("mak_remaining"))
        cards.append(("MAK left", sum(num(v) for v in left.values()), ""))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {tone}"><span>{_e(label)}</span><strong>{_e(value)}</strong></div>'
            for label, value, tone in cards
            if value is not None
        )
        + "</div>"
    )


def _figure_html(path: Path) -> str:
    name = path.stem
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = _CAPTIONS.get(name, "")
    width, height = CHART_PX
    return (
        f'<figure id="chart-{_e(name)}"><img src="data:image/png;base64,{data}" '
        f'width="{width}" height="{height}" alt="{_e(name)} chart: {_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _dates(timeline: dict[str, Any]) -> dict[int, str]:
    return {num(d.get("day", i)): str(d.get("date", "")) for i, d in enumerate(days_of(timeline))}


def _narrative(timeline: dict[str, Any]) -> str:
    events = events_of(timeline)
    if not events:
        return '<p class="muted">No events were recorded.</p>'
    shown = _pick(events)
    dates = _dates(timeline)
    groups: dict[int, list[str]] = {}
    for i in shown:
        day, at = num(events[i].get("day")), events[i].get("time")
        if not dates.get(day) and isinstance(at, str):
            dates[day] = at[:10]
        groups.setdefault(day, []).append(_event_li(events[i]))
    rows = "".join(_day_html(day, dates.get(day, ""), items) for day, items in groups.items())
    return f'<div class="narrative">{rows}</div>{_more(events, shown)}'


def _day_html(day: int, date: str, items: list[str]) -> str:
    when = f"Day {day}" + (f" <span>({_e(date)})</span>" if date else "")
    return f'<div class="day"><div class="when">{when}</div><ul>{"".join(items)}</ul></div>'


def _pick(events: list[dict[str, Any]]) -> list[int]:
    """Indices of the events to tell, in time order: all of them if few, else the key kinds
    first, then the others as room remains, rare kinds before a flood of one kind."""
    order = sorted(
        range(len(events)), key=lambda i: (num(events[i].get("day")), event_x(events[i]), i)
    )
    if len(order) <= _MAX_NARRATIVE:
        return order
    key = [i for i in order if events[i].get("kind") in _KEY_KINDS][:_MAX_NARRATIVE]
    rest = [i for i in order if events[i].get("kind") not in _KEY_KINDS]
    kinds = Counter(str(events[i].get("kind")) for i in rest)
    rest.sort(key=lambda i: kinds[str(events[i].get("kind"))])  # stable: in time order within
    chosen = set(key + rest[: _MAX_NARRATIVE - len(key)])
    return [i for i in order if i in chosen]


def _event_li(event: dict[str, Any]) -> str:
    kind = str(event.get("kind", "note"))
    tone = _TONE.get(kind, "neutral")
    strong = " key" if kind in _KEY_KINDS else ""
    try:
        at = f"<time>{datetime.fromisoformat(str(event.get('time'))):%H:%M}</time>"
    except ValueError:
        at = ""
    return (
        f'<li class="ev {tone}{strong}"><span class="kind">{_e(kind.replace("_", " "))}'
        f'</span>{at}<span class="text">{_e(event.get("text", ""))}</span></li>'
    )


def _more(events: list[dict[str, Any]], shown: list[int]) -> str:
    told = set(shown)
    hidden = Counter(str(e.get("kind")) for i, e in enumerate(events) if i not in told)
    if not hidden:
        return ""
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in hidden.most_common())
    return (
        f'<p class="more">… and {hidden.total()} more events ({_e(kinds)}); '
        "timeline.json has them all.</p>"
    )


def _table(head: list[str] | None, rows: list[list[str]], cls: str) -> str:
    """A table from cells that are already HTML (escape before); no head: label/value rows."""
    th = "".join(f"<th>{h}</th>" for h in head or [])
    thead = f"<thead><tr>{th}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _summary(timeline: dict[str, Any]) -> str:
    summary = obj(timeline.get("summary"))
    parts = [
        f'<div class="grid"><div><h3>Licence states at the end</h3>'
        f"{_states_table(obj(summary.get('final_states')))}</div>"
        f"<div><h3>Totals</h3>{_totals_table(timeline)}</div></div>",
        f"<h3>Failed attempts by HRESULT</h3>{_failures_table(summary)}",
    ]
    return "\n".join(parts)


def _states_table(states: dict[str, Any]) -> str:
    if not states:
        return '<p class="muted">Not recorded.</p>'
    total = sum(num(v) for v in states.values()) or 1
    rows = []
    for state in sorted(states, key=state_order):
        label, colour = state_style(state)
        n = num(states[state])
        rows.append(
            [
                f'<i class="sw" style="background:{colour}"></i>{_e(label)}',
                f'<span class="{"" if n else "muted"}">{n}</span>',
                f'<span class="muted">{100 * n / total:.0f}%</span>',
            ]
        )
    return _table(["State", "Clients", "Share"], rows, "num")


def _totals_table(timeline: dict[str, Any]) -> str:
    summary, dates = obj(timeline.get("summary")), _dates(timeline)
    rows = [
        ["Activated ever", _e(summary.get("activated_ever", "—"))],
        ["Lapsed (licence ran out)", _e(summary.get("lapsed", "—"))],
    ]
    for where, day in obj(summary.get("first_threshold_day")).items():
        when = f"day {num(day)}" + (f" ({dates[num(day)]})" if dates.get(num(day)) else "")
        rows.append([f"Threshold reached: {_e(where)}", _e(when)])
    for key, left in obj(summary.get("mak_remaining")).items():
        rows.append([f"MAK {_e(key)}: activations left", _e(left)])
    return _table(None, rows, "kv")


def _failures_table(summary: dict[str, Any]) -> str:
    failures = {str(k): num(v) for k, v in obj(summary.get("failures")).items() if num(v)}
    if not failures:
        return '<p class="muted">No failed attempts.</p>'
    rows = []
    for code, n in sorted(failures.items(), key=lambda item: (-item[1], item[0])):
        value = parse_hresult(code)
        info = describe(value) if value is not None else None
        meaning = (
            f'{_e(info.message)}<br><span class="muted">{_e(info.hint)}</span>'
            if info
            else '<span class="muted">Not an HRESULT.</span>'
        )
        name = _e(hresult_name(value)) if value is not None and value in KNOWN_HRESULTS else ""
        shown = _e(format_hresult(value) if value is not None else code)
        rows.append([f'<code>{shown}</code><br><span class="muted">{name}</span>', meaning, str(n)])
    return _table(["HRESULT", "Meaning", "Attempts"], rows, "failures")


def _last_day(timeline: dict[str, Any]) -> str:
    rows = days_of(timeline)
    if not rows:
        return '<p class="muted">The timeline has no days.</p>'
    last = rows[-1]
    day = num(last.get("day", len(rows) - 1))
    cells: list[list[str]] = []
    states = obj(last.get("states"))
    for state in sorted(states, key=state_order):
        if num(states[state]):
            cells.append([f"{_e(state_style(state)[0])} clients", str(num(states[state]))])
    cells.append(["Offline clients", str(num(last.get("offline")))])
    thresholds = obj(last.get("thresholds"))
    for host, apps in obj(last.get("counts")).items():
        for app, n in obj(apps).items():
            need = f" (threshold {num(thresholds[app])})" if app in thresholds else ""
            cells.append([f"Count on {_e(host)}, {_e(app)}", f"{num(n)}{_e(need)}"])
    for key, label in (
        ("activations", "KMS activations"),
        ("renewals", "KMS renewals"),
        ("mak_activations", "MAK activations"),
    ):
        cells.append([label, str(num(last.get(key)))])
    for code, n in obj(last.get("failures")).items():
        cells.append([f"Failed: <code>{_e(code)}</code>", str(num(n))])
    for key, left in obj(last.get("mak_remaining")).items():
        cells.append([f"MAK {_e(key)}: activations left", str(num(left))])
    date = f" ({_e(last['date'])})" if last.get("date") else ""
    return f'<p class="muted">Day {day}{date}, at the end of the day.</p>' + _table(
        None, cells, "kv"
    )
