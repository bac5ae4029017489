"""Price rules in the ledger: add, list, remove, and keep a pricing file in sync."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select

from ollama_meter.ledger.models import PriceRuleRow
from ollama_meter.records import PriceRule, record_from, values_of

_TABLE: Table = PriceRuleRow.__table__  # type: ignore[assignment]


def _to_rule(row: Any) -> PriceRule:
    # An earlier ometer took a pattern with a final newline ('llama3\n', a rule that matched
    # no model); read as the name it was meant to be, rather than failing every price lookup.
    return record_from(PriceRule, row, pattern=row.pattern.rstrip("\n"))


def _values(rule: PriceRule, digest: str | None) -> dict[str, object]:
    return values_of(rule, skip=("id",), source_digest=digest, created_at=datetime.now(UTC))


def list_rules(conn: Connection) -> list[PriceRule]:
    rows = conn.execute(select(PriceRuleRow).order_by(PriceRuleRow.id))
    return [_to_rule(row) for row in rows]


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


def remove_rule(conn: Connection, rule_id: int) -> bool:
    return conn.execute(delete(_TABLE).where(_TABLE.c.id == rule_id)).rowcount > 0


def file_digest(conn: Connection, source: str) -> str | None:
    return conn.execute(
        select(PriceRuleRow.source_digest).where(PriceRuleRow.source == source).limit(1)
    ).scalar()


def replace_source(conn: Connection, source: str, rules: Sequence[PriceRule], digest: str) -> None:
    """Make the rules that came from ``source`` exactly ``rules``."""
    conn.execute(delete(_TABLE).where(_TABLE.c.source == source))
    add_rules(conn, [replace(r, source=source) for r in rules], digest)
