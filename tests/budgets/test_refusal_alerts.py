"""A hard budget that refuses calls says so: an alert of kind ``refused``, truthful at any spend.

A hard budget refuses a call whose bound does not fit what is left, so its spend may stay
below 100 % while every call is refused: no alert said so. Now the first refusal for want of
room fires a ``refused`` alert once per budget, tenant, period and the highest threshold the
spend had reached then (0 for none), through the same channels as the thresholds' alerts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ollama_meter._runtime import reset_runtime
from ollama_meter.budgets import Alert, AlertDispatcher, EmailChannel, WebhookChannel, deliver
from ollama_meter.errors import BudgetExceeded
from ollama_meter.ledger import Ledger
from ollama_meter.meter import Attribution
from ollama_meter.testing import OllamaEmulator
from tests.budgets.test_gate import (
    BOUND,
    CALL_COST,
    HELLO,
    NOV,
    OUT,
    Clock,
    Receiver,
    budget,
    call,
    make_meter,
    receiver,  # noqa: F401 (a fixture)
)

NOV_START = "2026-10-31T23:00:00Z"  # November in Berlin, the ledger's zone here


def rows(ledger: Ledger) -> list[tuple[str, int, int, int | None]]:
    return [(a.kind, a.threshold, a.spent, a.call_bound) for a in ledger.alerts()]


def refused_text(budget_id: int, spent: int, limit: int, bound: int) -> str:
    used = spent * 100 // limit
    return (
        f"Budget {budget_id} (acme/sales, monthly 2026-11) refused a call: spent "
        f"{spent / 1e6:.6f} of {limit / 1e6:.6f} USD ({used}% used), "
        f"{(limit - spent) / 1e6:.6f} left, and the call may cost up to {bound / 1e6:.6f}; "
        "calls that may cost more than is left are refused until the period ends or the "
        "limit is raised"
    )


def test_a_hard_budget_refusing_every_call_below_100_percent_says_so_once(
    db_url: str,
    emulator: OllamaEmulator,
    receiver: Receiver,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two calls settle at 2 x 81,000 of a 297,999 limit (54 %); a call's bound (136,000) does
    not fit the 135,999 left, so every call after is refused. No threshold was reached (the
    first is 75 %), and no alert said so."""
    caplog.set_level(logging.WARNING, logger="ollama_meter.alerts")
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    b = budget(meter, CALL_COST * 2 + BOUND - 1)
    call(meter)
    call(meter)
    for _ in range(3):  # refused again and again: said once
        with pytest.raises(BudgetExceeded, match="refuses the call"):
            call(meter)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(600.0)
    spent, limit = CALL_COST * 2, CALL_COST * 2 + BOUND - 1
    assert rows(meter.ledger) == [("refused", 0, spent, BOUND)]
    text = refused_text(b.id or 0, spent, limit, BOUND)
    assert text.endswith("54% used), 0.135999 left, and the call may cost up to 0.136000; "
                         "calls that may cost more than is left are refused until the period "
                         "ends or the limit is raised")  # fmt: skip
    assert receiver.posts == [
        {
            "text": text,
            "kind": "refused",
            "budget_id": b.id,
            "tenant": "acme",
            "department": "sales",
            "period": "month",
            "period_label": "2026-11",
            "period_start": NOV_START,
            "threshold": 0,
            "spent": "0.162000",
            "limit": "0.297999",
            "currency": "USD",
            "left": "0.135999",
            "call_bound": "0.136000",
        }
    ]
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.alerts"]
    assert said == [f"budget alert: {text}"]
    (row,) = meter.ledger.alerts()
    host = receiver.url.removesuffix("/hook")
    assert row.delivered and row.deliveries == {"log": "sent", "webhook": f"sent to {host}"}


def test_a_refusal_at_low_spend_is_a_refusal_and_one_past_90_percent_is_said_again(
    db_url: str,
    emulator: OllamaEmulator,
    receiver: Receiver,  # noqa: F811
) -> None:
    """One call too big for what is left, at 10 % spend, is reported as that (not as the
    budget used up, which it is not: the next calls are admitted); once the spend has passed
    90 % and a call is refused again, that is said too, once."""
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    limit = CALL_COST * 10
    b = budget(meter, limit)
    call(meter)
    huge = (len(HELLO[0]["content"].encode()) + 32 + 8) * 1000 + 100_000 * 2000
    with pytest.raises(BudgetExceeded, match=f"may cost up to {huge / 1e6:.6f}"):
        list(
            meter.chat(
                model="llama3.1:8b",
                messages=HELLO,
                attribution=Attribution(tenant="acme", department="sales"),
                options={"num_predict": 100_000},
            )
        )
    for _ in range(8):  # admitted: the budget was not used up
        assert call(meter).status == "ok"
    for _ in range(2):  # 9 calls spent: 90 %, and a call's bound does not fit the 10 % left
        with pytest.raises(BudgetExceeded):
            call(meter)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(600.0)
    c = CALL_COST
    assert rows(meter.ledger) == [
        ("refused", 0, c, huge),
        ("threshold", 75, 8 * c, None),
        ("threshold", 90, 9 * c, None),
        ("refused", 90, 9 * c, BOUND),
    ]
    texts = [p["text"] for p in receiver.posts]
    assert texts == [
        refused_text(b.id or 0, c, limit, huge),
        f"Budget {b.id} (acme/sales, monthly 2026-11) crossed 75%: spent 0.648000 of "
        "0.810000 USD (80% used)",
        f"Budget {b.id} (acme/sales, monthly 2026-11) crossed 90%: spent 0.729000 of "
        "0.810000 USD (90% used)",
        refused_text(b.id or 0, 9 * c, limit, BOUND),
    ]
    assert "(10% used)" in texts[0] and "100%" not in texts[0]
    assert [(p["kind"], p["threshold"]) for p in receiver.posts] == [
        ("refused", 0),
        ("threshold", 75),
        ("threshold", 90),
        ("refused", 90),
    ]


