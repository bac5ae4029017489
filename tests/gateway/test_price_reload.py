"""A gateway prices by a rule change from its next refresh tick (every few seconds), not 30 s on:
a `reprice` run right after `pricing set` left the calls of those 30 s at the old price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.meter import Meter
from ollama_meter.pricing import PriceRule
from tests.factories import token_prices


def test_a_gateways_refresh_tick_reads_a_rule_changed_since(db_url: str) -> None:
    """What the gateway's background task does every ``REFRESH_SECONDS``: ``meter.refresh()``.
    It reloaded the rules only once they were 30 s old, so for up to 35 s after ``pricing
    set`` every call was priced by the old rule (measured: 35.7 s), and a ``reprice`` run at
    once had passed those calls before they were written."""
    settings = load_settings(db_url=db_url)
    meter = Meter.from_settings(settings, source="gateway")
    meter.keep_fresh()  # as the gateway's lifespan does: calls read the snapshot
    when = datetime(2026, 11, 10, tzinfo=UTC)
    assert meter.prices().rule_for("qwen2.5:7b", when) is None
    ledger = Ledger(db_url)
    added = ledger.add_price_rule(token_prices("qwen2.5:*"))
    meter.refresh()
    assert meter.prices().rule_for("qwen2.5:7b", when) == added
    newer = ledger.add_price_rule(
        PriceRule(pattern="qwen2.5:*", currency="USD", input_per_1m=Decimal(7))
    )
    meter.refresh()
    assert meter.prices().rule_for("qwen2.5:7b", when) == newer
    assert newer.id is not None
    ledger.remove_price_rule(newer.id)  # the last rule removed: its id may be given again
    meter.refresh()
    assert meter.prices().rule_for("qwen2.5:7b", when) == added
    again = ledger.add_price_rule(
        PriceRule(pattern="qwen2.5:*", currency="USD", input_per_1m=Decimal(9))
    )
    meter.refresh()
    assert meter.prices().rule_for("qwen2.5:7b", when) == again
    close_ledgers()
