"""The ledger: SQLAlchemy models, engine, migrations, writes and queries.

Stores spans and price rules, in UTC and integer micro-units. Must not import
typer, rich, the gateway or telemetry; reports read through its queries.
"""

from ollama_meter.ledger._ledger import Ledger, close_ledger, close_ledgers, open_ledger
from ollama_meter.ledger._migrate import HEAD_REVISION, current_revision, upgrade
from ollama_meter.ledger._spans import SpanFilter, page_after, update_costs

__all__ = [
    "HEAD_REVISION",
    "Ledger",
    "SpanFilter",
    "close_ledger",
    "close_ledgers",
    "current_revision",
    "open_ledger",
    "page_after",
    "update_costs",
    "upgrade",
]
