"""Rollups count a model's spellings as one model.

Ollama matches model names without regard to case and resolves a name to one model
(``llama3.1`` runs ``llama3.1:latest``; ``registry.ollama.ai/library/LLAMA3.1:8B `` runs
``llama3.1:8b``), and echoes the caller's spelling in its answer. Rollup rows were keyed by
the spelling, so a report by model split one model's calls over several rows and a filter
missed some. Rows of ``rollups`` and ``rollup_histograms`` under another spelling are merged
into the row of the one name (:func:`_counted`, ``ollama_meter.records.counted_model`` as it
is at 0018), summed. They are summed from the rollups themselves, so days whose spans were
pruned are merged too; the spans keep their names as sent and answered. A sum stops at the
largest 64-bit integer, as a write stops it. A group holding a value that is no whole number
(a hand edit on SQLite) is left as it is. No table changes; running it again changes nothing.
The downgrade leaves the merged rows: the older code reads them as the one name's.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MOST = 2**63 - 1
_LIMIT = 255  # the model columns' length
_CUBE_KEY = ("grain", "start", "user", "tenant", "department", "currency", "status", "error_type")
_CUBE_SUMS = (
    "requests", "input_tokens", "output_tokens", "busy_ns", "load_ns", "cost_tokens",
    "cost_compute", "cost_energy", "cost_fee", "cost_total", "unpriced", "unpriced_tokens",
    "cold_loads", "cold_load_ns", "errors", "unpriced_usage",
)  # fmt: skip
_BIN_KEY = ("grain", "start", "tenant", "department", "metric", "decade")
_BINS = tuple(f"b{index:02d}" for index in range(75))
_TABLES = (
    (sa.table("rollups", *map(sa.column, (*_CUBE_KEY, "model", *_CUBE_SUMS))), _CUBE_KEY, _CUBE_SUMS),
    (sa.table("rollup_histograms", *map(sa.column, (*_BIN_KEY, "model", *_BINS))), _BIN_KEY, _BINS),
)  # fmt: skip
_INSERTS = 500


def _unqualified(name: str) -> str:
    scheme, cut, rest = name.partition("://")
    if cut and "/" not in scheme:
        name = rest
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def _storable(name: str) -> str:
    name = "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in name)
    return name if len(name) <= _LIMIT else name[: _LIMIT - 1] + "…"


def _fold(name: str) -> str:
    if not name.strip():  # no name Ollama runs: nothing to fold
        return _storable(name)
    key = _unqualified(name.strip().lower())
    key = _storable(key if ":" in key.rsplit("/", 1)[-1] else f"{key}:latest")
    return "".join(c if c.isprintable() else "\ufffd" for c in key)


def _counted(name: str) -> str:
    """The one name a model counts under: lower case, without the default registry and
    namespace, ``:latest`` when untagged, storable and printable; folded until it stays."""
    for _ in range(len(name) + 2):
        folded = _fold(name)
        if folded == name:
            break
        name = folded
    return name


def _merge(conn: Any, table: Any, key: Sequence[str], sums: Sequence[str], names: list[str],
           counted: str) -> None:  # fmt: skip
    """Sum the rows of ``names`` (spellings of ``counted``, and itself) into ``counted``'s."""
    c = table.c
    # The histogram rows of all calls together are keyed ("*", "*", "*"): no model's.
    where = [c.model.in_(names), sa.not_(sa.and_(c.tenant == "*", c.department == "*"))]
    merged: dict[tuple[Any, ...], list[int]] = {}
    for row in conn.execute(sa.select(*(c[k] for k in key), *(c[s] for s in sums)).where(*where)):
        values = row[len(key) :]
        if not all(type(v) is int for v in values):
            return
        found = merged.setdefault(tuple(row[: len(key)]), [0] * len(sums))
        found[:] = [a + b for a, b in zip(found, values, strict=True)]
    conn.execute(sa.delete(table).where(*where))
    rows = [
        {**dict(zip(key, k, strict=True)), "model": counted,
         **{s: min(max(v, -_MOST), _MOST) for s, v in zip(sums, values, strict=True)}}
        for k, values in sorted(merged.items())
    ]  # fmt: skip
    for at in range(0, len(rows), _INSERTS):
        conn.execute(sa.insert(table), rows[at : at + _INSERTS])


def upgrade() -> None:
    conn = op.get_bind()
    for table, key, sums in _TABLES:
        spellings: dict[str, set[str]] = {}
        for name in conn.execute(sa.select(table.c.model).distinct()).scalars():
            if (counted := _counted(name)) != name:
                spellings.setdefault(counted, set()).add(name)
        for counted, names in sorted(spellings.items()):
            _merge(conn, table, key, sums, sorted({counted, *names}), counted)


def downgrade() -> None:
    pass
