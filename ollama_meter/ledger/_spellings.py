"""A model's spellings in raw spans: grouped and filtered as the one name they count under.

Ollama runs ``LLAMA3.1:8B``, ``llama3.1:8b `` and ``registry.ollama.ai/library/llama3.1:8b`` as
one model and echoes the caller's spelling, so spans hold several spellings of one model. The
rollups key each under :func:`~ollama_meter.records.counted_model`; raw reads fold the same
way, in Python (SQLite's ``lower()`` knows ASCII only, and neither database strips a registry):
SQL groups by the text as stored, :func:`group_values` folds, and a model filter is the
spellings present that fold to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from ollama_meter.ledger.models import SPANS
from ollama_meter.records import counted_model

ANSWERED_MODEL = func.coalesce(func.nullif(SPANS.c.response_model, ""), SPANS.c.request_model)
"""The model a raw span counts under, as :attr:`SpanRecord.model` and the rollups have it: the
one Ollama answered with, else the one asked for; an empty answer (an import can hold one)
is none. ``coalesce`` alone took ``""`` for an answer, so the raw spans and the rollups put
one call under two models, and ``--model`` found it in a report but not in ``log``."""

SCAN_ROWS = 5_000
"""Spans :func:`latest_ids` reads a statement, newest first (their ids and models only)."""


def group_values(by: Sequence[str], values: Sequence[Any]) -> tuple[str, ...]:
    """A raw row's group (its values of the ``by`` columns) as the rollups key it: text, and a
    model under the one name it counts as, so groups of two spellings of it are one."""
    return tuple(
        counted_model(str(value)) if name == "model" else str(value)
        for name, value in zip(by, values, strict=True)
    )


def spellings(conn: Connection, model: str, others: Sequence[Any]) -> list[str]:
    """The models, as the spans ``others`` picks have them, that count as ``model``."""
    found = conn.scalars(select(ANSWERED_MODEL).where(*others).distinct())
    return sorted(name for name in found if counted_model(name) == model)


def latest_ids(conn: Connection, model: str, others: Sequence[Any], limit: int) -> list[str]:
    """The ids of the newest ``limit`` spans ``others`` picks that count as ``model``, newest
    first: read back from the newest a page at a time, as far as the matches go (as a scan
    for one exact name went), not every span's model first (all of a ledger without a window).
    """
    ids: list[str] = []
    page = select(SPANS.c.id, ANSWERED_MODEL).where(*others).order_by(SPANS.c.id.desc())
    query = page.limit(SCAN_ROWS)
    while len(ids) < limit:
        rows = conn.execute(query).all()
        ids += [found for found, name in rows if counted_model(name) == model]
        if len(rows) < SCAN_ROWS:
            break
        query = page.where(SPANS.c.id < rows[-1][0]).limit(SCAN_ROWS)
    return ids[:limit]
