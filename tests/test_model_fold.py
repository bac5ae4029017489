"""One model, one name, for any text a caller sends as a model's, of any length.

A name past the model columns' 255 characters was cut to fit before it was folded
(:func:`counted_model`), so blanks around it (or the default registry before it) moved the cut:
``" " + name`` counted apart from ``name`` in every report, filter and rollup."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ollama_meter.ledger import SpanFilter
from ollama_meter.records import MODEL_LIMIT, counted_model, make_storable
from tests.factories import make_span

BLANKS = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u3000\xa0\x85\x1f"), max_size=4)
LONG = st.builds(
    lambda head, n, tail: head + "x" * n + tail,
    st.text(max_size=20),
    st.integers(MODEL_LIMIT - 30, 3 * MODEL_LIMIT),
    st.text(max_size=20),
)
NAMES = (
    st.text(min_size=1, max_size=600) | LONG | st.sampled_from(["İ" * 200, "A:B" * 90])
).filter(lambda name: name.strip())
"""Any text that is more than blanks (a name of only blanks names no model: kept as it is)."""
PREFIXES = st.sampled_from(["", "library/", "registry.ollama.ai/library/"])


def stored(name: str) -> str:
    """``name`` as the ledger keeps a call's model."""
    return make_storable(make_span(request_model=name)).request_model


@settings(max_examples=400)
@given(name=NAMES, before=BLANKS, after=BLANKS, prefix=PREFIXES)
def test_a_name_counts_as_itself_whatever_blanks_and_registry_around_it_and_once_stored(
    name: str, before: str, after: str, prefix: str
) -> None:
    counted = counted_model(name)
    assert counted_model(name.strip()) == counted
    assert counted_model(before + name + after) == counted
    assert counted_model(counted) == counted and len(counted) <= MODEL_LIMIT
    assert counted.isprintable()
    if "/" not in name and name == name.strip():
        assert counted_model(prefix + name) == counted
    # as the ledger keeps it, and as a filter names it: the same one model
    for sent in {name, before + name + after, prefix + name.strip()}:
        if counted_model(sent) != counted:
            continue
        assert len(stored(sent)) <= MODEL_LIMIT and stored(stored(sent)) == stored(sent)
        assert counted_model(stored(sent)) == counted, (sent, stored(sent))
        assert SpanFilter(model=sent).model == counted


@given(name=NAMES)
def test_a_name_that_fits_is_kept_as_it_was_sent(name: str) -> None:
    if len(name) <= MODEL_LIMIT and name.isprintable() and "\x00" not in name:
        assert stored(name) == name
