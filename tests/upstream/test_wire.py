"""The wire formats read into the meter's vocabulary, and the one classifier.

What Ollama and OpenAI send is untrusted: every reader takes any JSON value
without raising, and what it reads is exactly what a well-formed answer says.
The SDK's own objects read like the JSON they came from.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import ollama
import pytest
from hypothesis import given, strategies as st

from ollama_meter.errors import (
    ModelNotFound,
    RateLimited,
    StreamError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from ollama_meter.upstream import (
    END,
    OLLAMA,
    OPENAI,
    Delta,
    Failure,
    Final,
    Frames,
    Malformed,
    RetryPolicy,
    wire_for,
)
from ollama_meter.upstream._anthropic import wire_of_path
from ollama_meter.upstream._classify import (
    answer_error,
    detail_of,
    reported_error,
    retry_after_passed,
    retry_after_seconds,
    transport_error,
)

HOST = "http://gpu-1:11434"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
fields = st.dictionaries(
    st.sampled_from(
        ["model", "message", "response", "done", "done_reason", "prompt_eval_count",
         "eval_count", "total_duration", "eval_duration", "error", "choices", "usage"]
    ),
    json_values,
)  # fmt: skip

FINAL_CHUNK = {
    "model": "llama3.1:8b",
    "message": {"role": "assistant", "content": "bye"},
    "done": True,
    "done_reason": "stop",
    "total_duration": 900,
    "load_duration": 100,
    "prompt_eval_count": 3,
    "prompt_eval_duration": 200,
    "eval_count": 7,
    "eval_duration": 600,
}


@given(obj=fields, operation=st.sampled_from(["chat", "generate", "embed", "embeddings"]))
def test_any_ollama_object_reads_without_raising(obj: dict[str, Any], operation: str) -> None:
    reader = OLLAMA.reader(operation)
    for event in [*reader.read(obj), *reader.finish()]:
        assert isinstance(event, Delta | Final | UpstreamError)
        if isinstance(event, Final):
            for count in (event.input_tokens, event.output_tokens, event.total_ns):
                assert count is None or (type(count) is int and count >= 0)


@given(
    obj=fields,
    operation=st.sampled_from(["openai.chat", "openai.completions", "openai.embeddings"]),
)
def test_any_openai_object_reads_without_raising(obj: dict[str, Any], operation: str) -> None:
    reader = OPENAI.reader(operation)
    events = [*reader.read(obj), *reader.finish()]
    assert reader.complete
    if not isinstance(events[0], UpstreamError):
        assert sum(isinstance(e, Final) for e in events) == 1  # usage, or none: then estimated


def test_an_ollama_final_chunk_reads_as_a_delta_and_the_usage_record() -> None:
    reader = OLLAMA.reader("chat")
    assert reader.read(FINAL_CHUNK) == [
        Delta("bye"),
        Final("llama3.1:8b", "stop", 3, 7, 900, 100, 200, 600),
    ]
    assert reader.complete


def test_the_clients_objects_read_like_their_json() -> None:
    for operation, obj in (
        ("chat", FINAL_CHUNK),
        ("generate", {**FINAL_CHUNK, "message": None, "response": "bye"}),
        ("embed", {"model": "nomic", "embeddings": [[0.1]], "prompt_eval_count": 2}),
    ):
        shape = {"chat": ollama.ChatResponse, "generate": ollama.GenerateResponse}.get(
            operation, ollama.EmbedResponse
        )
        sdk = shape(**{k: v for k, v in obj.items() if v is not None})
        assert OLLAMA.reader(operation).read(sdk) == OLLAMA.reader(operation).read(obj)


def test_embeddings_count_no_output_and_errors_end_the_answer() -> None:
    (final,) = OLLAMA.reader("embeddings").read({"embedding": [0.5]})
    assert final == Final(output_tokens=0, dimensions=1)  # its vector's numbers
    for obj in ({"error": "boom"}, {"done": True, "done_reason": "error"}):
        (failure,) = OLLAMA.reader("chat").read(obj)
        assert isinstance(failure, StreamError)
        assert str(failure).startswith("Ollama failed while answering: ")


def test_openai_streams_keep_model_and_finish_reason_until_the_usage() -> None:
    reader = OPENAI.reader("openai.chat")
    assert reader.read({"model": "m", "choices": [{"delta": {"role": "assistant"}}]}) == []
    assert reader.read({"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}) == [
        Delta("hi")
    ]
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    assert reader.read(usage) == [Final("m", "stop", 4, 2)]
    frame = b"data: " + json.dumps(usage).encode()
    assert OPENAI.shown(frame, usage, hide_usage=True) is None
    assert OPENAI.shown(frame, usage, hide_usage=False) == frame
    assert reader.finish() == [] and reader.complete


def test_framing_and_error_shapes_per_wire_format() -> None:
    assert wire_for("chat") is OLLAMA and wire_for("openai.embeddings") is OPENAI
    assert OPENAI.decode(b"data: [DONE]") is END and OPENAI.decode(b": keep-alive") is None
    assert OPENAI.decode(b'data: {"a": 1}') == {"a": 1} and OLLAMA.decode(b'{"a": 1}') == {"a": 1}
    for wire, frame in ((OLLAMA, b"[1]"), (OLLAMA, b"{no"), (OPENAI, b"data: {no")):
        with pytest.raises(Malformed, match="not a JSON object"):
            wire.decode(frame)  # an item that is not one: the stream is broken
    assert json.loads(OLLAMA.error_frame("x")) == {"error": "x"}
    event = json.loads(OPENAI.error_frame("x").removeprefix(b"data: "))
    assert event["error"]["message"] == "x" and event["error"]["type"] == "api_error"
    assert OPENAI.error_body(400, "y")["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, '{"error": "model \\"x\\" not found, try pulling it first"}', ModelNotFound),
        (404, '{"error": "model \'x\' not found"}', ModelNotFound),  # chat, generate
        (404, "404 page not found", UpstreamBadRequest),
        (400, '{"error": {"message": "bad", "type": "invalid_request_error"}}', UpstreamBadRequest),
        (429, '{"error": "slow down"}', RateLimited),
        (503, '{"error": "server busy"}', UpstreamServerError),
        (302, "moved", UpstreamError),
    ],
)
def test_answers_are_classified_by_status_and_body(status: int, body: str, kind: type) -> None:
    error = answer_error(status, detail_of(body), host=HOST, model="x", retry_after=3.0)
    assert type(error) is kind and error.status_code == status
    assert "{" not in str(error) or status == 302  # the message, not the JSON around it


def test_one_message_per_failure_whatever_the_transport() -> None:
    down = transport_error(Failure.CONNECTION, host=HOST, started=False, reason="refused")
    assert isinstance(down, UpstreamConnectionError)
    assert str(down) == (
        f"cannot reach Ollama at {HOST} (refused): is it running? Set OLLAMA_HOST to its address"
    )
    silent = transport_error(Failure.TIMEOUT, host=HOST, started=True)
    assert isinstance(silent, UpstreamTimeout) and "stopped answering mid-stream" in str(silent)
    cut = transport_error(Failure.CONNECTION, host=HOST, started=True, reason="reset")
    assert isinstance(cut, StreamError) and str(cut).endswith("broke off: reset")
    assert reported_error({"done": True}) is None


@given(seconds=st.integers(0, 10**9))
def test_retry_after_reads_seconds_and_dates(seconds: int) -> None:
    assert retry_after_seconds(str(seconds)) == seconds
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    when = now + timedelta(seconds=min(seconds, 10**6))
    assert retry_after_seconds(format_datetime(when, usegmt=True), now=now) == min(seconds, 10**6)


@given(text=st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,6000}\Z"))
def test_a_retry_after_that_is_neither_is_ignored(text: str) -> None:
    value = retry_after_seconds(text)
    assert value is None or value >= 0


@given(
    text=st.text(max_size=30)
    | st.from_regex(r"\A[0-9]{0,400}(\.[0-9]{0,400})?\Z")
    | st.sampled_from(["-5", "1.5", " 7 ", "1e3", "Wed, 21 Oct 2099 07:28:00 GMT"])
)
def test_a_retry_after_passed_on_says_seconds_or_a_date_and_never_sooner(text: str) -> None:
    passed = retry_after_passed(text)
    if passed is None:
        return
    assert retry_after_seconds(passed) is not None  # what every client reads alike
    said = text.strip()
    if re.fullmatch(r"[0-9]+\.[0-9]*", said):
        assert passed.isdigit() and int(passed) >= Decimal(said) > int(passed) - 1
    else:
        assert passed == said


def test_a_retry_after_too_long_to_wait_for_is_infinite_not_a_crash() -> None:
    assert retry_after_seconds("9" * 400) == retry_after_seconds("1" * 5000) == math.inf
    assert retry_after_seconds("0" * 5000 + "7") == 7.0
    assert RetryPolicy().wait(1, math.inf) is None  # the call fails now, with Ollama's answer


@given(
    items=st.lists(st.binary(max_size=40).filter(lambda b: not {10, 13} & set(b)), max_size=20),
    cuts=st.lists(st.integers(0, 1000), max_size=30),
    separator=st.sampled_from([b"\n", b"\n\n"]),
    end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_frames_are_the_same_however_the_bytes_arrive(
    items: list[bytes], cuts: list[int], separator: bytes, end: bytes
) -> None:
    """However the pieces fall, and whichever line end the server writes (SSE allows CRLF,
    CR and LF; sse-starlette writes CRLF): the same items, the same tail."""
    stream = b"".join(item + separator for item in items) + b"tail-without-end"
    stream = stream.replace(b"\n", end)
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(stream)])]
    frames = Frames(separator, host=HOST)
    got = [frame for piece in pieces for frame in frames.feed(piece)]
    assert got == b"".join(item + separator for item in items).split(separator)[:-1]
    assert frames.end() == [b"tail-without-end"] and frames.end() == []  # the last, unterminated


def test_an_item_that_never_ends_breaks_the_stream_at_the_limit() -> None:
    frames = Frames(b"\n\n", host=HOST, limit=10)
    assert frames.feed(b'{"a": 1}\n') == []
    assert frames.feed(b"\n0123456789") == [b'{"a": 1}']  # the rest waits: 10 bytes
    with pytest.raises(StreamError, match="broke off: an item of more than 10 bytes"):
        frames.feed(b"x")


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"a": 1}',
        b'data:{"a": 1}',
        b': keep-alive\ndata: {"a": 1}',
        b'event: message\nid: 7\ndata: {"a":\ndata: 1}',
    ],
)
def test_an_events_data_is_read_whatever_lines_stand_beside_it(event: bytes) -> None:
    assert wire_for("openai.chat").decode(event) == {"a": 1}
    assert wire_for("openai.chat").decode(b": keep-alive") is None


def _as_clients_read(payload: bytes) -> Any:
    """An item's JSON as the official clients decode it: strict UTF-8 (OpenAI's Python
    client), then a JSON decoder that takes no BOM and no NaN (JavaScript's, Go's)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload.decode("utf-8"), parse_constant=refuse)


