"""The simulator's report: PNG charts and one self-contained HTML page.

``write_report`` reads the timeline an engine produces (the content of
``timeline.json``: ``scenario``, one entry per day in ``days``, ``events``,
``summary``) and writes into a directory:

- ``states.png``: clients per licence state, stacked, offline clients dotted;
- ``counts.png``: each KMS host's count per application, threshold lines;
- ``activity.png``: successes per day above the axis, failures by HRESULT below;
- ``mak.png``: activations left on each MAK key (only if the scenario has any);
- ``report.html``: facts, summary, narrative and the charts inlined as data URIs.

Key events are drawn on the charts (threshold, lapsed, notification and MAK
exhausted as dashed lines labelled above the plot, outages shaded) and told in
the narrative, day by day, capped at 60 lines with the key kinds kept first.

Every optional part of a timeline may be missing (no hosts, no MAK keys, no
events, one day). The output is deterministic, so that CI can compare reports:
fixed size and dpi, no software version or date in the PNG metadata, nothing
read from the clock. The charts use matplotlib's object API on an Agg canvas
(no pyplot, hence no global figure registry and no display).

Days are drawn as blocks: day ``d`` spans ``[d, d + 1)`` on the x axis, and an
event sits at its time of day within its block.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from kmsemu.errors import HResult, describe, format_hresult, hresult_name

__all__ = ["write_report"]

_SIZE, _DPI = (10.0, 4.0), 100
_LEFT, _RIGHT = 0.065, 0.775  # the plot's edges in the figure: the legend goes on the right
_AXES_PX = _SIZE[0] * _DPI * (_RIGHT - _LEFT)
_CHAR_PX = 5.5  # width of a 7-point character, to keep event labels apart
_PNG_METADATA: dict[str, str | None] = {"Software": None}
_MAX_NARRATIVE = 60  # narrative lines before "and N more"
_MAX_MARKS = 16  # event lines per chart
_TOP_FAILURES = 4  # HRESULTs drawn on their own; the rest is "other"
_INK, _MUTED, _GRID = "#1f2933", "#6b7280", "#e2e5e9"
_OUTAGE = "KMS outage"
_KNOWN = frozenset(int(h) for h in HResult)

#: Licence states bottom-up in the stack: label and colour (stable across charts and HTML).
_STATES: dict[str, tuple[str, str]] = {
    "licensed": ("Licensed", "#2e9d5b"),
    "extended_grace": ("Extended grace", "#5aa6d6"),
    "initial_grace": ("Initial grace", "#f2b233"),
    "out_of_tolerance_grace": ("Out-of-tolerance grace", "#ef7d22"),
    "non_genuine_grace": ("Non-genuine grace", "#a05ec9"),
    "notification": ("Notification", "#d64541"),
    "unlicensed": ("Unlicensed", "#9aa1a9"),
}
_SPARE = ("#17becf", "#8c564b", "#bcbd22", "#e377c2", "#7f7f7f", "#1f77b4")
_APPS = {"Windows": "#2f6fb0", "Office": "#d9602b"}
_HOST_STYLES = ("-", "--", "-.", ":")
_FAILURE_COLOURS = ("#c0392b", "#e67e22", "#8e3b2e", "#e8a09a", "#9aa1a9")
_MAK_COLOURS = ("#6b3fa0", *_SPARE)

#: Events drawn as vertical lines: kind -> (label, colour, charts it appears on).
_MARKS: dict[str, tuple[str, str, frozenset[str]]] = {
    "threshold": ("threshold", "#1e7a46", frozenset({"states", "counts", "activity"})),
    "lapsed": ("lapsed", "#b42318", frozenset({"states", "activity"})),
    "notification": ("notification", "#d64541", frozenset({"states"})),
    "mak_exhausted": ("MAK exhausted", "#6b3fa0", frozenset({"activity", "mak"})),
}
#: The key moments: highlighted in the narrative, and kept first when it is cut short.
_KEY_KINDS = frozenset({"threshold", "first_activation", "all_licensed", "lapsed",
                        "notification", "outage_start", "outage_end", "mak_exhausted"})
_TONE = {"threshold": "ok", "first_activation": "ok", "all_licensed": "ok", "outage_end": "ok",
         "lapsed": "bad", "notification": "bad", "outage_start": "bad", "mak_exhausted": "bad",
         "clock_skew": "warn", "cloned": "warn", "hardware_change": "warn",
         "dns_change": "warn", "offline_start": "warn"}  # badge colour in the narrative


def write_report(timeline: dict[str, Any], out: Path) -> list[Path]:
    """Write the charts (PNG) and report.html into ``out`` (exists); return the paths written."""
    charts = list(_CHARTS)
    if not _mak_keys(timeline):
        charts.remove("mak")
    written: list[Path] = []
    for name in charts:
        draw, title, ylabel = _CHARTS[name]
        fig, ax = _figure()
        draw(ax, timeline)
        _draw_outages(ax, timeline)
        _draw_marks(ax, timeline, name)
        _frame(ax, timeline, title, ylabel)
        written.append(_save(fig, out / f"{name}.png"))
    page = out / "report.html"
    page.write_text(_html(timeline, written), encoding="utf-8")
    return [*written, page]


# -- reading a timeline (tolerant: engines may leave optional parts out) ------------------------

def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _days(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in _seq(timeline.get("days")) if isinstance(d, dict)]


def _day_numbers(timeline: dict[str, Any]) -> list[int]:
    return [_num(d.get("day", i)) for i, d in enumerate(_days(timeline))]


def _events(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in _seq(timeline.get("events")) if isinstance(e, dict)]


def _union(*groups: Iterable[Any]) -> list[str]:
    """Names in first-seen order, without duplicates."""
    seen: dict[str, None] = {}
    for group in groups:
        seen.update((str(n), None) for n in group)
    return list(seen)


def _mak_keys(timeline: dict[str, Any]) -> list[str]:
    declared = _seq(_obj(timeline.get("scenario")).get("mak_keys"))
    return _union(declared, *(_obj(d.get("mak_remaining")) for d in _days(timeline)))


def _state_names(timeline: dict[str, Any]) -> list[str]:
    """States that ever hold a client, in stacking order (unknown ones last)."""
    seen = _union(*(_obj(d.get("states")) for d in _days(timeline)))
    used = [s for s in seen if any(_num(_obj(d.get("states")).get(s)) for d in _days(timeline))]
    return sorted(used, key=_state_order)


def _state_style(state: str) -> tuple[str, str]:
    """Label and colour; a state this module does not know gets a spare colour of its own."""
    spare = _SPARE[sum(map(ord, state)) % len(_SPARE)]
    return _STATES.get(state, (state.replace("_", " ").capitalize(), spare))


def _state_order(state: str) -> int:
    return list(_STATES).index(state) if state in _STATES else len(_STATES)


def _event_x(event: dict[str, Any]) -> float:
    """The event's day plus its time of day (``time`` is ISO 8601; without it, the day's start)."""
    try:
        t = datetime.fromisoformat(str(event.get("time")))
    except ValueError:
        return float(_num(event.get("day")))
    return _num(event.get("day")) + (t.hour * 3600 + t.minute * 60 + t.second) / 86400


def _plain(value: Any) -> str:
    """A timeline string for a chart: ``$`` would start matplotlib's mathtext, and a legend
    leaves out labels that start with ``_``."""
    text = str(value).replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def _hresult(code: str) -> int | None:
    try:
        return int(code, 16)
    except ValueError:
        return None


# -- charts -------------------------------------------------------------------------------------

def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=_SIZE, dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    # Fixed margins, not a layout engine: plot areas line up from chart to chart in the
    # page, and one draw per chart instead of two.
    fig.subplots_adjust(left=_LEFT, right=_RIGHT, top=0.9, bottom=0.125)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color("#9aa1a9")
    ax.tick_params(colors=_INK, labelsize=9)
    ax.grid(axis="y", color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=_DPI, metadata=_PNG_METADATA, facecolor="white")
    fig.clear()
    return path


def _frame(ax: Axes, timeline: dict[str, Any], title: str, ylabel: str) -> None:
    """Title, axes and legend, shared by every chart."""
    name = _plain(_obj(timeline.get("scenario")).get("name", "")) or "scenario"
    ax.set_title(f"{name}: {title}", loc="left", fontsize=11, color=_INK, fontweight="bold",
                 pad=16)  # room for the event labels between the title and the plot
    ax.set_ylabel(ylabel, fontsize=9, color=_INK)
    ax.set_xlabel("day", fontsize=9, color=_INK)
    days = _day_numbers(timeline)
    ax.set_xlim(days[0] if days else 0, days[-1] + 1 if days else 1)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        order = sorted(range(len(labels)), key=lambda i: labels[i] == _OUTAGE)  # outage last
        ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            fontsize=11, color=_MUTED)
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def _blocks(days: list[int], values: list[int]) -> tuple[list[int], list[int]]:
    """Step data: one more point at the end so that the last day is a block too."""
    return [*days, days[-1] + 1], [*values, values[-1]]


def _states_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = _day_numbers(timeline), _days(timeline)
    states = _state_names(timeline)
    tops = [0] * (len(days) + 1)
    layers = []
    for state in states:
        xs, ys = _blocks(days, [_num(_obj(d.get("states")).get(state)) for d in rows])
        bottoms, tops = tops, [a + b for a, b in zip(tops, ys, strict=True)]
        layers.append((state, xs, bottoms, tops))
    for state, xs, bottoms, tops in reversed(layers):  # top-down: the legend reads as the stack
        label, colour = _state_style(state)
        ax.fill_between(xs, bottoms, tops, step="post", color=colour, label=_plain(label),
                        linewidth=0)
    offline = [_num(d.get("offline")) for d in rows]
    if any(offline):
        xs, ys = _blocks(days, offline)
        ax.step(xs, ys, where="post", color=_INK, linestyle=":", linewidth=1.4, label="Offline")
    if states or any(offline):
        ax.set_ylim(0, None)
    else:
        _empty(ax, "No clients in this timeline")


def _counts_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = _day_numbers(timeline), _days(timeline)
    hosts = _union(_seq(_obj(timeline.get("scenario")).get("hosts")),
                   *(_obj(d.get("counts")) for d in rows))
    apps = _union(*(_obj(c) for d in rows for c in _obj(d.get("counts")).values()))
    thresholds = _thresholds(rows)
    apps = _union(apps, thresholds)
    colours = {a: _APPS.get(a, _SPARE[i % len(_SPARE)]) for i, a in enumerate(apps)}
    top = 0
    for h, host in enumerate(hosts):
        for app in apps:
            counts = [_num(_obj(_obj(d.get("counts")).get(host)).get(app)) for d in rows]
            if days and any(counts):
                xs, ys = _blocks(days, counts)
                ax.step(xs, ys, where="post", color=colours[app], linewidth=1.8,
                        linestyle=_HOST_STYLES[h % len(_HOST_STYLES)],
                        label=_plain(f"{host} {app}"))
                top = max(top, *counts)
    for app, value in thresholds.items():
        ax.axhline(value, color=colours[app], linestyle=(0, (2, 2)), linewidth=1)
        ax.text(0.995, value, _plain(f"{app} threshold {value}"), ha="right", va="bottom",
                transform=ax.get_yaxis_transform(), fontsize=8, color=colours[app])
        top = max(top, value)
    if not hosts or not days:
        _empty(ax, "No KMS host in this scenario" if not hosts else "No days in this timeline")
    else:
        ax.set_ylim(0, top * 1.15 + 1)


def _thresholds(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The latest threshold of each application (absent from a day: kept from before)."""
    found: dict[str, int] = {}
    for d in rows:
        found.update({str(a): _num(v) for a, v in _obj(d.get("thresholds")).items()})
    return found


