"""The meter: the one metering sequence, and re-pricing.

Entry points call in here; this package calls out to upstream, pricing and the
ledger, and to observers (telemetry, alerts). Nothing calls back in.

    _attribution.py  who a call is charged to (names checked once)
    _call.py         one call in flight, measured into its span
    _meter.py        the sequence: open (admit), refuse, close (price, write, settle)
    _observers.py    what watches calls (telemetry, hooks), and how it is told
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
    from ollama_meter.meter._attribution import Attribution as Attribution
    from ollama_meter.meter._call import MeteredCall as MeteredCall
    from ollama_meter.meter._meter import (
        Meter as Meter,
        Transport as Transport,
        utc_now as utc_now,
    )
    from ollama_meter.meter._observers import SpanObserver as SpanObserver
    from ollama_meter.meter._prices import PriceSource as PriceSource
    from ollama_meter.meter._reprice import RepriceSummary as RepriceSummary, reprice as reprice
    from ollama_meter.meter._request import Opening as Opening
    from ollama_meter.meter._run import Run as Run
    from ollama_meter.meter._usage import estimate_tokens as estimate_tokens, usage_of as usage_of
    from ollama_meter.meter._wiring import (
        budget_gate as budget_gate,
        build_meter as build_meter,
        ledger_for as ledger_for,
        sync_env_budgets as sync_env_budgets,
        sync_pricing_file as sync_pricing_file,
    )
    from ollama_meter.meter._writer import GroupCommitWriter as GroupCommitWriter
    from ollama_meter.records import (
        Source as Source,
        SpanRecord as SpanRecord,
        Status as Status,
        Stored as Stored,
        new_span_row_id as new_span_row_id,
    )

_NAMES = {
    "._attribution": "Attribution",
    "._call": "MeteredCall",
    "._meter": "Meter Transport utc_now",
    "._observers": "SpanObserver",
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
