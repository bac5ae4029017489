"""What ``ometer reprice`` does to budgets: spend read again, thresholds it pushed past fired."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ollama_meter.config import load_settings
from ollama_meter.errors import BudgetExceeded
from ollama_meter.meter import PriceSource, reprice
from ollama_meter.testing import OllamaEmulator
from tests.budgets.test_gate import CALL_COST, NOV, Clock, budget, call, make_meter
from tests.factories import token_prices


def test_a_hard_budget_a_reprice_pushed_past_its_thresholds_alerts_when_it_refuses(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """Prices tripled and the month repriced: a hard budget at half its limit was at 150 %,
    and refused every call from then on, but alerts are checked only after a call that
    cost something, so its 90 % and 100 % alerts never fired: calls refused, no one told."""
    meter = make_meter(db_url, Clock(NOV))
    cap = budget(meter, CALL_COST * 4, hard=True, thresholds=(50, 90, 100))
    call(meter)
    call(meter)
    assert [a.threshold for a in meter.ledger.alerts()] == [50]
    meter.ledger.add_price_rule(
        replace(
            token_prices("llama3.1:8b"), input_per_1m=Decimal(3000), output_per_1m=Decimal(6000)
        )
    )
    cfg = load_settings(db_url=db_url, timezone="Europe/Berlin")
    prices = PriceSource(meter.ledger, settings=cfg)
    moved = reprice(meter.ledger, prices.load(), since=datetime(2026, 11, 1, tzinfo=UTC))
    assert moved.delta() == {"USD": 4 * CALL_COST}
    later = make_meter(db_url, Clock(NOV))  # a gateway started since, or this one's next look
    with pytest.raises(BudgetExceeded):
        call(later)
    assert later.budgets is not None and later.budgets.alerts is not None
    later.budgets.alerts.flush(600.0)
    fired = later.ledger.alerts()
    assert [(a.budget_id, a.kind, a.threshold, a.spent) for a in fired] == [
        (cap.id, "threshold", 50, 2 * CALL_COST),
        (cap.id, "threshold", 90, 6 * CALL_COST),
        (cap.id, "threshold", 100, 6 * CALL_COST),
        (cap.id, "refused", 100, 6 * CALL_COST),  # and it refuses calls
    ]
