"""A rollup cell stops at 2**63 - 1; what a report, a bill or a budget shows is still exact.

A thousand calls at the most one call may cost (an import can hold them; live, ~10,700 calls
at the highest price a rule takes, each counting 2**31 tokens) sum past what a 64-bit cell
holds: the write stops the cell at the cap rather than lose the spans. A report read that
cell and showed 9,223,372,036,854.775807 as if it were the month's spend.
"""

from __future__ import annotations

import html
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.budgets import Budget, budget_status
from ollama_meter.ledger import (
    Ledger,
    SpanFilter,
    import_lines,
    prune,
    raw_spans,
    span_to_dict,
)
from ollama_meter.ledger._rollup import MOST
from ollama_meter.periods import parse_period
from ollama_meter.records import MAX_CALL_COST
from ollama_meter.reports import (
    DashQuery,
    Links,
    chargeback,
    dashboard_report,
    render_dashboard,
    spend_report,
)
from tests.factories import make_span

BERLIN = ZoneInfo("Europe/Berlin")
AT = datetime(2026, 11, 10, 12, tzinfo=UTC)
NOW = datetime(2026, 11, 20, tzinfo=UTC)
DEAR = 1005


def _saturated(url: str) -> Ledger:
    ledger = Ledger(url, zone="Europe/Berlin", wait=60)
    dear = {"cost_tokens": MAX_CALL_COST, "cost_total": MAX_CALL_COST, "unpriced": False}
    spans = [make_span(started_at=AT + timedelta(seconds=n), **dear) for n in range(DEAR)]
    spans.append(make_span(started_at=AT, department="legal", cost_total=5, cost_tokens=5))
    lines = [json.dumps(span_to_dict(s)).encode() for s in spans]
    assert import_lines(ledger, lines).added == len(spans)
    return ledger


def test_every_answer_past_a_capped_cell_is_the_exact_sum_of_its_spans(db_url: str) -> None:
    ledger = _saturated(db_url)
    exact = DEAR * MAX_CALL_COST
    assert exact > MOST
    windows = [
        SpanFilter(
            since=datetime(2026, 11, 1, tzinfo=BERLIN), until=datetime(2026, 12, 1, tzinfo=BERLIN)
        ),
        SpanFilter(
            since=datetime(2026, 11, 10, tzinfo=BERLIN), until=datetime(2026, 11, 11, tzinfo=BERLIN)
        ),
        SpanFilter(since=AT - timedelta(minutes=7), until=AT + timedelta(days=3, minutes=1)),
    ]
    for where in windows:
        with raw_spans():
            reference = {s.keys: s for s in ledger.spend(where, by=["department"])}
        assert reference[("sales",)].cost == exact
        found = {s.keys: s for s in ledger.spend(where, by=["department"])}
        assert found == reference
    month = parse_period("2026-11", tz=BERLIN, now=NOW)
    report = spend_report(ledger, month, ["department"], tz=BERLIN)
    assert {r.label("department"): r.cost for r in report.rows} == {"sales": exact, "legal": 5}
    bill = chargeback(ledger, "2026-11", tz=BERLIN, now=NOW, currency="USD")
    assert {r.department: r.usage_cost for r in bill.rows} == {"sales": exact, "legal": 5}
    ledger.save_budget(Budget("acme", "sales", "month", 10**18, "USD"))
    [status] = budget_status(ledger, tz=BERLIN, now=NOW)
    assert status.spent == exact


def test_a_capped_cell_whose_spans_were_pruned_is_said_to_be_capped(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No exact sum is left once the spans are pruned: the figure is the cap, and the log and
    the bill say so rather than pass it off as the month's spend."""
    ledger = _saturated(db_url)
    prune(ledger, 1, now=NOW)
    month = SpanFilter(
        since=datetime(2026, 11, 1, tzinfo=BERLIN), until=datetime(2026, 12, 1, tzinfo=BERLIN)
    )
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        found = {s.keys: s.cost for s in ledger.spend(month, by=["department"])}
    assert found == {("sales",): MOST, ("legal",): 5}
    assert "passed the largest 64-bit integer" in caplog.text and "pruned" in caplog.text
    bill = chargeback(ledger, "2026-11", tz=BERLIN, now=NOW, currency="USD")
    assert {r.department: r.usage_cost for r in bill.rows} == {"sales": MOST, "legal": 5}
    [said] = [w for w in bill.warnings if "rollups hold" in w]
    assert said.startswith("the usage of acme/sales (USD) passed the largest sum")
    assert "less than was spent" in said


def test_every_figure_of_a_pruned_capped_cell_is_said_to_be_a_lower_bound(
    db_url: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only chargeback said so: ``ometer report``, the dashboard (its JSON and its page) and
    ``ometer budget status`` showed the cap as the month's spend without a word."""
    ledger = _saturated(db_url)
    prune(ledger, 1, now=NOW)
    ledger.save_budget(Budget("acme", "sales", "month", 10**18, "USD"))
    ledger.save_budget(Budget("acme", "legal", "month", 10**18, "USD"))
    said = "passed the largest sum the ledger's rollups hold"
    month = ["--db", db_url, "--period", "2026-11"]
    for args in (
        ["report", "--by", "department"],
        ["report", "--by", "tenant,department", "-f", "csv"],
    ):
        result = cli(*args, *month)
        assert result.code == 0, result.stderr
        [line] = [line for line in result.stderr.splitlines() if said in line]
        assert "acme/sales (USD)" in line or "sales (USD)" in line, line
        assert "legal" not in line and "lower bound" in line
    dash = dashboard_report(ledger, DashQuery(period="2026-11"), tz=BERLIN, now=NOW)
    data = dash.to_json()
    assert [s["capped"] for s in data["spend"]] == [True]
    assert {b["scope"]: b["capped"] for b in data["budgets"]} == {
        "acme/sales": True,
        "acme/legal": False,
    }
    [warning] = data["warnings"]
    assert said in warning and "lower bound" in warning
    page = html.unescape(
        render_dashboard(dash, links=Links("/dashboard", {}), zone="Europe/Berlin")
    )
    assert 'id="capped-banner"' in page and said in page
    assert page.count("a lower bound: the ledger's rollups") == 1  # sales's gauge, not legal's
    [status] = [
        s for s in budget_status(ledger, tz=BERLIN, now=NOW) if s.budget.department == "sales"
    ]
    assert status.capped and status.spent == MOST
    monkeypatch.setattr("ollama_meter.cli.budget.utc_now", lambda: NOW)
    result = cli("budget", "status", "--db", db_url)
    assert result.code == 0, result.stderr
    [line] = [
        line for line in result.stdout.splitlines() + result.stderr.splitlines() if said in line
    ]
    assert "acme/sales" in line and "lower bound" in line
