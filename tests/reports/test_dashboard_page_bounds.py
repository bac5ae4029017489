"""The dashboard page stays a page with a thousand departments and five hundred models.

Every chart and list draws its biggest entries and folds the rest into one "and N more",
whose amounts are the exact sums of what it folds; so does the JSON (test_dashboard_json_bounds).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger
from ollama_meter.meter import SpanRecord
from ollama_meter.pricing import format_micros
from ollama_meter.reports import DashQuery, Links, dashboard_report, render_dashboard
from ollama_meter.reports._dashboard import TOP
from ollama_meter.reports._dashboard_budgets import SHOWN_BUDGETS
from ollama_meter.reports._dashboard_page import SHOWN_DRILLS, SHOWN_OPTIONS
from ollama_meter.reports._html import SHOWN_SERIES, money
from ollama_meter.reports._shown import rounded_parts
from tests.factories import OFFICE_NOW, make_span

DEPARTMENTS, MODELS = 1000, 500


def crowd() -> list[SpanRecord]:
    """Department ``d`` spends ``d + 1`` USD on 18 November and ``d`` µUSD on the 19th; model
    ``m`` loads cold; every third call failed with one of 40 error types."""
    spans = []
    for d in range(DEPARTMENTS):
        for day, micros in ((18, (d + 1) * 10**6), (19, d)):
            n = len(spans)
            spans.append(
                make_span(
                    started_at=datetime(2026, 11, day, 10, tzinfo=UTC),
                    department=f"dept{d:04d}",
                    user=f"user{d:04d}",
                    request_model=f"model{n % MODELS:03d}:7b",
                    cost_total=micros,
                    unpriced=False,
                    status="error" if n % 3 == 0 else "ok",
                    error_type=f"error{n % 40}" if n % 3 == 0 else None,
                    load_duration_ns=10**8 * (1 + n % 7),
                    total_duration_ns=10**9,
                    latency_ns=10**9,
                )
            )
    return spans


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('crowd') / 'ledger.db'}")
    ledger.record(crowd())
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    return render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")


def section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}")
    return page[start : page.index("</section>", start)]


def test_the_spend_chart_stacks_the_biggest_departments_and_folds_the_rest(page: str) -> None:
    chart = section(page, "Spend per department per day")
    legend = re.findall(r'<li title="([^"]*)">.*?</span>([^<]*?) <b>([^<]*)</b>', chart)
    assert len(legend) == SHOWN_SERIES + 1
    biggest = [DEPARTMENTS - 1 - i for i in range(SHOWN_SERIES)]
    assert [name for _, name, _ in legend[:-1]] == [f"dept{d:04d}" for d in biggest]
    rest = DEPARTMENTS - SHOWN_SERIES
    rest_cost = sum((d + 1) * 10**6 + d for d in range(rest))
    # What the legend shows adds up to the spend card: the departments drilled into and the
    # others are rounded together, and "and N more" adds what the page shows of those it folds.
    biggest_first = [(d + 1) * 10**6 + d for d in reversed(range(DEPARTMENTS))]
    *drilled, others = rounded_parts(
        [*biggest_first[:SHOWN_DRILLS], sum(biggest_first[SHOWN_DRILLS:])], "USD"
    )
    assert legend[-1] == (
        f"{format_micros(rest_cost)} USD",
        f"and {rest} more",
        money(sum(drilled[SHOWN_SERIES:]) + others, "USD"),
    )
    shown = sum(Decimal(value.replace(",", "")) for _, _, value in legend)
    assert money(sum(biggest_first), "USD") == f"{shown:,}"
    on_18th = sum((d + 1) * 10**6 for d in range(rest))
    assert f'data-tip="{rest} more departments · 2026-11-18: {format_micros(on_18th)} USD"' in chart
    assert Counter(re.findall(r'<rect [^>]*data-at="([^"]*)"', chart)) == {
        "2026-11-18": SHOWN_SERIES + 1,
        "2026-11-19": SHOWN_SERIES + 1,
    }


def test_every_list_and_bar_chart_shows_its_top_and_says_how_many_more(page: str) -> None:
    drills = re.findall(r'<details id="[^"]*" class="drill" data-department="([^"]*)"', page)
    assert drills == [f"dept{DEPARTMENTS - 1 - i:04d}" for i in range(SHOWN_DRILLS)]
    assert f"and {DEPARTMENTS - SHOWN_DRILLS} more departments" in section(page, "Departments")
    for heading, more in [
        ("Spend by model", MODELS - TOP),
        ("Top models by cost", MODELS - TOP),
        ("Top users by cost", DEPARTMENTS - TOP),
        ("Failed calls by type", 40 - TOP),
        ("Output tokens per second by model", MODELS - TOP),
        ("Cold model loads", MODELS - TOP),
        ("Latency by model", MODELS - TOP),
    ]:
        part = section(page, heading)
        rows = part.count('class="mark ') or part.count("<tr data-")
        assert rows == TOP, heading
        assert f"and {more} more" in part, heading
    assert len(page) < 400_000  # a page, not the ledger: it was 5 MB
    # /api/dash lists the biggest too: the command lists every one
    assert "<code>ometer report --by model</code> lists every model" in section(
        page, "Top models by cost"
    )


def test_calls_that_cost_nothing_are_not_called_no_calls(tmp_path: Path) -> None:
    """Only failed or unpriced calls: the spend charts say nothing was spent, never that there
    were no calls (the calls chart and the tables show them)."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 18, 10, tzinfo=UTC),
                department=department,
                cost_total=0,
                unpriced=department == "free",
                status="ok" if department == "free" else "error",
                error_type=None if department == "free" else "upstream_5xx",
            )
            for department in ("free", "failed")
        ]
    )
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    assert "No calls in this period" not in page
    said = re.findall(r'<p class="empty">([^<]*)</p>', page)
    assert said.count("Nothing was spent in this period: its calls cost nothing.") == 2
    assert said.count("Nothing was spent here in this period: its calls cost nothing.") == 2


