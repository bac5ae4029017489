"""A reply cap Ollama refuses is refused under a hard budget too; one it reads keeps its meaning.

Under a hard budget the gateway sends Ollama the cap the call was admitted on, in place of
the caller's. A ``max_tokens`` of 0 or -1 on ``/v1/messages`` (which Ollama refuses: it
requires a positive one) was read as "no cap", replaced by ``OMETER_BUDGET_REPLY_CAP``, and
the call ran; a cap past 64 bits (which no Go ``int`` holds, so Ollama refuses the body)
was admitted on a cap another field set, or refused as a budget's 429. Each value is sent
here twice, for a department a hard budget covers and for one none does: the answers
must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.records import MAX_TOKENS
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hello from the crm bot"}]
BUDGETED = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}
FREE = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "support"}
REPLY_CAP = 4096  # OMETER_BUDGET_REPLY_CAP's default
ROUTES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "/v1/messages": ({"messages": HI}, ("max_tokens",)),
    "/v1/chat/completions": ({"messages": HI}, ("max_tokens", "max_completion_tokens")),
    "/v1/completions": ({"prompt": "hello"}, ("max_tokens",)),
    "/v1/responses": ({"input": "hello"}, ("max_output_tokens",)),
    "/api/chat": ({"messages": HI}, ("num_predict",)),
    "/api/generate": ({"prompt": "hello"}, ("num_predict",)),
}
INT64 = range(-(2**63), 2**63)
EDGES = [0, -1, -2, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**70, -(2**63), -(2**63) - 1]
values = (
    st.integers(-3, 40)
    | st.sampled_from(EDGES)
    | st.floats(-3, 40, allow_nan=False)
    | st.sampled_from(["5", True, False, [5], {"n": 5}])
)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ollama_refuses(path: str, field: str, value: object) -> bool:
    """Whether Ollama refuses a body with ``field`` set to ``value`` (its Go source: the
    fields below are Go ``int``s, ``num_predict`` any JSON number; Ollama ignores
    ``max_completion_tokens``, which the gateway reads as a cap all the same)."""
    if field == "num_predict":
        return not (is_int(value) or isinstance(value, float))
    if field == "max_completion_tokens":
        return False  # (only integers are drawn for it)
    if not is_int(value) or value not in INT64:  # type: ignore[operator]
        return True
    return path == "/v1/messages" and value <= 0  # type: ignore[operator]


def cap_read(value: object) -> int | None:
    """The reply cap Ollama reads from a value it takes; None: no cap (0 or less is none).

    A ``num_predict`` past 64 bits Ollama reads as no cap at all (Go's float64 to int64);
    the meter reads it as the largest a span can count, which bounds the call the same."""
    if isinstance(value, float):  # a native option, truncated as Go converts a float
        value = int(value)
    return value if is_int(value) and value > 0 else None  # type: ignore[operator,return-value]


def body_of(path: str, caps: dict[str, object]) -> dict[str, Any]:
    base, _ = ROUTES[path]
    body: dict[str, Any] = {"model": "llama3.1:8b", **base}
    for field, value in caps.items():
        if field == "num_predict":
            body["options"] = {"num_predict": value}
        else:
            body[field] = value
    return body


def cap_sent(path: str, body: dict[str, Any]) -> Any:
    if path == "/v1/responses":
        return body["max_output_tokens"]
    return body["max_tokens"] if path.startswith("/v1/") else body["options"]["num_predict"]


def error_message(path: str, reply: Any) -> str:
    """The refusal's message, checked to be in the route's own error format."""
    answer = reply.json()
    if path == "/v1/messages":
        assert answer["type"] == "error"
        assert set(answer["error"]) == {"type", "message"}
        assert answer["error"]["type"] == "invalid_request_error"
        return str(answer["error"]["message"])
    if path.startswith("/v1/"):
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        return str(answer["error"]["message"])
    assert isinstance(answer["error"], str)
    return str(answer["error"])


@pytest.fixture
def gw(app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    """acme/sales under a hard budget no one call can pass (even one capped at MAX_TOKENS);
    acme/support under none."""
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())
    gw.ledger.save_budget(
        Budget(tenant="acme", department="sales", period="day", limit=10**18, currency="USD")
    )
    return gw


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(sorted(ROUTES)),
    value=values,
    other=st.none() | st.integers(1, 40) | st.sampled_from([2**63, 2**70]),
)
@example(path="/v1/messages", value=0, other=None)
@example(path="/v1/messages", value=-1, other=None)
@example(path="/v1/messages", value=2**70, other=None)
@example(path="/v1/chat/completions", value=2**70, other=5)
@example(path="/v1/chat/completions", value=None, other=2**70)
@example(path="/api/chat", value=2**70, other=None)
def test_a_reply_cap_gets_the_same_answer_with_a_hard_budget_as_without(
    gw: Gateway, emulator: OllamaEmulator, path: str, value: object, other: int | None
) -> None:
    """A value Ollama refuses is one 400 in the route's format, one error span and no spend,
    budget or not; a value it reads keeps its meaning under the budget but for the budget's
    cap (no cap, 0 or -1 on the routes that take it: ``OMETER_BUDGET_REPLY_CAP``)."""
    fields = ROUTES[path][1]
    caps: dict[str, object] = {fields[0]: value} if value is not None else {}
    if len(fields) > 1 and other is not None:  # max_completion_tokens beside max_tokens
        caps[fields[1]] = other
    body = body_of(path, caps)
    refused = any(ollama_refuses(path, f, v) for f, v in caps.items())
    answers = []
    for headers in (FREE, BUDGETED):
        before = gw.ledger.count()
        sent_before = len(emulator.calls)
        reply = gw.client.post(path, json=body, headers=headers)
        (span,) = gw.ledger.latest(SpanFilter(), 1)
        assert gw.ledger.count() == before + 1  # one span for the call, whatever its end
        answers.append(reply)
        if refused:
            assert reply.status_code == 400, (headers, body, reply.text)
            error_message(path, reply)
            assert (span.status, span.output_tokens, span.cost_total) == ("error", 0, 0)
        else:
            assert reply.status_code == 200, (headers, body, reply.text)
            assert span.status == "ok"
        if headers is BUDGETED and not refused:
            (call,) = emulator.calls[sent_before:]
            read = [c for v in caps.values() if (c := cap_read(v)) is not None]
            expected = min([*read, MAX_TOKENS]) if read else REPLY_CAP
            assert cap_sent(path, call.body) == expected, (body, call.body)
            assert span.output_tokens <= expected
    free, budgeted = answers
    assert free.status_code == budgeted.status_code
    if refused:
        assert error_message(path, free) == error_message(path, budgeted)
