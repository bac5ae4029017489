"""Series drawn together never share a colour, on the dashboard and in the HTML file.

A department's colour was its place among the sorted names modulo the palette's ten: of
fourteen departments, the 1st and the 11th (``dept00`` and ``dept10``) both drew in the
first colour, side by side in one stacked column and in its legend, so nobody could tell
them apart (1,000 departments: four of the ten biggest in one purple).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.reports import (
    DashQuery,
    Links,
    dashboard_report,
    render_dashboard,
    render_spend_html,
    spend_report,
)
from tests.factories import OFFICE_NOW, make_span

UTC_ZONE = ZoneInfo("UTC")


def legend_colours(page: str, heading: str) -> list[str]:
    """The swatch classes of the legend under the first chart after ``heading``, the
    grey "and N more" left out."""
    part = page[page.index(heading) :]
    legend = part[part.index('<ul class="legend">') : part.index("</ul>")]
    return [c for c in re.findall(r'class="swatch ([^"]+)"', legend) if c != "rest"]


def mark_colours(page: str, heading: str) -> dict[str, set[str]]:
    """Each series of the first chart after ``heading``: the classes its columns are drawn in."""
    part = page[page.index(heading) :]
    svg = part[: part.index("</svg>")]
    drawn: dict[str, set[str]] = {}
    for css, series in re.findall(r'class="mark ([^"]+)"[^>]*data-series="([^"]*)"', svg):
        drawn.setdefault(series, set()).add(css)
    return drawn


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Ledger]:
    folder = tmp_path_factory.mktemp("colours")
    made = itertools.count()
    return lambda: Ledger(f"sqlite:///{folder / f'{next(made)}.db'}")


@settings(max_examples=12, deadline=None)
@given(costs=st.lists(st.integers(1, 10**9), min_size=1, max_size=30))
@example(costs=[10**6 * (1 + (n in (0, 10))) for n in range(14)])  # dept00 and dept10 the biggest
def test_the_departments_drawn_together_each_have_their_own_colour(
    fresh: Callable[[], Ledger], costs: list[int]
) -> None:
    ledger = fresh()
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=at, department=f"dept{n:02d}", cost_total=cost, unpriced=False)
            for n, cost in enumerate(costs)
        ]
    )
    dash = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    report = spend_report(ledger, window, ["department", "day"], tz=UTC_ZONE)
    html = render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW, title="t")
    for text, heading in ((page, "<h2>Spend per department per day"), (html, "Spend per day")):
        colours = legend_colours(text, heading)
        assert len(colours) == min(len(costs), 10)
        assert len(set(colours)) == len(colours), colours
        drawn = mark_colours(text, heading)
        assert all(len(css) == 1 for css in drawn.values()), drawn  # one colour a series
        assert len({c for css in drawn.values() for c in css}) == len(drawn)
    # A department is drawn in one colour everywhere on the page: its column, its legend
    # entry, its panel's swatch and its own chart.
    for name, css in re.findall(
        r'data-department="([^"]+)"><summary><span class="swatch ([^"]+)"', page
    ):
        assert mark_colours(page, f'data-department="{name}"') == {name: {css}}
