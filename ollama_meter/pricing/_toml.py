"""Price rules from TOML text (``ometer pricing import`` and ``OMETER_PRICING_FILE``).

currency = "EUR"                 # default for rules that don't say

[[rule]]
model = "llama3.1:*"
input_per_1m = 1000              # numbers are read as exact decimals
output_per_1m = "2000"           # strings work too
from = 2026-11-01                # optional; TOML date or "YYYY-MM-DD"

[[rule]]
model = "qwen2.5:*"
gpu_hour = 3.60
watts = 350
kwh_price = 0.30
charge_load = true
"""

from __future__ import annotations

import codecs
import shlex
import tomllib
from bisect import bisect_left
from collections import defaultdict
from dataclasses import replace
from datetime import date
from heapq import heappop, heappush
from typing import Any

from ollama_meter._kinds import packed, sqlite_kind
from ollama_meter.errors import ValidationError
from ollama_meter.periods import FIRST_DAY, parse_day
from ollama_meter.pricing._rules import precedence
from ollama_meter.records import PRICE_FIELDS, PriceRule, known_currency, parse_amount, pattern_key
from ollama_meter.records._money import TOO_LONG, exact_number

MAX_PRICING_BYTES = 10 * 2**20
"""The most a pricing file may hold (a rule is a few lines: some 100,000 rules)."""

_KNOWN = {"model", "pattern", "currency", "charge_load", "from", "until", *PRICE_FIELDS}