def test_a_refusal_after_the_limit_was_raised_is_said_again(
    db_url: str,
    emulator: OllamaEmulator,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The alert says calls are refused "until the period ends or the limit is raised". The
    admin raises it; calls are admitted, then refused again under the new limit, in the same
    band (no threshold reached): that is news, said once more; the refusals after it are not.
    """
    meter = make_meter(db_url, Clock(NOV), alert_webhook_url=receiver.url)
    c = CALL_COST
    first = c * 2 + BOUND - 1
    b = budget(meter, first, thresholds=(100,))
    call(meter)
    call(meter)
    with pytest.raises(BudgetExceeded):
        call(meter)
    assert meter.budgets is not None and meter.budgets.alerts is not None
    assert meter.budgets.alerts.flush(600.0)  # the admin reads it, and raises the limit
    raised = c * 4 + BOUND - 1
    budget(meter, raised, thresholds=(100,))
    call(meter)
    call(meter)
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            call(meter)
    assert meter.budgets.alerts.flush(600.0)
    assert [p["text"] for p in receiver.posts] == [
        refused_text(b.id or 0, 2 * c, first, BOUND),
        refused_text(b.id or 0, 4 * c, raised, BOUND),
    ]
    assert rows(meter.ledger) == [("refused", 0, 4 * c, BOUND)]  # the latest, under its limit


def test_a_refusal_the_ledger_cannot_record_is_refused_all_the_same_and_recorded_later(
    tmp_path: Path, emulator: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger fails the alert's write (a trigger that errs, as a full disk would): the call
    is refused as ever, the log names the budget whose alert was not recorded, and the next
    refusal, once the ledger takes writes again, records it: not lost for good."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    meter = make_meter(url, Clock(NOV))
    b = budget(meter, CALL_COST + BOUND - 1, thresholds=(100,))
    call(meter)
    with meter.ledger.write() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER broken BEFORE INSERT ON budget_alerts BEGIN INSERT INTO gone VALUES (1); END"
            )
        )
    with pytest.raises(BudgetExceeded, match="refuses the call"):
        call(meter)
    assert meter.ledger.alerts() == []
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and said[0].startswith(
        f"recording the refusal alert of budget {b.id} (acme/sales) (the next refusal tries "
        "again) failed: "
    )
    with meter.ledger.write() as conn:
        conn.execute(text("DROP TRIGGER broken"))
    with pytest.raises(BudgetExceeded, match="refuses the call"):
        call(meter)
    assert rows(meter.ledger) == [("refused", 0, CALL_COST, BOUND)]


def test_a_refusal_only_calls_in_flight_are_in_the_way_of_fires_no_alert(
    sqlite_url: str, emulator: OllamaEmulator
) -> None:
    """Room held by calls in flight comes back within seconds (retry in 5 s): no admin needs
    telling, and the refusal that matters (no room left) would then already be said."""
    from ollama_meter.ledger import _budgets as store

    meter = make_meter(sqlite_url, Clock(NOV))
    b = budget(meter, BOUND * 2 - 1)
    with meter.ledger.write() as conn:
        store.put_reservation(
            conn,
            {
                "id": "elsewhere", "budget_id": b.id, "tenant": "acme",
                "period_start": datetime(2026, 10, 31, 23, tzinfo=UTC), "amount_micros": BOUND,
                "expires_at": NOV + timedelta(minutes=15),
            },
        )  # fmt: skip
    with pytest.raises(BudgetExceeded, match="calls in flight hold") as refused:
        call(meter)
    assert refused.value.retry_after == 5
    assert meter.ledger.alerts() == []


def test_a_refusal_alert_by_email_names_what_it_is(emulator: OllamaEmulator) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Collect(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            received.append(message)

    from ollama_meter.testing import unused_port

    controller = Controller(Collect(), hostname="127.0.0.1", port=unused_port())
    controller.start()
    alert = Alert(
        1, 7, "acme", "sales", "month", "2026-11", NOV, 0, 100_000, 10_000_000, "EUR",
        kind="refused", call_bound=8_240_000,
    )  # fmt: skip
    try:
        channel = EmailChannel(
            "127.0.0.1",
            controller.server.sockets[0].getsockname()[1],
            sender="ometer@example.org",
            recipients=["it@example.org"],
        )
        outcome, delivered = deliver(alert, [channel])
    finally:
        controller.stop()
    assert delivered and outcome["email"] == "sent to it@example.org"
    (message,) = received
    assert message["Subject"] == "[ometer] acme/sales budget refused a call"
    assert message.get_payload(decode=True).decode().strip() == (
        "Budget 7 (acme/sales, monthly 2026-11) refused a call: spent 0.100000 of 10.000000 "
        "EUR (1% used), 9.900000 left, and the call may cost up to 8.240000; calls that may "
        "cost more than is left are refused until the period ends or the limit is raised"
    )


def test_upgrading_keeps_threshold_alerts_and_a_refusal_beside_one_is_recorded_once(
    db_url: str,
) -> None:
    from ollama_meter.ledger import upgrade
    from ollama_meter.ledger._engine import create_ledger_engine

    engine = create_ledger_engine(db_url)
    upgrade(engine, "0016")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO budget_alerts (budget_id, tenant, department, period, period_start, "
                "period_label, threshold, spent_micros, limit_micros, currency, fired_at, "
                "deliveries, delivered, attempts) VALUES (1, 'acme', 'sales', 'month', "
                "'2026-10-31 23:00:00.000000', '2026-11', 90, 9, 10, 'USD', '2026-11-20 10:00:00', "
                '\'{"log": "sent"}\', true, 1)'
            )
        )
    engine.dispose()
    ledger = Ledger(db_url)  # opening migrates to the head
    start = datetime(2026, 10, 31, 23, tzinfo=UTC)
    old = Alert(0, 1, "acme", "sales", "month", "2026-11", start, 90, 9, 10, "USD")
    refused = Alert(
        0, 1, "acme", "sales", "month", "2026-11", start, 90, 9, 10, "USD",
        kind="refused", call_bound=5,
    )  # fmt: skip
    with ledger.budget_transaction() as store:
        assert store.claim_alert(old, NOV) is None  # fired before the upgrade
        assert store.claim_alert(refused, NOV) is not None
        assert store.claim_alert(refused, NOV) is None
    assert rows(ledger) == [("threshold", 90, 9, None), ("refused", 90, 9, 5)]


OMETER = [sys.executable, "-m", "ollama_meter"]
CALLERS = 4


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_four_processes_refused_at_once_fire_one_refusal_alert(
    emulator: OllamaEmulator,
    db_url: str,
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each `ometer chat` process is refused (one call settled, no room for another's
    bound): the ledger's unique key lets exactly one record the refusal and post it. The
    prices, the budget and the call that fills it are set in this process, as the same
    commands (three process starts of seven: a second each on a busy machine)."""
    env = {
        "OLLAMA_HOST": emulator.url,
        "OMETER_DB_URL": db_url,
        "OMETER_LEDGER_WAIT": "60",
        "OMETER_ALERT_WEBHOOK_URL": receiver.url,
        "OMETER_TIMEZONE": "UTC",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OMETER, *args], env=os.environ, capture_output=True, text=True, timeout=180,
            check=False,
        )  # fmt: skip

    prices = ("--input-per-1m", "1000", "--output-per-1m", "2000")
    assert cli("pricing", "set", "llama3.1:*", *prices).code == 0
    limit = CALL_COST + BOUND - 1
    monthly = ("--monthly", f"{limit / 1e6:.6f}")
    assert cli("budget", "set", "sales", "--tenant", "acme", *monthly).code == 0
    chat = ("chat", "--tenant", "acme", "--dept", "sales", "-m", "llama3.1:8b")
    asked = (*chat, "-o", f"num_predict={OUT}", HELLO[0]["content"])
    assert cli(*asked).code == 0
    reset_runtime()  # what an ometer process closes as it ends: nothing of this one's is held
    with ThreadPoolExecutor(CALLERS) as pool:
        done = list(pool.map(lambda _: run(*asked), range(CALLERS)))
    assert [d.returncode for d in done] == [3] * CALLERS, [d.stderr for d in done]
    assert all("refuses the call: spent 0.081000 of 0.216999 USD" in d.stderr for d in done)
    ledger = Ledger(db_url)
    try:
        assert rows(ledger) == [("refused", 0, CALL_COST, BOUND)]
        (alert,) = ledger.alerts()
        if not receiver.posts:
            # The process that fired it waits 1 s for its channels as it ends: on a loaded
            # machine it may end mid-delivery, holding its claim 2 minutes. Let them pass,
            # and deliver what it left as a later run would.
            with ledger.write() as conn:
                conn.execute(text("UPDATE budget_alerts SET claimed_until = NULL"))
            later = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0)
            later.dispatch(alert)
            assert later.flush(600.0)
        assert [(p["kind"], p["spent"], p["call_bound"]) for p in receiver.posts] == [
            ("refused", "0.081000", "0.136000")
        ]
    finally:
        ledger.dispose()
