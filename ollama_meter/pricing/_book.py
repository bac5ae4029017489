"""A price book: the rules in force, asked "what does this call cost?" many times a second."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from ollama_meter.pricing._calc import compute_cost
from ollama_meter.pricing._rules import select_rule
from ollama_meter.records import Cost, PriceRule, Usage


class PriceBook:
    """Rules plus the zone that effective dates are read in; caches rule choice per model and day."""

    def __init__(self, rules: Sequence[PriceRule], *, tz: ZoneInfo, currency: str) -> None:
        self.rules = tuple(rules)
        self.tz = tz
        self.currency = currency
        self._choice: dict[tuple[str, object], PriceRule | None] = {}

    def rule_for(self, model: str, when: datetime) -> PriceRule | None:
        day = when.astimezone(self.tz).date()
        key = (model, day)
        if key not in self._choice:
            if len(self._choice) > 10_000:
                self._choice.clear()
            self._choice[key] = select_rule(self.rules, model, day)
        return self._choice[key]

    def cost(self, model: str, when: datetime, usage: Usage) -> Cost:
        return compute_cost(self.rule_for(model, when), usage, currency=self.currency)
