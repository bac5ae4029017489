"""A stream whose final chunk (``"done": true``, with its counts) comes more than once.

Ollama's API ends a stream with one object saying ``"done": true`` and the call's figures;
nothing follows it. An upstream that sends more (the final chunk again, other figures,
pieces, an error, garbage) lies. The gateway reads its answer to the first final chunk and
no further: the client gets the answer its span describes, charged by that chunk. The
Python API read on, handed the chunks after the end to the caller and charged the call by
the last final chunk. Both now end the answer at its first final chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter import AsyncMeteredClient, MeteredClient
from ollama_meter.ledger import SpanFilter
from tests.factories import token_prices
from tests.gateway.conftest import Gateway, settle
from tests.gateway.test_lying_finals import ScriptedUpstream, _request

models = itertools.count()


def _piece(path: str, text: str) -> dict[str, Any]:
    said = {"message": {"role": "assistant", "content": text}} if path == "/api/chat" else {}
    return {"model": "m", **(said or {"response": text}), "done": False}


def _final(path: str, prompt: int, reply: int) -> dict[str, Any]:
    end = _piece(path, "")
    return end | {
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": prompt,
        "eval_count": reply,
    }


figures = st.tuples(st.integers(1, 12), st.integers(0, 40))
after = st.one_of(
    figures.map(lambda f: ("final", f)),
    st.just(("same final", None)),
    st.just(("piece", None)),
    st.just(("error", None)),
    st.just(("garbage", None)),
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, list[bytes], tuple[int, int]]:
    """A stream: its pieces, its first final chunk, then a second final and whatever else;
    and the first final chunk's figures."""
    path = draw(st.sampled_from(["/api/chat", "/api/generate"]))
    texts = draw(st.lists(st.sampled_from(["hel", "lo", " there", "!"]), min_size=1, max_size=4))
    prompt = draw(st.integers(1, 12))
    reply = draw(st.integers(len(texts), len(texts) + 6))
    first = _final(path, prompt, reply)
    lines = [json.dumps(_piece(path, text)).encode() for text in texts]
    lines.append(json.dumps(first).encode())
    second = draw(st.one_of(figures.map(lambda f: ("final", f)), st.just(("same final", None))))
    for kind, more in [second, *draw(st.lists(after, max_size=3))]:
        if kind == "final":
            lines.append(json.dumps(_final(path, *more)).encode())
        elif kind == "same final":
            lines.append(json.dumps(first).encode())
        elif kind == "piece":
            lines.append(json.dumps(_piece(path, "more")).encode())
        elif kind == "error":
            lines.append(b'{"error": "boom"}')
        else:
            lines.append(b"\xff not json {")
    return path, lines, (prompt, reply)


@pytest.fixture
def upstream(
    app_on: Callable[..., Gateway], sqlite_url: str
) -> Iterator[tuple[Gateway, ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    try:
        gw = app_on(scripted.url, sqlite_url, config={"retries": 0})
        gw.ledger.add_price_rule(token_prices())
        yield gw, scripted, sqlite_url
    finally:
        scripted.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answer=answers())
@example(
    answer=(
        "/api/chat",
        [
            json.dumps(_piece("/api/chat", "hi")).encode(),
            json.dumps(_final("/api/chat", 3, 1)).encode(),
            json.dumps(_final("/api/chat", 9, 30)).encode(),
        ],
        (3, 1),
    )
)
def test_a_stream_is_charged_once_by_its_first_final_chunk(
    upstream: tuple[Gateway, ScriptedUpstream, str],
    answer: tuple[str, list[bytes], tuple[int, int]],
) -> None:
    gw, scripted, db = upstream
    path, lines, (prompt, reply) = answer
    model = f"m{next(models)}"
    scripted.script[model] = b"\n".join(lines) + b"\n"
    request = _request(path, model, True)
    operation = path.removeprefix("/api/")
    end = lines.index(next(line for line in lines if b'"done": true' in line))
    shown = [json.loads(line) for line in lines[: end + 1]]  # the answer, to its end

    def said(chunk: Any) -> dict[str, Any]:
        return {k: v for k, v in chunk.model_dump(exclude_none=True).items() if k in shown[0]}

    with MeteredClient(scripted.url, department="sdk", db_url=db, retries=0) as client:
        chunks = list(getattr(client, operation)(**request))
        settle(client.meter)
    assert [c.done for c in chunks] == [c["done"] for c in shown]
    assert (chunks[-1].prompt_eval_count, chunks[-1].eval_count) == (prompt, reply)
    assert chunks[-1].meter is not None and chunks[-1].meter.output_tokens == reply

    async def on_a_loop() -> list[Any]:
        async with AsyncMeteredClient(scripted.url, department="aio", db_url=db) as aio:
            got = [c async for c in await getattr(aio, operation)(**request)]
            settle(aio.meter)
            return got

    assert [said(c) for c in asyncio.run(on_a_loop())] == [said(c) for c in chunks]
    reply_body = gw.client.post(path, json=request, headers={"X-Ometer-Department": "gw"})
    assert [json.loads(line) for line in reply_body.text.splitlines()] == shown
    for department in ("sdk", "aio", "gw"):
        (span,) = [
            s
            for s in gw.ledger.latest(SpanFilter(department=department), 5)
            if s.request_model == model
        ]
        assert (span.status, span.token_source) == ("ok", "reported"), (department, span)
        assert (span.input_tokens, span.output_tokens) == (prompt, reply), department
        assert span.cost_tokens == prompt * 1000 + reply * 2000
