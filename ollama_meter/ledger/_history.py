"""A model's latest successful calls, whatever the spelling they asked for it by.

What a hard budget bounds a time-priced call with (``meter/_usage.py``), read on the path
of such calls: it must not grow with the ledger, nor with the names callers send. Ollama
runs ``LLAMA3.1:8B``, ``llama3.1:8b `` and ``registry.ollama.ai/library/llama3.1:8b`` as one
model, so the history is kept under the one name (:func:`~ollama_meter.records.counted_model`)
in ``model_history``: written with the spans, cut back to the :data:`KEPT` latest of each
model as it is, read with one probe of its key. No index on the spans pays for it (a span's
bytes stay what they were), and a caller sending the name in a thousand spellings adds
nothing to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from sqlalchemy import Connection, bindparam, select

from ollama_meter.ledger._upserts import run
from ollama_meter.ledger.models import MODEL_HISTORY
from ollama_meter.records import PastCall, SpanRecord, counted_model

KEPT = 32
"""Calls kept a model: more than any reader asks for (``Ledger.recent_usage`` reads 20)."""

_COLUMNS = (
    "model",
    "id",
    "input_tokens",
    "output_tokens",
    "prompt_eval_duration_ns",
    "eval_duration_ns",
    "load_duration_ns",
)
_NAMES = ", ".join(_COLUMNS)
_TABLE = MODEL_HISTORY.name
_NOTE = (
    f"INSERT INTO {_TABLE} ({_NAMES}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (model, id) DO NOTHING"
)
"""SQLite: a row a statement, run in the process by the driver (through SQLAlchemy's text,
with the read below, the history took 140 us of a 360 us write of one span)."""
_CUT = (
    f"DELETE FROM {_TABLE} WHERE model = ? AND (SELECT count(*) FROM (SELECT 1 FROM {_TABLE} "
    f"WHERE model = ? LIMIT {2 * KEPT + 1})) > {2 * KEPT} AND id < (SELECT id FROM {_TABLE} "
    f"WHERE model = ? ORDER BY id DESC LIMIT 1 OFFSET {KEPT - 1})"
)
"""SQLite: a model's calls but its :data:`KEPT` latest, once it holds more than twice as many."""
_PG_NOTE = (
    f"WITH added AS (INSERT INTO {_TABLE} ({_NAMES}) SELECT * FROM unnest(%s::text[], "
    f"%s::text[], {', '.join(['%s::bigint[]'] * (len(_COLUMNS) - 2))}) "
    "ON CONFLICT (model, id) DO NOTHING RETURNING model) "
    f"SELECT model, count(*) FROM (SELECT model FROM {_TABLE} WHERE model = ANY(%s) "
    "UNION ALL SELECT model FROM added) AS held GROUP BY model"
)
"""PostgreSQL: every row in one statement (a statement a row was a round of parse, plan and
run each: an import's batch of 200 spans ran 160 of them), which answers how many calls each
model holds now: those it held (the statement's snapshot does not see its own insert) and
those it added (a second statement was one more round trip for every call's write)."""
_PG_CUT = (
    f"DELETE FROM {_TABLE} WHERE model = %s AND id < (SELECT id FROM {_TABLE} WHERE model = %s "
    f"ORDER BY id DESC LIMIT 1 OFFSET {KEPT - 1})"
)
_LATEST = (
    select(*(MODEL_HISTORY.c[name] for name in _COLUMNS[2:]))
    .where(MODEL_HISTORY.c.model == bindparam("model"))
    .order_by(MODEL_HISTORY.c.id.desc())
    .limit(bindparam("limit"))
)
_NEWEST_FIRST = attrgetter("id")
_USAGE = attrgetter(*_COLUMNS[1:])


def note_calls(conn: Connection, spans: Sequence[SpanRecord]) -> None:
    """Add the successful calls of ``spans`` (just inserted) to their models' histories, in
    the caller's transaction, and cut each back to its :data:`KEPT` latest when it holds
    more than twice as many.

    Only a batch's latest of each model are written (an import of a year's calls writes a
    few rows a batch, not one a span); models in sorted order, so writers on PostgreSQL
    take their keys in one order."""
    calls: dict[str, list[SpanRecord]] = {}
    for span in spans:
        if span.status == "ok":
            calls.setdefault(counted_model(span.request_model), []).append(span)
    if not calls:
        return
    rows = []
    for model, spans_of in sorted(calls.items()):
        spans_of.sort(key=_NEWEST_FIRST, reverse=True)
        rows += [(model, *_USAGE(span)) for span in spans_of[:KEPT]]
    models = sorted(calls)
    if conn.dialect.name != "postgresql":
        run(conn, _NOTE, rows)
        run(conn, _CUT, [(model, model, model) for model in models])
        return
    # Cut back once a model holds twice KEPT: a cut takes the rows' locks (a writer cutting
    # the same model waits for the other to commit), so most writes only add.
    held = conn.exec_driver_sql(_PG_NOTE, (*map(list, zip(*rows, strict=True)), models))
    if over := sorted(model for model, count in held if count > 2 * KEPT):
        conn.exec_driver_sql(_PG_CUT, [(model, model) for model in over])


def recent_usage(conn: Connection, model: str, limit: int) -> list[PastCall]:
    """The usage of the latest ``limit`` (at most :data:`KEPT`) successful calls to
    ``model`` in any spelling, newest first."""
    rows = conn.execute(_LATEST, {"model": counted_model(model), "limit": min(limit, KEPT)})
    # A row another tool wrote with no whole number in range ('n/a', a REAL) failed every
    # new call bounded by this history, or bounded it by a fraction: it is left out. A
    # call's bound does not wait on a fix.
    return [
        PastCall(row[0], row[1], row[2] or 0, row[3] or 0, row[4] or 0)
        for row in rows
        if all(type(value) is int and value >= 0 for value in row[:2])
        and all(value is None or (type(value) is int and value >= 0) for value in row[2:])
    ]
