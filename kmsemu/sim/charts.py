"""The simulator's charts: deterministic PNGs drawn from a timeline.

``write_charts`` reads the timeline an engine produces (see
``kmsemu.sim.reading``) and writes into a directory:

- ``states.png``: clients per licence state, stacked, offline clients dotted;
- ``counts.png``: each KMS host's count per application, threshold lines;
- ``activity.png``: successes per day above the axis, failures by HRESULT below;
- ``mak.png``: activations left on each MAK key (only if the scenario has any).

Key events are drawn on the charts: threshold, lapsed, notification and MAK
exhausted as dashed lines labelled above the plot, outages shaded.

Every optional part of a timeline may be missing (no hosts, no MAK keys, no
events, one day). The output is deterministic, so that CI can compare reports:
fixed size and dpi, no software version or date in the PNG metadata, nothing
read from the clock. The charts use matplotlib's object API on an Agg canvas
(no pyplot, hence no global figure registry and no display).

Days are drawn as blocks: day ``d`` spans ``[d, d + 1)`` on the x axis, and an
event sits at its time of day within its block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from kmsemu.errors import format_hresult, hresult_name
from kmsemu.sim.reading import (
    KNOWN_HRESULTS,
    day_numbers,
    days_of,
    event_x,
    events_of,
    mak_keys,
    num,
    obj,
    parse_hresult,
    seq,
    union,
)

__all__ = ["CHART_PX", "state_order", "state_style", "write_charts"]

_SIZE, _DPI = (10.0, 4.0), 100
_LEFT, _RIGHT = 0.065, 0.775  # the plot's edges in the figure: the legend goes on the right
_AXES_PX = _SIZE[0] * _DPI * (_RIGHT - _LEFT)
_CHAR_PX = 5.5  # width of a 7-point character, to keep event labels apart
_PNG_METADATA: dict[str, str | None] = {"Software": None}
#: Width and height of every chart, in pixels.
CHART_PX = (int(_SIZE[0] * _DPI), int(_SIZE[1] * _DPI))
_MAX_MARKS = 16  # event lines per chart
_TOP_FAILURES = 4  # HRESULTs drawn on their own; the rest is "other"
_INK, _MUTED, _GRID = "#1f2933", "#6b7280", "#e2e5e9"
_OUTAGE = "KMS outage"

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


def write_charts(timeline: dict[str, Any], out: Path) -> list[Path]:
    """Write the charts (PNG) into ``out`` (exists); return the paths written, in page order."""
    charts = list(_CHARTS)
    if not mak_keys(timeline):
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
    return written


# -- reading states and labels ------------------------------------------------------------------


def _state_names(timeline: dict[str, Any]) -> list[str]:
    """States that ever hold a client, in stacking order (unknown ones last)."""
    seen = union(*(obj(d.get("states")) for d in days_of(timeline)))
    used = [s for s in seen if any(num(obj(d.get("states")).get(s)) for d in days_of(timeline))]
    return sorted(used, key=state_order)


def state_style(state: str) -> tuple[str, str]:
    """Label and colour; a state this module does not know gets a spare colour of its own."""
    spare = _SPARE[sum(map(ord, state)) % len(_SPARE)]
    return _STATES.get(state, (state.replace("_", " ").capitalize(), spare))


def state_order(state: str) -> int:
    """Where a state sits in the stack and in tables (unknown ones last)."""
    return list(_STATES).index(state) if state in _STATES else len(_STATES)


def _plain(value: Any) -> str:
    """A timeline string for a chart: ``$`` would start matplotlib's mathtext, and a legend
    leaves out labels that start with ``_``."""
    text = str(value).replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


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
    name = _plain(obj(timeline.get("scenario")).get("name", "")) or "scenario"
    ax.set_title(
        f"{name}: {title}", loc="left", fontsize=11, color=_INK, fontweight="bold", pad=16
    )  # room for the event labels between the title and the plot
    ax.set_ylabel(ylabel, fontsize=9, color=_INK)
    ax.set_xlabel("day", fontsize=9, color=_INK)
    days = day_numbers(timeline)
    ax.set_xlim(days[0] if days else 0, days[-1] + 1 if days else 1)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        order = sorted(range(len(labels)), key=lambda i: labels[i] == _OUTAGE)  # outage last
        ax.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
        )


def _empty(ax: Axes, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=11,
        color=_MUTED,
    )
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def _blocks(days: list[int], values: list[int]) -> tuple[list[int], list[int]]:
    """Step data: one more point at the end so that the last day is a block too."""
    return [*days, days[-1] + 1], [*values, values[-1]]


def _states_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = day_numbers(timeline), days_of(timeline)
    states = _state_names(timeline)
    tops = [0] * (len(days) + 1)
    layers = []
    for state in states:
        xs, ys = _blocks(days, [num(obj(d.get("states")).get(state)) for d in rows])
        bottoms, tops = tops, [a + b for a, b in zip(tops, ys, strict=True)]
        layers.append((state, xs, bottoms, tops))
    for state, xs, bottoms, tops in reversed(layers):  # top-down: the legend reads as the stack
        label, colour = state_style(state)
        ax.fill_between(
            xs, bottoms, tops, step="post", color=colour, label=_plain(label), linewidth=0
        )
    offline = [num(d.get("offline")) for d in rows]
    if any(offline):
        xs, ys = _blocks(days, offline)
        ax.step(xs, ys, where="post", color=_INK, linestyle=":", linewidth=1.4, label="Offline")
    if states or any(offline):
        ax.set_ylim(0, None)
    else:
        _empty(ax, "No clients in this timeline")


def _counts_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = day_numbers(timeline), days_of(timeline)
    hosts = union(
        seq(obj(timeline.get("scenario")).get("hosts")), *(obj(d.get("counts")) for d in rows)
    )
    apps = union(*(obj(c) for d in rows for c in obj(d.get("counts")).values()))
    thresholds = _thresholds(rows)
    apps = union(apps, thresholds)
    colours = {a: _APPS.get(a, _SPARE[i % len(_SPARE)]) for i, a in enumerate(apps)}
    top = 0
    for h, host in enumerate(hosts):
        for app in apps:
            counts = [num(obj(obj(d.get("counts")).get(host)).get(app)) for d in rows]
            if days and any(counts):
                xs, ys = _blocks(days, counts)
                ax.step(
                    xs,
                    ys,
                    where="post",
                    color=colours[app],
                    linewidth=1.8,
                    linestyle=_HOST_STYLES[h % len(_HOST_STYLES)],
                    label=_plain(f"{host} {app}"),
                )
                top = max(top, *counts)
    for app, value in thresholds.items():
        ax.axhline(value, color=colours[app], linestyle=(0, (2, 2)), linewidth=1)
        ax.text(
            0.995,
            value,
            _plain(f"{app} threshold {value}"),
            ha="right",
            va="bottom",
            transform=ax.get_yaxis_transform(),
            fontsize=8,
            color=colours[app],
        )
        top = max(top, value)
    if not hosts or not days:
        _empty(ax, "No KMS host in this scenario" if not hosts else "No days in this timeline")
    else:
        ax.set_ylim(0, top * 1.15 + 1)


def _thresholds(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The latest threshold of each application (absent from a day: kept from before)."""
    found: dict[str, int] = {}
    for d in rows:
        found.update({str(a): num(v) for a, v in obj(d.get("thresholds")).items()})
    return found


