"""A threshold the spend reached while no process checked: a call's own check comes after its
span is committed, so a gateway killed in between (its span recovered from its journal by the
next ometer), a spool drained after an outage or an import left the threshold crossed and
never said, until that scope's next call; a quiet budget at month end, never. A gateway
looks as it starts: each reached threshold without its alert fires then, once across the
processes on the ledger (the ledger's unique key decides)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy

from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import _OPEN_FIELDS
from ollama_meter.ledger._spool import span_json
from ollama_meter.ledger.models import BUDGET_ALERTS, BUDGETS
from ollama_meter.meter import budget_gate, build_meter
from ollama_meter.periods import current_period
from ollama_meter.pricing import PriceRule
from ollama_meter.records import Alert, Budget, Source
from tests.factories import make_span

UNIT = 1_000_000
NOV = datetime(2026, 11, 1, tzinfo=UTC)


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


class HeldWebhook:
    """A webhook server that holds each post until let go (a slow Slack), then takes it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posted, self.let_go = threading.Event(), threading.Event()
        self.got: list[dict[str, object]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.posted.set()
                webhook.let_go.wait(60)
                webhook.got.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.let_go.set()
        self.server.shutdown()
        self.server.server_close()


def _crossed(ledger: Ledger) -> None:
    """acme/sales at 80 % of a monthly budget, its 75 % alert never said."""
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10 * UNIT, currency="USD")
    )
    ledger.record(
        [make_span(tenant="acme", department="sales", started_at=datetime.now(UTC),
                   cost_total=8 * UNIT)]
    )  # fmt: skip


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "budget alert:" in r.getMessage()]