@given(
    obj=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    at=st.integers(0, 200),
    flaw=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xed\xa0\x80", b"NaN"]),
    operation=st.sampled_from(["chat", "openai.chat"]),
)
def test_an_item_is_read_only_if_the_clients_read_it_as_the_gateway_did(
    obj: dict[str, Any], at: int, flaw: bytes, operation: str
) -> None:
    """A line starting with a BOM, bytes that are not UTF-8, a NaN: read by Python's lenient
    decoders and relayed, they broke the client's own decoder on an ``ok`` span."""
    text = json.dumps(obj, ensure_ascii=False).encode()
    at = min(at, len(text))
    payload = text[:at] + flaw + text[at:]
    wire = wire_for(operation)
    frame = payload if wire is OLLAMA else b"data: " + payload
    try:
        read = wire.decode(frame)
    except Malformed:
        with pytest.raises(ValueError):
            assert isinstance(_as_clients_read(payload), dict)
        return
    assert read == _as_clients_read(payload)


@given(
    beside=st.sampled_from([b": keep-alive", b"event: message", b"id: 7", b"retry: 10"]),
    at=st.integers(0, 20),
    flaw=st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", "é".encode()]),
    data=st.booleans(),
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
)
def test_an_event_is_read_only_if_the_clients_can_decode_every_line_of_it(
    beside: bytes, at: int, flaw: bytes, data: bool, path: str
) -> None:
    """A comment or an ``event:`` line not in UTF-8 was relayed as it came, beside data the
    gateway read (or as an event it skipped): OpenAI's client decodes each line strictly,
    so it raised UnicodeDecodeError on an answer whose span said ``ok``."""
    line = beside[:at] + flaw + beside[at:]
    frame = line + b'\ndata: {"a": 1}' if data else line
    wire = wire_of_path(path)
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(Malformed):
            wire.decode(frame)
        return
    assert wire.decode(frame) == ({"a": 1} if data else None)


