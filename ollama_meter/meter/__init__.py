"""The meter: the one metering sequence, the span record, and re-pricing.

Entry points call in here; this package calls out to upstream, pricing and the
ledger, and to observers (telemetry, alerts). Nothing calls back in.
"""

from ollama_meter.meter._core import (
    Attribution,
    Meter,
    MeteredCall,
    PriceSource,
    Run,
    SpanObserver,
    budget_gate,
    ledger_for,
    sync_env_budgets,
    sync_pricing_file,
    utc_now,
)
from ollama_meter.meter._reprice import RepriceSummary, reprice
from ollama_meter.meter._usage import estimate_tokens, usage_of
from ollama_meter.meter._writer import GroupCommitWriter
from ollama_meter.records import (
    DurationSource,
    Source,
    SpanRecord,
    Status,
    Stored,
    TokenSource,
    new_span_row_id,
)

__all__ = [
    "Attribution",
    "DurationSource",
    "GroupCommitWriter",
    "Meter",
    "MeteredCall",
    "PriceSource",
    "RepriceSummary",
    "Run",
    "Source",
    "SpanObserver",
    "SpanRecord",
    "Status",
    "Stored",
    "TokenSource",
    "budget_gate",
    "estimate_tokens",
    "ledger_for",
    "new_span_row_id",
    "reprice",
    "sync_env_budgets",
    "sync_pricing_file",
    "usage_of",
    "utc_now",
]
