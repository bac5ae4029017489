"""A call in flight across a price change and ``ometer reprice``: the ledger ends priced by the
rules in force, as the reprice said, not by the rules the call opened under."""

from __future__ import annotations

from decimal import Decimal

from ollama_meter.config import load_settings
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import PriceSource, reprice
from ollama_meter.pricing import PriceRule
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.meter.test_meter import HELLO, WHO, make_meter


def test_a_call_that_ends_after_a_reprice_is_priced_by_the_rules_the_reprice_applied(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """The admin raised a price and ran `ometer reprice` while a call streamed: the call was
    priced at its end by the book it opened with, and written after the reprice had passed,
    so the ledger kept the old price for good (a second reprice moved it), and a report
    said the old price after a reprice that said it applied the new one."""
    meter = make_meter(db_url)
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    run = meter.chat(model="llama3.1:8b", messages=HELLO, attribution=WHO, stream=True)
    chunks = iter(run)
    next(chunks)  # the call is open, priced by the book of the rules before the change
    meter.ledger.add_price_rule(
        PriceRule(pattern="llama3.1:8b", currency="USD", output_per_1m=Decimal(7000))
    )
    book = PriceSource(meter.ledger, settings=load_settings(db_url=db_url))()
    since = run.span.started_at
    first = reprice(meter.ledger, book, since=since)
    assert (first.examined, first.changed) == (0, 0)  # the call is not in the ledger yet
    list(chunks)
    (span,) = meter.ledger.latest(SpanFilter(), 10)
    assert span.cost_total == span.output_tokens * 7000
    again = reprice(meter.ledger, book, since=since)
    assert (again.examined, again.changed) == (1, 0)
    (row,) = meter.ledger.spend(SpanFilter())
    assert row.cost == span.output_tokens * 7000
