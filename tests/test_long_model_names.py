"""A process keeps what it learned of each model by name (the price rule chosen, recent calls,
what ``/api/show`` said, a circuit), and a caller names any model it likes, a new one each call,
of up to a request body's 32 MB. Kept whole, a few hundred names of 100 KB held tens of MB, and
each cache holds thousands. A name past :data:`LONGEST_MODEL` is kept by its digest: the same
answers, a few dozen bytes each.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from ollama_meter._names import LONGEST_MODEL, model_cache_key
from ollama_meter.budgets import ShownPrompts
from ollama_meter.errors import UpstreamServerError
from ollama_meter.ledger import open_ledger
from ollama_meter.meter._usage import RecentCalls
from ollama_meter.pricing import PriceBook
from ollama_meter.pricing._rules import select_rule
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream import CircuitBreaker
from tests.factories import token_prices

NAMES = 200
LONG = 100_000
"""Characters of each name: 20 MB of names in all."""
KEPT_EACH = 1_000
"""Bytes a cache may keep per distinct name, whatever its length (its own entry, a digest)."""
WHEN = datetime(2026, 11, 10, 12, tzinfo=UTC)


def long_names() -> Iterator[str]:
    return (f"m{n:04d}" + "x" * LONG for n in range(NAMES))


def kept_bytes(work: Callable[[], object]) -> int:
    """Bytes still held once ``work`` has run (what it made and kept)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = work()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_a_names_cache_key_is_itself_up_to_the_longest_and_its_digest_past_it() -> None:
    name = "x" * LONGEST_MODEL
    assert model_cache_key(name) == name
    longer = model_cache_key(name + "y")
    assert isinstance(longer, bytes) and len(longer) == 32
    assert longer != model_cache_key(name + "z")
    assert longer not in {"x", name}  # bytes: never equal to a name of its own


def test_the_price_books_rule_choice_keeps_a_digest_of_a_long_name() -> None:
    rules = [token_prices(), replace(token_prices("m0001*"), input_per_1m=Decimal(5))]
    book = PriceBook(rules, tz=ZoneInfo("UTC"), currency="USD")

    def choose() -> list[object]:
        return [book.rule_for(name, WHEN) for name in long_names()]

    assert kept_bytes(choose) < NAMES * KEPT_EACH
    for name in long_names():  # from the cache, the rule chosen without it
        assert book.rule_for(name, WHEN) == select_rule(rules, name, WHEN.date())
    assert book.rule_for("m0001" + "x" * LONG, WHEN) == rules[1]


def test_recent_calls_keep_a_digest_of_a_long_name(sqlite_url: str) -> None:
    recent = RecentCalls(open_ledger(sqlite_url))
    recent.of("warm-up")  # what the ledger's first read loads
    assert kept_bytes(lambda: [recent.of(name) for name in long_names()]) < NAMES * KEPT_EACH
    assert all(recent.of(name, blocking=False) == [] for name in long_names())  # kept


def test_what_api_show_said_keeps_a_digest_of_a_long_name(emulator: OllamaEmulator) -> None:
    shown = ShownPrompts([emulator.url])
    shown.shown("warm-up")  # what the first request loads
    few = 20  # each asks the emulator

    def ask() -> None:
        for name in itertools.islice(long_names(), few):  # made here: kept or not
            shown.shown(name)
            emulator.reset()  # which keeps each request it was sent

    # The emulator's threads answer in this process and allocate too (38 KB once in CI):
    # a tenth of the names' own size still tells digests from names kept whole (2 MB).
    assert kept_bytes(ask) < few * LONG // 10
    kept = itertools.islice(long_names(), few)  # by their digests
    assert all(shown.cached(name)[0] for name in kept)


def test_a_circuit_keeps_a_digest_of_a_long_name() -> None:
    """A server failing every call (out of memory: 500s) opened a circuit per model named."""
    breaker = CircuitBreaker("http://gpu-1:11434", threshold=1)
    boom = UpstreamServerError("boom", status_code=500)

    def fail() -> None:
        for name in long_names():
            breaker.settle(breaker.admit(name, "acme/sales"), boom)

    assert kept_bytes(fail) < NAMES * 2 * KEPT_EACH  # the model's circuit and the caller's
    name = next(long_names())
    assert breaker.state(name, "acme/sales") == "open"
    assert breaker.failures(name) == 1


@pytest.mark.parametrize("length", [LONGEST_MODEL, LONGEST_MODEL + 1])
def test_a_name_at_or_past_the_longest_is_one_circuit_under_its_own_name(length: int) -> None:
    breaker = CircuitBreaker("http://gpu-1:11434", threshold=2)
    boom = UpstreamServerError("boom", status_code=500)
    name, other = "a" * length, "b" * length
    for _ in range(2):
        breaker.settle(breaker.admit(name), boom)
    assert (breaker.state(name), breaker.state(other)) == ("open", "closed")
