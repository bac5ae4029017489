"""Whatever value a hook puts in ``span.attributes``, the call's span is exported, whole and bounded.

The SDK takes maps and bytes as attribute values; ometer cleaned and bounded only text,
integers and lists. A map or bytes carried 10 MB past the 16,384-character bound (spans
wait in memory for a collector), a map holding a lone surrogate or a 65-bit integer was
dropped by the encoder without a word, and a deeply nested map raised RecursionError in
the observer, so the call's span was never exported at all.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ollama_meter.telemetry._observer import (
    MAX_EXPORTED_ITEMS,
    MAX_EXPORTED_TEXT,
    TelemetryObserver,
)
from ollama_meter.telemetry._semconv import LANGFUSE_COST
from tests.factories import make_span

LEAVES = (
    st.text()
    | st.integers(MAX_EXPORTED_TEXT - 1, MAX_EXPORTED_TEXT + 1).map(lambda n: "x" * n)
    | st.binary()
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.none()
    | st.decimals(allow_nan=False)
    | st.frozensets(st.integers(), max_size=3)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _exported(hooked: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The span's attributes as exported, and as the OTLP encoder sends them."""
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    observer = TelemetryObserver(provider.get_tracer("t"), None)
    span = make_span()
    observer.on_start(span)
    span.attributes.update(hooked)
    observer.on_end(span)
    (otel,) = exported.get_finished_spans()
    (sent,) = encode_spans([otel]).resource_spans[0].scope_spans[0].spans
    return dict(otel.attributes or {}), {kv.key: kv.value for kv in sent.attributes}


def _leaves(value: Any, depth: int = 0) -> tuple[list[str | bytes], int, int]:
    """Texts and byte strings in an exported value, its items, and its depth."""
    if isinstance(value, str | bytes):
        return [value], 0, depth
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        texts: list[str | bytes] = []
        items, deepest = len(value), depth
        for item in value:
            more, count, level = _leaves(item, depth + 1)
            texts += more
            items += count
            deepest = max(deepest, level)
        return texts, items, deepest
    return [], 0, depth


KEYS = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20).map(
    lambda key: f"app.{key}"  # a hook's own names: ometer's are not its to set
)


def _keys(value: Any) -> int:
    """Characters of the keys of the maps in ``value``."""
    if isinstance(value, dict):
        return sum(len(k) + _keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_keys(item) for item in value)
    return 0


@settings(max_examples=150, deadline=None)
@given(hooked=st.dictionaries(KEYS, VALUES, min_size=1, max_size=3))
def test_every_value_a_hook_sets_is_exported_encodable_and_bounded(hooked: dict[str, Any]) -> None:
    attributes, sent = _exported(hooked)
    for key, value in hooked.items():
        assert key in sent or value is None  # OTLP has no value for None
        texts, items, _ = _leaves(attributes[key])
        keys = _keys(attributes[key])
        # past the bound a text is "…" (one character), and a map's keys have their own
        assert sum(len(text) for text in texts) - keys <= MAX_EXPORTED_TEXT + items
        assert items <= MAX_EXPORTED_ITEMS


def test_a_map_or_bytes_from_a_hook_is_bounded_like_text() -> None:
    attributes, sent = _exported(
        {"app.map": {"a": "z" * 1_000_000}, "app.bytes": b"\xff" * 1_000_000}
    )
    assert len(attributes["app.map"]["a"]) == MAX_EXPORTED_TEXT
    assert attributes["app.map"]["a"].endswith("…")
    assert attributes["app.bytes"] == b"\xff" * MAX_EXPORTED_TEXT
    assert sent["app.bytes"].bytes_value == b"\xff" * MAX_EXPORTED_TEXT


def test_what_the_encoder_dropped_inside_a_map_is_exported_cleaned() -> None:
    attributes, sent = _exported(
        {"app.map": {"odd": "x\ud800y", "big": 2**70, 7: [2**64, "\udfff"]}}
    )
    assert attributes["app.map"] == {
        "odd": "x\ufffdy",
        "big": str(2**70),
        "7": (str(2**64), "\ufffd"),
    }
    assert {kv.key for kv in sent["app.map"].kvlist_value.values} == {"odd", "big", "7"}


