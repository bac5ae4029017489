"""Rows edited by hand in SQL, read around: every budget, price rule or key row that can be
read, and each that cannot with the ledger's words on it.

One such row must spoil no other: the gate and the price book put the others in force and
refuse only the calls the row may cover; ``list`` and ``status`` commands show the others and
name the row. What reads every row strictly (``budgets()``, ``price_rules()``, ``keys()``)
stays for what must not go on past one it cannot read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_meter.ledger import _budgets, _prices
from ollama_meter.ledger._database import Database

if TYPE_CHECKING:
    from ollama_meter.ledger._keys import ApiKey
    from ollama_meter.records import Budget, PriceRule, UnreadableBudget, UnreadableRule


class Readable(Database):
    """The rows of a ledger's budgets, price rules and keys that can be read, and those that
    cannot."""

    def readable_budgets(self) -> tuple[list[Budget], list[UnreadableBudget]]:
        return self.reading(_budgets.readable_budgets)

    def readable_price_rules(self) -> tuple[list[PriceRule], list[UnreadableRule]]:
        return self.reading(_prices.readable_rules)

    def readable_keys(self) -> tuple[list[ApiKey], list[str]]:
        """Every key whose row can be read, and what is wrong with each other row."""
        from ollama_meter.ledger import _keys

        return self.reading(_keys.readable_keys)
