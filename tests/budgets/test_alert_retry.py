"""A long-running process (the gateway) tries an alert it could not deliver again by itself,
a bounded number of times; it never waits for a restart to do so.

A real local webhook (``Receiver``) that refuses a given number of posts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ollama_meter.budgets import Alert, AlertDispatcher, WebhookChannel
from ollama_meter.budgets._alerts import MAX_RUNS, TRIES
from ollama_meter.ledger import Ledger
from tests.budgets.test_gate import Receiver

NOV = datetime(2026, 11, 1, tzinfo=UTC)
NOW = (0.0,) * (MAX_RUNS - 1)
"""Try again at once: the schedule, not its minutes, is what these tests pin."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def fired(ledger: Ledger) -> Alert:
    alert = Alert(0, 1, "acme", "sales", "month", "2026-11", NOV, 90, 9, 10, "USD")
    with ledger.budget_transaction() as store:
        alert_id = store.claim_alert(alert, NOV)
    assert alert_id is not None
    return replace(alert, id=alert_id)


def test_a_webhook_down_for_a_moment_gets_the_alert_without_a_restart(
    db_url: str, receiver: Receiver
) -> None:
    """One attempt (three tries within about a second) was all a gateway made: a webhook
    down for those seconds never got the alert until the gateway was restarted, which
    for a service may be weeks later, the period long over."""
    receiver.fail = TRIES  # the whole first attempt
    ledger = Ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush()
    assert [p["threshold"] for p in receiver.posts] == [90]
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts, row.deliveries["webhook"]) == (
        True,
        2,
        f"sent to {receiver.url.removesuffix('/hook')}",
    )


def test_a_webhook_that_never_takes_the_alert_is_tried_a_bounded_number_of_times(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail = 10**6
    ledger = Ledger(db_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    with caplog.at_level(logging.WARNING, "ollama_meter.alerts"):
        dispatcher.dispatch(alert)
        assert dispatcher.flush()
    assert 10**6 - receiver.fail == MAX_RUNS * TRIES
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (False, MAX_RUNS)
    given_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(given_up) == 1
    # A later run leaves it be, as it would after five runs of processes.
    later = AlertDispatcher(Ledger(db_url), [WebhookChannel(receiver.url)], backoff=0)
    assert later.ledger.alerts(undelivered_only=True, max_attempts=MAX_RUNS) == []