def _activity_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = _day_numbers(timeline), _days(timeline)
    up = [0] * len(days)
    for key, label, colour in (("activations", "KMS activations", "#2e9d5b"),
                               ("renewals", "KMS renewals", "#8fd1a6"),
                               ("mak_activations", "MAK activations", "#6b3fa0")):
        values = [_num(d.get(key)) for d in rows]
        if any(values):
            up = _layer(ax, days, up, values, colour, label)
    down = [0] * len(days)
    for (label, values), colour in zip(_failure_series(rows), _FAILURE_COLOURS, strict=False):
        down = _layer(ax, days, down, [-v for v in values], colour, label)
    down = [-v for v in down]
    if any(up) or any(down):
        ax.axhline(0, color=_INK, linewidth=0.8)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{abs(v):g}"))
        ax.set_ylim(-max(down) * 1.1 - 0.5, max(up) * 1.1 + 0.5)
    else:
        _empty(ax, "No activations, renewals or failures")


def _layer(ax: Axes, days: list[int], base: list[int], values: list[int], colour: str,
           label: str) -> list[int]:
    """One layer of a stacked daily chart; returns the new top. Bars while they are wide
    enough to be told apart, then blocks (bars a pixel or two wide leave seams)."""
    top = [a + b for a, b in zip(base, values, strict=True)]
    if len(days) <= 120:
        ax.bar([d + 0.5 for d in days], values, 0.8, bottom=base, color=colour, label=label,
               linewidth=0)
    else:
        xs, ys = _blocks(days, top)
        ax.fill_between(xs, _blocks(days, base)[1], ys, step="post", color=colour, label=label,
                        linewidth=0)
    return top


