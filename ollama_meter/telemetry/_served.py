"""Which model names a metric carries as labels of their own: those a server answered for.

Model names come from callers, and a caller can make one up per request (refused, or "model
not found"). Each was a label set of every instrument: ``/metrics`` had its label sets taken
before a model pulled later had its first call, and the exported metrics the SDK's 2,000 a
instrument, every label set after them lumped into one overflow point for the life of the
process. Until a server answers for a name, its calls count under :data:`OTHER`, so totals
stay whole; spans and the ledger keep every name as sent.
"""

from __future__ import annotations

from ollama_meter._forks import ChildLock
from ollama_meter.records import SpanRecord, Status, counted_model

OTHER = "_other"
"""The label value of calls counted apart from none: a name no server answered for, or a label
set past a bound."""
MAX_MODELS = 1000
"""Models that are labels of their own, at most."""


class Served:
    """Models a server answered a call to (it ended ``ok``, or an answer named the model),
    up to ``limit``."""

    def __init__(self, limit: int = MAX_MODELS) -> None:
        self.limit = limit
        self.models: set[str] = set()
        self._lock = ChildLock()

    def label(self, span: SpanRecord, model: str) -> str:
        """``model``'s label for a call of ``span``: itself once a server answered for it (for
        any spelling of it: one model takes one place, as ``counted_model`` names it)."""
        key = counted_model(model)
        if key in self.models:  # the common case, without the lock: the set only grows
            return model
        if span.response_model is None and span.status != Status.OK:
            return OTHER  # no answer: a name no server has answered for so far
        with self._lock:
            if len(self.models) < self.limit:
                self.models.add(key)
                return model
        return OTHER