def _activity_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = day_numbers(timeline), days_of(timeline)
    up = [0] * len(days)
    for key, label, colour in (
        ("activations", "KMS activations", "#2e9d5b"),
        ("renewals", "KMS renewals", "#8fd1a6"),
        ("mak_activations", "MAK activations", "#6b3fa0"),
    ):
        values = [num(d.get(key)) for d in rows]
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


def _layer(
    ax: Axes, days: list[int], base: list[int], values: list[int], colour: str, label: str
) -> list[int]:
    """One layer of a stacked daily chart; returns the new top. Bars while they are wide
    enough to be told apart, then blocks (bars a pixel or two wide leave seams)."""
    top = [a + b for a, b in zip(base, values, strict=True)]
    if len(days) <= 120:
        ax.bar(
            [d + 0.5 for d in days],
            values,
            0.8,
            bottom=base,
            color=colour,
            label=label,
            linewidth=0,
        )
    else:
        xs, ys = _blocks(days, top)
        ax.fill_between(
            xs, _blocks(days, base)[1], ys, step="post", color=colour, label=label, linewidth=0
        )
    return top


def _failure_series(rows: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """Failures per day for the most frequent HRESULTs, the rest summed as "other"."""
    per_day = [{str(k): num(v) for k, v in obj(d.get("failures")).items()} for d in rows]
    totals: Counter[str] = Counter()
    for day in per_day:
        totals.update(day)
    ranked = [code for code, n in totals.most_common() if n > 0]
    top, rest = ranked[:_TOP_FAILURES], set(ranked[_TOP_FAILURES:])
    series = [(_failure_label(code), [day.get(code, 0) for day in per_day]) for code in top]
    if rest:
        series.append(
            ("other failures", [sum(v for k, v in day.items() if k in rest) for day in per_day])
        )
    return series


def _failure_label(code: str) -> str:
    value = parse_hresult(code)
    if value is None:
        return _plain(code[:24])
    if value not in KNOWN_HRESULTS:
        return format_hresult(value)
    name = hresult_name(value).lower().replace("_", " ")
    return f"{format_hresult(value)}\n{name if len(name) <= 24 else name[:23] + '…'}"


def _mak_chart(ax: Axes, timeline: dict[str, Any]) -> None:
    days, rows = day_numbers(timeline), days_of(timeline)
    for i, key in enumerate(mak_keys(timeline)):
        values = [num(obj(d.get("mak_remaining")).get(key)) for d in rows]
        if days:
            xs, ys = _blocks(days, values)
            ax.step(
                xs,
                ys,
                where="post",
                linewidth=1.8,
                label=_plain(key),
                color=_MAK_COLOURS[i % len(_MAK_COLOURS)],
            )
    if days:
        ax.set_ylim(0, None)
    else:
        _empty(ax, "No days in this timeline")


def _draw_outages(ax: Axes, timeline: dict[str, Any]) -> None:
    """Shade each outage, from its start to its end (or the end of the timeline)."""
    days = day_numbers(timeline)
    starts: dict[str, list[float]] = {}  # per host when events name it, else one queue
    spans: list[tuple[float, float]] = []
    for event in events_of(timeline):
        queue = starts.setdefault(str(event.get("host", "")), [])
        if event.get("kind") == "outage_start":
            queue.append(event_x(event))
        elif event.get("kind") == "outage_end" and queue:
            spans.append((queue.pop(0), event_x(event)))
    lo, hi = (days[0], days[-1] + 1) if days else (0, 1)
    spans += [(start, hi) for queue in starts.values() for start in queue]
    visible = [(max(s, lo), min(e, hi)) for s, e in spans if s < hi and e >= lo]
    for i, (start, end) in enumerate(visible):
        ax.axvspan(
            start,
            max(end, start + 0.05),
            color="#b42318",
            alpha=0.10,
            linewidth=0,
            label=_OUTAGE if i == 0 else None,
        )


def _draw_marks(ax: Axes, timeline: dict[str, Any], chart: str) -> None:
    """Vertical lines for key events, labelled in the strip above the plot. A run of one
    kind (lapses day after day) is one line; a label that would overlap the previous one
    is left out."""
    days = day_numbers(timeline)
    lo, hi = (days[0], days[-1] + 1) if days else (0, 1)
    per_px = (hi - lo) / _AXES_PX
    marks = sorted(
        (event_x(e), str(e.get("kind")))
        for e in events_of(timeline)
        if chart in _MARKS.get(str(e.get("kind")), ("", "", frozenset()))[2]
    )
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
            ax.text(
                lo + (left + width / 2) * per_px,
                1.01,
                label,
                ha="center",
                va="bottom",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                color=colour,
            )
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