def _failure_series(rows: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """Failures per day for the most frequent HRESULTs, the rest summed as "other"."""
    per_day = [{str(k): _num(v) for k, v in _obj(d.get("failures")).items()} for d in rows]
    totals: Counter[str] = Counter()
    for day in per_day:
        totals.update(day)
    ranked = [code for code, n in totals.most_common() if n > 0]
    top, rest = ranked[:_TOP_FAILURES], set(ranked[_TOP_FAILURES:])
    series = [(_failure_label(code), [day.get(code, 0) for day in per_day]) for code in top]
    if rest:
        series.append(("other failures", [sum(v for k, v in day.items() if k in rest)
                                          for day in per_day]))
    return series


def _failure_label(code: str) -> str:
    value = _hresult(code)
    if value is None:
        return _plain(code[:24])
    if value not in _KNOWN:
        return format_hresult(value)
    name = hresult_name(value).lower().replace("_", " ")
    return f"{format_hresult(value)}\n{name if len(name) <= 24 else name[:23] + '…'}"


def _mak_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = _day_numbers(timeline), _days(timeline)
    for i, key in enumerate(_mak_keys(timeline)):
        values = [_num(_obj(d.get("mak_remaining")).get(key)) for d in rows]
        if days:
            xs, ys = _blocks(days, values)
            ax.step(xs, ys, where="post", linewidth=1.8, label=_plain(key),
                    color=_MAK_COLOURS[i % len(_MAK_COLOURS)])
    if days:
        ax.set_ylim(0, None)
    else:
        _empty(ax, "No days in this timeline")


def _draw_outages(ax: Axes, timeline: dict[str, Any]) -> None:
    """Shade each outage, from its start to its end (or the end of the timeline)."""
    days = _day_numbers(timeline)
    starts: dict[str, list[float]] = {}  # per host when events name it, else one queue
    spans: list[tuple[float, float]] = []
    for event in _events(timeline):
        queue = starts.setdefault(str(event.get("host", "")), [])
        if event.get("kind") == "outage_start":
            queue.append(_event_x(event))
        elif event.get("kind") == "outage_end" and queue:
            spans.append((queue.pop(0), _event_x(event)))
    lo, hi = (days[0], days[-1] + 1) if days else (0, 1)
    spans += [(start, hi) for queue in starts.values() for start in queue]
    visible = [(max(s, lo), min(e, hi)) for s, e in spans if s < hi and e >= lo]
    for i, (start, end) in enumerate(visible):
        ax.axvspan(start, max(end, start + 0.05), color="#b42318", alpha=0.10, linewidth=0,
                   label=_OUTAGE if i == 0 else None)


def _draw_marks(ax: Axes, timeline: dict[str, Any], chart: str) -> None:
    """Vertical lines for key events, labelled in the strip above the plot. A run of one
    kind (lapses day after day) is one line; a label that would overlap the previous one
    is left out."""
    days = _day_numbers(timeline)
    lo, hi = (days[0], days[-1] + 1) if days else (0, 1)
    per_px = (hi - lo) / _AXES_PX
    marks = sorted((_event_x(e), str(e.get("kind"))) for e in _events(timeline)
                   if chart in _MARKS.get(str(e.get("kind")), ("", "", frozenset()))[2])
    last: dict[str, float] = {}
    free_px, drawn = -float("inf"), 0
    for x, kind in marks:
        previous, last[kind] = last.get(kind, -float("inf")), x
        if not lo <= x <= hi or x - previous < 18 * per_px:  # in a run: its first line stands
            continue
        label, colour, _ = _MARKS[kind]
        ax.axvline(x, color=colour, linestyle="--", linewidth=0.9, alpha=0.85)
        width = _CHAR_PX * len(label)
        left = min(max((x - lo) / per_px - width / 2, 0), _AXES_PX - width)
        if left >= free_px:
            ax.text(lo + (left + width / 2) * per_px, 1.01, label, ha="center", va="bottom",
                    transform=ax.get_xaxis_transform(), fontsize=7, color=colour)
            free_px = left + width + 6
        drawn += 1
        if drawn == _MAX_MARKS:
            return


_CHARTS: dict[str, tuple[Callable[[Axes, dict[str, Any]], None], str, str]] = {
    "states": (_states_chart, "clients by licence state", "clients"),
    "counts": (_counts_chart, "KMS count per host and application", "count"),
    "activity": (_activity_chart, "activity per day (failures below the axis)", "attempts"),
    "mak": (_mak_chart, "MAK activations remaining", "activations left"),
}
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
    scenario = _obj(timeline.get("scenario"))
    title = str(scenario.get("title") or scenario.get("name") or "Simulation report")
    body = "\n".join([
        _header(scenario, title),
        _highlights(timeline),
        _section("Charts", "".join(_figure_html(path) for path in charts)),
        _section("What happened", _narrative(timeline)),
        _section("Summary", _summary(timeline)),
        _section("The last day", _last_day(timeline)),
        '<footer>Generated by kmsemu from the simulator\'s timeline. The same scenario and '
        'seed give the same report.</footer>',
    ])
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)} · kmsemu simulation</title>\n<style>{_CSS}</style>\n</head>\n"
            f'<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n')


