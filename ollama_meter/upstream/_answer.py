"""A whole answer too large to hold, read as it passes: its top-level fields, exactly.

Ollama has no limit on a whole answer's size, and an embedding batch (2,000 inputs of
4,096 dimensions) is about 150 MB of JSON, most of it the vectors; what the meter reads
(counts, durations, ``model``, an ``error``; OpenAI's ``usage``) are small top-level
fields, which Ollama writes after them. :class:`AnswerScan` parses the answer as it
arrives (ijson's C parser: every byte is checked to be JSON, as a client checks it) and
keeps only the top-level members; the vectors are counted, never kept. Its memory is
bounded whatever the answer's size. This module does no I/O.
"""

from __future__ import annotations

from itertools import compress
from operator import itemgetter, methodcaller, not_
from typing import Any

import ijson

from ollama_meter.upstream._classify import Failure, transport_error
from ollama_meter.upstream._frames import MAX_FRAME_BYTES

VECTORS = {"embed": "embeddings", "embeddings": "embedding", "openai.embeddings": "data"}
"""The operations whose whole answer may be larger than the gateway holds, and the member
that holds their vectors: only an embedding batch is honestly that large."""

KEPT_EVENTS = 10_000
"""The most parser events kept of the members other than the vectors (Ollama's are a dozen)."""
KEPT_CHARS = 1 << 20
"""The most characters of strings kept of those members."""

NOT_KEPT = "(vectors not kept)"
"""What stands for the vectors in the members read: a one-item list, so an answer with
vectors never reads as one without any (which would mean "the model was only loaded")."""


class AnswerScan:
    """The top-level members of one whole answer to ``operation``, fed as it arrives.

    :meth:`end` gives them as ``json.loads`` would give the answer, except that the vectors
    are :data:`NOT_KEPT`; None when the answer is not one JSON value. Members past
    :data:`KEPT_EVENTS` or :data:`KEPT_CHARS` make it unreadable: only the vectors and
    whether an ``error`` member came are kept, so its counts are estimated.
    """

    def __init__(self, operation: str, *, host: str) -> None:
        self._host = host
        vectors = VECTORS[operation]
        self._vectors = vectors
        self._inside = methodcaller("startswith", vectors + ".")
        self._events: list[tuple[str, str, Any]] = ijson.sendable_list()
        self._parser = ijson.parse_coro(self._events, use_float=True)
        self._builder = ijson.ObjectBuilder()
        self._skipped = 0
        self._kept_events = 0
        self._kept_chars = 0
        self._readable = True
        self._error_seen = False
        self._unparsed = 0
        """Bytes fed since the parser last gave an event: what it may be holding."""
        self.broken = False
        """The answer is not JSON (what came so far is not the start of a JSON value)."""

    def feed(self, data: bytes) -> None:
        """Read ``data``; raises a classified error when one token is longer than any answer's
        item (the parser would hold it all)."""
        if self.broken or not data:
            return
        try:
            self._parser.send(data)
        except ijson.JSONError:
            self.broken = True
            return
        self._unparsed = 0 if self._events else self._unparsed + len(data)
        if self._unparsed > MAX_FRAME_BYTES:
            raise transport_error(
                Failure.BROKEN,
                host=self._host,
                started=True,
                reason=f"a value of more than {MAX_FRAME_BYTES} bytes in a whole answer",
            )
        self._take()

    def end(self) -> dict[str, Any] | None:
        """The answer's members, once it has all arrived; None when it is not one JSON value."""
        if not self.broken:
            try:
                self._parser.close()
            except ijson.JSONError:
                self.broken = True
            else:
                self._take()
        if self.broken:
            return None
        if not self._readable:
            unread: dict[str, Any] = {self._vectors: [NOT_KEPT]} if self._skipped else {}
            if self._error_seen:
                unread["error"] = "an error too long to read"
            return unread
        value = self._builder.value
        if not isinstance(value, dict):
            return value  # type: ignore[no-any-return]  # not an object: the caller says so
        if self._skipped and isinstance(value.get(self._vectors), list):
            value[self._vectors] = [NOT_KEPT]
        return value

    def _take(self) -> None:
        events = self._events
        if not events:
            return
        prefixes = map(itemgetter(0), events)
        kept = list(compress(events, map(not_, map(self._inside, prefixes))))
        self._skipped += len(events) - len(kept)
        events.clear()
        for prefix, event, value in kept:
            if prefix == "" and event == "map_key" and value == "error":
                self._error_seen = True
            if not self._readable:
                continue
            self._kept_events += 1
            if isinstance(value, str):
                self._kept_chars += len(value)
            if self._kept_events > KEPT_EVENTS or self._kept_chars > KEPT_CHARS:
                self._readable = False
                self._builder = ijson.ObjectBuilder()  # what it held is let go
                continue
            self._builder.event(event, value)


__all__ = ["NOT_KEPT", "VECTORS", "AnswerScan"]
