"""Parts of a total, rounded for people, add up to the total shown beside them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import example, given, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.records import minor_places
from ollama_meter.reports import (
    DashQuery,
    Links,
    dashboard_report,
    render_dashboard,
    render_spend_html,
    spend_report,
)
from ollama_meter.reports._shown import money, rounded_parts
from tests.factories import OFFICE_NOW, make_span

CURRENCIES = ["USD", "JPY", "KWD", "CLF", "XAU", "ISK"]


def _value(shown: str) -> Decimal:
    return Decimal(shown.replace(",", ""))


@given(
    parts=st.lists(
        st.integers(0, 10**7) | st.integers(0, 10**30) | st.integers(-(10**7), 10**7),
        max_size=30,
    ),
    currency=st.sampled_from(CURRENCIES),
)
@example(parts=[4_000, 4_000, 4_000], currency="USD")  # 0.00 each beside a total of 0.01
@example(parts=[1_005_000, 1_005_000, 1_005_000], currency="USD")  # 1.01 x 3 beside 3.02
@example(parts=[400_000, 400_000, 400_000], currency="JPY")  # 0 yen each beside 1
@example(parts=[-1_400, -1_400], currency="KWD")
def test_parts_add_up_to_the_total_shown_each_within_a_minor_unit(
    parts: list[int], currency: str
) -> None:
    shown = [money(part, currency) for part in rounded_parts(parts, currency)]
    places = minor_places(currency)
    unit = Decimal(1).scaleb(-places)
    units = [int(s.replace(",", "").replace(".", "")) for s in shown]  # exact, at any size
    total = money(sum(parts), currency)
    assert sum(units) == int(total.replace(",", "").replace(".", ""))
    for part, text in zip(parts, shown, strict=True):
        exact = Decimal(part).scaleb(-6)
        if abs(part) > 10**20:
            continue  # past Decimal's 28 digits; the sum above is checked exactly
        assert abs(_value(text) - exact) < unit  # within one minor unit of the exact amount
        assert len(text.partition(".")[2]) == places and (places or "." not in text)
        if exact == exact.quantize(unit):
            assert _value(text) == exact  # a whole number of minor units is shown as it is
        if parts.count(part) == len(parts):
            continue
        # a part no smaller than another is never shown as less than it
        for other, other_text in zip(parts, shown, strict=True):
            if other <= part:
                assert _value(other_text) <= _value(text) + unit


def _three_departments(url: str, micros: int, currency: str) -> Ledger:
    ledger = Ledger(url)
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 18, 10, minute, tzinfo=UTC),
                department=f"dept{minute}",
                cost_total=micros,
                unpriced=False,
                currency=currency,
            )
            for minute in range(3)
        ]
    )
    return ledger


def test_the_dashboards_departments_add_up_to_its_spend_card(db_url: str) -> None:
    """Three departments at 0.004 USD each: the card said 0.01, each department 0.00 (in its
    drill-down's summary and in the chart's legend)."""
    ledger = _three_departments(db_url, 4_000, "USD")
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    card = re.search(r'<div class="card-value[^"]*">([^<]*)</div>', page)
    assert card is not None and card.group(1) == "0.01"
    drills = re.findall(r'<span class="name">[^<]*</span><span class="num"[^>]*>([^<]*)<', page)
    assert sorted(drills) == ["0.00", "0.00", "0.01"]
    legend = re.findall(r'<span class="swatch [^"]*"></span>dept[0-9] <b>([^<]*)</b>', page)
    assert sorted(legend) == ["0.00", "0.00", "0.01"]


def test_the_reports_groups_add_up_to_its_total(db_url: str) -> None:
    """``report --format html --by department``: the total card 1 yen, each bar 0 yen."""
    ledger = _three_departments(db_url, 400_000, "JPY")
    tz = ZoneInfo("UTC")
    window = parse_period("2026-11", tz=tz, now=OFFICE_NOW)
    for by in (["department"], ["department", "day"]):
        report = spend_report(ledger, window, by, tz=tz)
        page = render_spend_html(report, tz=tz, zone="UTC", generated=OFFICE_NOW, title="Spend")
        card = re.search(r'<div class="card-value[^"]*">([^<]*)</div>', page)
        assert card is not None and card.group(1) == "1"
        if by == ["department"]:
            ends = re.findall(r'<text [^>]*class="value">([^<]*)</text>', page)
        else:
            ends = re.findall(r"</span>dept[0-9] <b>([^<]*)</b>", page)
        assert sorted(ends) == ["0", "0", "1"], page


def test_the_dashboards_models_show_one_amount_each_adding_up_to_the_card(db_url: str) -> None:
    """Three models at 0.004 USD: the chart's bars are rounded together (0.01, 0.00, 0.00);
    the top models table, rounding each on its own, showed 0.00 for the model whose bar
    said 0.01."""
    ledger = Ledger(db_url)
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 18, 10, n, tzinfo=UTC),
                request_model=f"model{n}:7b",
                response_model=f"model{n}:7b",
                cost_total=4_000,
                unpriced=False,
            )
            for n in range(3)
        ]
    )
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    start = page.index("<h2>Spend by model")
    bars = re.findall(
        r'class="name">(model[0-9]:7b)<title>[^\n]*\n<text [^>]*class="value">([^<]*)<',
        page[start : page.index("</section>", start)],
    )
    start = page.index("<h2>Top models by cost")
    table = page[start : page.index("</table>", start)]
    rows = re.findall(
        r'data-model="([^"]*)">.*?<td class="num" title="[^"]*" data-value="[^"]*">([^<]*)</td>',
        table,
    )
    assert sorted(v for _, v in bars) == ["0.00", "0.00", "0.01"]
    assert dict(rows) == dict(bars)
