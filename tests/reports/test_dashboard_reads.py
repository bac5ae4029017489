"""The dashboard's reads: summed by the database at the grains the page shows, and exact.

A month of 1,000 departments and 20,000 users made the first ``/api/dash`` take 12 s: one
read by department, model and day (100,000 rows, each built and summed again in Python),
and a second by department and model for the filter's names. The database now sums by
department and model, and by department and day; every figure still equals the spans'.
"""

from __future__ import annotations

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
from ollama_meter.reports._dashboard import dash_window
from ollama_meter.reports._dashboard_json import dashboard_json
from tests.factories import OFFICE_NOW, make_span, opened
from tests.reports.test_dashboard_json_bounds import Call, call_spans

UTC_ZONE = ZoneInfo("UTC")
ALL = 10**6
"""Lists as long as this fold nothing: every name is its own row."""


def test_no_read_is_by_department_model_and_day_at_once(
    sqlite_url: str, sums_read: list[tuple[tuple[str, ...], int]]
) -> None:
    departments, models, days = 12, 5, 6
    ledger = Ledger(sqlite_url)
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 10 + day, 9, tzinfo=UTC),
                department=f"dept{d:02d}",
                user=f"user{d:02d}",
                request_model=f"model{m}",
                cost_total=1 + d + m + day,
            )
            for d in range(departments)
            for m in range(models)
            for day in range(days)
        ]
    )
    data = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW).to_json()
    assert data["summary"]["requests"] == departments * models * days
    assert not [by for by, _ in sums_read if {"model", "bucket"} <= set(by)], sums_read
    # By department and model once (the filter's names are the same rows), by department
    # and day once, the previous period's total and the two timings' counts (the users are
    # ranked by the database: the top ones alone are read).
    rows = sum(n for _, n in sums_read)
    assert rows == departments * (models + days) + days + models
    assert sorted(by for by, _ in sums_read).count(("tenant", "department", "model")) == 1


_calls = st.lists(
    st.tuples(
        st.sampled_from(["USD", "EUR"]),
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "legal", "ops"]),
        st.sampled_from(["", "ann", "bo"]),
        st.sampled_from(["m1:7b", "m2:7b", "m3:7b"]),
        st.integers(min_value=0, max_value=10**9),
        # From the middle of October to now (20 November, 15:00), to the minute: whole
        # days, today's hours and the open edge of the last quarter hour.
        st.integers(min_value=0, max_value=(36 * 24 + 15) * 60 - 1),
        st.booleans(),
    ),
    min_size=1,
    max_size=30,
)
_queries = st.builds(
    DashQuery,
    period=st.sampled_from(["month", "week", "today", "previous-month"]),
    tenant=st.sampled_from([None, "acme"]),
    department=st.sampled_from([None, "sales"]),
    model=st.sampled_from([None, "m2:7b"]),
)


def _oracle(spans: list[SpanRecord], query: DashQuery) -> dict[str, dict[tuple[str, ...], Any]]:
    """The dashboard's lists, every name its own row, summed from the spans themselves."""
    window = dash_window(query, tz=UTC_ZONE, now=OFFICE_NOW)  # of days, by day
    sums: dict[str, dict[tuple[str, ...], list[Any]]] = defaultdict(
        lambda: defaultdict(lambda: [Decimal(0), 0, 0])
    )
    for s in spans:
        if not (window.start <= s.started_at < window.end):
            continue
        if any(getattr(s, k) != v for k, v in _wanted(query).items() if v is not None):
            continue
        day = s.started_at.date().isoformat()
        for kind, key in {
            "departments": (s.tenant, s.department),
            "models": (s.request_model,),
            "top_users": (s.tenant, s.user or ""),
            "series": (s.tenant, s.department, day),
            "dept_models": (s.tenant, s.department, s.request_model),
            "dept_users": (s.tenant, s.department, s.user or ""),
            "dept_days": (s.tenant, s.department, day),
        }.items():
            cell = sums[kind][(*key, s.currency)]
            cell[0] += Decimal(s.cost_total) / 10**6
            cell[1] += 1
            cell[2] += s.status != "ok"
    return {kind: {k: tuple(v) for k, v in found.items()} for kind, found in sums.items()}


def _wanted(query: DashQuery) -> dict[str, str | None]:
    return {"tenant": query.tenant, "department": query.department, "request_model": query.model}


def _shown(data: dict[str, Any]) -> dict[str, dict[tuple[str, ...], Any]]:
    """The JSON's lists, keyed as :func:`_oracle` keys them."""
    unit = data["period"]["unit"]
    found: dict[str, dict[tuple[str, ...], Any]] = defaultdict(dict)

    def put(kind: str, key: tuple[str, ...], row: dict[str, Any]) -> None:
        assert (*key, row["currency"]) not in found[kind], (kind, key)
        found[kind][(*key, row["currency"])] = (
            Decimal(row["cost"]),
            row["requests"],
            row["errors"],
        )

    for row in data["departments"]:
        assert not row.get("others")
        dept = (row["tenant"], row["department"])
        put("departments", dept, row)
        for part, name in (("models", "model"), ("users", "user")):
            for inner in row[part]:
                put(f"dept_{part}", (*dept, inner[name]), inner)
        for inner in row[unit]:
            put("dept_days", (*dept, inner[unit]), inner)
    for row in data["models"]:
        put("models", (row["model"],), row)
    for row in data["top_users"]:
        put("top_users", (row["tenant"], row["user"]), row)
    for row in data[f"spend_by_department_by_{unit}"]:
        put("series", (row["tenant"], row["department"], row[unit]), row)
    return found


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=_calls, queries=st.lists(_queries, min_size=1, max_size=3))
def test_every_list_of_the_dashboard_is_the_spans_sums(
    new_url: Callable[[], str],
    calls: list[Call],
    queries: list[DashQuery],
) -> None:
    """Departments with their models, users and days, models, users and the series per
    department and day, for any filter: each row the exact sums of its spans."""
    with opened(new_url()) as ledger:
        spans = call_spans(calls, datetime(2026, 10, 15, tzinfo=UTC), timedelta(minutes=1))
        ledger.record(spans)
        for query in queries:
            dash = dashboard_report(ledger, query, tz=UTC_ZONE, now=OFFICE_NOW, top=ALL)
            data = dashboard_json(dash, listed=ALL, top=ALL)
            want, got = _oracle(spans, query), _shown(data)
            for kind in (
                "departments",
                "models",
                "top_users",
                "series",
                "dept_models",
                "dept_days",
            ):
                assert got.get(kind, {}) == want.get(kind, {}), (kind, query)
            assert got.get("dept_users", {}) == want.get("dept_users", {}), query
