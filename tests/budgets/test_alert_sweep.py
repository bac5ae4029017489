"""A threshold the spend reached while no process checked: a call's own check comes after its
span is committed, so a gateway killed in between (its span recovered from its journal by the
next ometer), a spool drained after an outage or an import left the threshold crossed and
never said, until that scope's next call; a quiet budget at month end, never. A gateway
looks as it starts: each reached threshold without its alert fires then, once across the
processes on the ledger (the ledger's unique key decides)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger
from ollama_meter.meter import budget_gate
from ollama_meter.records import Budget
from tests.factories import make_span

UNIT = 1_000_000


def test_a_gateway_starting_says_thresholds_crossed_in_silence_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(sqlite_url)
    for tenant, department in (("acme", "sales"), ("*", "support")):
        ledger.save_budget(
            Budget(
                tenant=tenant, department=department, period="month", limit=10 * UNIT,
                currency="USD", hard=department == "sales",
            )
        )  # fmt: skip
    now = datetime.now(UTC)
    ledger.record(  # as a dead gateway's journal, recovered, brings them in: no check after
        [
            make_span(tenant="acme", department="sales", started_at=now, cost_total=8 * UNIT),
            make_span(tenant="beta", department="support", started_at=now, cost_total=9 * UNIT),
            make_span(tenant="acme", department="support", started_at=now, cost_total=UNIT),
        ]
    )
    settings = load_settings(db_url=sqlite_url)
    gates = []
    with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
        for _ in range(2):  # a gateway, restarted (or a second one)
            gates.append(gate := budget_gate(ledger, settings, lease_share=0.25))
            assert gate.alerts is not None
            assert gate.alerts.flush(30)  # each recorded where it went (the log)
    fired = sorted((a.tenant, a.department, a.threshold) for a in ledger.alerts())
    assert fired == [("acme", "sales", 75), ("beta", "support", 75), ("beta", "support", 90)]
    said = [r.getMessage() for r in caplog.records if "budget alert" in r.getMessage()]
    assert len(said) == 3  # by the first gateway; the second found them claimed
    for gate in gates:
        gate.close()
        assert gate.alerts is not None
        gate.alerts.close()
    ledger.dispose()