def test_a_departments_models_users_unpriced_models_and_budgets_are_bounded_too(
    tmp_path: Path,
) -> None:
    """One department with 300 models and 300 users, 300 unpriced models, and a ``*`` budget
    over 300 tenants: its drill-down listed every model and user, the unpriced banner named
    every model and the budgets drew a gauge per tenant (5,000 of each made a 12 MB page)."""
    many = 300
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(
        [
            make_span(started_at=at, department="big", user=f"user{n:03d}",
                      request_model=f"model{n:03d}", cost_total=10**9 + n, unpriced=False)
            for n in range(many)
        ]
        + [
            make_span(started_at=at, department="free", request_model=f"free{n:03d}",
                      cost_total=0, unpriced=True)
            for n in range(many)
        ]
        + [
            make_span(started_at=at, tenant=f"tenant{n:03d}", department="small",
                      cost_total=10**6 * (n + 1), unpriced=False)
            for n in range(many)
        ]
    )  # fmt: skip
    ledger.save_budget(Budget("*", "small", "month", 100 * 10**6, "USD"))
    dash = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    drill = page[page.index('data-department="big"') : page.index("</details>")]
    models = re.findall(r'<tr data-model="([^"]*)"', drill)
    assert models == [f"model{many - 1 - n:03d}:latest" for n in range(TOP)]  # the biggest first
    assert len(re.findall(r"<tr data-user=", drill)) == TOP
    assert f"and {many - TOP} more models" in drill
    assert f"and {many - TOP} more users" in drill
    banner = page[page.index('id="unpriced-banner"') :]
    banner = banner[: banner.index("</div>")]
    assert re.findall(r"free\d+", banner) == [f"free{n:03d}" for n in range(TOP)]
    assert f" and {many - TOP} more)" in banner
    gauges = re.findall(r'role="meter"[^>]*data-scope="([^"]*)"[^>]*data-state="([^"]*)"', page)
    assert len(gauges) == SHOWN_BUDGETS
    # the fullest (those over their limit) are the ones drawn, in the ledger's order
    assert [scope for scope, _ in gauges] == [
        f"tenant{n:03d}/small" for n in range(many - SHOWN_BUDGETS, many)
    ]
    assert f"and {many - SHOWN_BUDGETS} more budgets" in section(page, "Budgets")
    assert len(page) < 400_000


def test_a_filter_of_more_names_than_a_list_holds_takes_any_name_typed(tmp_path: Path) -> None:
    """Every model with calls was an <option> of the Model filter, twice its name each: a
    caller asking for 20,000 made-up models (each call a span) made the page megabytes of
    filter. Past SHOWN_OPTIONS names a filter is a text field (any name typed is taken) that
    suggests the first SHOWN_OPTIONS; fewer are a list to pick from, as before."""
    many = SHOWN_OPTIONS + 200
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(
        [
            make_span(started_at=at, department=f"d{n % 3}", request_model=f"{'m' * 200}{n:05d}")
            for n in range(many)
        ]
    )
    chosen = f"{'m' * 200}{many - 1:05d}"  # past the suggestions: still what is shown
    for query in (DashQuery(), DashQuery(model=chosen)):
        dash = dashboard_report(ledger, query, tz=ZoneInfo("UTC"), now=OFFICE_NOW)
        page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
        form = page[page.index('<form id="filters"') : page.index("</form>")]
        field = re.search(r'<input type="search" name="model" id="f-model" list="l-model"'
                          r' value="([^"]*)" placeholder="any of ([\d,]+)', form)  # fmt: skip
        assert field is not None and field.groups() == (query.model or "", f"{many:,}")
        listed = form[form.index('<datalist id="l-model">') :]
        assert listed[: listed.index("</datalist>")].count("<option") == SHOWN_OPTIONS
        assert re.findall(r'<select name="dept" id="f-dept">', form)  # three names: a list
        assert len(page) < 200 * SHOWN_OPTIONS + 300_000  # was 2 * 205 * 1,200 in the form
