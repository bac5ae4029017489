"""Text from outside (model names, tags, Ollama's and mail servers' error texts) as the
outputs show it: nothing in it that a terminal, a log reader or a JSON reader acts on.

One list of what is acted on rather than shown, :data:`ACTED_ON` (with C0 besides): DEL and
C1 (a terminal reads U+009B as CSI, as it reads ESC [), the bidirectional controls that
reorder what is around them, the line and paragraph separators, and lone surrogates (no
stream can encode one). The console (``cli._console``) replaces them; a log line
(:func:`one_line`) and a JSON document (:func:`json_text`) escape them, so nothing is lost.
"""

from __future__ import annotations

import json
import re
from typing import Any

ACTED_ON = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
"""A regular expression's character class (no brackets) of what acts on a reader, bar C0."""
_CONTROL = re.compile(f"[\x00-\x1f{ACTED_ON}]")
_IN_JSON = re.compile(f"[{ACTED_ON}]")  # JSON escapes C0 itself
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def one_line(text: str) -> str:
    """``text`` on one line, every control character written as its escape (``\\n``,
    ``\\x1b``, ``\\u202e``): a line break or an escape sequence in what a log line quotes
    can neither start a line of its own nor recolour the terminal the log is read on."""
    return _CONTROL.sub(_escape, text)


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` with what :data:`ACTED_ON`
    escaped as ``\\uXXXX``: the same document to any JSON reader, and none of it acted on
    by the terminal it is printed on (ensure_ascii=False wrote U+009B and U+202E as they
    were). Letters of any script stay as they are."""
    return _json_escaped(json.dumps(value, ensure_ascii=False, **options))


def json_bytes(encoded: bytes) -> bytes:
    """UTF-8 JSON another encoder wrote (msgspec's, which writes what :data:`ACTED_ON` lists
    as it is), escaped as :func:`json_text` escapes it; ASCII without DEL, the common case,
    as it is."""
    if encoded.isascii() and b"\x7f" not in encoded:
        return encoded
    text = encoded.decode()
    return _json_escaped(text).encode() if _IN_JSON.search(text) else encoded


def _json_escaped(text: str) -> str:
    return _IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


__all__ = ["ACTED_ON", "json_bytes", "json_text", "one_line"]
