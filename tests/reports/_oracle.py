"""An oracle for money and periods, written apart from ``ollama_meter``'s own code.

What a span costs, which local day and month it is in, how much of a month each upstream
host was busy, and how a fixed cost splits: each computed here from the raw spans, with
``Decimal``, ``fnmatch`` and ``zoneinfo`` alone, the way the README says it should be. Tests
hold the CLI's CSV, ``budget status`` and ``/api/dash`` to it. Nothing here imports the
reports, the ledger, the pricing or the periods of the product: sharing a helper with the
code under test would share its bugs.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from zoneinfo import ZoneInfo

from ollama_meter.records import NO_HOST, PriceRule, SpanRecord

MINOR = {"USD": 2, "EUR": 2, "JPY": 0, "ISK": 0, "BHD": 3, "KWD": 3, "XAU": 6}
"""ISO 4217's places of each currency's smallest unit (gold has none: the micro-unit)."""
US = timedelta(microseconds=1)


# -- prices -----------------------------------------------------------------------------


def _exact(value: Decimal) -> Decimal:
    """Half-to-even to a whole micro-unit, from a value computed exactly."""
    return value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)


def _literal(pattern: str) -> int:
    return len(pattern.replace("*", "").replace("?", ""))


def choose(rules: Sequence[PriceRule], model: str, day: date) -> PriceRule | None:
    """The most specific pattern (an exact name first, then the longest literal part), then
    the latest ``from``, then the latest rule, among those in force on ``day``."""
    found = [
        r
        for r in rules
        if fnmatch.fnmatchcase(model, r.pattern)
        and (r.effective_from is None or r.effective_from <= day)
        and (r.effective_until is None or day < r.effective_until)
    ]
    if not found:
        return None
    return max(
        found,
        key=lambda r: (
            "*" not in r.pattern and "?" not in r.pattern,
            _literal(r.pattern),
            r.effective_from or date.min,
            r.id or 0,
        ),
    )


@dataclass(frozen=True)
class Priced:
    currency: str
    parts: tuple[int, int, int, int]  # tokens, compute, energy, fee: micro-units
    rule_id: int | None

    @property
    def total(self) -> int:
        return sum(self.parts)


def price(span: SpanRecord, rules: Sequence[PriceRule], zone: ZoneInfo, currency: str) -> Priced:
    """``span``'s cost: by the rules in force on its local date in the ledger's ``zone``, by the
    model Ollama answered with, else by the one asked for; each part rounded once."""
    day = span.started_at.astimezone(zone).date()
    answered = span.response_model or span.request_model
    rule = choose(rules, answered, day) or choose(rules, span.request_model, day)
    if rule is None:
        return Priced(currency, (0, 0, 0, 0), None)
    zero = Decimal(0)
    with localcontext() as ctx:
        ctx.prec = 200  # products exact; a quotient exact, or (a ninth in it) far from a tie
        tokens = span.input_tokens * (rule.input_per_1m or zero) + span.output_tokens * (
            rule.output_per_1m or zero
        )
        busy = (span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)
        if rule.charge_load:
            busy += span.load_duration_ns or 0
        # one division, last: busy hours (ns / 3.6e12) have no exact decimal, and 400 s at
        # 1 W and 0.0495 per kWh, exactly 5.5 micro-units, came to 5.4999... and rounded to 5
        ns_per_hour = Decimal(3_600_000_000_000)
        compute = busy * (rule.gpu_hour or zero) * 1_000_000 / ns_per_hour
        energy = zero
        if rule.watts is not None and rule.kwh_price is not None:
            energy = busy * rule.watts * rule.kwh_price * 1_000_000 / (1000 * ns_per_hour)
        fee = zero
        # fees for a call Ollama served: answered, or stopped with something of it recorded
        # (a caller gone while its call was queued, or before Ollama had it, left nothing)
        worked = (span.prompt_eval_duration_ns, span.eval_duration_ns, span.duration_source)
        if span.status == "ok" or (
            span.status == "client_abort"
            and (any(worked) or span.input_tokens + span.output_tokens > 0)
        ):
            counted = span.input_tokens + span.output_tokens
            fee = (rule.per_request or zero) * 1_000_000 + counted * (rule.fee_per_1m or zero)
        parts = tuple(int(_exact(v)) for v in (tokens, compute, energy, fee))
    return Priced(rule.currency, parts, rule.id)  # type: ignore[arg-type]


def repriced(
    spans: Iterable[SpanRecord], rules: Sequence[PriceRule], zone: ZoneInfo, currency: str
) -> list[SpanRecord]:
    """Copies of ``spans`` with the costs, currency and rule the oracle gives them."""
    out = []
    for s in spans:
        p = price(s, rules, zone, currency)
        copy = SpanRecord(**{k: getattr(s, k) for k in SpanRecord.__dataclass_fields__})
        copy.cost_tokens, copy.cost_compute, copy.cost_energy, copy.cost_fee = p.parts
        copy.cost_total, copy.currency, copy.price_rule_id = p.total, p.currency, p.rule_id
        copy.unpriced = p.rule_id is None
        out.append(copy)
    return out


# -- periods ----------------------------------------------------------------------------


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def month_of(moment: datetime, zone: ZoneInfo) -> str:
    return f"{local_day(moment, zone):%Y-%m}"


def month_bounds(month: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[first local midnight of ``month``, first of the next) in UTC (zones whose midnights
    exist once, as every zone these tests use)."""
    year, number = (int(x) for x in month.split("-"))
    after = (year + number // 12, number % 12 + 1)
    start = datetime(year, number, 1, tzinfo=zone).astimezone(UTC)
    return start, datetime(*after, 1, tzinfo=zone).astimezone(UTC)


def transitions(zone: ZoneInfo, month: str) -> list[datetime]:
    """The instants in ``month`` where ``zone``'s offset changes (DST), found minute by minute
    around each change the hourly scan sees."""
    start, end = month_bounds(month, zone)
    found, at = [], start
    while at < end:
        nxt = at + timedelta(hours=1)
        if at.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            t = at
            while t.astimezone(zone).utcoffset() == at.astimezone(zone).utcoffset():
                t += timedelta(minutes=1)
            found.append(t)
        at = nxt
    return found


# -- busy time and the fixed cost -------------------------------------------------------


def busy_interval(span: SpanRecord) -> tuple[datetime, datetime] | None:
    """Ollama's busy time (prompt evaluation + generation, to the µs) ending when the call
    ended (at most a day after it started), never before it started."""
    busy = ((span.prompt_eval_duration_ns or 0) + (span.eval_duration_ns or 0)) // 1000 * US
    if busy <= timedelta(0) or span.ended_at is None:
        return None
    end = min(span.ended_at, span.started_at + timedelta(days=1))
    begin = max(span.started_at, end - busy)
    return (begin, end) if end > begin else None


def union(intervals: Iterable[tuple[datetime, datetime]]) -> timedelta:
    total, reach = timedelta(0), None
    for a, b in sorted(intervals):
        if reach is None or a > reach:
            total, reach = total + (b - a), b
        elif b > reach:
            total, reach = total + (b - reach), b
    return total


def busy_and_hosts(spans: Iterable[SpanRecord], start: datetime, end: datetime) -> tuple[int, int]:
    """(busy ns over hosts, hosts) in [start, end): a host counts when a call sent to it
    started in the window or was busy in it."""
    per_host: defaultdict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    hosts = set()
    for s in spans:
        if s.upstream_host == NO_HOST:
            continue
        if start <= s.started_at < end:
            hosts.add(s.upstream_host)
        interval = busy_interval(s)
        if interval is not None:
            a, b = max(interval[0], start), min(interval[1], end)
            if b > a:
                per_host[s.upstream_host].append((a, b))
                hosts.add(s.upstream_host)
    busy = sum((union(v) for v in per_host.values()), timedelta(0))
    return busy // US * 1000, len(hosts)


def largest_remainder(units: int, weights: dict, order: list) -> dict:
    """``units`` split by integer ``weights``: each the floor of its exact quota, then one
    more each to the largest remainders, ties to the earlier key in ``order``."""
    total = sum(weights.values())
    shares = {k: units * weights[k] // total for k in order}
    remainder = {k: units * weights[k] - shares[k] * total for k in order}
    left = units - sum(shares.values())
    for k in sorted(order, key=lambda k: (-remainder[k], order.index(k)))[:left]:
        shares[k] += 1
    return shares


IDLE = ("__idle__", "__idle__")


def fixed_shares(
    units: int, weights: dict[tuple[str, str], int], *, idle: str, busy: int, capacity: int
) -> dict[tuple[str, str], int]:
    """Each department's share of a fixed cost (smallest units), by its GPU seconds: idle
    capacity shared in proportion, or billed on the ``__idle__`` row (all of it when no one
    was busy). With idle separate, department i's quota is units * busy/capacity * w_i/W and
    idle's units * (capacity - busy)/capacity: over the common denominator capacity * W. Busy
    time past W (calls of the month before, busy after its last midnight) is idle: no one
    pays for more capacity than their own GPU seconds.
    A fixed cost of nothing is no share at all (the bill without one)."""
    if units == 0:
        return {}
    used = {k: w for k, w in weights.items() if w > 0}
    if not used:
        return {IDLE: units}
    if idle == "share":
        shares = largest_remainder(units, used, sorted(used))
        return {k: v for k, v in shares.items() if v}  # a share of 0 is no row of zeros
    total = sum(used.values())
    busy = min(busy, total)
    scaled = {k: w * busy for k, w in used.items()}
    scaled[IDLE] = (capacity - busy) * total
    shares = largest_remainder(units, scaled, [*sorted(used), IDLE])
    return {k: v for k, v in shares.items() if v}
