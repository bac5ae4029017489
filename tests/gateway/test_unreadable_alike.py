"""An answer that does not read as Ollama's API has it is one failure, whoever meters it.

A stream whose first line is not JSON was ``upstream_error`` through the Python API (the
``ollama`` client's JSONDecodeError, classified as unexpected) and ``stream_error`` through
the gateway (its relay's Malformed, a broken stream). Both now ask ``_classify.unreadable``:
the same call to the same hostile server leaves the same span either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_meter import MeteredClient, UpstreamError
from ollama_meter.ledger import Ledger, SpanFilter
from tests._raw_http import answering
from tests.factories import token_prices
from tests.gateway.conftest import Gateway

ASKED = [{"role": "user", "content": "hello there from the hostile test"}]
DONE = b'{"model":"m","message":{"role":"assistant","content":"hi"},"done":true}'
BODIES = {
    "not JSON": b"garbage\n" + DONE + b"\n",
    "not an object": b"[1, 2]\n" + DONE + b"\n",
    "not UTF-8": b'{"model":"m","message":{"role":"assistant","content":"\xff"},"done":false}\n'
    + DONE
    + b"\n",
}


@pytest.fixture
def hostile() -> Iterator[Any]:
    with answering() as server:
        yield server


def kept(span: Any) -> tuple[object, ...]:
    return (
        span.status,
        span.error_type,
        span.input_tokens,
        span.output_tokens,
        span.token_source,
        span.cost_total,
        span.error_message.split(" has it: ")[0],  # what, not the reason said in its own words
    )


@pytest.mark.parametrize(
    ("what", "stream"),
    # A streamed line that is not UTF-8 the ollama client reads with its bytes replaced:
    # no error to classify (the gateway's is a stream_error).
    [(w, s) for w in sorted(BODIES) for s in (True, False) if (w, s) != ("not UTF-8", True)],
)
def test_an_unreadable_answer_leaves_the_same_span_through_the_api_and_the_gateway(
    serve_on: Callable[..., Gateway], hostile: Any, tmp_path: Path, what: str, stream: bool
) -> None:
    hostile.answer = (200, {"content-type": "application/x-ndjson"}, BODIES[what])
    url = f"http://127.0.0.1:{hostile.server_address[1]}"
    gateway_db, api_db = (f"sqlite:///{tmp_path / name}.db" for name in ("gateway", "api"))
    gw = serve_on(url, gateway_db, config={"retries": 0})
    gw.ledger.add_price_rule(token_prices())
    reply = gw.client.post("/api/chat", json={"model": "m", "messages": ASKED, "stream": stream})
    assert reply.status_code == (200 if stream else 502)
    (through_gateway,) = gw.ledger.latest(SpanFilter(), 5)
    with MeteredClient(url, db_url=api_db, retries=0) as client:
        client.meter.ledger.add_price_rule(token_prices())

        def call() -> None:
            answer = client.chat(model="m", messages=ASKED, stream=stream)
            if stream:
                list(answer)  # type: ignore[call-overload]

        with pytest.raises(UpstreamError):
            call()
    (through_api,) = Ledger(api_db).latest(SpanFilter(), 5)
    assert kept(through_api) == kept(through_gateway)
    assert through_api.error_type == "stream_error"
    assert through_api.cost_total > 0  # Ollama answered 200: its prompt was evaluated
