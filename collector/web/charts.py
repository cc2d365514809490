"""SVG charts drawn on the server: sparklines and time charts with thresholds.

Plain SVG text, no library and no script: the page works offline and under
a Content-Security-Policy that forbids inline script. Every text placed in
the SVG is escaped, although only numbers and our own labels go there.
Time labels carry their instant as ``data-ms`` and are written in UTC; the
page's script rewrites them in the viewer's time zone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

SPARK_WIDTH = 80
SPARK_HEIGHT = 18
CHART_WIDTH = 640
CHART_HEIGHT = 180
# Room around the plot for the axis labels.
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22
TIME_TICKS = 5
VALUE_TICKS = 4
MAX_DOTS = 200


def _scale(values: Sequence[float | None], low: float | None,
           high: float | None) -> tuple[float, float]:
    present = [v for v in values if v is not None]
    bottom = min(present, default=0.0) if low is None else low
    top = max(present, default=1.0) if high is None else high
    if top <= bottom:
        top = bottom + 1.0
    return bottom, top


def nice_step(raw: float) -> float:
    """The round tick step (1, 2 or 5 times a power of ten) nearest above ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def spark_points(values: Sequence[float | None], low: float | None = None,
                 high: float | None = None, width: int = SPARK_WIDTH,
                 height: int = SPARK_HEIGHT) -> list[str]:
    """Polyline ``points`` texts of a sparkline, one per run without gaps."""
    bottom, top = _scale(values, low, high)
    step = width / max(len(values) - 1, 1)
    # y = base - value * ratio, the value clipped to [bottom, top].
    ratio = (height - 2) / (top - bottom)
    base = height - 1 + bottom * ratio
    runs: list[str] = []
    current: list[str] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(" ".join(current))
                current = []
            continue
        clipped = bottom if value < bottom else top if value > top else value
        current.append(f"{index * step:.1f},{base - clipped * ratio:.1f}")
    if current:
        runs.append(" ".join(current))
    # A single point draws nothing as a polyline: repeat it a pixel on.
    return [run if " " in run else f"{run} {float(run.split(',')[0]) + 1:.1f},"
            f"{run.split(',')[1]}" for run in runs]


def sparkline(values: Sequence[float | None], low: float | None = None,
              high: float | None = None, label_html: str = "") -> str:
    """A small inline SVG of the recent history (no line without data); its
    accessible name is ``label_html``, already escaped (a fleet page escapes
    each label once, not once per row)."""
    # The points are numbers this module formats: nothing in them to escape.
    lines = "".join(f'<polyline points="{run}"/>' for run in spark_points(values, low, high))
    return (f'<svg class="spark" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" '
            f'width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" role="img" '
            f'aria-label="{label_html}">{lines}</svg>')


def utc_label(ms: int, span_ms: int) -> str:
    """A time tick in UTC: ``HH:MM`` within two days, ``MM-DD HH:MM`` beyond."""
    shape = "%H:%M" if span_ms <= 2 * 86_400_000 else "%m-%d %H:%M"
    return time.strftime(shape, time.gmtime(ms / 1000)) + " UTC"


def time_chart(times_ms: Sequence[int | None], values: Sequence[float | None], *,
               title: str, unit: str = "", low: float | None = 0.0,
               high: float | None = None, threshold: float | None = None,
               threshold_label: str = "", empty_label: str = "no data") -> str:
    """A line chart of ``values`` over ``times_ms`` with axes and a threshold line."""
    pairs = [(t, v) for t, v in zip(times_ms, values, strict=True) if t is not None]
    width, height = CHART_WIDTH, CHART_HEIGHT
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'preserveAspectRatio="xMidYMid meet" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>')
    frame = (f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" '
             f'height="{plot_h}"/>')
    present = [v for _, v in pairs if v is not None]
    if not present:
        return (head + frame + f'<text class="empty" x="{LEFT + plot_w / 2:.0f}" '
                f'y="{TOP + plot_h / 2:.0f}" text-anchor="middle">{escape(empty_label)}</text>'
                '</svg>')
    scale_values: list[float | None] = [*present]
    if threshold is not None:
        scale_values.append(threshold * 1.05)
    bottom, top = _scale(scale_values, low, high)
    step = nice_step((top - bottom) / VALUE_TICKS)
    if high is None:
        top = bottom + step * max(1, math.ceil((top - bottom) / step - 1e-9))
    start = min(t for t, _ in pairs)
    end = max(t for t, _ in pairs)
    span = max(end - start, 1)

    def x_of(ms: int) -> float:
        return LEFT + (ms - start) / span * plot_w

    def y_of(value: float) -> float:
        clipped = min(max(value, bottom), top)
        return TOP + plot_h - (clipped - bottom) / (top - bottom) * plot_h

    parts = [head, frame]
    ticks_count = max(1, round((top - bottom) / step))
    for index in range(ticks_count + 1):
        tick = bottom + (top - bottom) * index / ticks_count
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(_fmt(round(tick, 1)) + unit)}</text>')
    ticks = TIME_TICKS if span > 1 else 1
    for index in range(ticks):
        ms = start + span * index // max(ticks - 1, 1)
        anchor = "start" if index == 0 else "end" if index == ticks - 1 else "middle"
        parts.append(f'<text class="axis time" data-ms="{ms}" data-span="{span}" '
                     f'x="{x_of(ms):.1f}" y="{height - 6}" text-anchor="{anchor}">'
                     f'{escape(utc_label(ms, span))}</text>')
    if threshold is not None:
        y = y_of(threshold)
        parts.append(f'<line class="threshold" x1="{LEFT}" x2="{LEFT + plot_w}" '
                     f'y1="{y:.1f}" y2="{y:.1f}"/><text class="threshold-label" '
                     f'x="{LEFT + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end">'
                     f'{escape(threshold_label)} {escape(_fmt(threshold) + unit)}</text>')
    runs: list[list[str]] = [[]]
    for ms, value in pairs:
        if value is None:
            runs.append([])
        else:
            runs[-1].append(f"{x_of(ms):.1f},{y_of(value):.1f}")
    for run in runs:
        if len(run) > 1:
            parts.append(f'<polyline class="series" points="{" ".join(run)}"/>')
    # Each report as a dot with its figure while they are few enough to tell
    # apart; beyond that only reports between gaps, which no line shows.
    dotted = len(present) <= MAX_DOTS
    for index, (ms, value) in enumerate(pairs):
        if value is None:
            continue
        lone = ((index == 0 or pairs[index - 1][1] is None)
                and (index == len(pairs) - 1 or pairs[index + 1][1] is None))
        if dotted or lone:
            parts.append(f'<circle class="point" cx="{x_of(ms):.1f}" cy="{y_of(value):.1f}" '
                         f'r="1.8"><title>{escape(_fmt(value) + unit)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)
