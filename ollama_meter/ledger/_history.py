"""A model's latest successful calls, whatever the spelling they asked for it by.

What a hard budget bounds a time-priced call with (``meter/_usage.py``), read on the path
of every such call: it must not grow with the ledger. Ollama runs ``LLAMA3.1:8B``,
``llama3.1:8b `` and ``registry.ollama.ai/library/llama3.1:8b`` as one model, so the history
is the calls of every spelling that folds to the same name
(:func:`~ollama_meter.records.counted_model`). The spellings come from ``model_names``
(each name a successful call asked for, noted as its spans are written), and each spelling's
latest calls from the index on (``request_model``, ``status``, ``id``): a probe per spelling,
at most ``limit`` rows each, however many spans the ledger holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, bindparam, select, text

from ollama_meter.ledger.models import MODEL_NAMES, SPANS
from ollama_meter.records import MODEL_LIMIT, PastCall, SpanRecord, counted_model

_NOTE = text(f"INSERT INTO {MODEL_NAMES.name} (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")
"""SQLite and PostgreSQL spell it alike."""

_LATEST = (
    select(
        SPANS.c.id,
        SPANS.c.input_tokens,
        SPANS.c.output_tokens,
        SPANS.c.prompt_eval_duration_ns,
        SPANS.c.eval_duration_ns,
        SPANS.c.load_duration_ns,
    )
    .where(SPANS.c.request_model == bindparam("name"), SPANS.c.status == "ok")
    .order_by(SPANS.c.id.desc())
    .limit(bindparam("limit"))
)


def note_models(conn: Connection, spans: Sequence[SpanRecord]) -> None:
    """Note the names the successful calls of ``spans`` asked for, in the caller's
    transaction.

    A name already noted costs no statement: each process remembers the names it saw on
    record (read, not written: a write of its own may yet roll back). A new one is inserted
    only when a read finds it missing, so writers on PostgreSQL never wait on each other's
    uncommitted insert of a name the ledger has (sorted: any that do take keys in one order).
    """
    names = {span.request_model for span in spans if span.status == "ok"}
    known = _KNOWN.setdefault(conn.engine, set())
    if not (names := names - known):
        return
    if len(known) > KNOWN_NAMES:
        known.clear()
    found = conn.scalars(select(MODEL_NAMES.c.name).where(MODEL_NAMES.c.name.in_(names)))
    known.update(found)
    if missing := sorted(names - known):
        conn.execute(_NOTE, [{"name": name} for name in missing])


_KNOWN: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()
KNOWN_NAMES = 10_000
"""Names a process remembers as noted per ledger, at most (a fleet serves a few hundred)."""


def spellings(conn: Connection, model: str) -> list[str]:
    """The names successful calls asked for that count as ``model``, and ``model`` itself as
    sent and folded (a span an older ometer wrote, its name not noted, is still found)."""
    counted = counted_model(model)
    noted = conn.scalars(select(MODEL_NAMES.c.name))
    sent = [model] if len(model) <= MODEL_LIMIT else []  # a longer one is stored as ``counted``
    return sorted({*sent, counted, *(name for name in noted if counted_model(name) == counted)})


def recent_usage(conn: Connection, model: str, limit: int) -> list[PastCall]:
    """The usage of the latest ``limit`` successful calls to ``model`` in any spelling,
    newest first."""
    rows: list[Any] = []
    for name in spellings(conn, model):
        rows += conn.execute(_LATEST, {"name": name, "limit": limit}).all()
    rows.sort(key=lambda row: row[0], reverse=True)
    # A row another tool wrote with no whole number in range ('n/a', a REAL) failed every
    # new call bounded by this history, or bounded it by a fraction: it is left out. What
    # reads whole spans names it (``_span_rows``); a call's bound does not wait on a fix.
    return [
        PastCall(row[1], row[2], row[3] or 0, row[4] or 0, row[5] or 0)
        for row in rows[:limit]
        if all(type(value) is int and value >= 0 for value in row[1:3])
        and all(value is None or (type(value) is int and value >= 0) for value in row[3:])
    ]