def _section(heading: str, content: str) -> str:
    return f"<section>\n<h2>{_e(heading)}</h2>\n{content}\n</section>"


def _header(scenario: dict[str, Any], title: str) -> str:
    facts = [("Scenario", scenario.get("name")), ("Days", scenario.get("days")),
             ("Start", scenario.get("start")), ("Seed", scenario.get("seed")),
             ("Mode", scenario.get("mode")), ("Clients", scenario.get("clients")),
             ("KMS hosts", ", ".join(map(str, _seq(scenario.get("hosts")))) or "none"),
             ("MAK keys", ", ".join(map(str, _seq(scenario.get("mak_keys")))) or "none")]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>"
                    for k, v in facts if v is not None)
    description = scenario.get("description")
    lead = f'<p class="lead">{_e(description)}</p>' if description else ""
    return (f'<header>\n<p class="kicker">kmsemu fleet simulation</p>\n<h1>{_e(title)}</h1>\n'
            f'{lead}\n<dl class="facts">{items}</dl>\n</header>')


def _highlights(timeline: dict[str, Any]) -> str:
    scenario, summary = _obj(timeline.get("scenario")), _obj(timeline.get("summary"))
    final = _obj(summary.get("final_states"))
    failed = sum(_num(v) for v in _obj(summary.get("failures")).values())
    cards = [("Clients", scenario.get("clients"), ""),
             ("Activated ever", summary.get("activated_ever"), "ok"),
             ("Licensed at end", final.get("licensed"), "ok"),
             ("Lapsed", summary.get("lapsed"), "bad" if _num(summary.get("lapsed")) else ""),
             ("Failed attempts", failed, "warn" if failed else "")]
    reached = [_num(v) for v in _obj(summary.get("first_threshold_day")).values()]
    if _seq(scenario.get("hosts")) or reached:
        cards.append(("First threshold", f"day {min(reached)}" if reached else "never", ""))
    if _mak_keys(timeline):
        left = _obj(summary.get("mak_remaining"))
        cards.append(("MAK left", sum(_num(v) for v in left.values()), ""))
    return '<div class="cards">' + "".join(
        f'<div class="card {tone}"><span>{_e(label)}</span><strong>{_e(value)}</strong></div>'
        for label, value, tone in cards if value is not None) + "</div>"


