"""What the meter charges of the token counts an answer reports: the rules the lying-upstream
properties hold a span to (``meter._honest``, and a stream's pieces)."""

from __future__ import annotations

from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT
from ollama_meter.meter._honest import MAX_HIDDEN_REPLY


def prompt_charged(said: int | None, charged: int, estimate: int) -> bool:
    """Whether ``charged`` prompt tokens follow from a report of ``said``: as said (the
    ``estimate`` when none was), or cut, never below :data:`MAX_HIDDEN_PROMPT`, when said past
    what the request could hold."""
    if said is None:
        return charged == estimate
    return charged == said or MAX_HIDDEN_PROMPT < charged < said


def reply_charged(said: int | None, charged: int, pieces: int) -> bool:
    """Whether ``charged`` reply tokens follow from a report of ``said`` for an answer streamed
    in at most ``pieces`` pieces: as said; more, up to the pieces (a token a piece at least);
    or cut, never below :data:`MAX_HIDDEN_REPLY`, when said past what the answer could hold."""
    if said is None:
        return True
    return charged == said or said < charged <= pieces or MAX_HIDDEN_REPLY <= charged < said
