"""Chart geometry: numbers in, positioned shapes out, for the templates to draw as SVG.

Pure functions, no markup: the templates (autoescaped) turn a :class:`Chart`
into inline SVG, so the dashboard and the HTML files share every chart. Values
stay exact (Decimal) until the last step, where they become pixel positions;
each shape carries its exact value for tooltips and tests. Colours are CSS
classes (``s0`` … ``s9``) from one palette, so a series keeps its colour on
every chart that gives it the same index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

PALETTE_SIZE = 10
WIDTH = 480
"""A chart's viewBox width in a half-width card; the page scales it to the card."""
WIDE = 1120
"""The viewBox width of a chart that spans the page."""


def series_class(index: int) -> str:
    """The palette class of the ``index``-th series (departments: their place in the sorted list)."""
    return f"s{index % PALETTE_SIZE}"


def distinct_classes(homes: Sequence[int]) -> list[str]:
    """Palette classes for series drawn together, the biggest first: each at its home colour
    (:func:`series_class` of ``home``, its place among the sorted names, so it keeps its colour
    from one view to the next) unless a bigger one has it, then the next free one. Up to
    :data:`PALETTE_SIZE` series never share a colour (the 1st and the 11th name both had
    the first, stacked in one column)."""
    taken: set[int] = set()
    classes = []
    for home in homes:
        colour = home % PALETTE_SIZE
        while colour in taken and len(taken) < PALETTE_SIZE:
            colour = (colour + 1) % PALETTE_SIZE
        taken.add(colour)
        classes.append(f"s{colour}")
    return classes


@dataclass(frozen=True, slots=True)
class Mark:
    """A bar or column segment. ``value`` is exact text; ``href`` makes it a link."""

    x: float
    y: float
    w: float
    h: float
    css: str
    tip: str
    series: str
    at: str
    value: str
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    css: str
    tip: str
    series: str
    at: str
    value: str


@dataclass(frozen=True, slots=True)
class Line:
    points: str
    css: str


@dataclass(frozen=True, slots=True)
class Rule:
    x1: float
    y1: float
    x2: float
    y2: float
    css: str = "grid"


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    css: str = "tick"
    tip: str | None = None


@dataclass(frozen=True, slots=True)
class LegendItem:
    name: str
    css: str
    value: str = ""
    tip: str = ""
    href: str | None = None


@dataclass
class Chart:
    """Shapes in a box ``WIDTH`` wide and ``height`` high, plus an HTML legend."""

    label: str
    height: int
    rules: list[Rule] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    legend: list[LegendItem] = field(default_factory=list)
    width: int = WIDTH
    more: str = ""
    """What the chart leaves out, said under it: ``and 490 more``."""

    @property
    def empty(self) -> bool:
        return not (self.marks or self.dots)


def nice_ticks(top: Decimal, count: int = 4, least: Decimal = Decimal(0)) -> list[Decimal]:
    """0, step, 2·step … up to at least ``top``, with a step of 1, 2 or 5 times a power of ten,
    and no finer than ``least`` (a power of ten: a money axis's is its currency's minor unit,
    so it never ticks at a tenth of a yen or a tenth of a cent)."""
    if top <= 0:
        top = max(Decimal(1), least)
    raw = max(top / count, least)
    magnitude = Decimal(1).scaleb(raw.adjusted())
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    steps = math.ceil(top / step)
    return [step * i for i in range(steps + 1)]


def tick_text(value: Decimal) -> str:
    """``Decimal('1500.0')`` → ``1,500``; ``0.25`` stays ``0.25``."""
    if value == 0:
        return "0"
    return f"{value.normalize():,f}"


@dataclass(frozen=True, slots=True)
class Series:
    """One named series: a value (or None) per x position, with its tooltips and exact texts."""

    name: str
    css: str
    values: Sequence[Decimal | None]
    tips: Sequence[str]
    exact: Sequence[str]
    href: str | None = None
    dashed: bool = False


_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 22, 30


