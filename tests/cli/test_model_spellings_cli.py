"""One model called by three spellings (Ollama runs them as one and echoes each back) is one
row and one filter in every report: the finance user's example."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ollama_meter.ledger import Ledger
from ollama_meter.reports import DashQuery, dashboard_report
from tests.factories import make_span

_WINDOW = ("--since", "2026-11-01", "--until", "2026-11-30")
_NAMES = ["llama3.1:8b"] * 12 + ["LLAMA3.1:8B"] * 2 + ["llama3.1:8b "] * 2


def _record(db: str) -> None:
    start = datetime(2026, 11, 10, 9, tzinfo=UTC)
    Ledger(db).record(
        [
            make_span(
                started_at=start + timedelta(minutes=n),
                request_model=name,
                response_model=name,  # Ollama echoes the caller's spelling
                cost_tokens=1_000,
                cost_total=1_000,
            )
            for n, name in enumerate(_NAMES)
        ]
    )


def test_a_models_spellings_are_one_row_and_one_filter(cli: Any, db: str) -> None:
    _record(db)
    by_model = json.loads(cli("report", "--by", "model", "-f", "json", *_WINDOW).stdout)
    assert [(r["model"], r["requests"], r["cost"]) for r in by_model] == [
        ("llama3.1:8b", 16, "0.016000")
    ]
    rows = list(
        csv.DictReader(io.StringIO(cli("report", "--by", "model", "-f", "csv", *_WINDOW).stdout))
    )
    assert [(r["model"], r["requests"]) for r in rows] == [("llama3.1:8b", "16")]
    table = cli("report", "--by", "model", *_WINDOW).stdout
    assert "LLAMA3.1" not in table and table.count("llama3.1:8b") == 1
    for asked in (
        "llama3.1:8b",
        "LLAMA3.1:8B",
        " llama3.1:8b ",
        "registry.ollama.ai/library/llama3.1:8b",
    ):
        filtered = json.loads(cli("report", "-m", asked, "-f", "json", *_WINDOW).stdout)
        assert sum(r["requests"] for r in filtered) == 16, asked
        perf = json.loads(cli("perf", "--by", "model", "-m", asked, "-f", "json", *_WINDOW).stdout)
        assert [(r["model"], r["requests"]) for r in perf] == [("llama3.1:8b", 16)], asked
        logged = json.loads(cli("log", "-m", asked, "--json", "--limit", "100").stdout)
        # The spans keep each call's names as sent and answered: they are the evidence.
        assert sorted(s["request_model"] for s in logged) == sorted(_NAMES), asked
    assert json.loads(cli("report", "-m", "llama3.1", "-f", "json", *_WINDOW).stdout) == []


def test_the_dashboard_lists_and_filters_a_models_spellings_as_one(db: str) -> None:
    _record(db)
    now, zone = datetime(2026, 11, 20, tzinfo=UTC), ZoneInfo("UTC")
    for model in (None, "LLAMA3.1:8B ", "registry.ollama.ai/library/llama3.1:8b"):
        query = DashQuery(period="month", model=model)
        data = dashboard_report(Ledger(db), query, tz=zone, now=now).to_json()
        assert data["summary"]["requests"] == 16, model
        assert [(m["model"], m["requests"]) for m in data["models"]] == [("llama3.1:8b", 16)]
        timed = [(r["model"], r["requests"]) for r in data["timing_by_model"]]
        assert timed == [("llama3.1:8b", 16)], model


def test_a_filter_that_matches_nothing_knows_every_spelling_of_a_model(cli: Any, db: str) -> None:
    """Nothing of tenant ``nobody``: the note names the tenant, not the model spelled otherwise."""
    _record(db)
    said = cli("report", "-m", "LLAMA3.1:8B", "--tenant", "nobody", *_WINDOW).stderr
    assert "no span has tenant 'nobody'" in said and "model" not in said, said
    said = cli("log", "-m", " Llama3.1:8B", "--tenant", "nobody").stdout
    assert "no span has tenant 'nobody'" in said and "model" not in said, said
    said = cli("report", "-m", "llama3.1:7b", *_WINDOW).stderr
    assert "no span has model 'llama3.1:7b' (did you mean 'llama3.1:8b'?)" in said, said
