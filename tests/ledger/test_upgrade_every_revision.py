"""A ledger written at each older revision, in that revision's own schema, upgraded to the head.

The ledger is made by the migrations stopped at the revision, and filled with what a ledger
of then held: price rules, spans priced by them (text times on SQLite before 0006), budgets,
their reservations and alerts, API keys (with users from 0005), limits (from 0008). Once
upgraded, every row of every table and every rollup is what a ledger made at the head with
the same calls holds, and ``report``, ``chargeback`` and ``budget status`` print the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import DateTime, MetaData, Table, inspect, select, text

from ollama_meter.budgets import budget_status
from ollama_meter.ledger import HEAD_REVISION, Ledger, close_ledgers, current_revision, upgrade
from ollama_meter.ledger._engine import create_ledger_engine
from ollama_meter.records import Budget, Limit
from tests.factories import office_spans, token_prices
from tests.ledger.test_ledger import _everything

_KEPT = (
    "price_rules", "spans", "budgets", "budget_reservations", "budget_alerts", "api_keys",
    "limits", "model_history",
)  # fmt: skip
"""The tables whose rows a ledger keeps as written (``model_history`` from 0019 on, as spans
are written; before, 0019 makes it from the spans); the rollups are made from the spans."""

_COUNTED = ("price_rules", "budgets", "budget_alerts", "api_keys")
"""The tables whose ids a PostgreSQL sequence gives."""

_COMPARED = (
    *_KEPT,
    "rollups",
    "rollup_histograms",
    "rollup_busy",
    "rollup_busy_cells",
)


def _made_at_head(url: str, revision: str, now: datetime) -> Ledger:
    """A ledger at the head holding what one at ``revision`` could hold, made through the API."""
    ledger = Ledger(url)
    rule = ledger.add_price_rule(token_prices())
    spans = [
        replace(
            s,
            price_rule_id=rule.id if s.price_rule_id else None,
            queue_ns=s.queue_ns if revision >= "0008" else None,
            duration_source=s.duration_source if revision >= "0004" else
            ("reported" if s.prompt_eval_duration_ns or s.eval_duration_ns else None),
        )
        for s in office_spans(now)
    ]  # fmt: skip
    ledger.record(spans)
    if revision >= "0002":
        hard = ledger.save_budget(
            Budget(tenant="acme", department="sales", period="month", limit=9_000_000,
                   currency="USD")
        )  # fmt: skip
        ledger.save_budget(
            Budget(tenant="globex", department=None, period="day", limit=1_000_000,
                   currency="USD", hard=False, thresholds=(50, 80, 100))
        )  # fmt: skip
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        with ledger.write() as conn:  # as a gateway's call and an alert leave them
            conn.execute(
                Table("budget_reservations", MetaData(), autoload_with=conn).insert(),
                {"id": "01RESERVED", "budget_id": hard.id, "tenant": "acme",
                 "period_start": start, "amount_micros": 250_000,
                 "expires_at": now.replace(tzinfo=None) + timedelta(hours=1)},
            )  # fmt: skip
            conn.execute(
                Table("budget_alerts", MetaData(), autoload_with=conn).insert(),
                {"budget_id": hard.id, "tenant": "acme", "department": "sales",
                 "period": "month", "period_start": start, "period_label": now.strftime("%Y-%m"),
                 "threshold": 75, "spent_micros": 7_000_000, "limit_micros": 9_000_000,
                 "currency": "USD", "fired_at": start, "deliveries": {}, "delivered": False,
                 "attempts": 2, "kind": "threshold"},
            )  # fmt: skip
    if revision >= "0003":
        users = {"user": "alice", "users": ()} if revision >= "0005" else {}
        key, _ = ledger.create_key(name="sales-bot", tenant="acme", department="sales", **users)
        gone, _ = ledger.create_key(name="old", tenant="globex", department="marketing")
        ledger.revoke_key(gone.id or 0)
        if revision >= "0008":
            ledger.set_limit(Limit(tenant="acme", department="sales", rpm=60, tpm=90_000))
            ledger.set_limit(Limit(tenant="acme", key_id=key.id, concurrency=2))
    return ledger


def _written_at(revision: str, head: Ledger, url: str) -> None:
    """Make ``url`` a ledger at ``revision`` by the migrations, and copy into it every row of
    ``head``'s kept tables, as that revision's columns and types hold it."""
    engine = create_ledger_engine(url)
    upgrade(engine, revision)
    with head.engine.connect() as source, engine.begin() as target:
        there = set(inspect(target).get_table_names())
        for name in (t for t in _KEPT if t in there):
            into = Table(name, MetaData(), autoload_with=target)
            rows = source.execute(select(Table(name, MetaData(), autoload_with=source))).all()
            values = [
                {k: _as(into.c[k].type, v) for k, v in r._mapping.items() if k in into.c}
                for r in rows
            ]
            if values:
                target.execute(into.insert(), values)
            # Ids copied as they were: the sequences count on from them, as they had.
            if engine.dialect.name == "postgresql" and name in _COUNTED:
                target.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                         f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {name}), false)")
                )  # fmt: skip
    engine.dispose()


def _as(kind: Any, value: object) -> object:
    """A head value as an older column holds it: SQLite's integer microseconds as a time."""
    if isinstance(kind, DateTime) and isinstance(value, int):
        return datetime(1970, 1, 1) + timedelta(microseconds=value)
    return value


