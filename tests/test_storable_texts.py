"""A span's texts made storable by one match when they are already, field by field otherwise.

``make_storable`` runs twice a call; its texts are nearly always storable as they are, so one
match over them all says so (``_texts_as_is``) and only a span it refuses goes field by field.
The match must never let through what the field-by-field pass would change: for any texts, a
span it passes is one that pass leaves exactly as it is (each field the same object)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from hypothesis import example, given, settings, strategies as st

from ollama_meter.records import TEXT_LIMITS, make_storable
from ollama_meter.records._span import _storable_texts, _texts_as_is
from tests.factories import make_span

EDGES = "\x00\x01\x1f \x7f\x80\x85\xa0~aZ0:/.\u2028\ufffd\U0001f600\ud800\udfff\x00"
TEXTS = st.text(st.sampled_from(EDGES) | st.characters(), max_size=40)


def _near(limit: int) -> st.SearchStrategy[str]:
    """Texts of about ``limit`` characters: within it, at it and one past it."""
    return st.builds(
        lambda body, extra, odd: (body * (limit // max(len(body), 1) + 2))[: limit + extra] + odd,
        st.text(st.sampled_from("a~ \x7f\x01"), min_size=1, max_size=3),
        st.integers(-2, 1),
        st.sampled_from(["", "", "\x00", "\n", "é"]),
    )


def _value(limit: int) -> st.SearchStrategy[Any]:
    near = _near(limit) if limit <= 2000 else st.nothing()
    plain = st.text(st.sampled_from("a~ :./-Z0"), max_size=8)
    odd = st.builds(lambda a, c, b: a + c + b, plain, st.sampled_from(EDGES), plain)
    return st.none() | odd | TEXTS | near | st.integers(-5, 5) | st.sampled_from([" x ", "ok"])


VALUES = {name: _value(limit) for name, limit in TEXT_LIMITS.items()}
SPANS = (
    st.lists(st.sampled_from(sorted(TEXT_LIMITS)), max_size=3, unique=True)
    .flatmap(lambda names: st.fixed_dictionaries({name: VALUES[name] for name in names}))
    .map(lambda texts: make_span(**texts))
)
"""A plain call's span with up to three texts of any kind: the match must see each of them."""


def _texts(span: Any) -> list[tuple[type, object]]:
    return [(type(getattr(span, name)), getattr(span, name)) for name in TEXT_LIMITS]


@settings(max_examples=1500)
@given(span=SPANS)
@example(span=make_span(request_model="llama3\x00", operation="chat\x7f"))
@example(span=make_span(tenant="a" * 65, currency="USDX", user="\ud800"))
@example(span=make_span(department="\udfff"))
@example(span=make_span(done_reason="stop\x1f"))
def test_texts_passed_as_they_are_are_what_the_field_by_field_pass_leaves(span: Any) -> None:
    slow = replace(span, tags=dict(span.tags))
    _storable_texts(slow)
    if _texts_as_is(span):
        assert all(getattr(slow, name) is getattr(span, name) for name in TEXT_LIMITS)
    assert _texts(make_storable(replace(span, tags=dict(span.tags)))) == _texts(slow)


def test_a_plain_calls_texts_pass_as_they_are_with_none_for_what_it_lacks() -> None:
    span = make_span(user=None, error_message=None, response_model="llama3.1:8b")
    assert _texts_as_is(span)
    assert not _texts_as_is(make_span(department="ventes\x00"))
    assert not _texts_as_is(make_span(tenant=7))  # made a text by the field-by-field pass
    assert make_storable(make_span(tenant=7)).tenant == "7"
    assert {f.name for f in fields(span)} >= set(TEXT_LIMITS)
