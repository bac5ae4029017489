"""A video sent where pictures go has no bound; only a still picture is bounded as one.

Ollama hands every item of a request's ``images`` (OpenAI's ``image_url`` data URLs,
Anthropic's base64 sources, the Responses API's ``input_image``) to the model as bytes.
Qwen3-VL (``model/models/qwen3vl``, ``EncodeMultimodal``) first decodes them as a picture;
bytes that are none it hands to ffmpeg as a video, a frame a second, each frame up to a
picture's tokens: an hour of 64-pixel frames (a few hundred kilobytes) is 1,800 frame pairs
of some 80 tokens each, 150,000 tokens, as far as the context the caller asks for goes. A
hard budget bounded every such item as one picture (4,096 tokens) and admitted the call. Now
only media a model reads as one still picture (PNG, JPEG, GIF, WebP, BMP) is bounded as
one, a WAV by its length; anything else, a moving picture or bytes no picture decoder
reads, has no bound, and a hard budget refuses it before Ollama.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets import Budget
from ollama_meter.ledger import SpanFilter
from ollama_meter.meter._media import picture_items
from ollama_meter.meter._request import facts_of
from ollama_meter.records import MAX_TOKENS
from ollama_meter.testing import OllamaEmulator
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.meter.test_audio_bound import wav, wire_bodies

OPERATIONS = ["chat", "generate", "openai.chat", "openai.responses", "anthropic.messages"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + b"\x00\x00\x00\x00"


PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", b"\x00" * 13)
    + _chunk(b"IDAT", b"x")
    + _chunk(b"IEND", b"")
)
APNG = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", b"\x00" * 13)
    + _chunk(b"acTL", struct.pack(">II", 900, 0))
    + _chunk(b"IDAT", b"x")
    + _chunk(b"IEND", b"")
)
_SOF0 = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
_SOF3 = b"\xff\xc3" + _SOF0[2:]  # lossless: Go's decoder refuses it
_JFIF = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_SCAN = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12\x34" + b"\xff\xd9"
JPEG = b"\xff\xd8" + _JFIF + _SOF0 + _SCAN
LARGE_JPEG = JPEG[:-2] + b"\x00" * 100_000 + b"\xff\xd9"  # read off the event loop
LOSSLESS_JPEG = b"\xff\xd8" + _JFIF + _SOF3 + _SCAN
MOTION_JPEG = LOSSLESS_JPEG + JPEG * 30  # the first one no Go decoder reads: ffmpeg's frames
_GIF_HEAD = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
_GIF_FRAME = b"\x21\xf9\x04\x00\x64\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"
_GIF_FRAME += b"\x02\x02\x44\x01\x00"
GIF = _GIF_HEAD + _GIF_FRAME + b"\x3b"
ANIMATED_GIF = _GIF_HEAD + _GIF_FRAME * 3 + b"\x3b"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x0e\x00\x00\x00" + b"\x00" * 14
ANIMATED_WEBP = b"RIFF\x30\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x02" + b"\x00" * 9 + b"ANIM"
BMP = b"BM" + b"\x00" * 60
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00\x00\x00\x08free" + b"\x00" * 64
WEBM = b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x86\x81\x01" + b"\x00" * 64
AVI = b"RIFF\x00\x10\x00\x00AVI LIST" + b"\x00" * 64
MPEG_TS = (b"\x47" + b"\x00" * 187) * 4

PHONE_JPEG = (
    JPEG[:2] + (b"\xff\xe1\x00\x14Exif\x00\x00" + JPEG[:12]) + JPEG[2:] + JPEG * 3
)  # thumbnail, maps
STILL = {"png": PNG, "jpeg": JPEG, "phone-jpeg": PHONE_JPEG, "gif": GIF, "webp": WEBP, "bmp": BMP}
MOVING = {
    "mp4": MP4,
    "webm": WEBM,
    "avi": AVI,
    "mpeg-ts": MPEG_TS,
    "apng": APNG,
    "animated-gif": ANIMATED_GIF,
    "animated-webp": ANIMATED_WEBP,
    "motion-jpeg": MOTION_JPEG,
    "lossless-jpeg": LOSSLESS_JPEG,
}


def bound(operation: str, media: bytes) -> int:
    body = {"model": "qwen3-vl", **wire_bodies(base64.b64encode(media).decode())[operation]}
    return facts_of(operation, body).bound(1).input_tokens


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", sorted(MOVING))
def test_a_moving_picture_in_any_wire_format_has_no_bound(operation: str, kind: str) -> None:
    assert bound(operation, MOVING[kind]) >= MAX_TOKENS


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", sorted(STILL))
def test_a_still_picture_is_bounded_as_one(operation: str, kind: str) -> None:
    assert bound(operation, STILL[kind]) == bound(operation, PNG) < 10_000


def test_a_video_in_a_tools_output_has_no_bound() -> None:
    """A Responses ``function_call_output`` may answer with pictures, as a tool result may."""
    url = f"data:;base64,{base64.b64encode(MP4).decode()}"
    output = {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image", "image_url": url}]}  # fmt: skip
    body = {"model": "qwen3-vl", "input": [output]}
    facts = facts_of("openai.responses", body)
    assert facts.images == 1
    assert facts.bound(1).input_tokens >= MAX_TOKENS


def test_raw_bytes_from_python_callers_are_read_alike() -> None:
    for sent, unbounded in ((MP4, True), (ANIMATED_GIF, True), (JPEG, False), (b"\x89PNG", False)):
        body = {"model": "qwen3-vl", "prompt": "hi", "images": [sent]}
        assert (facts_of("generate", body).bound(1).input_tokens >= MAX_TOKENS) is unbounded


def test_text_that_only_looks_like_media_outside_a_picture_is_text() -> None:
    """Only where Ollama reads a picture: base64 of a video in a message's text is text."""
    text = base64.b64encode(MP4).decode()
    body = {"model": "qwen3-vl", "messages": [{"role": "user", "content": text}]}
    assert facts_of("chat", body).bound(1).input_tokens < 1_000
    # A tool that takes pictures, and a call of it: their arguments are text too.
    tool = {"type": "function", "function": {"name": "draw", "parameters": {"type": "object", "properties": {"images": {"type": "array", "description": "pictures to draw from"}, "image_url": {"type": "string"}}}}}  # fmt: skip
    call = {"function": {"name": "draw", "arguments": {"images": [text], "image_url": text}}}
    body = {"model": "qwen3-vl", "tools": [tool], "messages": [{"role": "assistant", "tool_calls": [call]}]}  # fmt: skip
    assert facts_of("chat", body).bound(1).input_tokens < 10_000
    anthropic = {"model": "qwen3-vl", "max_tokens": 1, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "draw", "input": {"source": {"type": "base64", "data": text}}}]}]}  # fmt: skip
    assert facts_of("anthropic.messages", anthropic).bound(1).input_tokens < 10_000


