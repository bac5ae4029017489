"""Price rules in the ledger: add, list, remove, and keep a pricing file in sync."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, Text, cast, delete, func, insert, select, update

from ollama_meter.ledger._stored import read_records, readable_records
from ollama_meter.ledger.models import PRICE_RULES
from ollama_meter.records import (
    RULE_FIELDS,
    PriceRule,
    UnreadableRule,
    pattern_key,
    record_from,
    storable_text,
    values_of,
)

_TABLE: Table = PRICE_RULES
_SOURCE_CHARS: int = _TABLE.c.source.type.length  # type: ignore[attr-defined]


def source_key(source: str) -> str:
    """``source`` (``file:`` and a path) as the ledger's column holds it, the same every time.

    A path may be longer than the column, or hold bytes that are not UTF-8 (Python
    keeps them as lone surrogates, which no database stores). Such a source is kept
    as its readable tail and a digest of the whole, so two paths never share rules.
    """
    if len(source) <= _SOURCE_CHARS and storable_text(source, _SOURCE_CHARS) == source:
        return source
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    readable = storable_text(source, len(source))
    room = _SOURCE_CHARS - len(digest) - 3
    if len(readable) > room:
        readable = "…" + readable[-(room - 1) :]
    return f"{readable} #{digest}"


def _to_rule(row: Any) -> PriceRule:
    # An earlier ometer took a pattern with a final newline ('llama3\n', a rule that matched
    # no model); read as the name it was meant to be, rather than failing every price lookup.
    pattern = row.pattern.rstrip("\n") if isinstance(row.pattern, str) else row.pattern
    return record_from(PriceRule, row, pattern=pattern)


def _values(rule: PriceRule, digest: str | None) -> dict[str, object]:
    return values_of(rule, skip=("id",), source_digest=digest, created_at=datetime.now(UTC))


def rules_version(conn: Connection) -> tuple[object, ...]:
    """How many rules, the last id and the last made: rules are never edited, only added and
    removed, so any change moves one of them (an id reused after the last was removed comes
    with a later ``created_at``)."""
    query = select(func.count(), func.max(PRICE_RULES.c.id), func.max(PRICE_RULES.c.created_at))
    return tuple(conn.execute(query).one())


def list_rules(conn: Connection) -> list[PriceRule]:
    return _read(conn, select(PRICE_RULES).order_by(PRICE_RULES.c.id))


_NAMED: dict[str, Any] = {
    "what": lambda row: f"price rule {row.id}",
    "fix": lambda row: f"fix the row in SQL, or remove it with `ometer pricing rm {row.id}`",
}


def _read(conn: Connection, query: Select[Any]) -> list[PriceRule]:
    return read_records(conn, _TABLE, query, _to_rule, **_NAMED)


def readable_rules(conn: Connection) -> tuple[list[PriceRule], list[UnreadableRule]]:
    """Every rule that can be read, and each row that cannot: its pattern as stored, and why."""
    query = select(PRICE_RULES).order_by(PRICE_RULES.c.id)
    rules, broken = readable_records(conn, _TABLE, query, _to_rule, **_NAMED)
    pattern = select(cast(PRICE_RULES.c.pattern, Text))
    return rules, [
        UnreadableRule(
            key.id, conn.execute(pattern.where(PRICE_RULES.c.id == key.id)).scalar() or "", why
        )
        for key, why in broken
    ]


def add_rules(
    conn: Connection, rules: Sequence[PriceRule], digest: str | None = None
) -> list[PriceRule]:
    """Insert rules; returns them with their new ids."""
    added = []
    for rule in rules:
        new_id = conn.execute(insert(_TABLE).values(_values(rule, digest))).inserted_primary_key
        assert new_id is not None
        added.append(replace(rule, id=int(new_id[0])))
    return added


class RuleIndex:
    """The ledger's rules, found by what they say: adding 100,000 rules compared each with
    every rule before it (hours, where a dict takes seconds)."""

    def __init__(self, rules: Sequence[PriceRule]) -> None:
        self._same: dict[tuple[object, ...], list[PriceRule]] = defaultdict(list)
        self._start: dict[tuple[str, object], list[PriceRule]] = defaultdict(list)
        for rule in rules:
            self.add(rule)

    def add(self, rule: PriceRule) -> None:
        self._same[_says(rule, rule.pattern)].append(rule)
        self._start[(pattern_key(rule.pattern), rule.effective_from)].append(rule)

    def in_force_as(self, rule: PriceRule) -> PriceRule | None:
        """A rule that is ``rule`` and that adding ``rule`` again, as the newest, would change
        no price of: none later for its pattern (any spelling) and start date prices otherwise.

        Setting 1, then 2, then 1 again said "(already there)" of the first rule, which the
        second beats on every day (the later of two from one date wins): the price stayed 2."""
        rivals = self._start[(pattern_key(rule.pattern), rule.effective_from)]
        for old in self._same.get(_says(rule, rule.pattern), []):
            if not any(
                (other.id or 0) > (old.id or 0) and _says(other) != _says(old) for other in rivals
            ):
                return old
        return None


def _says(rule: PriceRule, pattern: str = "") -> tuple[object, ...]:
    """What ``rule`` prices, and how, with ``pattern`` for its pattern (none: any spelling)."""
    return (pattern, *(getattr(rule, name) for name in RULE_FIELDS if name not in _NOT_SAID))


_NOT_SAID = ("id", "source", "pattern")


def remove_rule(conn: Connection, rule_id: int) -> bool:
    return conn.execute(delete(_TABLE).where(_TABLE.c.id == rule_id)).rowcount > 0


def file_digest(conn: Connection, source: str) -> str | None:
    key = source_key(source)
    return conn.execute(
        select(PRICE_RULES.c.source_digest).where(PRICE_RULES.c.source == key).limit(1)
    ).scalar()


def take_over(conn: Connection, source: str, formerly: str) -> bool:
    """Give ``source`` the rules named ``formerly`` when it has none; True if it took any.

    An older ometer named a pricing file by where its links led, so a file reached through a
    link (a Kubernetes ConfigMap, ``ln -sfn v2 current``) is this file's rules under its old
    name: taken over with their ids, never left in force beside it."""
    new, old = source_key(source), source_key(formerly)
    if new == old or file_digest(conn, source) is not None:
        return False
    moved = conn.execute(update(_TABLE).where(_TABLE.c.source == old).values(source=new))
    return bool(moved.rowcount)


def replace_source(conn: Connection, source: str, rules: Sequence[PriceRule], digest: str) -> None:
    """Make the rules that came from ``source`` exactly ``rules``, their ids in file order
    within each tier (:meth:`PriceRule.tier`), the only order that decides a price.

    A rule the file still has keeps its row, so its id: equally specific rules from one date
    are told apart by which came last, and adding every rule again on any edit (a comment)
    made the file's rules beat those set since with ``ometer pricing set``. But within the
    file the later rule wins, so ids follow the file: in a tier, from the first rule the file
    adds, or moves above one it kept, the rest of that tier are added again in order. Kept as
    they were, a rule written above an old one for the months after it ('2' above '1 until
    December') got the newer id, won every day, and billed November at 2, where the same file
    read fresh said 1. Rules of other tiers stay: a qwen2.5 rule written above llama3.1's
    added llama3.1's again, which then beat the llama3.1 price set since with ``pricing set``.
    """
    source = source_key(source)
    old = _read(
        conn, select(PRICE_RULES).where(PRICE_RULES.c.source == source).order_by(PRICE_RULES.c.id)
    )
    new: list[PriceRule] = []
    last_kept: dict[tuple[object, ...], int | None] = {}  # None: the tier adds from here on
    for rule in rules:
        tier = rule.tier()
        after = last_kept.get(tier, 0)
        same = (
            None
            if after is None
            else next((r for r in old if (r.id or 0) > after and r.same_as(rule)), None)
        )
        if same is not None:
            old.remove(same)
            last_kept[tier] = same.id or 0
        else:
            new.append(replace(rule, source=source))
            last_kept[tier] = None
    if old:
        conn.execute(delete(_TABLE).where(_TABLE.c.id.in_([r.id for r in old])))
    conn.execute(update(_TABLE).where(_TABLE.c.source == source).values(source_digest=digest))
    add_rules(conn, new, digest)
