"""A gateway's 429 for a spent daily budget says when the next day begins in the ledger's
zone, on days the clock jumps: Retry-After is the seconds to that midnight (24.5 hours' worth
half an hour into Berlin's 25-hour day), and the body names the local time the day begins."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ollama_meter.records import Budget
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, token_prices
from tests.gateway.conftest import Gateway

BODY = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(
    ("zone", "now", "retry_after", "starts"),
    [
        # 00:30 CEST on 25 October 2026: 24.5 hours until 26 October 00:00 CET
        ("Europe/Berlin", datetime(2026, 10, 24, 22, 30, tzinfo=UTC), 88_200, "2026-10-26 00:00 CET"),
        # 23:59:59.5 CET on 25 October: half a second, said as one
        ("Europe/Berlin", datetime(2026, 10, 25, 22, 59, 59, 500_000, tzinfo=UTC), 1, "2026-10-26 00:00 CET"),
        # 00:15 CET on 29 March: 22.75 hours (the clock skips 02:00 to 03:00)
        ("Europe/Berlin", datetime(2026, 3, 28, 23, 15, tzinfo=UTC), 81_900, "2026-03-30 00:00 CEST"),
        # Lord Howe, 4 October 2026: 02:00 becomes 02:30, a 23.5-hour day; at 00:00
        ("Australia/Lord_Howe", datetime(2026, 10, 3, 13, 30, tzinfo=UTC), 84_600, "2026-10-05 00:00 +11"),
        # Cairo, 29 October 2026: at 24:00 EEST the clock reads 23:00 EET again, so midnight
        # comes once, an hour after it would have: at 23:30 EEST, 90 minutes to go
        ("Africa/Cairo", datetime(2026, 10, 29, 20, 30, tzinfo=UTC), 5_400, "2026-10-30 00:00 EET"),
        # and at 23:30 EET, after the clock went back, 30 minutes
        ("Africa/Cairo", datetime(2026, 10, 29, 21, 30, tzinfo=UTC), 1_800, "2026-10-30 00:00 EET"),
    ],
)  # fmt: skip
def test_a_spent_daily_budget_is_retried_at_the_next_local_midnight(
    db_url: str,
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    zone: str,
    now: datetime,
    retry_after: int,
    starts: str,
) -> None:
    gw = app_on(emulator.url, db_url, clock=Clock(now), config={"timezone": zone})
    gw.ledger.add_price_rule(token_prices("llama3.1:*"))
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=1000, currency="USD")
    )
    gw.ledger.record([make_span(started_at=now, cost_total=1000)])
    gw.meter.budgets.reload_soon()  # type: ignore[union-attr]
    who = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
    got = gw.client.post("/api/chat", json=BODY, headers=who)
    assert got.status_code == 429
    assert got.headers["retry-after"] == str(retry_after)
    assert f"the next period starts {starts}" in got.json()["error"]
