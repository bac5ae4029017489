"""Budgets, their alerts and what budgets learn from past calls: plain data, no I/O.

A :class:`Budget` checks its own values when made; the ``parse_*`` functions read
budgets from text (flags, ``DEPARTMENT_BUDGETS``). Admission, leases and
delivery live in :mod:`ollama_meter.budgets`; the ledger stores these records.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

from ollama_meter._names import name_problem
from ollama_meter.records._money import (
    MAX_AMOUNT,
    exact_integer,
    exact_number,
    format_micros,
    parse_amount,
    parse_currency,
    to_micros,
)
from ollama_meter.records._price import Usage

PERIODS = ("day", "week", "month")
PERIOD_WORDS = {"daily": "day", "weekly": "week", "monthly": "month"}
DEFAULT_THRESHOLDS = (75, 90, 100)
MAX_THRESHOLDS = 10
EACH_TENANT = "*"
PERIOD_ADVERB = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap on spend per ``period`` for a tenant, or one department of it.

    ``tenant == "*"`` gives every tenant's ``department`` its own allowance.
    ``limit`` is integer micro-units of ``currency``; a hard budget refuses calls,
    a soft one only alerts at each threshold (percent of the limit).
    """

    tenant: str
    department: str | None
    period: str
    limit: int
    currency: str
    hard: bool = True
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    source: str = "cli"
    id: int | None = None
    set_at: datetime | None = field(default=None, compare=False)
    """Since when its terms (limit, currency, hard, thresholds) are in force: when it was
    first set, or last set again with other terms; None until saved. The alert sweep says
    nothing of a period that ended before: another limit, or none, was in force then."""

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"period {self.period!r} is not one of {', '.join(PERIODS)}")
        if type(self.limit) is not int:  # True is an int to Python; 1.5e6 no whole micro-unit
            raise ValueError(
                "a budget's limit is whole micro-units of its currency (an int: 5 USD is "
                f"5_000_000), not {type(self.limit).__name__}"
            )
        if not 0 < self.limit <= to_micros(MAX_AMOUNT):
            raise ValueError(f"a budget's limit must be more than 0 and at most {MAX_AMOUNT:,f}")
        object.__setattr__(self, "currency", parse_currency(self.currency))
        if self.tenant != EACH_TENANT and (problem := name_problem(self.tenant)):
            raise ValueError(f"tenant name {problem}")
        if self.department is not None and (problem := name_problem(self.department)):
            raise ValueError(f"department name {problem}")
        # Whole numbers only (True is an int to Python, not a percentage), in order and once
        # each: alerts walk them from the lowest, and the ledger stores them as text.
        if (
            not self.thresholds
            or len(self.thresholds) > MAX_THRESHOLDS
            or any(type(t) is not int or not 0 < t <= 1000 for t in self.thresholds)
        ):
            raise ValueError(
                f"thresholds are 1 to {MAX_THRESHOLDS} whole percentages between 1 and 1000, "
                "e.g. 50,75,90,100"
            )
        object.__setattr__(self, "thresholds", tuple(sorted(set(self.thresholds))))

    def covers(self, tenant: str, department: str) -> bool:
        return self.tenant in (tenant, EACH_TENANT) and self.department in (None, department)

    def scope(self, tenant: str | None = None) -> str:
        """``acme/sales``, ``acme`` (whole tenant) or ``*/sales`` (each tenant)."""
        who = tenant if tenant is not None and self.tenant == EACH_TENANT else self.tenant
        return f"{who}/{self.department}" if self.department else who

    @property
    def kind(self) -> str:
        return "hard" if self.hard else "soft"


@dataclass(frozen=True, slots=True)
class UnreadableBudget:
    """A budget row edited by hand in SQL to what no :class:`Budget` can be (a limit of 0,
    currency ``XX``): its id, its scope's stored text, and the ledger's words on what to do."""

    id: int
    tenant: str
    department: str | None
    problem: str

    def scope(self) -> str:
        return f"{self.tenant}/{self.department}" if self.department else self.tenant

    def covers(self, tenant: str, department: str) -> bool:
        """Whether the row may be meant for this caller, by its scope as stored: a tenant no
        caller can have may be anyone's, a department none can have any in its tenant's."""
        if self.tenant != EACH_TENANT and name_problem(self.tenant):
            return True
        if self.tenant not in (tenant, EACH_TENANT):
            return False
        return self.department in (None, department) or bool(name_problem(self.department))


