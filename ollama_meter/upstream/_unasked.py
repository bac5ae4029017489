"""What the gateway asked Ollama for on a client's behalf, taken out of what the client gets.

A stream whose client did not ask for usage is sent upstream with
``stream_options.include_usage`` (so the span has exact counts). Ollama then adds a usage
chunk at the end, which is not relayed, and on ``/v1/completions`` a zero ``usage`` on every
chunk (its ``CompleteWriter`` sets one on each), which is cut out of the chunk here: the
client gets the bytes Ollama sends a client that does not ask. Nothing here reads counts.
"""

from __future__ import annotations

import json
from typing import Any

_MEMBER = b',"usage":'
"""How Go's encoder writes the member: compact, after every other (the last field of
Ollama's ``CompletionChunk`` and ``ChatCompletionChunk``)."""


def _data(frame: bytes) -> object:
    lines = [
        line[5:].removeprefix(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")
    ]
    try:
        return json.loads(b"\n".join(lines))
    except ValueError:
        return None


def without_usage(frame: bytes, obj: dict[str, Any]) -> bytes:
    """``frame``, an SSE event whose data is ``obj``, without ``obj``'s ``usage`` member.

    The member's bytes are cut from where Ollama wrote them, so the rest is Ollama's byte for
    byte; an event written some other way (the cut would not leave ``obj`` without its usage)
    is written anew from ``obj``.
    """
    rest = {key: value for key, value in obj.items() if key != "usage"}
    end = frame.rstrip()
    at = frame.rfind(_MEMBER)
    if at >= 0 and end.endswith(b"}"):
        cut = frame[:at] + frame[len(end) - 1 :]  # the closing brace, and what follows it
        if _data(cut) == rest:
            return cut
    return b"data: " + json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode()


__all__ = ["without_usage"]