@settings(max_examples=300, deadline=None)
@given(media=st.binary(max_size=300), operation=st.sampled_from(OPERATIONS))
def test_no_bytes_but_a_still_picture_are_bounded_as_one_picture(
    media: bytes, operation: str
) -> None:
    """Whatever an item holds, it is bounded as one picture only if it starts as a still
    picture does (or says nothing: empty, which Ollama refuses), else as a WAV or not at all."""
    tokens = bound(operation, media)
    if tokens >= MAX_TOKENS or (media.startswith(b"RIFF") and media[8:12] == b"WAVE"):
        return
    assert not media or media.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF"))


def test_a_wav_is_still_bounded_by_its_length() -> None:
    five_minutes = wav(300 * 1_000, 1_000)
    assert bound("chat", PNG) < bound("chat", five_minutes) < MAX_TOKENS


def test_a_hard_budget_refuses_a_video_it_admitted_as_one_picture(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    gw.ledger.add_price_rule(token_prices())  # 1000 USD per 1M input tokens
    gw.ledger.save_budget(Budget("acme", "sales", "day", 10_000_000, "USD"))  # 10 USD
    headers = {"X-Ometer-Tenant": "acme", "X-Ometer-Department": "sales"}

    def chat(media: bytes) -> Any:
        body = {
            "model": "llama3.1:8b",
            "stream": False,
            "options": {"num_predict": 1},
            "messages": [
                {
                    "role": "user",
                    "content": "describe",
                    "images": [base64.b64encode(media).decode()],
                }
            ],
        }
        return gw.client.post("/api/chat", json=body, headers=headers)

    reply = chat(MP4)
    assert reply.status_code == 429, reply.text[:300]
    assert not emulator.requests_to("/api/chat")
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.status, span.error_type, span.cost_total) == ("rejected", "budget_exceeded", 0)
    assert chat(JPEG).status_code == 200  # a picture is admitted, as before
    assert chat(LARGE_JPEG).status_code == 200  # admitted from a thread
    assert len(emulator.requests_to("/api/chat")) == 2


def test_large_pictures_are_read_off_the_event_loop() -> None:
    """Each picture is decoded to tell what it is (30 MB of them take some 80 ms): an event
    loop admitting the call in place hands it to a thread instead (nothing happened yet)."""
    for media, in_place in ((JPEG, True), (LARGE_JPEG, False)):
        body = {"model": "qwen3-vl", **wire_bodies(base64.b64encode(media).decode())["chat"]}
        facts = facts_of("chat", body)
        if in_place:
            assert facts.bound(1, blocking=False) == facts.bound(1)
        else:
            with pytest.raises(WouldBlock):
                facts.bound(1, blocking=False)
            assert facts.bound(1).input_tokens < 10_000


_PICTURE = base64.b64encode(PNG).decode()
_URL = f"data:image/png;base64,{_PICTURE}"
_parts = st.lists(
    st.sampled_from(
        [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": _URL},
            {"type": "image_url", "image_url": {"url": _URL}},
            {"type": "input_image", "image_url": _URL},
            {"type": "image", "source": {"type": "base64", "data": _PICTURE}},
            {
                "type": "tool_result",
                "tool_use_id": "t",
                "content": [{"type": "image", "source": {"type": "base64", "data": _PICTURE}}],
            },
        ]
    ),
    max_size=4,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool"]), "content": st.just("hi") | _parts},
        optional={"images": st.lists(st.just(_PICTURE), max_size=2)},
    ),
    max_size=4,
)
_outputs = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": st.just("c"), "output": _parts}
    ),
    max_size=2,
)


@settings(max_examples=200, deadline=None)
@given(
    operation=st.sampled_from(OPERATIONS),
    messages=_messages,
    outputs=_outputs,
    images=st.lists(st.just(_PICTURE), max_size=2),
)
def test_every_picture_a_bound_counts_is_read_for_what_it_is(
    operation: str, messages: list[Any], outputs: list[Any], images: list[str]
) -> None:
    """The bound counts a picture's tokens where Ollama reads one; the media check must read
    each of those, or a video there would be bounded as the picture it is not."""
    body: dict[str, Any] = {"model": "qwen3-vl", "max_tokens": 1}
    if operation == "generate":
        body |= {"prompt": "hi", "images": images}
    elif operation == "openai.responses":
        body["input"] = [*messages, *outputs]
    else:
        body["messages"] = messages
    assert len(picture_items(body)) >= facts_of(operation, body).images