def test_a_deeply_nested_value_costs_the_call_its_span_no_more() -> None:
    attributes, sent = _exported({"app.deep": _nested(5_000), "app.ok": 1})
    assert attributes["app.ok"] == 1 and "app.deep" in sent
    _, _, depth = _leaves(attributes["app.deep"])
    assert depth <= 16


def test_values_otlp_has_no_type_for_are_exported_as_their_text() -> None:
    attributes, _ = _exported(
        {"app.cost": Decimal("0.10"), "app.nan": math.nan, "app.none": None, "app.set": {3}}
    )
    assert attributes["app.cost"] == "0.10" and attributes["app.set"] == "{3}"
    assert math.isnan(attributes["app.nan"]) and attributes["app.none"] is None


def _baseline() -> dict[str, Any]:
    attributes, _ = _exported({})
    return attributes


class Unreadable:
    def __str__(self) -> str:
        raise ValueError("no text")


class UnreadableMap(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("cannot be read")


class UnreadableList(list[int]):
    def __iter__(self) -> Any:
        raise RuntimeError("cannot be read")


def test_a_value_that_cannot_be_read_costs_the_span_only_that_attribute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook's key whose ``str()`` raised, or a map or list that could not be read, failed
    the observer: the call's span was never exported, and a traceback was logged."""
    hooked = {
        Unreadable(): "v",
        "app.map": UnreadableMap(a=1),
        "app.list": UnreadableList([1]),
        "app.object": Unreadable(),
        "": "no name",  # the SDK dropped it and logged so at every span
        "app.ok": 1,
    }
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        attributes, sent = _exported(hooked)
    assert {k: v for k, v in attributes.items() if k.startswith("app.")} == {
        "app.object": "<Unreadable>",  # a value without text is its type, as before
        "app.ok": 1,
    }
    assert {"app.object", "app.ok", "ometer.cost"} <= set(sent)  # encoded: the span is sent
    assert _own({k: v for k, v in attributes.items() if not k.startswith("app.")}) == _own(
        _baseline()
    )
    assert [r.getMessage() for r in caplog.records] == [
        "a hook set <Unreadable> (ValueError), app.map (RuntimeError), app.list (RuntimeError), "
        "'' (an empty name) on a span, which could not be exported (its value or name raised "
        "when read, or it has no name), left out; the span is exported without; said once"
    ]
    assert not [r for r in caplog.records if r.exc_info]


def _own(attributes: dict[str, Any]) -> dict[str, Any]:
    """ometer's attributes but the ids, which are each span's own."""
    return {k: v for k, v in attributes.items() if k != "ometer.span.id"}


OMETERS_UNSET = ["ometer.user", "ometer.cost.discount", "gen_ai.usage.cost", LANGFUSE_COST]
"""Names ometer owns that it did not set on this span (no user; a span in EUR has no
Langfuse cost): a hook's value for them is not exported either."""


@settings(max_examples=40, deadline=None)
@given(forged=st.sampled_from(["0", 0, -1, None, 10**30, "", "evil", ["x"], {"total": 99}]))
def test_a_hook_cannot_replace_what_the_call_cost_or_who_it_is_charged_to(forged: Any) -> None:
    """A hook adds attributes (DESIGN §9): its ``ometer.cost`` of 0, its ``ometer.tenant``
    or token counts were exported in place of the measured ones, so a collector, Langfuse or a
    dashboard summing ``ometer.cost`` showed what the hook said, not what the ledger holds."""
    baseline = _baseline()
    hooked = dict.fromkeys([*baseline, *OMETERS_UNSET], forged)
    attributes, _ = _exported({**hooked, "app.job": "nightly"})
    assert attributes.pop("app.job") == "nightly"
    assert _own(attributes) == _own(baseline)
    assert attributes["ometer.tenant"] == "acme" and attributes["ometer.cost"] == "0.000000"