MOST_SPANNED = {
    ("day", "day"): 1, ("day", "week"): 1, ("day", "month"): 1,
    ("week", "day"): 7, ("week", "week"): 1, ("week", "month"): 2,
    ("month", "day"): 31, ("month", "week"): 6, ("month", "month"): 1,
}  # fmt: skip
"""``(p, q)``: how many periods ``q`` one period ``p`` overlaps at most, on the local calendar
(a day lies in one week and one month, an ISO week in up to two months; a month has up to
31 days and overlaps up to six ISO weeks)."""


def never_reached(budget: Budget, under: Budget) -> bool:
    """Whether ``budget``'s limit can never be reached because ``under``, a hard cap on spend
    that includes all of ``budget``'s (its scope or a wider one, in the same currency), refuses
    calls first: in any of ``budget``'s periods, the spend is at most ``under``'s limit times the
    periods of ``under`` it overlaps. ``budget`` then binds no call (its lower alerts may fire).

    Two such caps on the same spend (one scope, period and limit, from two sources) each
    refuse as soon as the other, so either alone would bind: only the later one (by id, then
    source) is said never to, not both because of each other."""
    if not _capped_below(budget, under):
        return False
    return not _capped_below(under, budget) or _order(budget) > _order(under)


def _capped_below(budget: Budget, under: Budget) -> bool:
    return (
        under.hard
        and under != budget
        and under.currency == budget.currency
        and under.tenant in (budget.tenant, EACH_TENANT)
        and under.department in (None, budget.department)
        and budget.limit >= MOST_SPANNED[budget.period, under.period] * under.limit
    )


def _order(budget: Budget) -> tuple[bool, int, str, tuple[int, ...], bool]:
    """Which of two caps on the same spend came later: a saved one's id, else what differs."""
    return (budget.id is None, budget.id or 0, budget.source, budget.thresholds, budget.hard)


def unreached_notes(budgets: Sequence[Budget], saved: Collection[int | None]) -> list[str]:
    """Why each of ``budgets`` that can never reach its limit (:func:`never_reached`) binds no
    call, where it or the cap refusing first is one of ``saved`` (ids): what `budget set` and
    ``DEPARTMENT_BUDGETS`` say of the budgets they just saved. Both are kept, as set: the other
    may be changed next."""

    def named(budget: Budget) -> str:
        limit = f"{format_micros(budget.limit)} {budget.currency}"
        return f"budget {budget.id} ({budget.scope()} {PERIOD_ADVERB[budget.period]} {limit})"

    return [
        f"{named(budget)} can never reach its limit: hard {named(under)} refuses calls first"
        for budget in budgets
        for under in budgets
        if (budget.id in saved or under.id in saved) and never_reached(budget, under)
    ]


def parse_thresholds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    # ASCII digits: int() also reads '50_0' (500) and Arabic-Indic or full-width digits.
    if not all(part.isascii() and part.isdigit() and len(part) <= 6 for part in parts):
        raise ValueError(f"thresholds {text[:80]!r} are not whole percentages like 50,75,90,100")
    return tuple(sorted({int(part) for part in parts}))


def parse_limit(value: Any, *, what: str) -> int:
    """A positive amount of money (text or number, never float-rounded) → micro-units."""
    if isinstance(value, float):
        value = str(value)  # JSON numbers arrive as floats; their text is what the user wrote
    # Refused, not rounded: a limit of 0.0000015 was kept as 0.000002 without a word.
    amount = parse_amount(value, what=what, limit=MAX_AMOUNT, positive=True, places=6)
    return to_micros(amount)


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: one given twice (``{"sales": ...,
    "sales": ...}``) would have kept the last without a word."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{key!r} is given twice; give it once")
        seen[key] = value
    return seen


