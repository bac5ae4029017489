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
    from ollama_meter._names import KEY_PREFIX as KEY_PREFIX
    from ollama_meter.ledger._aggregate import (
        FailureCount as FailureCount,
        SpendSums as SpendSums,
        capped_note as capped_note,
    )
    from ollama_meter.ledger._backup import (
        backup as backup,
        ledger_file as ledger_file,
        ledger_place as ledger_place,
        pg_dump_command as pg_dump_command,
    )
    from ollama_meter.ledger._cells import COLD_LOAD_NS as COLD_LOAD_NS, Metric as Metric
    from ollama_meter.ledger._deadline import bulk as bulk, unbounded as unbounded
    from ollama_meter.ledger._jsonl import (
        BATCH_BYTES as BATCH_BYTES,
        ImportSummary as ImportSummary,
        export_lines as export_lines,
        import_lines as import_lines,
        iso_utc as iso_utc,
        span_to_dict as span_to_dict,
    )
    from ollama_meter.ledger._keys import ApiKey as ApiKey
    from ollama_meter.ledger._ledger import (
        Ledger as Ledger,
        close_ledger as close_ledger,
        close_ledgers as close_ledgers,
        open_ledger as open_ledger,
    )
    from ollama_meter.ledger._line import (
        MAX_LINE_BYTES as MAX_LINE_BYTES,
        span_from_line as span_from_line,
    )
    from ollama_meter.ledger._migrate import (
        HEAD_REVISION as HEAD_REVISION,
        check_tables as check_tables,
        current_revision as current_revision,
        upgrade as upgrade,
    )
    from ollama_meter.ledger._plan import raw_spans as raw_spans
    from ollama_meter.ledger._ranked import Ranked as Ranked, Ranking as Ranking
    from ollama_meter.ledger._rebuild import rebuild as rebuild
    from ollama_meter.ledger._spans import (
        RulesChanged as RulesChanged,
        SpanFilter as SpanFilter,
        page_after as page_after,
        update_costs as update_costs,
    )
    from ollama_meter.ledger._sqlstates import once_more_if_ended as once_more_if_ended
    from ollama_meter.ledger._timings import HistogramResult as HistogramResult
    from ollama_meter.ledger._types import from_us as from_us, to_us as to_us
    from ollama_meter.ledger._upkeep import (
        PruneResult as PruneResult,
        check_pages as check_pages,
        prune as prune,
    )
    from ollama_meter.records import GROUPS as GROUPS

_NAMES = {
    "._aggregate": "FailureCount SpendSums capped_note",
    "._cells": "COLD_LOAD_NS Metric",
    "._deadline": "bulk unbounded",
    "._jsonl": "BATCH_BYTES ImportSummary export_lines import_lines iso_utc span_to_dict",
    "._keys": "ApiKey",
    "._line": "MAX_LINE_BYTES span_from_line",
    "._ledger": "Ledger close_ledger close_ledgers open_ledger",
    "._migrate": "HEAD_REVISION check_tables current_revision upgrade",
    "._plan": "raw_spans",
    "._ranked": "Ranked Ranking",
    "._rebuild": "rebuild",
    "._sqlstates": "once_more_if_ended",
    "._spans": "RulesChanged SpanFilter page_after update_costs",
    "._timings": "HistogramResult",
    "._types": "from_us to_us",
    "._backup": "backup ledger_file ledger_place pg_dump_command",
    "._upkeep": "PruneResult check_pages prune",
    "ollama_meter.records": "GROUPS",
    "ollama_meter._names": "KEY_PREFIX",
}
"""Module → the public names it defines, each imported when first read: the ledger's
export format (msgspec) or upkeep load only for the commands that use them."""

__getattr__ = lazy_names(globals(), names_in(_NAMES))
