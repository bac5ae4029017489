"""A stream's bytes, as they arrive in any pieces, cut into its items: NDJSON lines, SSE events."""

from __future__ import annotations

import re

from ollama_meter.upstream._classify import Failure, transport_error

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""The longest item of a stream waited for (Ollama's longest, a generate's final chunk with
its ``context``, is a few MB at most); an upstream that sends more without an end lies."""


_EMPTY = re.compile(rb"\s*(?:\{\s*\})?\s*")
"""An item with nothing in it: blank, or an empty JSON object (one that is no object at all,
``null``, ends the stream as unreadable)."""
_EMPTY_DATA = re.compile(rb"[ \t]*(?:\{[ \t]*\})?[ \t]*(?:\n|\Z)")
"""A server-sent event's data line (from its value) with nothing in it."""


class Frames:
    """Cuts a stream's bytes, as they arrive in any pieces, into its items (without separators).

    Linear in what arrives, however the pieces fall; what is left over waits for the
    next piece, up to ``limit`` bytes, past which the stream is broken.
    """

    def __init__(self, separator: bytes, *, host: str, limit: int = MAX_FRAME_BYTES) -> None:
        self._separator = separator
        self._host = host
        self._limit = limit
        self._pending = bytearray()
        self._cr = False
        """The last piece ended in CR: the LF that may follow it is the same line end."""

    def feed(self, data: bytes) -> list[bytes]:
        """The items ``data`` completes; raises :class:`StreamError` past the limit.

        Lines may end in CRLF or CR as well as LF (server-sent events allow all three); they
        are read as LF. No item holds a raw CR: JSON escapes it inside a string."""
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending, separator = self._pending, self._separator
        # Only where the new bytes could complete a separator is searched again.
        scan = max(0, len(pending) - len(separator) + 1)
        pending += data
        frames: list[bytes] = []
        start = 0
        while (end := pending.find(separator, max(start, scan))) >= 0:
            frames.append(bytes(pending[start:end]))
            start = end + len(separator)
        if start:
            del pending[:start]
        if len(pending) > self._limit:
            raise transport_error(
                Failure.BROKEN,
                host=self._host,
                started=True,
                reason=f"an item of more than {self._limit} bytes without an end",
            )
        return frames

    def carries(self, frame: bytes) -> bool:
        """Whether ``frame`` carries some of the answer: an item, or for server-sent events a
        data line, that is not empty (blank, or ``{}``). A comment, an event with no data or an
        empty item is a keep-alive, however often it comes: the server is as silent as one
        that sends nothing."""
        if self._separator != b"\n\n":
            return frame.startswith(b'{"') or _EMPTY.fullmatch(frame) is None
        at = 0 if frame.startswith(b"data:") else frame.find(b"\ndata:") + 1 or -1
        while at >= 0:  # a data line starts at ``at``
            if _EMPTY_DATA.match(frame, at + 5) is None:
                return True
            at = frame.find(b"\ndata:", at + 5) + 1 or -1
        return False

    def end(self) -> list[bytes]:
        """The stream ended: what is left is its last item, unterminated (the clients read it)."""
        rest = bytes(self._pending)
        self._pending.clear()
        self._cr = False
        return [rest] if rest.strip() else []


__all__ = ["MAX_FRAME_BYTES", "Frames"]
