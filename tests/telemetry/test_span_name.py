"""A call that named no model is a span named by its operation alone.

The conventions name an inference span ``{gen_ai.operation.name} {gen_ai.request.model}``
and set the model only where the request has one. A request with no model (refused
``bad_request`` before it was sent) was a span named ``chat `` (a trailing blank: a name of its
own beside ``chat`` in a backend's list) with ``gen_ai.request.model`` empty.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.records import Status
from ollama_meter.telemetry import _semconv as sc
from tests._observed import observed
from tests.factories import make_span


@pytest.mark.parametrize("model", ["", " ", "  "])
@pytest.mark.parametrize("operation", ["chat", "openai.chat", "generate", "embed"])
def test_a_call_with_no_model_is_named_by_its_operation(model: str, operation: str) -> None:
    span = make_span(
        operation=operation,
        request_model=model,
        status=Status.ERROR,
        error_type="bad_request",
    )
    otel = observed(span)
    attributes = dict(otel.attributes or {})
    assert otel.name == sc.OPERATION_NAMES[operation]
    assert sc.GEN_AI_REQUEST_MODEL not in attributes
    assert attributes[sc.GEN_AI_OPERATION_NAME] == sc.OPERATION_NAMES[operation]


@settings(max_examples=50, deadline=None)
@given(model=st.text(min_size=1, max_size=20).filter(str.strip))
def test_a_call_with_a_model_is_named_by_its_operation_and_model(model: str) -> None:
    otel = observed(make_span(operation="chat", request_model=model))
    attributes = dict(otel.attributes or {})
    assert otel.name == f"chat {attributes[sc.GEN_AI_REQUEST_MODEL]}"
