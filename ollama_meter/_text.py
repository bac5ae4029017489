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
import unicodedata
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


_DIRECTIONAL = frozenset({"R", "AL", "RLE", "LRE", "RLO", "LRO", "PDF", "RLI", "LRI", "FSI", "PDI"})
_OPENS = frozenset({"RLI", "LRI", "FSI"})
_PARAGRAPH = re.compile("[\n\r\x1c-\x1e\x85\u2029]")
"""What ends a paragraph to the bidirectional algorithm (class B), and so every isolate open."""


def isolate(name: str) -> str:
    """``name`` as text to show beside other text: between U+2068 and U+2069 (a first-strong
    isolate) when it holds right-to-left letters or direction controls.

    A name from the ledger is anyone's; an unclosed right-to-left override (U+202E) in one would
    reverse what follows it on the line, drawing its amount on the wrong side (``1.23 (live)
    live`` for ``evil (evil) 1.23``). Isolated, it is reordered inside itself only: a closing
    U+2069 of its own that would end the isolate early is met by an opening one put first, an
    isolate it leaves open is closed. What ends a paragraph (U+2029, a line break) is written as
    its escape (``\\u2029``, as a log line shows it) in any name: nothing is isolated across
    one, and the text after it would start a paragraph of its own."""
    name = _PARAGRAPH.sub(lambda m: one_line(m.group()), name)
    if not any(unicodedata.bidirectional(ch) in _DIRECTIONAL for ch in name):
        return name
    open_, unmatched = 0, 0
    for ch in name:
        kind = unicodedata.bidirectional(ch)
        if kind in _OPENS:
            open_ += 1
        elif kind == "PDI":
            if open_:
                open_ -= 1
            else:
                unmatched += 1  # would close the isolate around it: close one put before it
    return "\u2068" * (1 + unmatched) + name + "\u2069" * (1 + open_)


__all__ = ["ACTED_ON", "isolate", "json_bytes", "json_text", "one_line"]
