"""What a tpm limit counts of a call's prompt at admission, wherever the request puts it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.gateway._rates import IMAGE_TOKENS_SEEN, Admission, OverLimit, RateLimits
from ollama_meter.gateway._requests import parse_request
from ollama_meter.meter import Attribution
from ollama_meter.records import Limit
from tests.factories import make_span

LLAMA = "llama3.1:8b"
SALES = Attribution(tenant="acme", department="sales")


def _tool(size: int) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "description": "x" * size}}


def _request(where: str, tokens: int) -> tuple[str, dict[str, Any]]:
    """A request whose prompt is at least ``tokens`` tokens, all of it in ``where``."""
    chars = 4 * tokens  # about four characters a token
    hi = [{"role": "user", "content": "hi"}]
    if where == "message":
        return "/api/chat", {"model": LLAMA, "messages": [{"role": "user", "content": "x" * chars}]}
    if where == "tools":  # a chat of "hi" with a huge tool definition: Ollama reads it all
        return "/api/chat", {"model": LLAMA, "messages": hi, "tools": [_tool(chars)]}
    if where == "openai tools":
        return "/v1/chat/completions", {"model": LLAMA, "messages": hi, "tools": [_tool(chars)]}
    if where == "context":  # a generate continuing a conversation: its context is prompt tokens
        return "/api/generate", {"model": LLAMA, "prompt": "go on", "context": [1] * tokens}
    if where == "token ids":  # OpenAI accepts an embedding's input as token ids
        return "/v1/embeddings", {"model": LLAMA, "input": [[7] * tokens]}
    if where == "tool call":  # an assistant's earlier tool call, its arguments written as JSON
        call = {"function": {"name": "f", "arguments": {"text": "x" * chars}}}
        said = {"role": "assistant", "content": "", "tool_calls": [call]}
        return "/api/chat", {"model": LLAMA, "messages": [*hi, said]}
    raise AssertionError(where)


def _admit(rates: RateLimits, path: str, body: dict[str, Any], inline: bool) -> object:
    parsed = parse_request(path, json.dumps(body).encode())
    return asyncio.run(rates.admit_request(parsed, SALES, inline=inline))


@settings(max_examples=60, deadline=None)
@given(
    where=st.sampled_from(
        ["message", "tools", "openai tools", "context", "token ids", "tool call"]
    ),
    tokens=st.integers(50, 5_000),
    inline=st.booleans(),
)
def test_a_prompt_larger_than_the_tpm_is_refused_wherever_the_request_puts_it(
    where: str, tokens: int, inline: bool
) -> None:
    """The README: a call's prompt counts when it is admitted, so neither calls running at
    once nor one huge prompt slip under a tpm. A prompt sent as tool definitions, as an
    earlier tool call, as a generate's context or as token ids is a prompt too: counted as
    nothing, any number of such calls ran at once under a tpm far below them."""
    path, body = _request(where, tokens)
    rates = RateLimits()
    rates.load([Limit("acme", "sales", tpm=tokens - 1)])
    with pytest.raises(OverLimit) as refused:
        _admit(rates, path, body, inline)
    assert "so no wait would let it in" in str(refused.value)
    assert refused.value.retry_after is None  # final: no wait would let it in


class _RacingClock:
    """A clock whose next reading starts a call ending on another thread (``between``), as a
    span ends on a ledger thread just as a call is admitted on the loop; the reading waits
    for it unless the reader holds the limits' lock (the other thread then waits for that)."""

    def __init__(self, now: int, rates_lock: Any) -> None:
        self.now = now
        self.lock = rates_lock
        self.between: Callable[[], None] | None = None
        self.thread: threading.Thread | None = None

    def __call__(self) -> int:
        read = self.now
        if (between := self.between) is not None:
            self.between = None
            self.now += 10**9
            self.thread = threading.Thread(target=between)
            self.thread.start()
            if not self.lock.locked():
                self.thread.join()
        return read


