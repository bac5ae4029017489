"""A webhook slow to answer an alert it took (a relay that posts it on to a chat service
before it answers) gets it once an attempt, never again at once: a POST the server was sent
whole may have reached it, and each try at once sent it again.

A real local webhook (``Receiver``) that records each post as it reads it, then answers late.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ollama_meter.budgets import AlertDispatcher, WebhookChannel
from ollama_meter.budgets._alerts import MAX_RUNS
from ollama_meter.ledger import Ledger
from tests.budgets.test_alert_once import fired
from tests.budgets.test_gate import Receiver

NOW = (0.0,) * (MAX_RUNS - 1)
"""Try again at once: the schedule's minutes are not what these tests pin."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_a_webhook_answering_in_a_few_seconds_gets_the_alert_once(
    sqlite_url: str, receiver: Receiver
) -> None:
    """It answered 200 after 3.5 s, past the 3 s each try waited: the alert was posted 15
    times (3 tries, 5 attempts), and on record as never delivered (failed before)."""
    receiver.delay = 3.5
    ledger = Ledger(sqlite_url)
    dispatcher = AlertDispatcher(ledger, [WebhookChannel(receiver.url)], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush(600.0)  # a bound for a hang, not a timing
    assert [p["threshold"] for p in receiver.posts] == [90]
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (True, 1)
    dispatcher.close()


def test_a_webhook_that_takes_the_alert_and_never_answers_gets_it_once_an_attempt(
    sqlite_url: str, receiver: Receiver
) -> None:
    """Each attempt posts it once, not three times: the server may have it each time."""
    receiver.delay = 3600.0  # takes it, and answers in an hour
    ledger = Ledger(sqlite_url)
    hook = WebhookChannel(receiver.url, answer=0.2)
    dispatcher = AlertDispatcher(ledger, [hook], backoff=0, retry_after=NOW)
    alert = fired(ledger)
    dispatcher.dispatch(alert)
    assert dispatcher.flush(600.0)
    assert len(receiver.posts) == MAX_RUNS
    (row,) = ledger.alerts()
    assert (row.delivered, row.attempts) == (False, MAX_RUNS)
    assert row.deliveries["webhook"] == (
        f"failed: {receiver.url.removesuffix('/hook')} was sent the alert and did not answer "
        "(ReadTimeout)"
    )
    dispatcher.close()
