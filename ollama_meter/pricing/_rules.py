"""The choice of the rule that prices a call.

Pure functions, no I/O. The rules themselves are plain records
(:class:`ollama_meter.records.PriceRule`); the ledger stores them, this module
decides which one applies to a model on a given local date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date

from ollama_meter.records import PriceRule, pattern_key

_WILDCARDS = re.compile(r"[*?]")
_CLASS = re.compile(r"\[!?\]?[^\]]*\]")
"""A character class as fnmatch reads it ('[0-9]', '[!a]', '[]x]'): one character, however
many it lists; a '[' that no ']' closes is a literal."""


def specificity(pattern: str) -> tuple[int, int, int]:
    """Order patterns from general to specific: exact names beat globs, longer beats shorter.

    Read as Ollama reads the names (:func:`pattern_key`): 'library/llama3.1:8b' is no more
    specific than 'llama3.1:8b', so between the two the later ``--from`` wins."""
    pattern = _CLASS.sub("?", pattern_key(pattern))
    wildcards = len(_WILDCARDS.findall(pattern))
    literal = len(_WILDCARDS.sub("", pattern))
    return (0 if wildcards else 1, literal, -wildcards)


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
    return (specificity(rule.pattern), rule.effective_from or date.min, rule.id or 0)


def sort_rules(rules: Sequence[PriceRule]) -> list[PriceRule]:
    """Rules as ``pricing list`` shows them: by pattern, then start date."""
    return sorted(rules, key=lambda r: (r.pattern, r.effective_from or date.min, r.id or 0))
