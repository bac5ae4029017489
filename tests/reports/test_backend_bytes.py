"""The same spans give the same bytes on SQLite and PostgreSQL: report (any --by), perf,
chargeback and log --json, in CSV and JSON, and /api/dash's JSON (its top lists cut short).
A ledger moved with ``db export``/``import`` to PostgreSQL (README: "moving up") must bill as
it did: a reordered row, a tie broken another way or a figure written with other decimals is
another file to finance's diff.

Names that sort differently by byte and by a locale (case, ``.``, ``-``, ``_``, digits,
letters past ASCII in models), several currencies, durations that tie."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from ollama_meter._text import json_text
from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.records import SpanRecord
from ollama_meter.reports import DashQuery, dashboard_report
from tests.conftest import _MADE, _admin
from tests.factories import make_span
from tests.reports.test_oracle_prices import SETTINGS

NAMES = ["sales", "Sales", "SALES", "sales-2", "sales.2", "sales_2", "sales2", "a", "B", "9x"]
MODELS = ["llama3.1:8b", "Llama3.1:8B", "qwen2.5:中文", "ÄÖ:latest", "zz", "a.b:c", "a-b:c"]
START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 7, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


@st.composite
def spans(draw: st.DrawFn) -> list[SpanRecord]:
    out = []
    for _ in range(draw(st.integers(1, 20))):
        out.append(
            make_span(
                started_at=START + timedelta(minutes=draw(st.integers(0, 30 * 24 * 60))),
                tenant=draw(st.sampled_from(NAMES[:4])),
                department=draw(st.sampled_from(NAMES)),
                user=draw(st.sampled_from([None, *NAMES])),
                request_model=draw(st.sampled_from(MODELS)),
                currency=draw(st.sampled_from(["USD", "EUR", "JPY"])),
                cost_total=draw(st.sampled_from([0, 1, 10**6, 123_456_789])),
                latency_ns=draw(st.sampled_from([None, 10**6, 2 * 10**6])),
                load_duration_ns=draw(st.sampled_from([None, 0, 200_000_000])),
                upstream_host=draw(st.sampled_from(["http://gpu1:11434", "http://gpu2:11434"])),
                status=draw(st.sampled_from(["ok", "error", "rejected"])),
            )
        )
    return out


def _locale_database(server: str) -> str:
    """A database whose text sorts as most servers' do (ICU's en-US: case and punctuation
    count last), not by byte as the tests' C cluster does: an ORDER BY left to the database
    would order ``Sales``, ``sales-2`` and ``sales2`` otherwise than SQLite."""
    from sqlalchemy import text

    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin(server).connect() as conn:
        conn.execute(
            text(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                "ICU_LOCALE 'en-US' LOCALE 'C'"
            )
        )
        found = "SELECT datlocprovider FROM pg_database WHERE datname = :name"
        assert conn.execute(text(found), {"name": name}).scalar() == "i"
    _MADE.append((server, name))  # dropped when the test ends
    return f"{server}/{name}"


BY = st.lists(
    st.sampled_from(["tenant", "department", "user", "model"]), min_size=0, max_size=4, unique=True
)


@SETTINGS
@given(
    calls=spans(),
    by=BY,
    unit=st.sampled_from([None, "day", "week", "month"]),
    fmt=st.sampled_from(["csv", "json"]),
)
def test_sqlite_and_postgresql_write_the_same_bytes(
    pg_server: str | None,
    tmp_path_factory: pytest.TempPathFactory,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[SpanRecord],
    by: list[str],
    unit: str | None,
    fmt: str,
) -> None:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    postgres = _locale_database(pg_server)
    sqlite = f"sqlite:///{tmp_path_factory.mktemp('bytes') / 'ledger.db'}"
    monkeypatch.setenv("OMETER_TIMEZONE", "Europe/Berlin")
    outputs: list[list[str]] = []
    for url in (sqlite, postgres):
        ledger = Ledger(url, zone="Europe/Berlin")
        ledger.record(calls)
        ledger.dispose()
        columns = ",".join([*by, *([unit] if unit else [])])
        try:
            said = [
                cli("report", "--db", url, "--period", "2026-11", "--by", columns, "-f", fmt),
                cli("perf", "--db", url, "--period", "2026-11", "--by", ",".join(by) or "model",
                    "-f", fmt),
                cli("chargeback", "--db", url, "--month", "2026-11", "--fixed-cost", "1000",
                    "--idle", "separate", "-f", fmt),
                cli("log", "--db", url, "--json", "--limit", "100"),
            ]  # fmt: skip
        finally:
            close_ledgers()
        assert all(done.code == 0 for done in said), [done.stderr for done in said]
        reader = Ledger(url)
        dash = dashboard_report(reader, DashQuery(period="2026-11"), tz=BERLIN, now=NOW, top=3)
        reader.dispose()
        outputs.append([*(done.stdout for done in said), json_text(dash.to_json())])
    assert outputs[0] == outputs[1]