def test_a_call_ending_as_another_is_admitted_leaves_the_minute_in_order() -> None:
    """The admitted call read the clock before it took the lock: a call that ended meanwhile
    counted its tokens at a later moment, ahead of the prompt counted at the earlier one.
    The minute, kept in order, then held that prompt past its 60 s: a call that fitted then
    was refused."""
    S = 10**9
    rates = RateLimits()
    clock = _RacingClock(1000 * S, rates._lock)
    rates.clock = clock
    rates.load([Limit("acme", "sales", tpm=1_000)])
    ended = make_span(tenant="acme", department="sales", input_tokens=500, output_tokens=0)
    clock.between = lambda: rates.on_end(ended)
    rates.admit("acme", "sales", tokens=400)
    assert clock.thread is not None
    clock.thread.join()
    clock.now = 1060 * S  # the prompt is a minute old; the 500 tokens of the call that ended
    rates.admit("acme", "sales", tokens=500)  # a second younger leave room for 500


_PICTURE = "iVBORw0KGgoAAAANSUhEUg=="  # base64: what a client sends of an image


def _with_images(where: str, images: int) -> tuple[str, dict[str, Any]]:
    """A request of "hi" with ``images`` images, where each wire format puts them."""
    url = f"data:image/png;base64,{_PICTURE}"
    if where == "chat":
        said = {"role": "user", "content": "hi", "images": [_PICTURE] * images}
        return "/api/chat", {"model": LLAMA, "messages": [said]}
    if where == "generate":
        return "/api/generate", {"model": LLAMA, "prompt": "hi", "images": [_PICTURE] * images}
    if where == "openai":
        parts = [{"type": "text", "text": "hi"}]
        parts += [{"type": "image_url", "image_url": {"url": url}}] * images
        return "/v1/chat/completions", {
            "model": LLAMA,
            "messages": [{"role": "user", "content": parts}],
        }
    if where == "responses":
        parts = [{"type": "input_text", "text": "hi"}]
        parts += [{"type": "input_image", "image_url": url}] * images
        return "/v1/responses", {"model": LLAMA, "input": [{"role": "user", "content": parts}]}
    if where == "messages":
        source = {"type": "base64", "media_type": "image/png", "data": _PICTURE}
        blocks = [{"type": "text", "text": "hi"}, *[{"type": "image", "source": source}] * images]
        body = {"model": LLAMA, "max_tokens": 9, "messages": [{"role": "user", "content": blocks}]}
        return "/v1/messages", body
    raise AssertionError(where)


@settings(max_examples=40, deadline=None)
@given(
    where=st.sampled_from(["chat", "generate", "openai", "responses", "messages"]),
    images=st.integers(1, 40),
    inline=st.booleans(),
)
def test_images_count_toward_the_tpm_yet_never_make_a_call_one_no_wait_lets_in(
    where: str, images: int, inline: bool
) -> None:
    """Ollama counts an image's tokens in the prompt (a few hundred to a few thousand a
    picture): counted as nothing at admission, any number of pictures ran at once under a
    tpm far below them. Each counts about IMAGE_TOKENS_SEEN now; but a model may count a
    picture as a few tokens, so pictures alone never make a call one no wait would let in:
    one fills at most an empty minute."""
    path, body = _with_images(where, images)
    rates = RateLimits()
    rates.load([Limit("acme", "sales", tpm=IMAGE_TOKENS_SEEN * 4)])
    first = _admit(rates, path, body, inline)  # however many pictures: an empty minute
    assert isinstance(first, Admission)
    counted = sum(event[1] for _, event in first.prompt)
    assert counted == min(IMAGE_TOKENS_SEEN * images + 1, IMAGE_TOKENS_SEEN * 4)
    if images >= 4:  # the minute is full while it runs
        with pytest.raises(OverLimit) as over:
            _admit(rates, path, _with_images(where, 0)[1], inline=True)
        assert over.value.retry_after == 60