def _figure_html(path: Path) -> str:
    name = path.stem
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = _CAPTIONS.get(name, "")
    width, height = int(_SIZE[0] * _DPI), int(_SIZE[1] * _DPI)
    return (f'<figure id="chart-{_e(name)}"><img src="data:image/png;base64,{data}" '
            f'width="{width}" height="{height}" alt="{_e(name)} chart: {_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _dates(timeline: dict[str, Any]) -> dict[int, str]:
    return {_num(d.get("day", i)): str(d.get("date", "")) for i, d in enumerate(_days(timeline))}


def _narrative(timeline: dict[str, Any]) -> str:
    events = _events(timeline)
    if not events:
        return '<p class="muted">No events were recorded.</p>'
    shown = _pick(events)
    dates = _dates(timeline)
    groups: dict[int, list[str]] = {}
    for i in shown:
        day, at = _num(events[i].get("day")), events[i].get("time")
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
    order = sorted(range(len(events)),
                   key=lambda i: (_num(events[i].get("day")), _event_x(events[i]), i))
    if len(order) <= _MAX_NARRATIVE:
        return order
    key = [i for i in order if events[i].get("kind") in _KEY_KINDS][:_MAX_NARRATIVE]
    rest = [i for i in order if events[i].get("kind") not in _KEY_KINDS]
    kinds = Counter(str(events[i].get("kind")) for i in rest)
    rest.sort(key=lambda i: kinds[str(events[i].get("kind"))])  # stable: in time order within
    chosen = set(key + rest[:_MAX_NARRATIVE - len(key)])
    return [i for i in order if i in chosen]


def _event_li(event: dict[str, Any]) -> str:
    kind = str(event.get("kind", "note"))
    tone = _TONE.get(kind, "neutral")
    strong = " key" if kind in _KEY_KINDS else ""
    try:
        at = f'<time>{datetime.fromisoformat(str(event.get("time"))):%H:%M}</time>'
    except ValueError:
        at = ""
    return (f'<li class="ev {tone}{strong}"><span class="kind">{_e(kind.replace("_", " "))}'
            f'</span>{at}<span class="text">{_e(event.get("text", ""))}</span></li>')


def _more(events: list[dict[str, Any]], shown: list[int]) -> str:
    told = set(shown)
    hidden = Counter(str(e.get("kind")) for i, e in enumerate(events) if i not in told)
    if not hidden:
        return ""
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in hidden.most_common())
    return (f'<p class="more">… and {hidden.total()} more events ({_e(kinds)}); '
            "timeline.json has them all.</p>")