def parse_department_budgets(text: str, *, currency: str) -> list[Budget]:
    """``DEPARTMENT_BUDGETS``: ``{"sales": {"daily": 5, "monthly": 100}, ...}``.

    Each department of each tenant gets the limits given. A department may also
    say ``"soft": true`` and ``"thresholds": [50, 90]``.
    """
    try:
        data = json.loads(
            text, parse_float=exact_number, parse_int=exact_integer, object_pairs_hook=_once_each
        )
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise ValueError("nested too deep to read; budgets nest three levels") from None
    if not isinstance(data, dict):
        raise ValueError('expected an object like {"sales": {"daily": 5, "monthly": 100}}')
    budgets = []
    for department, limits in data.items():
        if not isinstance(limits, dict):
            raise ValueError(f'{department!r}: expected an object like {{"monthly": 100}}')
        unknown = set(limits) - {*PERIOD_WORDS, "soft", "thresholds"}
        if unknown:
            raise ValueError(
                f"{department!r}: unknown key(s) {', '.join(sorted(unknown))}; use daily, weekly, monthly, soft, thresholds"
            )
        periods = [word for word in PERIOD_WORDS if word in limits]
        if not periods:
            raise ValueError(f"{department!r}: give at least one of daily, weekly, monthly")
        thresholds = limits.get("thresholds", DEFAULT_THRESHOLDS)
        if not isinstance(thresholds, list | tuple) or not all(type(t) is int for t in thresholds):
            raise ValueError(f"{department!r}: thresholds must be a list of whole percentages")
        soft = limits.get("soft", False)
        if not isinstance(soft, bool):
            raise ValueError(f'{department!r}: "soft" must be true or false, not {soft!r}')
        for word in periods:
            budgets.append(
                Budget(
                    tenant=EACH_TENANT,
                    department=department,
                    period=PERIOD_WORDS[word],
                    limit=parse_limit(limits[word], what=f"{department!r} {word}"),
                    currency=currency,
                    hard=not soft,
                    thresholds=tuple(thresholds),
                    source="env",
                )
            )
    return budgets


PastCall: TypeAlias = Usage
"""What one recent successful call to a model used: budgets bound time-priced costs from it."""


class LeaseKey(NamedTuple):
    """What a lease holds money in: one budget, for one tenant, in one period."""

    budget_id: int
    tenant: str
    period_start: datetime


ALERT_KINDS = ("threshold", "refused")
"""What an alert says: a threshold the spend crossed, or a hard budget refusing a call."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold a budget's spend crossed, or a call a hard budget refused for want of room.

    A ``threshold`` alert fires once per budget, tenant, period and threshold. A ``refused``
    one fires once per budget, tenant, period and ``threshold``, there the highest threshold
    the spend had reached when the call was refused (0: none): a refusal at 10 % spend (one
    call too big for what is left) and a later one past 90 % (the budget all but spent) are
    each said once. It says what was spent, the limit, and ``call_bound``: the most the
    refused call could cost, more than the limit left. ``deliveries`` (channel → outcome),
    ``delivered`` and ``attempts`` are where the alert went, as the ledger last recorded it.
    """

    id: int
    budget_id: int
    tenant: str
    department: str | None
    period: str
    period_label: str
    period_start: datetime
    threshold: int
    spent: int
    limit: int
    currency: str
    fired_at: datetime | None = None
    deliveries: Mapping[str, str] = field(default_factory=dict)
    delivered: bool = False
    attempts: int = 0
    kind: str = "threshold"
    call_bound: int | None = None

    @property
    def scope(self) -> str:
        return f"{self.tenant}/{self.department}" if self.department else self.tenant

    @property
    def subject(self) -> str:
        """A line that names the alert (an email's subject)."""
        if self.kind == "refused":
            return f"[ometer] {self.scope} budget refused a call"
        return f"[ometer] {self.scope} budget at {self.threshold}%"

    def text(self) -> str:
        used = self.spent * 100 // self.limit
        named = f"Budget {self.budget_id} ({self.scope}, {PERIOD_ADVERB[self.period]} {self.period_label})"
        spent = (
            f"spent {format_micros(self.spent)} of {format_micros(self.limit)} {self.currency} "
            f"({used}% used)"
        )
        if self.kind != "refused":
            return f"{named} crossed {self.threshold}%: {spent}"
        left = max(0, self.limit - self.spent)
        return (
            f"{named} refused a call: {spent}, {format_micros(left)} left, and the call may "
            f"cost up to {format_micros(self.call_bound or 0)}; calls that may cost more than "
            "is left are refused until the period ends or the limit is raised"
        )

    def payload(self) -> dict[str, Any]:
        said: dict[str, Any] = {
            "text": self.text(),
            "kind": self.kind,
            "budget_id": self.budget_id,
            "tenant": self.tenant,
            "department": self.department,
            "period": self.period,
            "period_label": self.period_label,
            "period_start": self.period_start.isoformat().replace("+00:00", "Z"),
            "threshold": self.threshold,
            "spent": format_micros(self.spent),
            "limit": format_micros(self.limit),
            "currency": self.currency,
        }
        if self.kind == "refused":
            said["left"] = format_micros(max(0, self.limit - self.spent))
            said["call_bound"] = format_micros(self.call_bound or 0)
        return said
