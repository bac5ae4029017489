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
from ollama_meter.reports._shown import money, rounded_parts, shown_top
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


@given(
    parts=st.lists(st.integers(0, 10**7) | st.integers(-(10**7), 10**7), max_size=12),
    groups=st.integers(1, 4),
    limit=st.integers(0, 5),
    currency=st.sampled_from(CURRENCIES),
)
def test_a_parts_own_parts_add_up_to_it_as_shown(
    parts: list[int], groups: int, limit: int, currency: str
) -> None:
    """A department is rounded with the other departments (so it may show a unit more or less
    than its own sum rounded); its models, cut to the first ``limit`` and the rest as one,
    add up to it as shown, each still within a minor unit of its amount."""
    unit = 10 ** (6 - minor_places(currency))
    slices = [parts[i::groups] for i in range(groups)]
    outer = rounded_parts([sum(s) for s in slices], currency)
    for inner, total in zip(slices, outer, strict=True):
        kept, rest = shown_top(inner, currency, limit, total)
        assert sum(kept) + rest == total
        assert len(kept) == len(inner[:limit])
        for part, shown in zip([*inner[:limit], sum(inner[limit:])], [*kept, rest], strict=True):
            assert abs(shown - part) < unit and shown % unit == 0


def test_the_dashboards_users_and_drill_downs_add_up_to_what_they_sit_beside(
    db_url: str,
) -> None:
    """Three departments at 0.004 USD, each two users and two models at 0.002: the card says
    0.01 and one department 0.01; the top users table, and that department's models and users,
    rounded each row on its own and showed 0.00 for every one."""
    ledger = Ledger(db_url)
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 18, 10, 2 * d + n, tzinfo=UTC),
                department=f"dept{d}",
                user=f"user{d}{n}",
                request_model=f"model{n}:7b",
                response_model=f"model{n}:7b",
                cost_total=2_000,
                unpriced=False,
            )
            for d in range(3)
            for n in range(2)
        ]
    )
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    cell = r'<td class="num" title="[^"]*" data-value="[^"]*">([^<]*)</td>'

    def cents(texts: list[str]) -> int:
        return sum(int(_value(t) * 100) for t in texts)

    start = page.index("<h2>Top users by cost")
    users = re.findall(cell, page[start : page.index("</table>", start)])
    assert len(users) == 6 and cents(users) == 1  # beside the card's 0.01
    drills = page.split('<details id="dept-USD-')[1:]
    assert len(drills) == 3
    for drill in drills:
        summary = re.search(r'<span class="num" title="[^"]*">([^<]*)</span>', drill)
        assert summary is not None
        for table in ("drill-models", "drill-users"):
            start = drill.index(f'class="data {table}"')
            rows = re.findall(cell, drill[start : drill.index("</table>", start)])
            assert len(rows) == 2 and cents(rows) == cents([summary.group(1)]), (table, drill)


def test_money_axes_tick_in_whole_minor_units(db_url: str) -> None:
    """0.4 yen per department: the report's axis ticked 0.1, 0.2 ... yen, a bill's too; ticks
    are whole minor units of the currency (1 yen, 1 fils, 1 cent)."""
    tz = ZoneInfo("UTC")
    window = parse_period("2026-11", tz=tz, now=OFFICE_NOW)
    for currency, micros in [("JPY", 400_000), ("ISK", 1_300_000), ("KWD", 400), ("USD", 4_000)]:
        ledger = _three_departments(db_url, micros, currency)
        unit = Decimal(1).scaleb(-minor_places(currency))
        pages = [
            render_spend_html(
                spend_report(ledger, window, by, tz=tz),
                tz=tz,
                zone="UTC",
                generated=OFFICE_NOW,
                title="Spend",
            )
            for by in (["department"], ["department", "day"], ["day"])
        ]
        dash = dashboard_report(ledger, DashQuery(), tz=tz, now=OFFICE_NOW)
        pages.append(render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC"))
        for page in pages:
            charts = re.findall(rf'aria-label="[^"]* in {currency}">.*?</svg>', page, re.S)
            assert charts
            for chart in charts:
                ticks = re.findall(r'class="tick">([0-9][0-9,.]*)<', chart)  # not the days
                assert len(ticks) >= 2
                for tick in ticks:
                    assert _value(tick) % unit == 0, (currency, tick, chart[:200])