def _table(head: list[str] | None, rows: list[list[str]], cls: str) -> str:
    """A table from cells that are already HTML (escape before); no head: label/value rows."""
    th = "".join(f"<th>{h}</th>" for h in head or [])
    thead = f"<thead><tr>{th}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _summary(timeline: dict[str, Any]) -> str:
    summary = _obj(timeline.get("summary"))
    parts = [f'<div class="grid"><div><h3>Licence states at the end</h3>'
             f'{_states_table(_obj(summary.get("final_states")))}</div>'
             f"<div><h3>Totals</h3>{_totals_table(timeline)}</div></div>",
             f"<h3>Failed attempts by HRESULT</h3>{_failures_table(summary)}"]
    return "\n".join(parts)


def _states_table(states: dict[str, Any]) -> str:
    if not states:
        return '<p class="muted">Not recorded.</p>'
    total = sum(_num(v) for v in states.values()) or 1
    rows = []
    for state in sorted(states, key=_state_order):
        label, colour = _state_style(state)
        n = _num(states[state])
        rows.append([f'<i class="sw" style="background:{colour}"></i>{_e(label)}',
                     f'<span class="{"" if n else "muted"}">{n}</span>',
                     f'<span class="muted">{100 * n / total:.0f}%</span>'])
    return _table(["State", "Clients", "Share"], rows, "num")


