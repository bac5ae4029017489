"""A span carries the settings its request asked the model to generate with.

The GenAI conventions recommend on an inference span the request's ``gen_ai.request.*``
settings (max tokens, temperature, top p and k, seed, stop sequences, penalties, choice
count), each where the request set it. ometer exported none. Each wire format names them its
own way (Ollama's ``options``, OpenAI's, Anthropic's and the Responses API's fields); a
caller may send anything in them, and only a value of the right type, finite, goes out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.meter._request import facts_of
from ollama_meter.records import Asked, storable_text
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator
from tests._observed import observed
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span

R = "gen_ai.request."
INT64 = 2**63
MAX_STOPS, MAX_STOP_CHARS = 64, 256

# Route → (where its settings are, its field → the convention's attribute).
ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "chat": ("options", {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                         "seed": "seed", "stop": "stop_sequences",
                         "frequency_penalty": "frequency_penalty",
                         "presence_penalty": "presence_penalty"}),
    "openai.chat": ("body", {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                             "stop": "stop_sequences", "n": "choice.count",
                             "frequency_penalty": "frequency_penalty",
                             "presence_penalty": "presence_penalty"}),
    "anthropic.messages": ("body", {"temperature": "temperature", "top_p": "top_p",
                                    "top_k": "top_k", "stop_sequences": "stop_sequences"}),
    "openai.responses": ("body", {"temperature": "temperature", "top_p": "top_p"}),
}  # fmt: skip
ROUTES["generate"] = ROUTES["chat"]
ROUTES["openai.completions"] = ROUTES["openai.chat"]
CAPS = {
    "chat": ("num_predict",),
    "generate": ("num_predict",),
    "openai.chat": ("max_tokens", "max_completion_tokens"),
    "openai.completions": ("max_tokens", "max_completion_tokens"),
    "anthropic.messages": ("max_tokens",),
    "openai.responses": ("max_output_tokens",),
}
NUMBERS = {"temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"}

GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.just(10**400),
    st.just(-(10**400)),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
VALUES = st.one_of(
    GARBAGE,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=300), max_size=80),
    st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=4),
)


def _number(value: Any) -> float | None:
    """A finite float, or an integer within 64 bits (none larger is a setting)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None if (whole := _integer(value, truncated=False)) is None else float(whole)


def _integer(value: Any, truncated: bool) -> int | None:
    """An integer within 64 bits; in Ollama's options a finite float too, truncated as it
    reads one (its JSON numbers are floats)."""
    if truncated and isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -INT64 <= value < INT64 else None


def _cap(value: Any, truncated: bool) -> int | None:
    value = _integer(value, truncated)
    return value if value is not None and value > 0 else None


def _stops(value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        return None
    return [storable_text(s, MAX_STOP_CHARS) for s in value[:MAX_STOPS]]


def expected(operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the conventions' request settings of ``body`` are, by their definitions."""
    where, names = ROUTES[operation]
    sent = body.get("options") if where == "options" else body
    sent = sent if isinstance(sent, dict) else {}
    want: dict[str, Any] = {}
    for field, name in names.items():
        if field not in sent:
            continue
        value = sent[field]
        if name == "stop_sequences":
            got: Any = _stops(value)
        elif field in NUMBERS:
            got = _number(value)
        elif name == "choice.count":
            got = _cap(value, truncated=False)
        else:
            got = _integer(value, truncated=where == "options")
        if got is not None:
            want[R + name] = got
    source = body.get("options") if where == "options" else body
    caps = [
        _cap(source.get(f), truncated=where == "options")
        for f in CAPS[operation]
        if isinstance(source, dict)
    ]
    if (cap := min((c for c in caps if c is not None), default=None)) is not None:
        want[R + "max_tokens"] = cap
    return want


def exported(operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ``gen_ai.request.*`` settings exported for a call with ``body``, read as the meter reads it."""
    facts = facts_of(operation, body)
    span = make_span(operation=operation, asked=facts.asked)
    attributes = dict(observed(span).attributes or {})
    got = {k: v for k, v in attributes.items() if k.startswith(R) and k != R + "model"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()}


FIELDS = sorted({f for _, names in ROUTES.values() for f in names} | {"num_predict", "n"})


@settings(max_examples=300, deadline=None)
@given(
    operation=st.sampled_from(sorted(ROUTES)),
    sent=st.dictionaries(
        st.sampled_from(FIELDS + [c for caps in CAPS.values() for c in caps]), VALUES, max_size=6
    ),
)
@example(operation="chat", sent={"temperature": "0.7", "top_k": math.nan, "seed": 10**400})
@example(operation="openai.chat", sent={"stop": ["x"] * 10_000, "n": True, "top_p": 0.9})
@example(operation="anthropic.messages", sent={"stop_sequences": ["a", 1], "max_tokens": 8.0})
@example(operation="openai.completions", sent={"max_tokens": 9, "max_completion_tokens": 5})
@example(operation="generate", sent={"num_predict": 8.5, "stop": "\ud800" + "s" * 400})
def test_the_settings_a_request_sets_are_exported_when_well_typed(
    operation: str, sent: dict[str, Any]
) -> None:
    native = ROUTES[operation][0] == "options"
    body: dict[str, Any] = {"model": "m", "prompt": "hi", "messages": []}
    body |= {"options": sent} if native else sent
    assert exported(operation, body) == expected(operation, body)


def test_settings_exported_through_the_python_api_to_a_collector(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the meter and a real OTLP receiver; an embedding exports none."""
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        options = {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                   "seed": 7, "stop": ["\n\n"], "presence_penalty": 0.5,
                   "frequency_penalty": "high"}  # fmt: skip
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}],
                    options=options)  # fmt: skip
        client.embed(model="llama3.1:8b", input="hi", options={"temperature": 0.2})
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        views = wait_for(lambda: s if len(s := spans(rx)) == 2 else None, what="two spans")
        telemetry.shutdown()
    chat, embed = sorted(views, key=lambda v: v.start_ns)
    assert {k: v for k, v in chat.attributes.items() if k.startswith(R)} == {
        R + "model": "llama3.1:8b",
        R + "max_tokens": 64,
        R + "temperature": 0.2,
        R + "top_p": 0.9,
        R + "top_k": 40.0,
        R + "seed": 7,
        R + "stop_sequences": ("\n\n",),  # the receiver decodes an array as a tuple
        R + "presence_penalty": 0.5,  # a text's penalty: not exported, the call unharmed
    }
    assert [k for k in embed.attributes if k.startswith(R)] == [R + "model"]


def test_a_hook_sees_the_settings_its_request_asked_with_nothing_exported(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """The settings are read only for whoever may read them: a hook may, with no exporter."""
    seen: list[Asked | None] = []
    client = MeteredClient(
        db_url=f"sqlite:///{tmp_path / 'l.db'}", on_start=lambda span: seen.append(span.asked)
    )
    client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 5, "temperature": 0.2, "stop": "x"})  # fmt: skip
    assert seen == [Asked(max_tokens=5, temperature=0.2, stop_sequences=("x",))]
