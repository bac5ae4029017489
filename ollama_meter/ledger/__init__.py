"""The ledger: SQLAlchemy models, engine, migrations, writes and queries.

Stores spans, price rules, budgets, leases, alerts and gateway keys, in UTC and
integer micro-units, as the plain records of ``ollama_meter.records``. All SQL
of the package lives here, behind named methods on :class:`Ledger` (and the
export, import, prune and backup functions below); reports and budgets ask,
they never build queries. Must not import typer, rich, the gateway, telemetry,
the meter or budgets' logic.
"""

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names, names_in

if TYPE_CHECKING:
    from ollama_meter.ledger._aggregate import FailureCount, SpendSums
    from ollama_meter.ledger._cells import COLD_LOAD_NS, Metric
    from ollama_meter.ledger._deadline import bulk, unbounded
    from ollama_meter.ledger._jsonl import (
        ImportSummary,
        export_lines,
        import_lines,
        iso_utc,
        span_to_dict,
    )
    from ollama_meter.ledger._keys import KEY_PREFIX, ApiKey
    from ollama_meter.ledger._ledger import Ledger, close_ledger, close_ledgers, open_ledger
    from ollama_meter.ledger._line import MAX_LINE_BYTES, span_from_line
    from ollama_meter.ledger._migrate import HEAD_REVISION, current_revision, upgrade
    from ollama_meter.ledger._plan import raw_spans
    from ollama_meter.ledger._rebuild import rebuild
    from ollama_meter.ledger._spans import SpanFilter, page_after, update_costs
    from ollama_meter.ledger._timings import HistogramResult
    from ollama_meter.ledger._types import from_us, to_us
    from ollama_meter.ledger._upkeep import PruneResult, backup, pg_dump_command, prune
    from ollama_meter.records import GROUPS

_NAMES = {
    "._aggregate": "FailureCount SpendSums",
    "._cells": "COLD_LOAD_NS Metric",
    "._deadline": "bulk unbounded",
    "._jsonl": "ImportSummary export_lines import_lines iso_utc span_to_dict",
    "._keys": "KEY_PREFIX ApiKey",
    "._line": "MAX_LINE_BYTES span_from_line",
    "._ledger": "Ledger close_ledger close_ledgers open_ledger",
    "._migrate": "HEAD_REVISION current_revision upgrade",
    "._plan": "raw_spans",
    "._rebuild": "rebuild",
    "._spans": "SpanFilter page_after update_costs",
    "._timings": "HistogramResult",
    "._types": "from_us to_us",
    "._upkeep": "PruneResult backup pg_dump_command prune",
    "ollama_meter.records": "GROUPS",
}
"""Module → the public names it defines, each imported when first read: the ledger's
export format (msgspec) or upkeep load only for the commands that use them."""

__getattr__ = lazy_names(globals(), names_in(_NAMES))

__all__ = [
    "COLD_LOAD_NS",
    "GROUPS",
    "HEAD_REVISION",
    "KEY_PREFIX",
    "MAX_LINE_BYTES",
    "ApiKey",
    "FailureCount",
    "HistogramResult",
    "ImportSummary",
    "Ledger",
    "Metric",
    "PruneResult",
    "SpanFilter",
    "SpendSums",
    "backup",
    "bulk",
    "close_ledger",
    "close_ledgers",
    "current_revision",
    "export_lines",
    "from_us",
    "import_lines",
    "iso_utc",
    "open_ledger",
    "page_after",
    "pg_dump_command",
    "prune",
    "raw_spans",
    "rebuild",
    "span_from_line",
    "span_to_dict",
    "to_us",
    "unbounded",
    "update_costs",
    "upgrade",
]