def _totals_table(timeline: dict[str, Any]) -> str:
    summary, dates = _obj(timeline.get("summary")), _dates(timeline)
    rows = [["Activated ever", _e(summary.get("activated_ever", "—"))],
            ["Lapsed (licence ran out)", _e(summary.get("lapsed", "—"))]]
    for where, day in _obj(summary.get("first_threshold_day")).items():
        when = f"day {_num(day)}" + (f" ({dates[_num(day)]})" if dates.get(_num(day)) else "")
        rows.append([f"Threshold reached: {_e(where)}", _e(when)])
    for key, left in _obj(summary.get("mak_remaining")).items():
        rows.append([f"MAK {_e(key)}: activations left", _e(left)])
    return _table(None, rows, "kv")


def _failures_table(summary: dict[str, Any]) -> str:
    failures = {str(k): _num(v) for k, v in _obj(summary.get("failures")).items() if _num(v)}
    if not failures:
        return '<p class="muted">No failed attempts.</p>'
    rows = []
    for code, n in sorted(failures.items(), key=lambda item: (-item[1], item[0])):
        value = _hresult(code)
        info = describe(value) if value is not None else None
        meaning = (f"{_e(info.message)}<br><span class=\"muted\">{_e(info.hint)}</span>"
                   if info else '<span class="muted">Not an HRESULT.</span>')
        name = _e(hresult_name(value)) if value is not None and value in _KNOWN else ""
        shown = _e(format_hresult(value) if value is not None else code)
        rows.append([f"<code>{shown}</code><br><span class=\"muted\">{name}</span>", meaning,
                     str(n)])
    return _table(["HRESULT", "Meaning", "Attempts"], rows, "failures")


def _last_day(timeline: dict[str, Any]) -> str:
    rows = _days(timeline)
    if not rows:
        return '<p class="muted">The timeline has no days.</p>'
    last = rows[-1]
    day = _num(last.get("day", len(rows) - 1))
    cells: list[list[str]] = []
    states = _obj(last.get("states"))
    for state in sorted(states, key=_state_order):
        if _num(states[state]):
            cells.append([f"{_e(_state_style(state)[0])} clients", str(_num(states[state]))])
    cells.append(["Offline clients", str(_num(last.get("offline")))])
    thresholds = _obj(last.get("thresholds"))
    for host, apps in _obj(last.get("counts")).items():
        for app, n in _obj(apps).items():
            need = f" (threshold {_num(thresholds[app])})" if app in thresholds else ""
            cells.append([f"Count on {_e(host)}, {_e(app)}", f"{_num(n)}{_e(need)}"])
    for key, label in (("activations", "KMS activations"), ("renewals", "KMS renewals"),
                       ("mak_activations", "MAK activations")):
        cells.append([label, str(_num(last.get(key)))])
    for code, n in _obj(last.get("failures")).items():
        cells.append([f"Failed: <code>{_e(code)}</code>", str(_num(n))])
    for key, left in _obj(last.get("mak_remaining")).items():
        cells.append([f"MAK {_e(key)}: activations left", str(_num(left))])
    date = f" ({_e(last['date'])})" if last.get("date") else ""
    return f'<p class="muted">Day {day}{date}, at the end of the day.</p>' + _table(
        None, cells, "kv")