def test_two_gateways_starting_together_say_an_unsaid_alert_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first gateway claimed the alert, said it and posted it to a slow webhook; the
    second, starting meanwhile, read it as undelivered (its row did not say the log had it
    until the webhook answered) and said it again: two lines for one alert, one post."""
    _crossed(Ledger(db_url))
    webhook = HeldWebhook()
    settings = load_settings(db_url=db_url, alert_webhook_url=webhook.url)
    gates = []
    try:
        with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
            gates.append(budget_gate(Ledger(db_url), settings, lease_share=0.25))
            assert webhook.posted.wait(60)  # the first one's delivery is under way
            gates.append(budget_gate(Ledger(db_url), settings, lease_share=0.25))
            webhook.let_go.set()
            for gate in gates:
                assert gate.alerts is not None and gate.alerts.flush(60)
        assert len(_said(caplog)) == 1
        assert [hook["text"] for hook in webhook.got] == [  # type: ignore[index]
            a.text() for a in Ledger(db_url).alerts()
        ]
    finally:
        webhook.close()
        for gate in gates:
            gate.close()
            assert gate.alerts is not None
            gate.alerts.close()
            gate.ledger.dispose()


def test_a_swept_alert_is_said_only_once_its_claim_is_committed(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep said (and queued) each alert inside the transaction that claimed it: its
    line was out while the claim could still roll back, and on PostgreSQL the delivery
    thread, had it looked for the row before the commit, would have found none and dropped
    it (a webhook then got it only at the next restart; not seen in 600 alerts)."""
    _crossed(ledger := Ledger(db_url))
    onlooker = Ledger(db_url)  # another process, reading the ledger as each line is said
    seen: list[list[int]] = []

    class Look(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "budget alert:" in record.getMessage():
                seen.append([a.id for a in onlooker.alerts()])

    look = Look()
    logging.getLogger("ollama_meter.alerts").addHandler(look)
    try:
        with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
            gate = budget_gate(ledger, load_settings(db_url=db_url), lease_share=0.25)
            assert gate.alerts is not None and gate.alerts.flush(60)
    finally:
        logging.getLogger("ollama_meter.alerts").removeHandler(look)
    (alert,) = ledger.alerts()
    assert (seen, len(_said(caplog))) == ([[alert.id]], 1)
    assert (alert.delivered, alert.deliveries) == (True, {"log": "sent"})
    gate.close()
    gate.alerts.close()
    ledger.dispose()
    onlooker.dispose()


def test_a_gateway_starting_in_a_new_period_says_what_the_last_one_reached_unsaid(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the current period was swept: a gateway killed at 23:59 on the month's last day,
    between a call's commit and its check, and started again at 00:01 never said that the
    month it ended reached 75 %. The period before is judged by the terms in force then
    only: a limit lowered since says nothing of it (nor would a budget set since)."""
    ledger = Ledger(sqlite_url)
    saved = ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=20 * UNIT, currency="USD")
    )
    gate = budget_gate(ledger, load_settings(db_url=sqlite_url), lease_share=0.25)
    month = current_period("month", tz=gate.tz, now=datetime.now(UTC))
    before = current_period("month", tz=gate.tz, now=month.start - timedelta(microseconds=1))
    with ledger.write() as conn:  # set in the month before last
        conn.execute(sqlalchemy.update(BUDGETS).values(created_at=before.start - timedelta(days=1)))
    ledger.record(  # 80 % of last month's 20, never said
        [make_span(tenant="acme", department="sales", started_at=before.start,
                   cost_total=16 * UNIT)]
    )  # fmt: skip
    assert [(a.period_label, a.threshold) for a in gate.sweep_alerts(datetime.now(UTC))] == [
        (before.label, 75)
    ]
    lowered = replace(saved, limit=10 * UNIT)
    ledger.save_budget(lowered)  # 160 % of it: last month, another limit was in force
    ledger.save_budget(lowered)  # set again as it is: in force since the first of the two
    (budget,) = ledger.budgets()
    assert budget.set_at is not None and month.start <= budget.set_at
    assert gate.sweep_alerts(datetime.now(UTC)) == []
    ledger.record(
        [make_span(tenant="acme", department="sales", started_at=month.end - timedelta(
                   microseconds=1), cost_total=8 * UNIT)]
    )  # fmt: skip
    fired = gate.sweep_alerts(month.end + timedelta(minutes=1))  # started again at 00:01
    assert gate.alerts is not None and gate.alerts.flush(60)
    assert [(a.period_label, a.threshold, a.spent) for a in fired] == [(month.label, 75, 8 * UNIT)]
    assert [(a.period_start, a.threshold) for a in ledger.alerts()] == [
        (before.start, 75), (month.start, 75)
    ]  # fmt: skip
    assert len(_said(caplog)) == 2  # each once
    gate.close()
    gate.alerts.close()
    ledger.dispose()


def test_a_gateway_starting_says_what_the_calls_it_recovers_reached(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway killed with a call upstream, noted in its journal: the next gateway records
    it as interrupted (its prompt's estimate charged) as it starts, and looked for unsaid
    thresholds before that, so the crossing that charge made waited for the scope's next
    call, or a restart."""
    ledger = Ledger(sqlite_url)
    ledger.add_price_rule(PriceRule(pattern="*", currency="USD", input_per_1m=Decimal(1)))
    ledger.save_budget(
        Budget(tenant="acme", department="sales", period="month", limit=10 * UNIT, currency="USD")
    )
    opened = make_span(tenant="acme", department="sales", started_at=datetime.now(UTC))
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)  # a dead gateway's journal
    dead = ledger.journal.directory / "1-dead.journal"
    dead.write_text(json.dumps({"o": span_json(opened, _OPEN_FIELDS), "in": 8 * UNIT}) + "\n")
    meter = build_meter(load_settings(db_url=sqlite_url), source=Source.GATEWAY)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(60)
    (recovered,) = ledger.latest(SpanFilter(), 5)
    assert (recovered.id, recovered.status, recovered.cost_total) == (
        opened.id, "interrupted", 8 * UNIT
    )  # fmt: skip
    assert [(a.tenant, a.threshold, a.spent) for a in ledger.alerts()] == [("acme", 75, 8 * UNIT)]
    assert len(_said(caplog)) == 1
    meter.budgets.close()
    meter.budgets.alerts.close()
    meter.ledger.dispose()
    ledger.dispose()


@pytest.mark.parametrize("edit", [{"deliveries": "x"}, {"deliveries": [1]}])
def test_an_alert_row_edited_by_hand_does_not_stop_a_gateway_starting(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, edit: dict[str, object]
) -> None:
    """The undelivered alerts a gateway reads as it starts were read unguarded: one row that
    cannot be read (edited in SQL) made `ometer serve` fail to start, with a traceback, on
    every try; and the thresholds reached in silence went unsaid with it."""
    _crossed(ledger := Ledger(sqlite_url))
    with ledger.budget_transaction() as store:  # an old alert of another budget, undelivered
        store.claim_alert(
            Alert(0, 99, "beta", "ops", "month", "2026-11", NOV, 90, 9, 10, "USD"), NOV
        )
    with ledger.write() as conn:
        conn.execute(sqlalchemy.update(BUDGET_ALERTS).values(**edit))
    gate = budget_gate(ledger, load_settings(db_url=sqlite_url), lease_share=0.25)
    assert gate.alerts is not None and gate.alerts.flush(60)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("could not read the undelivered budget alerts" in line for line in warned)
    assert [(a.tenant, a.threshold) for a in ledger.alerts(from_id=2)] == [("acme", 75)]
    assert len(_said(caplog)) == 1
    gate.close()
    gate.alerts.close()
    ledger.dispose()
