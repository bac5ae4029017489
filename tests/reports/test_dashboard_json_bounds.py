"""``/api/dash`` stays an answer, not the ledger, however many names a month holds.

Each list of money lists its biggest names per currency and one "others" row (names null,
``others`` how many it folds) whose figures are the exact sums of what it folds, so every
list still adds up to the spend of its currency. 1,000 departments and 20,000 users made a
10 MB answer (a department's every user and model), 4.7 s to build.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.records import SpanRecord
from ollama_meter.reports import DashQuery, dashboard_report
from ollama_meter.reports._dashboard import LISTED, TOP
from ollama_meter.reports._dashboard_json import dashboard_json
from tests.factories import OFFICE_NOW, make_span, opened
from tests.reports.test_dashboard_page_bounds import DEPARTMENTS, MODELS, crowd

UTC_ZONE = ZoneInfo("UTC")
FIGURES = ("requests", "errors")


def names(row: dict[str, Any], *keys: str) -> tuple[object, ...]:
    return tuple(row[key] for key in keys)


def sums(rows: list[dict[str, Any]], *extra: str) -> dict[str, tuple[object, ...]]:
    """Per currency: the exact cost and the counts of ``rows``."""
    total: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, *(0 for _ in extra)])
    for row in rows:
        cell = total[row["currency"]]
        cell[0] += Decimal(row["cost"])
        for at, key in enumerate((*FIGURES, *extra), 1):
            cell[at] += row[key]
    return {currency: tuple(cell) for currency, cell in total.items()}


def assert_lists_add_up(data: dict[str, Any], listed: int, top: int) -> None:
    """Every list of money adds up, per currency, to its currency's spend; the biggest names
    are listed, at most ``listed`` (``top`` within a department), and one others row more."""
    unit = data["period"]["unit"]
    spend = {s["currency"]: s for s in data["spend"]}
    errors = data["summary"]["errors"]
    whole = {c: (Decimal(s["cost"]), s["requests"]) for c, s in spend.items()}

    def check(rows: list[dict[str, Any]], keys: tuple[str, ...], most: int, what: str) -> None:
        assert {c: got[:2] for c, got in sums(rows).items()} == whole, what
        assert sum(r["errors"] for r in rows) == errors, what
        for currency in whole:
            mine = [r for r in rows if r["currency"] == currency]
            folded = [r for r in mine if r.get("others")]
            assert len(folded) <= 1 and all(r is mine[-1] for r in folded), what
            assert all(names(r, *keys) == (None,) * len(keys) for r in folded), what
            assert len(mine) - len(folded) <= most, what

    check(data["models"], ("model",), listed, "models")
    check(data["departments"], ("tenant", "department"), listed, "departments")
    check(data["top_users"], ("tenant", "user"), top, "top users")
    series = data[f"spend_by_department_by_{unit}"]
    assert sums(series) == sums(data["departments"]), "the series are the departments'"
    for dept in data["departments"]:
        # A department's models, users and days each add up to it.
        own = sums([dept])
        assert sums(dept[unit]) == own
        if dept.get("others"):
            assert "models" not in dept and "users" not in dept
            continue
        for part in ("models", "users"):
            assert sums(dept[part]) == own, part
            assert len([r for r in dept[part] if not r.get("others")]) <= top
    keep = {names(d, "tenant", "department", "currency") for d in data["departments"]}
    assert {names(r, "tenant", "department", "currency") for r in series} <= keep
    timing = data["timing_by_model"]
    assert sum(r["requests"] for r in timing) == data["summary"]["requests"]
    assert len([r for r in timing if not r.get("others")]) <= listed


Call = tuple[str, str, str, str, str, int, int, bool]
"""A generated call: currency, tenant, department, user, model, cost, when, failed."""


def call_spans(calls: list[Call], start: datetime, step: timedelta) -> list[SpanRecord]:
    """``calls`` as spans, each ``when`` steps after ``start``."""
    return [
        make_span(
            started_at=start + step * when,
            tenant=tenant,
            department=dept,
            user=user or None,
            request_model=model,
            currency=currency,
            cost_total=cost,
            unpriced=False,
            status="error" if failed else "ok",
            error_type="timeout" if failed else None,
        )
        for currency, tenant, dept, user, model, cost, when, failed in calls
    ]


_calls = st.lists(
    st.tuples(
        st.sampled_from(["USD", "EUR", "JPY"]),
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "Sales", "legal", "r&d", "caf\u00e9", "cafe\u0301"]),
        st.sampled_from(["", "ann", "Ann", "bo", "\u202eevil", "zw\u200bj"]),
        st.sampled_from(["m1", "M1", "m2", "x" * 300, "<b>m</b>"]),
        st.integers(min_value=0, max_value=10**12),
        st.integers(min_value=0, max_value=19),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=_calls, listed=st.integers(0, 4), top=st.integers(0, 3))
def test_every_list_adds_up_to_the_spend_whatever_is_folded(
    new_url: Callable[[], str],
    calls: list[Call],
    listed: int,
    top: int,
) -> None:
    """Names that differ by case or by Unicode normalisation, direction marks, zero-width
    characters, markup, 300 characters: each name its own row, each list adding up."""
    with opened(new_url()) as ledger:
        ledger.record(call_spans(calls, datetime(2026, 11, 1, 8, tzinfo=UTC), timedelta(days=1)))
        dash = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW)
        assert_lists_add_up(dashboard_json(dash, listed=listed, top=top), listed, top)


def test_a_thousand_departments_make_an_answer_of_a_few_hundred_rows(tmp_path: Any) -> None:
    """The page's crowd: 1,000 departments and users and 500 models. Each list has its
    :data:`LISTED` biggest, then one row for the rest (the JSON was 1.2 MB: every row)."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(crowd())
    data = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW).to_json()
    assert_lists_add_up(data, LISTED, TOP)
    biggest = [(d["department"], d["cost"]) for d in data["departments"][:3]]
    assert biggest == [
        ("dept0999", "1000.000999"),
        ("dept0998", "999.000998"),
        ("dept0997", "998.000997"),
    ]
    rest = data["departments"][-1]
    assert (rest["others"], rest["requests"]) == (DEPARTMENTS - LISTED, 2 * (DEPARTMENTS - LISTED))
    assert data["models"][-1]["others"] == MODELS - LISTED
    assert data["top_users"][-1]["others"] == DEPARTMENTS - TOP
    assert data["timing_by_model"][-1]["others"] == MODELS - LISTED
    assert len(json.dumps(data)) < 120_000
