"""A prompt count no honest Ollama gives for a request with pictures is charged as the most
it could be.

A request carrying a picture was charged whatever prompt count the upstream said: one small
picture reported as 10^18 prompt tokens was charged 2**31 - 1 (2,147 USD at 1,000 USD per 1M),
with or without a hard budget. A still picture counts at most ``PICTURE_TOKENS`` (twice what
any vision model's own configuration gives one) and, past it, a token a 14-pixel square of it
(a model that stretches a thin picture to fill its budget): the request's text bound plus
that for each picture is what the call is charged, ``estimated``, with a warning. An honest
count is charged exactly, whatever the pictures' sizes (the oracle here is what real models'
image processors count, not the meter's own rule).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import math
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter import Attribution, Opening
from ollama_meter.meter._media import PICTURE_TOKENS, PIXELS_A_TOKEN, picture_pixels
from ollama_meter.meter._request import facts_of
from ollama_meter.testing import Fault, OllamaEmulator
from ollama_meter.upstream import Final
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.meter.test_audio_bound import wire_bodies
from tests.meter.test_video_bound import ANIMATED_GIF, JPEG

ROUTES = {
    "chat": "/api/chat",
    "generate": "/api/generate",
    "openai.chat": "/v1/chat/completions",
    "openai.responses": "/v1/responses",
    "anthropic.messages": "/v1/messages",
}
_departments = itertools.count()


def png(width: int, height: int) -> bytes:
    """A PNG of ``width`` by ``height`` pixels as its header says (its data one row of it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 64))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def with_pictures(operation: str, pictures: list[bytes]) -> dict[str, Any]:
    """A request in ``operation``'s wire format carrying ``pictures`` (and a word of text)."""
    bodies = [wire_bodies(base64.b64encode(p).decode())[operation] for p in pictures]
    body: dict[str, Any] = {"model": "llama3.1:8b", **bodies[0]}
    if operation == "generate":
        body["images"] = [image for b in bodies for image in b["images"]]
        return body
    key = "input" if operation == "openai.responses" else "messages"
    body[key] = [message for b in bodies for message in b[key]]
    if operation == "anthropic.messages":
        for message in body[key]:
            message["content"][0]["source"]["media_type"] = "image/png"
    return body


def real_tokens(width: int, height: int) -> int:
    """The most tokens a real vision model counts of a still picture of this size, and the
    markers around them: Qwen2-VL and Qwen2.5-VL at their own configuration (a token a
    28-pixel square, of at most 12,845,056 pixels: 16,384), Gemma 4 as Ollama runs it (the
    picture stretched to 280 tokens of 48-pixel squares, a side at least one square: a thin
    picture counts more), Llama 3.2 Vision (4 tiles of 1,601), LLaVA-NeXT (5 of 576)."""
    qwen = 0
    if min(width, height) >= 28 and max(width, height) / min(width, height) <= 200:
        h, w = round(height / 28) * 28, round(width / 28) * 28
        if h * w > 12_845_056:
            beta = math.sqrt(height * width / 12_845_056)
            h, w = math.floor(height / beta / 28) * 28, math.floor(width / beta / 28) * 28
        elif h * w < 3_136:
            beta = math.sqrt(3_136 / (height * width))
            h, w = math.ceil(height * beta / 28) * 28, math.ceil(width * beta / 28) * 28
        qwen = h * w // 784
    factor = math.sqrt(280 * 48 * 48 / (width * height))
    side_h = max(48, math.floor(factor * height / 48) * 48)
    side_w = max(48, math.floor(factor * width / 48) * 48)
    gemma4 = side_h // 48 * (side_w // 48)
    return max(qwen, gemma4, 4 * 1_601, 5 * 576) + 8


def _text_most(operation: str, body: dict[str, Any]) -> int:
    """The most the request's text counts (its pictures apart): the bound of 53c2e9f."""
    facts = dataclasses.replace(facts_of(operation, body), images=0, media=None)
    most = facts.prompt_most()
    assert most is not None
    return most


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("operation", sorted(ROUTES))
def test_a_wild_prompt_count_for_a_picture_is_charged_the_most_the_request_could_count(
    sqlite_app: Gateway,
    emulator: OllamaEmulator,
    operation: str,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqlite_app.ledger.add_price_rule(token_prices())  # 1,000 micro-USD a prompt token
    emulator.inject(Fault.INFLATE_COUNTS)  # reports 10**18 prompt tokens
    department = f"p{next(_departments)}"
    body = {**with_pictures(operation, [png(1, 1)]), "stream": stream}
    if operation == "openai.chat" and stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        answer = sqlite_app.client.post(ROUTES[operation], json=body, headers=headers)
        sqlite_app.settle()
    assert answer.status_code == 200, answer.text
    (span,) = sqlite_app.ledger.latest(SpanFilter(department=department), 5)
    most = _text_most(operation, body) + PICTURE_TOKENS  # a pixel: no token past the allowance
    assert (span.input_tokens, span.token_source) == (most, "estimated")
    assert span.cost_tokens == most * 1_000 + span.output_tokens * 2_000
    assert f"can count at most {most}" in caplog.text
    assert "1 picture" in caplog.text


sizes = st.one_of(
    st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)),
    st.tuples(st.integers(1, 4), st.integers(1, 10**7)),  # a thin picture, stretched
    st.tuples(st.integers(1, 10**7), st.integers(1, 4)),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    operation=st.sampled_from(sorted(ROUTES)),
    pictures=st.lists(sizes, min_size=1, max_size=3),
    over=st.integers(-(2**31), 2**31),
)
def test_an_honest_count_for_pictures_is_charged_exactly_and_a_lying_one_is_cut(
    sqlite_app: Gateway, operation: str, pictures: list[tuple[int, int]], over: int
) -> None:
    """Any still pictures, in any wire format: a count up to the text's bound and what real
    models count of the pictures is never cut; one past the meter's bound is cut to it."""
    body = with_pictures(operation, [png(w, h) for w, h in pictures])
    facts = facts_of(operation, body)
    most = facts.prompt_most()
    assert most is not None
    honest = _text_most(operation, body) + sum(real_tokens(w, h) for w, h in pictures)
    assert honest <= most  # what real models count is within the bound
    extra = sum(w * h for w, h in pictures) // PIXELS_A_TOKEN
    assert most == _text_most(operation, body) + len(pictures) * PICTURE_TOKENS + extra
    said = max(0, most + over)
    call = sqlite_app.meter.open(
        Opening(operation, "llama3.1:8b", False, Attribution("acme", "pictures"), facts)
    )
    call.observe(Final(input_tokens=said, output_tokens=3, done_reason="stop"))
    span = sqlite_app.meter.close(call)
    if said <= most:
        assert (span.input_tokens, span.token_source) == (said, "reported")
    else:
        assert (span.input_tokens, span.token_source) == (most, "estimated")


