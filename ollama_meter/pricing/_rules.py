"""The choice of the rule that prices a call.

Pure functions, no I/O. The rules themselves are plain records
(:class:`ollama_meter.records.PriceRule`); the ledger stores them, this module
decides which one applies to a model on a given local date.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

from ollama_meter.records import PriceRule


def select_rule(rules: Iterable[PriceRule], model: str, day: date) -> PriceRule | None:
    """The rule that prices ``model`` on local date ``day``, or None when none matches.

    The most specific pattern wins; among equally specific ones the most recent
    ``effective_from``, then the most recently created rule.
    """
    best: PriceRule | None = None
    best_key: tuple[tuple[int, int, int], date, int] | None = None
    for rule in rules:
        if not rule.applies_on(day) or not rule.matches(model):
            continue
        key = precedence(rule)
        if best_key is None or key > best_key:
            best, best_key = rule, key
    return best


def precedence(rule: PriceRule) -> tuple[tuple[int, int, int], date, int]:
    """Which of two rules that both price a call on a day wins: the greater."""
    pattern, start = rule.tier()
    return (pattern, start, rule.id or 0)


def sort_rules(rules: Sequence[PriceRule]) -> list[PriceRule]:
    """Rules as ``pricing list`` shows them: by pattern, then start date."""
    return sorted(rules, key=lambda r: (r.pattern, r.effective_from or date.min, r.id or 0))