def _date(value: Any, what: str) -> date | None:
    """A rule's ``from``/``until``: a local date, as ``--from`` takes it.

    A TOML date-time or time is refused, not cut to its day: rules change at local
    midnight, and a price meant from 10:00 must not apply from 00:00 without a word.
    """
    if value is None:
        return None
    if type(value) is not date and not isinstance(value, str):
        raise ValueError(f"{what} {value} is not a date; rules change at midnight, use YYYY-MM-DD")
    try:
        return parse_day(str(value), what=what)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def pricing_text(content: bytes, path: object) -> str:
    """A pricing file's ``content`` as text; ValueError saying what it is and what to do.

    Python's own message ("'utf-8' codec can't decode byte 0xe9 in position 36") said
    neither. A UTF-8 byte order mark (Windows editors write one) is read past: the TOML
    reader took it for a statement it could not read. A file that is no text at all (a
    ledger, a packed file, a program) is named as such: it was told to convert itself from
    Latin-1.
    """
    where = shlex.quote(str(path))
    wanted = "give the TOML file of [[rule]] tables"
    if kind := sqlite_kind(content):
        raise ValueError(f"{kind}, not a pricing file: {wanted}")
    if found := packed(content):
        what, unpack = found
        raise ValueError(
            f"{what}, not a pricing file's TOML text: unpack it first "
            f"({unpack} {where} > prices.toml)"
        )
    if content[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):  # PowerShell's `>` writes it
        raise ValueError(
            "UTF-16 text, not UTF-8; save it as UTF-8, e.g. "
            f"`iconv -f utf-16 -t utf-8 {where} > {where}.utf8`"
        )
    if (nul := content.find(b"\x00")) >= 0:  # Latin-1 text has none: iconv makes no rules of it
        line = content[:nul].count(b"\n") + 1
        raise ValueError(
            f"holds a NUL byte (on line {line}), which no text file "
            "does: it is binary (or UTF-16 with no byte order mark), not a pricing file: " + wanted
        )
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"not UTF-8 text (byte 0x{content[exc.start]:02x} on line {line}); save it as "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {where} > {where}.utf8` if it is Latin-1"
        ) from None


def parse_pricing_toml(
    text: str, *, default_currency: str, source: str = "file"
) -> list[PriceRule]:
    """Rules in file order; raises ValueError naming the rule and field that is wrong."""
    try:
        data = tomllib.loads(text, parse_float=exact_number)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except RecursionError:  # valid TOML; a pricing file nests three levels
        raise ValueError("not a pricing file: nested too deep to read") from None
    except ValueError:  # an integer past the 4,300 digits Python converts (its advice is no user's)
        raise ValueError(f"not a pricing file: {TOO_LONG}") from None
    currency = known_currency(data.get("currency", default_currency), what="the file's currency")
    entries = data.get("rule", [])
    if not isinstance(entries, list) or not entries:
        raise ValueError("no [[rule]] tables found; each rule is a [[rule]] with a model pattern")
    rules = []
    for number, entry in enumerate(entries, start=1):
        where = f"rule {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a [[rule]] table, got {entry!r}")
        unknown = sorted(set(entry) - _KNOWN)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if "model" in entry and "pattern" in entry:
            raise ValueError(f"{where}: give its models as model or pattern, not both")
        pattern = entry.get("model", entry.get("pattern"))
        if not pattern or not isinstance(pattern, str):
            raise ValueError(f'{where}: needs a model pattern, e.g. model = "llama3.1:*"')
        charge_load = entry.get("charge_load", False)
        if not isinstance(charge_load, bool):
            raise ValueError(f"{where}: charge_load must be true or false, not {charge_load!r}")
        try:
            prices: dict[str, Any] = {
                name: parse_amount(entry[name], what=name) for name in PRICE_FIELDS if name in entry
            }
            rules.append(
                PriceRule(
                    pattern=pattern,
                    currency=known_currency(entry.get("currency", currency), what="currency"),
                    charge_load=charge_load,
                    effective_from=_date(entry.get("from"), "from"),
                    effective_until=_date(entry.get("until"), "until"),
                    source=source,
                    **prices,
                )
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    _refuse_shadowed(rules)
    return rules


def _refuse_shadowed(rules: list[PriceRule]) -> None:
    """Refuse a rule whose price is in force on none of its dates: only one rule prices a call,
    and later rules for its pattern (in any spelling) may beat it on every one. A token price
    and a GPU-hour price in two tables looked like one price of both; '1 until December' then
    '2' with no ``from`` looked like a change in December, and was 2 on every day: the later
    of two rules from one date wins."""
    groups: dict[str, list[PriceRule]] = defaultdict(list)
    for number, rule in enumerate(rules, start=1):
        groups[pattern_key(rule.pattern)].append(replace(rule, id=number))
    for group in groups.values():
        won = _winning_days(group)
        for rule in group:
            days = won.get(_price_of(rule), [])
            first = bisect_left(days, rule.effective_from or FIRST_DAY)
            if first < len(days) and rule.applies_on(days[first]):
                continue
            by = sorted({w.id or 0 for w in group if _beats_on_a_day(w, rule)})
            if not by:  # 'until = 1970-01-01': no day at all
                raise ValueError(
                    f"rule {rule.id}: ends on {rule.effective_until}, before the first day "
                    f"ometer works with ({FIRST_DAY}), so it prices no call; remove it"
                )
            more = f" and {len(by) - 4} more" if len(by) > 4 else ""
            others = f" (with rule {', '.join(map(str, by[-4:-1]))}{more})" if len(by) > 1 else ""
            raise ValueError(
                f"rule {by[-1]}: prices {rule.pattern!r}{others} on every date of rule "
                f"{rule.id}, so rule {rule.id} would never apply (one rule prices a call); put "
                "their prices in one rule, or give the newer price a later `from`"
            )


def _price_of(rule: PriceRule) -> tuple[object, ...]:
    """What a rule says, however its pattern is spelled: the same rule twice is one rule."""
    prices = tuple(sorted(rule.prices().items()))
    return (rule.currency, rule.charge_load, prices, rule.effective_from, rule.effective_until)


def _winning_days(group: list[PriceRule]) -> dict[tuple[object, ...], list[date]]:
    """Per price, the sorted days where a rule of ``group`` (one pattern) starts or ends and the
    rule in force then has that price: the winner changes only on such days. One sweep, so a
    file of a price a day for years is read in moments, not hours."""
    starts = sorted(group, key=lambda r: r.effective_from or FIRST_DAY)
    edges = sorted(
        {FIRST_DAY} | {d for r in group for d in (r.effective_from, r.effective_until) if d}
    )
    live: list[tuple[int, int, int]] = []  # a heap of the started rules, the winner on top
    won: dict[tuple[object, ...], list[date]] = defaultdict(list)
    taken = 0
    for day in edges:
        while taken < len(starts) and (starts[taken].effective_from or FIRST_DAY) <= day:
            rule = starts[taken]
            heappush(live, (-(rule.effective_from or date.min).toordinal(), -(rule.id or 0), taken))
            taken += 1
        while live and not starts[live[0][2]].applies_on(day):  # ended: for good
            heappop(live)
        if live:
            won[_price_of(starts[live[0][2]])].append(day)
    return won


def _beats_on_a_day(winner: PriceRule, rule: PriceRule) -> bool:
    """Whether ``winner`` (of ``rule``'s pattern) is in force on a day of ``rule``'s over it."""
    start = max(winner.effective_from or FIRST_DAY, rule.effective_from or FIRST_DAY)
    return (
        winner is not rule
        and winner.applies_on(start)
        and rule.applies_on(start)
        and precedence(winner) > precedence(rule)
    )