def test_thinking_and_tool_calls_say_how_long_they_are_in_every_shape() -> None:
    """A piece's thinking and tool calls are generated output: their length (thinking's text,
    each call's name and arguments as JSON) is what a whole reply without counts is
    estimated from, alike from Ollama's JSON, the ``ollama`` client's objects and OpenAI's."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    calls = len('"get_weather"') + len('{"city": "Paris"}')
    chars = len("hmm") + calls
    chat = {
        "model": "m",
        "message": {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [call]},
        "done": False,
    }
    assert OLLAMA.reader("chat").read(chat) == [Delta("", True, chars, calls)]
    sdk = ollama.ChatResponse(**chat)
    assert OLLAMA.reader("chat").read(sdk) == [Delta("", True, chars, calls)]
    generate = {"model": "m", "response": "", "thinking": "hmm", "done": False}
    assert OLLAMA.reader("generate").read(generate) == [Delta("", True, len("hmm"))]
    openai_call = {
        "id": "call_1",
        "index": 0,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    message = {"role": "assistant", "content": "", "reasoning": "hmm", "tool_calls": [openai_call]}
    answer = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    assert OPENAI.reader("openai.chat").read(answer) == [Delta("", True, chars, calls)]


@pytest.mark.parametrize(
    ("said", "kind"),
    [
        ("invalid JSON schema in format", UpstreamBadRequest),
        ('invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object', UpstreamBadRequest),
        ("llm predict error: Failed to create new sequence: received zero length image", UpstreamBadRequest),
        ("template: :1: unclosed action", UpstreamBadRequest),
        ("an error was encountered while running the model: unexpected EOF", StreamError),
    ],
)  # fmt: skip
def test_a_refusal_is_read_alike_whether_it_comes_as_a_500_or_inside_a_200(
    said: str, kind: type
) -> None:
    """The request's own fault, said by Ollama as a 500 (its body or OpenAI's object) or inside
    a 200 (a native error line, an SSE error event, an error object answering whole), is
    one error type; Ollama's own failure stays one too (a 5xx before, a broken stream after)."""
    before = kind if kind is UpstreamBadRequest else UpstreamServerError
    for body in (json.dumps({"error": said}), json.dumps({"error": {"message": said}})):
        error = answer_error(500, detail_of(body), host=HOST, model="x")
        assert type(error) is before and said in str(error)
    inside = [
        OLLAMA.reader("chat").read({"error": said}),
        OPENAI.reader("openai.chat").read({"error": {"message": said, "type": "api_error"}}),
        [reported_error({"done": True, "done_reason": "error", "error": said})],
    ]
    for (error,) in inside:
        assert type(error) is kind and said in str(error), error
