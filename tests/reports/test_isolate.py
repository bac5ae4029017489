"""A name set apart for the page (``isolate``) reorders nothing outside itself, whatever it holds.

Names come from anyone (a tenant header, a model in a JSON body); the page shows each beside
other text on one line: the dashboard's tips ("name: 1.25 USD"), legends, titles. An unclosed
right-to-left override in a name would draw the amount after it reversed, on the wrong side.
The oracle is the Unicode Bidirectional Algorithm's explicit levels (rules X1 to X8, UAX #9),
which Chromium follows: the text after a set-apart name is at the embedding it was before.
"""

from __future__ import annotations

import unicodedata

from hypothesis import example, given, strategies as st

from ollama_meter.reports import isolate

_EMBEDDINGS = frozenset({"LRE", "RLE", "LRO", "RLO"})
_ISOLATES = frozenset({"LRI", "RLI", "FSI"})


def explicit_state(text: str) -> list[str] | None:
    """The stack of embeddings (``e``) and isolates (``i``) open after ``text``; None once a
    paragraph separator ended the paragraph (what follows starts a paragraph of its own,
    outside every isolate: the name is no longer set apart)."""
    stack: list[str] = []
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind == "B":
            return None
        if kind in _EMBEDDINGS:
            stack.append("e")
        elif kind in _ISOLATES:
            stack.append("i")
        elif kind == "PDF" and stack and stack[-1] == "e":  # X7: never past an isolate
            stack.pop()
        elif kind == "PDI" and "i" in stack:  # X6a: closes the innermost open isolate
            while stack.pop() != "i":
                pass
    return stack


_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_BREAKS = "\n\r\x1c\x1d\x1e\x85\u2029"
NAMES = st.text(st.sampled_from(f"{_BIDI}{_BREAKS}ab1 \u05d0\u0627") | st.characters(), max_size=24)


@example(
    name="\u2069\u202eevil", before=""
)  # a PDI closed the name's isolate; the override then held the line
@example(name="x\u2029\u202eevil", before="")  # a paragraph separator ended the isolate
@example(name="\u2067\u202eevil", before="")  # an isolate of the name's own took the closing PDI
@given(name=NAMES, before=st.sampled_from(["", "\u2068", "\u202b", "\u2067\u202d"]))
def test_nothing_in_a_name_reorders_the_text_after_it(name: str, before: str) -> None:
    """Chromium drew "\u2068\u2069\u202eevil\u2069: 1.25 USD" as "DSU 52.1 :live": the name's
    own PDI closed the isolate, and the override reversed the rest of the line."""
    assert explicit_state(before + isolate(name)) == explicit_state(before)


def _seen(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c)[0] in "LNPS")


@given(name=NAMES)
def test_a_name_keeps_what_it_shows(name: str) -> None:
    """Set apart, a name shows every letter, digit and mark it has, in order, and what ends a
    paragraph as its escape (``\\u2029``, as a log line shows one); a name with neither
    direction nor paragraph end of its own is shown as it is."""
    shown, escaped = isolate(name), "".join(_ESCAPES.get(c, c) for c in name)
    assert _seen(shown) == _seen(escaped)
    if not any(unicodedata.bidirectional(c) in _DIRECTIONAL for c in name):
        assert shown == escaped


_DIRECTIONAL = {"R", "AL", "PDF", "PDI", *_EMBEDDINGS, *_ISOLATES}
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\x1c": "\\x1c", "\x1d": "\\x1d", "\x1e": "\\x1e",
            "\x85": "\\x85", "\u2029": "\\u2029"}  # fmt: skip