@pytest.mark.parametrize("operation", sorted(ROUTES))
def test_a_video_where_a_picture_goes_is_charged_as_reported(
    sqlite_app: Gateway, operation: str
) -> None:
    """A moving picture (a video a model reads as frames) has no bound: its count stands."""
    facts = facts_of(operation, with_pictures(operation, [ANIMATED_GIF]))
    assert facts.prompt_most() is None
    call = sqlite_app.meter.open(
        Opening(operation, "llama3.1:8b", False, Attribution("acme", "video"), facts)
    )
    call.observe(Final(input_tokens=10**7, output_tokens=3, done_reason="stop"))
    span = sqlite_app.meter.close(call)
    assert (span.input_tokens, span.token_source) == (10**7, "reported")


_RIFF = b"RIFF\x00\x00\x00\x00WEBP"


@pytest.mark.parametrize(
    ("data", "pixels"),
    [
        (png(300, 200), 60_000),
        (png(300, 200)[:20], 0),  # cut short: no decoder reads it
        (b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 8, 60_000),
        (b"BM" + b"\x00" * 16 + struct.pack("<ii", 300, -200) + b"\x00" * 30, 60_000),  # top-down
        (JPEG, 16 * 16),
        (_RIFF + b"VP8 " + b"\x00" * 10 + struct.pack("<HH", 300 | 0x4000, 200), 60_000),
        (_RIFF + b"VP8L" + b"\x00" * 4 + b"\x2f" + (299 | 199 << 14).to_bytes(4, "little"), 60_000),
        (
            _RIFF
            + b"VP8X"
            + b"\x00" * 8
            + (299).to_bytes(3, "little")
            + (199).to_bytes(3, "little"),
            60_000,
        ),
    ],
    ids=["png", "short-png", "gif", "bmp", "jpeg", "webp", "webp-lossless", "webp-extended"],
)
def test_a_pictures_pixels_are_read_from_its_header(data: bytes, pixels: int) -> None:
    assert picture_pixels(data) == pixels


LIMIT = 10_000_000
"""A hard budget of 10 USD: room for one call's bound (a picture's 4,096 tokens at 1,000
micro-USD each, 8 reply tokens at 2,000), not for a count cut to what no honest server
passes (some 65,600 prompt tokens for a picture, 32,800 for text; 32,768 reply tokens)."""


@pytest.mark.parametrize("fault", [Fault.INFLATE_COUNTS, Fault.INFLATE_REPLY])
@pytest.mark.parametrize("pictures", [0, 1], ids=["text", "picture"])
def test_a_lying_count_under_a_hard_budget_is_charged_no_more_than_its_admission(
    sqlite_app: Gateway,
    emulator: OllamaEmulator,
    fault: Fault,
    pictures: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A count cut as no honest server's is an estimate: a hard budget admitted the call on
    its bound, and one lying answer does not carry its spend past the limit."""
    gw = sqlite_app
    gw.ledger.add_price_rule(token_prices())
    department = f"h{next(_departments)}"
    gw.ledger.save_budget(Budget("acme", department, "day", LIMIT, "USD"))
    assert gw.meter.budgets is not None
    gw.meter.budgets.reload_soon()
    emulator.inject(fault)
    headers = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": department}
    body = with_pictures("chat", [png(1, 1)] * pictures) if pictures else {
        "model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}]
    }  # fmt: skip
    body |= {"stream": False, "options": {"num_predict": 8}}
    with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
        answer = gw.client.post("/api/chat", json=body, headers=headers)
        gw.settle()
    assert answer.status_code == 200, answer.text
    (span,) = gw.ledger.latest(SpanFilter(department=department), 5)
    assert (span.status, span.token_source) == ("ok", "estimated")
    assert span.cost_total <= LIMIT  # charged what it was admitted on, at most
    assert span.output_tokens <= 8
    assert "no more than it was admitted on" in caplog.text
