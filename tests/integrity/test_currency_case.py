"""A currency code is one currency however it is cased: ``usd`` is ``USD`` wherever it enters.

Rules (flag and file), budgets (flag and ``DEPARTMENT_BUDGETS`` through ``OMETER_CURRENCY``)
took ``usd`` as ``USD``; an imported span was refused ("'usd' is not a 3-letter code", which
it is), and the library's ``chargeback(currency="usd")`` billed the fixed cost as a currency of
its own, beside the usage in USD. Every code now goes through ``parse_currency``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.ledger import Ledger, import_lines, span_to_dict
from ollama_meter.reports import chargeback
from tests.factories import make_span


@pytest.mark.parametrize(
    ("rule", "file", "budget", "env", "span"),
    [("usd", "usd", "usd", "usd", "usd"), ("Usd", "uSD", "usD", "USD", "uSd")],
)
def test_every_way_in_gives_one_currency(
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rule: str,
    file: str,
    budget: str,
    env: str,
    span: str,
) -> None:
    monkeypatch.setenv("OMETER_DB_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    prices = tmp_path / "prices.toml"
    prices.write_text(f'currency = "{file}"\n[[rule]]\nmodel = "qwen*"\nper_request = 1\n')
    monkeypatch.setenv("OMETER_PRICING_FILE", str(prices))
    monkeypatch.setenv("OMETER_CURRENCY", env)
    monkeypatch.setenv("DEPARTMENT_BUDGETS", '{"ops": {"monthly": 50}}')
    assert cli("pricing", "set", "llama*", "--per-request", "1", "--currency", rule).code == 0
    made = cli("budget", "set", "sales", "--tenant", "acme", "--monthly", "9", "--currency", budget)
    assert made.code == 0, made.stderr
    lines = tmp_path / "spans.jsonl"
    line = span_to_dict(make_span(cost_total=2_000_000, cost_fee=2_000_000, price_rule_id=1))
    lines.write_text(json.dumps({**line, "currency": span}) + "\n")
    done = cli("db", "import", str(lines))
    assert done.code == 0, done.stderr
    listed = json.loads(cli("budget", "list", "--json").stdout)
    assert {b["currency"] for b in listed} == {"USD"}
    rules = json.loads(cli("pricing", "list", "--json").stdout)
    assert {r["currency"] for r in rules} == {"USD"}
    report = json.loads(cli("report", "--period", "2026-11", "--format", "json").stdout)
    assert [(r["currency"], r["cost"]) for r in report] == [("USD", "2.000000")]


def test_the_library_chargeback_bills_usd_as_usd(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    ledger.record([make_span(cost_total=2_000_000, cost_fee=2_000_000, price_rule_id=1)])
    bill = chargeback(
        ledger,
        "2026-11",
        tz=ZoneInfo("UTC"),
        now=datetime(2026, 12, 5, tzinfo=UTC),
        currency="usd",
        fixed_cost=Decimal(100),
    )
    assert [(r.department, r.currency, r.total_cost) for r in bill.rows] == [
        ("sales", "USD", 102_000_000)
    ]


def test_an_imported_code_of_the_wrong_shape_says_what_a_code_is(sqlite_url: str) -> None:
    from ollama_meter.errors import ValidationError

    line = span_to_dict(make_span())
    with pytest.raises(ValidationError, match="currency 'us' is not a 3-letter ISO 4217 code"):
        import_lines(Ledger(sqlite_url), [json.dumps({**line, "currency": "us"}).encode()])
