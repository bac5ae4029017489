"""What of a hook's attributes a span exports: names of the hook's own, values OTLP carries.

A hook adds attributes (DESIGN §9); it does not rewrite what the meter measured. Its value
for a name ometer sets (the cost, the tokens, who the call is charged to) was exported in
place of the measured one, so a collector, Langfuse or a dashboard summing ``ometer.cost``
showed what the hook said, not what the ledger holds. And a value whose ``str()`` raised,
or a map that could not be read, failed the whole span: it was never exported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ollama_meter.records import storable_text
from ollama_meter.telemetry import _semconv as sc

log = logging.getLogger("ollama_meter.telemetry")

OMETERS_PREFIXES = ("ometer.", "gen_ai.usage.")
"""Names ometer owns whether or not it sets them on a span: its own, and the token counts
backends price a call by."""
OMETERS_NAMES = frozenset({sc.LANGFUSE_COST, sc.LANGFUSE_USAGE})
"""Langfuse's cost and usage: ometer sends them, or leaves them out on purpose (a cost in
another currency than USD, which Langfuse would sum with the dollars)."""
_SHOWN = 5


class HookedAttributes:
    """A hook's attributes as a span exports them; what is left out is said once a kind."""

    def __init__(self, exportable: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._exportable = exportable  # the observer's: what it makes of every value
        self._said: set[str] = set()

    def kept(self, attributes: Mapping[Any, Any], ours: Collection[str]) -> dict[str, Any]:
        """``attributes`` exportable, but a name in ``ours`` (what ometer set on the span),
        a name ometer owns, or a value that cannot be exported."""
        kept: dict[str, Any] = {}
        taken: list[str] = []
        broken: list[str] = []
        for key, value in attributes.items():
            try:
                one = self._exportable({key: value})
            except Exception as exc:  # the hook's object: any error its methods raise
                broken.append(f"{_name(key)} ({type(exc).__name__})")
                continue
            for name, exported in one.items():
                if not name:  # the SDK drops it, with a warning of its own at every span
                    broken.append("'' (an empty name)")
                elif name in ours or name in OMETERS_NAMES or name.startswith(OMETERS_PREFIXES):
                    taken.append(name)
                else:
                    kept[name] = exported
        if taken:
            self._once(
                "taken",
                "a hook set %s on a span: ometer's own (what the call cost, its tokens, who it "
                "is charged to), exported as metered, not as the hook set them; name the "
                "hook's own attributes (e.g. app.cost); said once",
                taken,
            )
        if broken:
            self._once(
                "broken",
                "a hook set %s on a span, which could not be exported (its value or name "
                "raised when read, or it has no name), left out; the span is exported "
                "without; said once",
                broken,
            )
        return kept

    def _once(self, kind: str, message: str, names: list[str]) -> None:
        if kind in self._said:
            return
        self._said.add(kind)
        shown = ", ".join(names[:_SHOWN])
        if len(names) > _SHOWN:
            shown += f" and {len(names) - _SHOWN:,} more"
        log.warning(message, shown)


def _name(key: object) -> str:
    try:
        text = str.__str__(key) if isinstance(key, str) else str(key)
    except Exception:
        text = f"<{type(key).__name__}>"
    return storable_text(text, 80)
