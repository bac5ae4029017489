"""The dashboard's top users, ranked by the database: the answer every user's sums gave.

A month of 20,000 users made the first ``/api/dash`` read and rank 20,000 users' rows in
Python (about 3 s) for the ten it lists per currency and per department. The ledger now
ranks them (``_ranked``) and answers with the first ones and each list's totals; the JSON
and the page must be what every user's sums, sorted and folded, gave: the same users in the
same order (names by code point, ties by name and tenant), the same others, to the micro-unit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import Ledger, Ranking, SpanFilter
from ollama_meter.records import SpanRecord
from ollama_meter.reports import DashQuery, Links, dashboard_report, render_dashboard, spend_report
from ollama_meter.reports._dashboard import TOP
from ollama_meter.reports._dashboard_json import _folded, dashboard_json
from ollama_meter.reports._rows import SpendRow
from tests.factories import OFFICE_NOW, make_span, opened
from tests.reports.test_dashboard_json_bounds import Call, call_spans

USERS = ["", "ann", "Ann", "bo", "\u00e9mile", "e\u0301mile", "zo\u00eb", "\u00df", "Z", "_"]
"""Names whose order differs by locale (case, accents, combining marks): ranked by code
point, as Python sorts them, on PostgreSQL too."""
COSTS = [0, 1, 7, 10**6, 10**12, 2**62]
"""Few amounts, so that users tie and the names decide; 2**62 twice passes 64 bits."""

_calls = st.lists(
    st.tuples(
        st.sampled_from(["USD", "EUR"]),
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["sales", "legal", "ops"]),
        st.sampled_from(USERS),
        st.just("m1"),
        st.sampled_from(COSTS),
        # From the middle of October to now (20 November, 15:00), to the minute.
        st.integers(min_value=0, max_value=(36 * 24 + 15) * 60 - 1),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)
START = datetime(2026, 10, 15, tzinfo=UTC)


def _spans(calls: list[Call]) -> list[SpanRecord]:
    """Each call 7 s into its minute: quarter hours do not cut at a call."""
    return call_spans(calls, START + timedelta(seconds=7), timedelta(minutes=1))


def _every_user(ledger: Ledger, dash: Any, tz: ZoneInfo, top: int) -> dict[str, Any]:
    """The users of ``dash``'s JSON as every user's sums gave them: all of them read by
    tenant, department and user, sorted by cost then name, folded past ``top``."""
    users = spend_report(
        ledger, dash.window, ["tenant", "department", "user"], tz=tz, **dash.query.filters()
    )
    per_currency: dict[str, list[SpendRow]] = defaultdict(list)
    for row in users.rollup(["tenant", "user"]):
        per_currency[row.currency].append(row)
    per_department: dict[tuple[str, str, str], list[SpendRow]] = defaultdict(list)
    for row in users.rows:
        per_department[(row.label("tenant"), row.label("department"), row.currency)].append(row)
    top_users = [
        row
        for currency in dash.currencies
        for row in _folded(
            sorted(
                per_currency[currency],
                key=lambda r: (-r.cost, r.label("user"), r.label("tenant")),
            ),
            ["tenant", "user"],
            top,
        )
    ]
    departments = {
        key: _folded(sorted(rows, key=lambda r: (-r.cost, r.label("user"))), ["user"], top)
        for key, rows in per_department.items()
    }
    return {"top_users": top_users, "departments": departments}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=_calls,
    period=st.sampled_from(["month", "week", "today", "previous-month"]),
    zones=st.sampled_from(
        [
            ("UTC", "UTC"),
            ("Europe/Berlin", "UTC"),
            ("UTC", "Asia/Kathmandu"),
            ("America/New_York", "Europe/Berlin"),
        ]
    ),
    tenant=st.sampled_from([None, "acme"]),
    top=st.integers(0, 3),
    more=st.integers(0, 2),
)
@example(
    calls=[("USD", "acme", "sales", "ann", "m1", 2**62, 0, False)] * 2
    + [("USD", "acme", "legal", "bo", "m1", 1, 1, False)],
    period="previous-month", zones=("UTC", "UTC"), tenant=None, top=1, more=0,
)  # fmt: skip
def test_the_json_and_the_page_are_what_every_users_sums_gave(
    new_url: Callable[[], str],
    calls: list[Call],
    period: str,
    zones: tuple[str, str],
    tenant: str | None,
    top: int,
    more: int,
) -> None:
    """On ledgers whose days begin elsewhere than the report's (months and days of quarter
    hours, added and taken away), with ties, names of every case and accent, sums past 64
    bits: the JSON, byte for byte, and the page's users, are every user's sums folded."""
    ledger_zone, zone = zones
    url = new_url()
    Ledger(url, zone=ledger_zone).dispose()
    ledger = Ledger(url)
    ledger.record(_spans(calls))
    tz = ZoneInfo(zone)
    query = DashQuery(period=period, tenant=tenant)
    dash = dashboard_report(ledger, query, tz=tz, now=OFFICE_NOW, top=top + more)
    got = dashboard_json(dash, top=top)
    want = _every_user(ledger, dash, tz, top)
    expected = {
        **got,
        "top_users": want["top_users"],
        "departments": [
            {**d, "users": want["departments"][(d["tenant"], d["department"], d["currency"])]}
            if "users" in d
            else d
            for d in got["departments"]
        ],
    }
    assert json.dumps(got) == json.dumps(expected)
    # The page lists the first TOP of the same lists (read as the gateway reads them).
    dash = dashboard_report(ledger, query, tz=tz, now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone=zone)
    want = _every_user(ledger, dash, tz, TOP)
    for currency in dash.currencies:
        rows = [r for r in want["top_users"] if r["currency"] == currency]
        listed = dash.top_users(currency).cut(TOP)
        assert [(r.label("tenant"), r.label("user"), int(r.cost)) for r in listed.rows] == [
            (r["tenant"], r["user"], _micros(r["cost"])) for r in rows if not r.get("others")
        ]
        assert listed.others == sum(r.get("others", 0) for r in rows)
        if listed.others:
            assert f"and {listed.others:,} more</p>" in page


def _micros(text: str) -> int:
    return int(Decimal(text).scaleb(6))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=_calls,
    since=st.integers(0, 36 * 24 * 3600 * 10**6),
    length=st.integers(1, 20 * 24 * 3600 * 10**6),
    most=st.integers(0, 3),
)
def test_a_window_of_any_edges_ranks_as_the_spans_do(
    new_url: Callable[[], str], calls: list[Call], since: int, length: int, most: int
) -> None:
    """Windows that start and end anywhere (raw spans at their edges, quarter hours and days
    added and taken away): each list is the spans' own sums, ranked and folded."""
    with opened(new_url()) as ledger:
        spans = _spans(calls)
        ledger.record(spans)
        start = START + timedelta(microseconds=since)
        end = start + timedelta(microseconds=length)
        rankings = [
            Ranking(("tenant", "user"), (), ("user", "tenant"), most),
            Ranking(("tenant", "department", "user"), ("tenant", "department"), ("user",), most),
        ]
        _, found = ledger.spends_ranked(SpanFilter(since=start, until=end), [], rankings)
        for ranking, got in zip(rankings, found, strict=True):
            sums: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
            for s in spans:
                if start <= s.started_at < end:
                    values = {"tenant": s.tenant, "department": s.department, "user": s.user or ""}
                    cell = sums[(*(values[n] for n in ranking.by), s.currency)]
                    cell[0] += 1
                    cell[1] += s.status != "ok"
                    cell[2] += s.cost_total
            lists: dict[tuple[str, ...], list[tuple[tuple[str, ...], str, list[int]]]] = (
                defaultdict(list)
            )
            for key, cell in sums.items():
                *keys, currency = key
                part = (*(keys[ranking.by.index(n)] for n in ranking.within), currency)
                lists[part].append((tuple(keys), currency, cell))
            want = []
            for part in sorted(lists):
                ordered = sorted(
                    lists[part],
                    key=lambda g: (-g[2][2], *(g[0][ranking.by.index(n)] for n in ranking.order)),
                )
                want += [(keys, currency, *cell, 0) for keys, currency, cell in ordered[:most]]
                if rest := ordered[most:]:
                    want.append(
                        (
                            part[:-1],
                            part[-1],
                            *(sum(g[2][i] for g in rest) for i in range(3)),
                            len(rest),
                        )
                    )
            assert [
                (r.keys, r.currency, r.requests, r.errors, r.cost, r.others) for r in got
            ] == want


def test_the_dashboard_reads_no_row_per_user(
    sqlite_url: str, sums_read: list[tuple[tuple[str, ...], int]]
) -> None:
    """Three departments of 60 users each: no read answers a row per user (one did, every
    user's, for the ten the dashboard lists)."""
    ledger = Ledger(sqlite_url)
    ledger.record(
        [
            make_span(
                started_at=datetime(2026, 11, 10, 9, tzinfo=UTC) + timedelta(seconds=u),
                department=f"dept{d}",
                user=f"user{d}-{u:02d}",
                cost_total=1 + u,
            )
            for d in range(3)
            for u in range(60)
        ]
    )
    data = dashboard_report(ledger, DashQuery(), tz=ZoneInfo("UTC"), now=OFFICE_NOW).to_json()
    biggest = [f"user{d}-{u:02d}" for u in (59, 58, 57, 56) for d in range(3)]
    assert [r["user"] for r in data["top_users"]] == [*biggest[:TOP], None]
    assert data["top_users"][-1]["others"] == 180 - TOP
    assert [by for by, _ in sums_read if "user" in by] == []