def _printed(cli: Any, url: str, month: str) -> list[tuple[int, str, str]]:
    close_ledgers()
    commands = [
        ["report", "--period", month, "--format", "csv", "--by", "tenant,department,model"],
        ["chargeback", "--month", month, "--fixed-cost", "1234.56", "--format", "csv"],
        ["budget", "status", "--json"],
        ["pricing", "list"],
        ["keys", "list"],
    ]
    printed = [(r.code, r.stdout, r.stderr) for r in (cli(*c, "--db", url) for c in commands)]
    close_ledgers()
    code, out, err = printed[2]  # its projection runs on to the second the command ran
    status = [{k: v for k, v in b.items() if k != "projected"} for b in json.loads(out)]
    printed[2] = (code, json.dumps(status), err)
    return printed


@pytest.mark.parametrize("revision", [f"{n:04d}" for n in range(1, int(HEAD_REVISION))])
def test_a_ledger_written_at_any_older_revision_upgrades_to_what_the_head_would_hold(
    cli: Any, db_url: str, revision: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_TIMEZONE", "UTC")
    now = datetime.now(UTC)
    head_url = (
        f"sqlite:///{tmp_path / 'head.db'}"
        if db_url.startswith("sqlite")
        else db_url.rsplit("/", 1)[0] + "/" + _fresh_pg(db_url)
    )
    head = _made_at_head(head_url, revision, now)
    _written_at(revision, head, db_url)
    upgraded = Ledger(db_url)  # migrates, and builds the rollups of what was there
    assert current_revision(upgraded.engine) == HEAD_REVISION
    assert _everything(upgraded, _COMPARED) == _everything(head, _COMPARED)
    utc = ZoneInfo("UTC")
    assert budget_status(upgraded, tz=utc, now=now) == budget_status(head, tz=utc, now=now)
    upgraded.dispose()
    head.dispose()
    month = now.strftime("%Y-%m")
    expected = _printed(cli, head_url, month)
    assert all(code == 0 for code, _, _ in expected), expected
    assert _printed(cli, db_url, month) == expected


def _fresh_pg(db_url: str) -> str:
    """Another fresh database beside ``db_url``'s (the conftest drops its own)."""
    from tests.conftest import _MADE, _fresh_pg_database

    server = db_url.rsplit("/", 1)[0]
    made = _fresh_pg_database(server).rsplit("/", 1)[1]
    _MADE.append((server, made))
    return made
