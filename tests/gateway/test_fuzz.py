"""Generated requests against a running gateway: the books stay whole (issue 8, "Proof").

Hypothesis throws bodies (valid, mutated, random JSON, raw bytes), headers and
names (control characters, markup, very long) at the metered and pass-through
routes, and checks after every request:

- no 5xx: with a healthy upstream, anything wrong is the client's mistake;
- every request that reached the meter has exactly one span, and no other does;

and at the end, that the ledger's report sums equal the spans' own costs.
In process for most examples; once more against a real ``ometer serve`` process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.config import load_settings
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.meter import utc_now
from ollama_meter.periods import window_between
from ollama_meter.reports import spend_report
from ollama_meter.testing import OllamaEmulator
from tests._committed import committed
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, key_in_authorization
from tests.gateway.test_security import clean_env, launch, stop

METERED = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embed",
    "/v1/chat/completions": "chat",
    "/v1/completions": "generate",
    "/v1/embeddings": "embed",
    "/v1/messages": "messages",
    "/v1/responses": "responses",
}
OTHERS = ["/api/tags", "/api/show", "/api/ps", "/api/version", "/v1/models", "/api/pull"]
MODELS = ["llama3.1:8b", "qwen2.5:7b", "mistral:7b", "nomic-embed-text"]
OPTIONS = ["num_predict", "temperature", "stop", "seed", "top_k", "num_ctx", "mirostat"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
names = st.one_of(
    st.sampled_from(MODELS),
    st.text(max_size=300),
    st.sampled_from(
        ["[link=http://evil.example/]x[/link]", "a\x1b[2Jb", "=1+1\r=2", " ", "é" * 300]
    ),
)
texts = st.text(max_size=40) | st.text(st.characters(categories=["Cs", "Ll"]), max_size=5)


@st.composite
def valid_body(draw: st.DrawFn, path: str) -> dict[str, Any]:
    kind = METERED[path]
    model = draw(names) if kind != "embed" else draw(st.sampled_from(["nomic-embed-text", *MODELS]))
    body: dict[str, Any] = {"model": model}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": draw(texts)}]
    elif kind == "messages":  # Anthropic's: a reply cap Ollama requires, and content blocks
        content = draw(texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2))  # fmt: skip
        body |= {"max_tokens": draw(st.integers(1, 50)), "messages": [{"role": "user", "content": content}]}  # fmt: skip
    elif kind == "responses":  # the Responses API's: a text, or input items
        body["input"] = draw(texts | st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": texts}), max_size=2))  # fmt: skip
    elif kind == "generate" or path == "/api/embeddings":
        body["prompt"] = draw(texts)
    else:
        body["input"] = draw(texts | st.lists(texts, min_size=1, max_size=3))
    if kind != "embed":
        body["stream"] = draw(st.booleans())
        if path.startswith("/v1/") and draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
        if not path.startswith("/v1/") and draw(st.booleans()):
            body["options"] = draw(st.dictionaries(st.sampled_from(OPTIONS), json_values | st.integers(0, 20), max_size=2))  # fmt: skip
    return body


@st.composite
def request(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    path = draw(st.sampled_from([*METERED, *OTHERS]))
    method = "POST"
    if path in OTHERS and path != "/api/show":
        method = "GET" if path != "/api/pull" else "POST"
    shape = draw(st.sampled_from(["valid", "mutated", "json", "bytes"]))
    if path not in METERED or shape == "json":
        content = json.dumps(draw(json_values)).encode()
    elif shape == "bytes":
        content = draw(st.binary(max_size=200))
    else:
        body = draw(valid_body(path))
        if shape == "mutated":
            key = draw(st.sampled_from([*body, "x_extra"]))
            if draw(st.booleans()):
                body[key] = draw(json_values)
            else:
                body.pop(key, None)
        content = json.dumps(body).encode()
    header_text = st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
    ).map(str.strip)  # what HTTP can carry in a header value
    headers = draw(
        st.dictionaries(
            st.sampled_from(
                ["X-Ometer-Tenant", "X-Ometer-Department", "X-Ometer-User", "Authorization",
                 "X-Ometer-Key", "X-Api-Key", "Content-Type"]
            ),
            st.sampled_from(["acme", "sales", "carol", "om_x", "application/json"]) | header_text,
            max_size=3,
        )
    )  # fmt: skip
    return method, path, headers, content


Send = Callable[[str, str, dict[str, str], bytes], tuple[int, str]]


def presents_a_key(headers: dict[str, str]) -> bool:
    """Whether a request sends one of ometer's keys (none of these is live) in X-Ometer-Key,
    X-Api-Key or Authorization (a bearer, or an ``om_...`` after any scheme or none)."""
    bearer = key_in_authorization(headers.get("Authorization", "")) or ""
    sent = [headers.get("X-Ometer-Key", "").strip(), headers.get("X-Api-Key", "").strip(), bearer]
    return any(key.startswith("om_") for key in sent)


def check(send: Send, ledger: Ledger, example: tuple[str, str, dict[str, str], bytes]) -> None:
    method, path, headers, content = example
    before = ledger.count()
    status, text = send(method, path, headers, content)
    assert status < 500, (method, path, headers, content[:300], status, text[:500])
    # A metered call that sends a key no one issued is refused (401) before it is a call.
    refused = path in METERED and presents_a_key(headers)
    assert (status == 401) is refused, (method, path, headers, status, text[:500])
    metered = path in METERED and not refused
    assert committed(ledger).count() - before == (1 if metered else 0), (
        path,
        content[:300],
        status,
    )


def books_balance(ledger: Ledger) -> None:
    """The report's totals, per department, are the sum of the spans' own costs."""
    spans = ledger.latest(SpanFilter(), 100_000)
    assert spans and len(spans) == ledger.count()
    # Every span, whenever it started: "this month" lost the spans of the last one when the
    # run crossed midnight at a month's end.
    window = window_between(None, None, tz=load_settings().tz, now=utc_now())
    report = spend_report(ledger, window, ["department"], tz=load_settings().tz)
    by_department: dict[str, int] = {}
    for span in spans:
        by_department[span.department] = by_department.get(span.department, 0) + span.cost_total
    assert {str(r["department"]): int(str(r["cost"])) for r in report.rows} == by_department
    assert sum(int(str(r["requests"])) for r in report.rows) == len(spans)
    assert sum(by_department.values()) > 0


def sender(client: httpx.Client) -> Send:
    def send(method: str, path: str, headers: dict[str, str], content: bytes) -> tuple[int, str]:
        reply = client.request(method, path, headers=headers, content=content)
        return reply.status_code, reply.text

    return send


@pytest.fixture
def in_process(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> Iterator[tuple[Send, Ledger]]:
    """A gateway in this process (a uvicorn thread), on a priced ledger, its default
    department under a hard budget no call reaches (each is bounded, capped and settled)."""
    gateway = serve_on(emulator.url, sqlite_url)
    gateway.ledger.add_price_rule(token_prices())
    gateway.ledger.save_budget(Budget("default", "unassigned", "day", 10**15, "USD"))
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield sender(client), gateway.ledger


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(example=request())
@example(example=("POST", "/api/chat", {"Authorization": "om_x"}, b"null"))
def test_generated_requests_in_process(
    in_process: tuple[Send, Ledger], example: tuple[str, str, dict[str, str], bytes]
) -> None:
    send, ledger = in_process
    check(send, ledger, example)


def test_the_books_balance_after_generated_requests(in_process: tuple[Send, Ledger]) -> None:
    send, ledger = in_process

    @settings(max_examples=60, deadline=None)
    @given(example=request())
    def run(example: tuple[str, str, dict[str, str], bytes]) -> None:
        check(send, ledger, example)

    run()
    send("POST", "/api/chat", {}, json.dumps({"model": "llama3.1:8b", "messages": []}).encode())
    books_balance(ledger)


def test_generated_requests_against_a_real_process(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.add_price_rule(token_prices())
    proc, gateway = launch(clean_env(OMETER_DB_URL=url), emulator.url, tmp_path / "gw.log")
    try:
        with httpx.Client(base_url=gateway, timeout=30) as client:
            send = sender(client)

            @settings(max_examples=60, deadline=None)
            @given(example=request())
            def run(example: tuple[str, str, dict[str, str], bytes]) -> None:
                check(send, ledger, example)

            run()
            send(
                "POST",
                "/api/generate",
                {},
                b'{"model": "mistral:7b", "prompt": "hi", "stream": false}',
            )
    finally:
        stop(proc)
    books_balance(ledger)
