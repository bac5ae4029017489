"""Monthly chargeback: one row per tenant and department, usage plus a share of fixed cost.

A fixed monthly cost (amortised servers, power, admin) is spread by GPU busy
time. Capacity is the month's length times GPUs per upstream host; busy time is
the union of the calls' busy intervals per host inside the month (kept per
minute in the rollups), so parallel calls do not count twice. Idle capacity is either shared in proportion (``share``) or shown as its
own ``__idle__`` row (``separate``). Shares are whole units of the currency's smallest
unit (cents; yen; fils, a thousandth of a dinar) that add up exactly.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger, SpanFilter, SpendSums, capped_note
from ollama_meter.periods import Window, parse_period
from ollama_meter.records import (
    MAX_AMOUNT,
    MICRO_PLACES,
    Micros,
    check_amount,
    minor_places,
    parse_currency,
)
from ollama_meter.reports._allocation import allocate
from ollama_meter.reports._choices import IDLE, IDLE_MODES
from ollama_meter.reports._rows import CHARGEBACK_COLUMNS, ChargebackRow
from ollama_meter.reports._spend import gpu_seconds

COLUMNS = CHARGEBACK_COLUMNS


@dataclass
class Chargeback:
    month: str
    window: Window
    rows: list[ChargebackRow] = field(default_factory=list)
    capacity_ns: int = 0
    busy_ns: int = 0
    warnings: list[str] = field(default_factory=list)


_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")


def parse_month(text: str, *, tz: ZoneInfo, now: datetime) -> Window:
    """``YYYY-MM`` (spaces around it aside), and nothing else ``--period`` takes."""
    if not _MONTH.fullmatch(text.strip()):
        raise ValidationError(f"--month {text!r} is not a month; use YYYY-MM, e.g. 2026-11")
    return parse_period(text, tz=tz, now=now, what="--month")


def fixed_cost_units(amount: Decimal, currency: str) -> int:
    """The fixed cost in whole units of ``currency``'s smallest unit (cents, yen, fils); an
    amount finer than that is refused, not rounded: no one can pay 333.34 yen.

    Bounded as the CLI and the settings bound it: chargeback() is the library's too, and a
    NaN, an infinity or a cost past :data:`MAX_AMOUNT` is no fixed cost."""
    try:
        check_amount(amount.copy_abs(), what="fixed cost", limit=MAX_AMOUNT)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if amount < 0:
        raise ValidationError(f"fixed cost {amount} must not be negative")
    places = minor_places(currency)
    # quantize, not scaleb: scaleb rounds to the context's 28 digits, so 1.000...0001 (29
    # digits, the library's to give) became 100 cents and was billed as 1.00 without a word.
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        smallest = "a cent" if places == 2 else f"{Decimal(1).scaleb(-places)} {currency}"
        to = f"{places} decimal places" if places else "a whole number"
        raise ValidationError(
            f"fixed cost {amount} {currency} is finer than {smallest}, the smallest amount of "
            f"{currency}: round it to {to}"
        )
    return int(amount.scaleb(places))  # exact: at most 13 digits before the point and places after


MAX_GPUS = 1024
"""The most GPUs ``--gpus`` takes per upstream host: more is a typo, not a server."""


def chargeback(
    ledger: Ledger,
    month: str,
    *,
    tz: ZoneInfo,
    now: datetime,
    currency: str,
    fixed_cost: Decimal | None = None,
    idle: str = "share",
    gpus: int = 1,
) -> Chargeback:
    """Rows for ``month`` (YYYY-MM in ``tz``), sorted by tenant, department, currency."""
    if idle not in IDLE_MODES:
        raise ValidationError(f"--idle {idle!r} is not one of: {', '.join(IDLE_MODES)}")
    if not 1 <= gpus <= MAX_GPUS:  # 80000 for 8 would bill nearly all of the cost as idle
        raise ValidationError(
            f"--gpus {gpus} is not a number of GPUs in one host: give 1 to {MAX_GPUS:,}"
        )
    try:  # 'usd' is USD, as every rule, budget and span has it: not a currency of its own
        currency = parse_currency(currency)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    window = parse_month(month, tz=tz, now=now)
    if now < window.start:  # a typo of the year, most likely: an empty bill said nothing of it
        raise ValidationError(
            f"--month {window.label} has not begun ({now.astimezone(tz):%Y-%m-%d} in {tz.key}): "
            "bill a month that has (the last one, for the bill of the 1st)"
        )
    result = Chargeback(month=window.label, window=window)
    if now < window.end:
        result.warnings.append(f"{window.label} is not over yet; these figures will still change")
    units = None if fixed_cost is None else fixed_cost_units(fixed_cost, currency)
    where, by = SpanFilter(since=window.start, until=window.end), ["tenant", "department"]
    if units is None:
        groups, busy, hosts = ledger.spend(where, by), 0, 0
    else:  # one snapshot: who used the GPUs, and how much of them was used
        groups, busy, hosts = ledger.spend_and_busy(where, by, window.start, window.end)
    usage: dict[tuple[str, str, str], SpendSums] = {}
    weights: dict[tuple[str, str], int] = defaultdict(int)
    for group in groups:
        tenant, department = group.keys
        usage[(tenant, department, group.currency)] = group
        weights[(tenant, department)] += group.gpu_ns
    fixed: dict[tuple[str, str, str], int] = {}
    if units is not None:
        capacity = (
            int((window.end - window.start) / timedelta(microseconds=1))
            * 1000
            * gpus
            * max(hosts, 1)
        )
        busy = min(busy, capacity)
        result.capacity_ns, result.busy_ns = capacity, busy
        shares = _fixed_shares(units, weights, idle=idle, busy=busy, capacity=capacity)
        for (tenant, department), share in shares.items():
            fixed[(tenant, department, currency)] = share
    for key in sorted({*usage, *fixed}, key=lambda k: (k[0] == IDLE, k)):
        tenant, department, in_currency = key
        sums = usage.get(key)
        share = fixed.get(key, 0)
        places = minor_places(in_currency)
        cost = Micros(sums.cost if sums else 0)
        result.rows.append(
            ChargebackRow(
                month=window.label,
                tenant=tenant,
                department=department,
                requests=sums.requests if sums else 0,
                input_tokens=sums.input_tokens if sums else 0,
                output_tokens=sums.output_tokens if sums else 0,
                gpu_seconds=gpu_seconds(sums.gpu_ns if sums else 0),
                usage_cost=cost,
                fixed_cost_share=Decimal(share).scaleb(-places),
                total_cost=cost + share * 10 ** (MICRO_PLACES - places),
                currency=in_currency,
                unpriced_requests=sums.unpriced_requests if sums else 0,
            )
        )
    if unpriced := _unpriced_warning(result.rows):
        result.warnings.append(unpriced)
    if capped := sorted(f"{t}/{d} ({c})" for (t, d, c), sums in usage.items() if sums.capped):
        result.warnings.append(capped_note(f"the usage of {', '.join(capped)}", "its usage_cost"))
    if units and (other := _fixed_cost_apart(result.rows, currency)):
        result.warnings.append(other)
    return result


def _fixed_cost_apart(rows: list[ChargebackRow], currency: str) -> str | None:
    """What to say when the month's calls cost nothing in ``currency``, the fixed cost's, but
    something in others: its shares are rows of their own beside the usage, never added to it
    (prices in EUR and a fixed cost taken as USD for want of OMETER_CURRENCY=EUR, most likely)."""
    spent = sorted({row.currency for row in rows if row.usage_cost})
    if not spent or currency in spent:
        return None
    return (
        f"the fixed cost is in {currency} (OMETER_CURRENCY), but the calls of {rows[0].month} "
        f"cost nothing in {currency}, only in {' and '.join(spent)}: its shares are rows of their "
        f"own, never added to the calls' cost. If the fixed cost is in "
        f"{' or '.join(spent)}, set OMETER_CURRENCY to that and bill again"
    )


_NAMED_GROUPS = 10
"""Tenants and departments a warning about unpriced calls names; more are counted."""


def _unpriced_warning(rows: list[ChargebackRow]) -> str | None:
    """What the bill counts as 0 because no price rule matched, and whose calls those are."""
    per_group: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        per_group[(row.tenant, row.department)] += row.unpriced_requests
    named = [f"{t}/{d} ({n})" for (t, d), n in sorted(per_group.items()) if n]
    if not named:
        return None
    more = len(named) - _NAMED_GROUPS
    groups = ", ".join(named[:_NAMED_GROUPS]) + (f" and {more} more" if more > 0 else "")
    return (
        f"{sum(per_group.values())} call(s) matched no price rule and count as 0 in usage_cost: "
        f"{groups}; add a rule with `ometer pricing set`, then `ometer reprice`"
    )


def _fixed_shares(
    units: int, weights: dict[tuple[str, str], int], *, idle: str, busy: int, capacity: int
) -> dict[tuple[str, str], int]:
    """Smallest units of the currency per (tenant, department), plus ``(IDLE, IDLE)`` when idle
    is separate or nobody was busy; none of 0. A share is a row of the fixed cost's currency:
    a department whose calls cost another had one of zeros, an invoice line of nothing, when
    its share came to less than a cent (as idle had, and all of them with a fixed cost of 0)."""
    if units == 0:
        return {}
    used = {key: w for key, w in weights.items() if w > 0}
    total_weight = sum(used.values())
    if total_weight == 0:
        return {(IDLE, IDLE): units}
    if idle == "share":
        return {key: share for key, share in allocate(units, used).items() if share}
    # Busy capacity goes to departments by their busy seconds; idle capacity to its own row.
    # Integer weights keep the split exact: idle * sum(w) against busy * w_i. The month's
    # busy time holds calls of the month before still busy after its first midnight, whose
    # seconds (weights) are that month's: past the month's own seconds, it is billed as idle,
    # so no department pays for more capacity than its calls used (one call of a second paid
    # 80.00 of 7,200.00 for a batch's 8 hours after midnight).
    busy = min(busy, total_weight)
    scaled = {key: busy * w for key, w in used.items()}
    scaled[(IDLE, IDLE)] = (capacity - busy) * total_weight
    order = [*sorted(used), (IDLE, IDLE)]
    return {key: share for key, share in allocate(units, scaled, order=order).items() if share}
