"""The gateway's own span observers only read the spans they are told of: the meter then
skips the pass that makes a span storable again after them (``may_change_spans``)."""

from __future__ import annotations

import copy

from hypothesis import given, strategies as st

from ollama_meter.gateway._metrics import GatewayMetrics
from ollama_meter.gateway._rates import RateLimits
from ollama_meter.meter._observers import may_change_spans
from ollama_meter.records import Limit, Status
from tests.factories import make_span

_TEXT = st.text(max_size=12)


@given(
    tenant=_TEXT,
    department=_TEXT,
    model=_TEXT,
    status=st.sampled_from(list(Status)),
    tokens=st.integers(0, 10**6),
    tags=st.dictionaries(_TEXT, _TEXT, max_size=3),
    limited=st.booleans(),
)
def test_the_gateways_own_observers_leave_a_span_as_it_was(
    tenant: str,
    department: str,
    model: str,
    status: Status,
    tokens: int,
    tags: dict[str, str],
    limited: bool,
) -> None:
    span = make_span(
        tenant=tenant,
        department=department,
        request_model=model,
        response_model=model or None,
        status=status,
        input_tokens=tokens,
        output_tokens=tokens,
        tags=tags,
    )
    rates = RateLimits()
    if limited:
        rates.load([Limit(tenant, department, tpm=10, rpm=10)])
    observers = [GatewayMetrics(), rates]
    assert not may_change_spans(observers)
    before = copy.deepcopy(span.as_row())
    for observer in observers:
        observer.on_start(span)
        observer.on_end(span)
    observers[0].text()  # counted now (on an event loop it waits for the answer's last byte)
    assert span.as_row() == before


def test_any_other_observer_may_change_a_span_so_it_is_made_storable_again() -> None:
    class Hook:
        def on_start(self, span: object) -> None: ...

        def on_end(self, span: object) -> None: ...

    assert may_change_spans([GatewayMetrics(), Hook()])
    assert not may_change_spans([])