def _y_axis(
    chart: Chart, ticks: list[Decimal], unit: str, plot_h: float
) -> Callable[[Decimal], float]:
    top = ticks[-1]

    def y(value: Decimal) -> float:
        return round(_TOP + plot_h - float(value / top) * plot_h, 1)

    for tick in ticks:
        at = y(tick)
        chart.rules.append(
            Rule(_LEFT, at, chart.width - _RIGHT, at, "axis" if tick == 0 else "grid")
        )
        chart.labels.append(Label(_LEFT - 6, round(at + 4, 1), tick_text(tick), "end"))
    chart.labels.append(Label(4, 12, unit, "start", "unit"))
    return y


def _x_labels(
    chart: Chart, xs: Sequence[str], centre: Callable[[int], float], bottom: float
) -> None:
    every = max(1, math.ceil(len(xs) / (chart.width // 70)))
    for index, text in enumerate(xs):
        if index % every == 0:
            chart.labels.append(Label(round(centre(index), 1), bottom + 16, text))


@dataclass
class _Plot:
    """A chart with a y axis over ``xs``: where each x position's centre is, and each value's y."""

    chart: Chart
    y: Callable[[Decimal], float]
    step: float

    def centre(self, index: int) -> float:
        return _LEFT + self.step * index + self.step / 2


def _plot(
    label: str,
    xs: Sequence[str],
    top: Decimal,
    *,
    unit: str,
    x_text: Callable[[str], str],
    height: int,
    width: int,
    least_step: Decimal,
) -> _Plot:
    chart = Chart(label=label, height=height, width=width)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    y = _y_axis(chart, nice_ticks(top, least=least_step), unit, plot_h)
    plot = _Plot(chart, y, plot_w / max(len(xs), 1))
    _x_labels(chart, [x_text(x) for x in xs], plot.centre, _TOP + plot_h)
    return plot


def columns(
    label: str,
    xs: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str,
    x_text: Callable[[str], str] = str,
    height: int = 240,
    width: int = WIDTH,
    least_step: Decimal = Decimal(0),
) -> Chart:
    """Stacked columns: one per ``xs`` position, the series stacked in order, with a y axis."""
    totals = [sum((s.values[i] or Decimal(0) for s in series), Decimal(0)) for i in range(len(xs))]
    top = max(totals, default=Decimal(0))
    plot = _plot(
        label, xs, top, unit=unit, x_text=x_text, height=height, width=width, least_step=least_step
    )
    column = max(min(plot.step * 0.72, 36.0), 1.5)
    for index, x in enumerate(xs):
        base = Decimal(0)
        for s in series:
            value = s.values[index]
            if not value:
                continue
            top_y, bottom_y = plot.y(base + value), plot.y(base)
            plot.chart.marks.append(
                Mark(
                    x=round(plot.centre(index) - column / 2, 1),
                    y=top_y,
                    w=round(column, 1),
                    h=round(max(bottom_y - top_y, 0.5), 1),
                    css=s.css,
                    tip=s.tips[index],
                    series=s.name,
                    at=x,
                    value=s.exact[index],
                    href=s.href,
                )
            )
            base += value
    return plot.chart


def lines(
    label: str,
    xs: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str,
    x_text: Callable[[str], str] = str,
    height: int = 240,
    width: int = WIDTH,
    least_step: Decimal = Decimal(0),
) -> Chart:
    """Lines over ``xs`` with a dot per known value; a gap where a value is None."""
    top = max((v for s in series for v in s.values if v is not None), default=Decimal(0))
    plot = _plot(
        label, xs, top, unit=unit, x_text=x_text, height=height, width=width, least_step=least_step
    )
    chart = plot.chart
    for s in series:
        css = f"line {s.css}" + (" dashed" if s.dashed else "")
        run: list[str] = []
        for index, value in enumerate([*s.values, None]):  # a None at the end closes the last run
            if value is None:
                if len(run) > 1:
                    chart.lines.append(Line(" ".join(run), css))
                run = []
                continue
            cx, cy = round(plot.centre(index), 1), plot.y(value)
            run.append(f"{cx},{cy}")
            chart.dots.append(Dot(cx, cy, s.css, s.tips[index], s.name, xs[index], s.exact[index]))
        chart.legend.append(LegendItem(s.name, s.css + (" dashed" if s.dashed else "")))
    return chart


class Segment(NamedTuple):
    """One stretch of a bar: its amount, style, tooltip, exact text and series name."""

    value: Decimal
    css: str
    tip: str
    exact: str
    series: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of a bar chart: its label, segments (stacked left to right) and the end text."""

    label: str
    segments: Sequence[Segment]
    text: str
    href: str | None = None


_ROW = 28
_LABEL_W = 180
_MAX_LABEL = 20


def bars(
    label: str,
    rows: Sequence[Bar],
    *,
    unit: str,
    width: int = WIDTH,
    limit: int | None = None,
    least_step: Decimal = Decimal(0),
) -> Chart:
    """Horizontal bars in the order given, with a value axis at the bottom; the first ``limit``
    of them, and the number left out under the chart."""
    more = len(rows) - limit if limit is not None and len(rows) > limit else 0
    rows = rows[: len(rows) - more]
    height = len(rows) * _ROW + 34
    chart = Chart(
        label=label, height=height, width=width, more=f"and {more:,} more" if more else ""
    )
    left, right = _LABEL_W, width - 100
    totals = [sum((s.value for s in r.segments), Decimal(0)) for r in rows]
    ticks = nice_ticks(max(totals, default=Decimal(0)), least=least_step)
    top = ticks[-1]

    def x(value: Decimal) -> float:
        return round(left + float(value / top) * (right - left), 1)

    bottom = len(rows) * _ROW + 4
    for tick in ticks:
        at = x(tick)
        chart.rules.append(Rule(at, 2, at, bottom, "axis" if tick == 0 else "grid"))
        chart.labels.append(Label(at, bottom + 14, tick_text(tick)))
    chart.labels.append(Label(right + 24, bottom + 14, unit, "start", "unit"))
    for index, row in enumerate(rows):
        top_y = index * _ROW + 6
        name = row.label if len(row.label) <= _MAX_LABEL else row.label[: _MAX_LABEL - 1] + "…"
        chart.labels.append(Label(left - 8, top_y + 13, name, "end", "name", tip=row.label))
        start = Decimal(0)
        for segment in row.segments:
            if segment.value <= 0:
                continue
            x0, x1 = x(start), x(start + segment.value)
            chart.marks.append(
                Mark(
                    x=x0,
                    y=top_y,
                    w=round(max(x1 - x0, 0.5), 1),
                    h=18,
                    css=segment.css,
                    tip=segment.tip,
                    series=segment.series,
                    at=row.label,
                    value=segment.exact,
                    href=row.href,
                )
            )
            start += segment.value
        chart.labels.append(Label(x(start) + 6, top_y + 13, row.text, "start", "value"))
    return chart


@dataclass(frozen=True, slots=True)
class Gauge:
    """A budget's bar: share used and projected (percent, exact), positions on a 0..120 % scale."""

    used: Decimal
    projected: Decimal | None
    fill: float
    marker: float | None
    limit_at: float
    thresholds: list[float]


GAUGE_WIDTH = 300
_GAUGE_SCALE = Decimal(120)


def gauge(used: Decimal, projected: Decimal | None, thresholds: Sequence[int]) -> Gauge:
    """Where the fill, the projection and the threshold ticks go; beyond 120 % is pinned to the end."""

    def at(percent: Decimal) -> float:
        return round(float(min(percent, _GAUGE_SCALE) / _GAUGE_SCALE) * GAUGE_WIDTH, 1)

    return Gauge(
        used=used,
        projected=projected,
        fill=at(used),
        marker=None if projected is None else at(projected),
        limit_at=at(Decimal(100)),
        thresholds=[at(Decimal(t)) for t in thresholds if t < 120],
    )
