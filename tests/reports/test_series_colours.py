"""Series drawn together never share a colour, on the dashboard and in the HTML file.

A department's colour was its place among the sorted names modulo the palette's ten: of
fourteen departments, the 1st and the 11th (``dept00`` and ``dept10``) both drew in the
first colour, side by side in one stacked column and in its legend, so nobody could tell
them apart (1,000 departments: four of the ten biggest in one purple).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.reports._charts import PALETTE_SIZE, distinct_classes, series_class
from tests.factories import make_span
from tests.reports.test_html_names import page_and_file

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


@given(homes=st.lists(st.integers(0, 10**4), max_size=PALETTE_SIZE))
def test_series_drawn_together_keep_their_own_colour_or_take_a_free_one(homes: list[int]) -> None:
    classes = distinct_classes(homes)
    assert len(set(classes)) == len(homes)
    for at, home in enumerate(homes):
        if series_class(home) not in classes[:at]:
            assert classes[at] == series_class(home)  # its own colour, when no bigger one has it


@pytest.mark.parametrize(
    "costs",
    [
        [10**6 * (1 + (n in (0, 10))) for n in range(14)],  # dept00 and dept10 the biggest
        [(n * 7919) % 1000 + 1 for n in range(30)],
        [5],
    ],
)
def test_the_departments_drawn_together_each_have_their_own_colour(
    sqlite_url: str, costs: list[int]
) -> None:
    ledger = Ledger(sqlite_url)
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger.record(
        [
            make_span(started_at=at, department=f"dept{n:02d}", cost_total=cost, unpriced=False)
            for n, cost in enumerate(costs)
        ]
    )
    page, html = page_and_file(ledger, "department")
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
