"""The meter: the one metering sequence, and re-pricing.

Entry points call in here; this package calls out to upstream, pricing and the
ledger, and to observers (telemetry, alerts). Nothing calls back in.

    _attribution.py  who a call is charged to (names checked once)
    _call.py         one call in flight, measured into its span
    _meter.py        the sequence: open (admit), refuse, close (price, write, settle)
    _run.py          sync and async drivers through the ollama client
    _prices.py       the price book in force (a snapshot)
    _recovery.py     calls a dead process left open
    _wiring.py       the composition root: a meter built from settings
    _request.py      what a request says (prompt, bounds), for any wire format
    _usage.py        estimated tokens, the usage a span is priced on
    _writer.py       group commit of spans
    _reprice.py      re-pricing recorded spans

The span record it fills is plain data in ``ollama_meter.records``.
"""

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names, names_in

if TYPE_CHECKING:
    from ollama_meter.meter._attribution import Attribution
    from ollama_meter.meter._call import MeteredCall
    from ollama_meter.meter._meter import Meter, SpanObserver, Transport, utc_now
    from ollama_meter.meter._prices import PriceSource
    from ollama_meter.meter._reprice import RepriceSummary, reprice
    from ollama_meter.meter._request import Opening
    from ollama_meter.meter._run import Run
    from ollama_meter.meter._usage import estimate_tokens, usage_of
    from ollama_meter.meter._wiring import (
        budget_gate,
        build_meter,
        ledger_for,
        sync_env_budgets,
        sync_pricing_file,
    )
    from ollama_meter.meter._writer import GroupCommitWriter
    from ollama_meter.records import (
        Source,
        SpanRecord,
        Status,
        Stored,
        new_span_row_id,
    )

_NAMES = {
    "._attribution": "Attribution",
    "._call": "MeteredCall",
    "._meter": "Meter SpanObserver Transport utc_now",
    "._prices": "PriceSource",
    "._reprice": "RepriceSummary reprice",
    "._request": "Opening",
    "._run": "Run",
    "._usage": "estimate_tokens usage_of",
    "._wiring": "budget_gate build_meter ledger_for sync_env_budgets sync_pricing_file",
    "._writer": "GroupCommitWriter",
    "ollama_meter.records": "Source SpanRecord Status Stored new_span_row_id",
}
"""Module → the public names it defines, each imported when first read: a command that
only opens the configured ledger (``ledger_for``) does not load the metering sequence."""

__getattr__ = lazy_names(globals(), names_in(_NAMES))

__all__ = [
    "Attribution",
    "GroupCommitWriter",
    "Meter",
    "MeteredCall",
    "Opening",
    "PriceSource",
    "RepriceSummary",
    "Run",
    "Source",
    "SpanObserver",
    "SpanRecord",
    "Status",
    "Stored",
    "Transport",
    "budget_gate",
    "build_meter",
    "estimate_tokens",
    "ledger_for",
    "new_span_row_id",
    "reprice",
    "sync_env_budgets",
    "sync_pricing_file",
    "usage_of",
    "utc_now",
]
