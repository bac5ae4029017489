"""A call's tags travel to the gateway in ``X-Ometer-Tags``, a JSON object of text to text.

An ometer client through a gateway on its own ledger writes no span: the gateway's span is the
call's record, so it must carry the client's tags exactly. Any other caller may send the header
too. It follows the rules tags follow given any other way (at most 64; a key by the name rules,
a value of at most 256 printable characters); a header that breaks one is a 400 naming the
header, charged to whom the call would have been charged without its tags, and nobody else's
call is touched by it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from unittest.mock import ANY

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.errors import UpstreamBadRequest
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from ollama_meter.upstream._recorded import who_headers
from tests.gateway.conftest import Gateway

TAGS = "X-Ometer-Tags"
UNVERIFIED = {"user_verified": "false"}
NOTED = {"ometer.client_span": ANY}
"""The gateway's note of the client's own span of the call (not one of its tags)."""
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "llama3.1:8b", "messages": HI, "stream": False}

_KEYS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}", fullmatch=True).filter(
    lambda key: key != "user_verified"
)
_VALUES = st.text(st.characters(codec="utf-8").filter(str.isprintable), max_size=256)
TAG_SETS = st.dictionaries(_KEYS, _VALUES, max_size=64)
MOST = {f"t{n:02}" + "k" * 61: "\u00e9" * 16 + "v" * 240 for n in range(64)}
"""64 tags at their longest (26 KB in the header: a character beyond ASCII takes 6 bytes)."""


def _property(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def test_a_clients_tags_reach_the_gateways_span_exactly(
    emulator: OllamaEmulator, db_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """Client → gateway → span: the span the client is told is the call's record carries the
    tags the client was given (its own and the call's), exactly, beside the gateway's mark
    of a user no key vouches for (64 tags and the mark: 65); on SQLite and PostgreSQL."""
    gw = serve_on(emulator.url, db_url)
    with MeteredClient(gw.url, db_url=db_url, department="sales") as client:

        @_property(40)
        @example(own=MOST, per_call={}, user="ann", stream=False)
        @given(
            own=TAG_SETS,
            per_call=TAG_SETS,
            user=st.sampled_from([None, "ann"]),
            stream=st.booleans(),
        )
        def run(
            own: dict[str, str], per_call: dict[str, str], user: str | None, stream: bool
        ) -> None:
            if len({**own, **per_call}) > 64:
                per_call = {}
            tags = {**own, **per_call}
            client.attribution = replace(client.attribution, user=user, tags=own)
            before = gw.ledger.count()
            sent = who_headers(None, None, None, tags).values()  # X-Ometer-Tags, its parts
            if sum(len(part.encode()) for part in sent) > 60_000:  # past 64 KiB of headers
                with pytest.raises(UpstreamBadRequest, match="HTTP 431.*larger than 65536"):
                    client.chat("llama3.1:8b", HI, stream=stream, tags=per_call)
                assert gw.ledger.count() == before + 1  # the client's own record of it
                return
            answer = client.chat("llama3.1:8b", HI, stream=stream, tags=per_call)
            last = list(answer)[-1] if stream else answer
            gw.settle()
            assert gw.ledger.count() == before + 1
            (span,) = gw.ledger.latest(SpanFilter(), 1)
            assert (span.id, span.source, last.meter.recorded_by) == (
                last.meter.id,
                "gateway",
                gw.url,
            )
            assert span.tags == {**tags, **(UNVERIFIED if user else {}), **NOTED}

        run()


@pytest.fixture
def plain(app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str) -> Gateway:
    return app_on(emulator.url, sqlite_url)


def _refused(gw: Gateway, headers: list[tuple[str, str]] | dict[str, str]) -> str:
    """The error of a call refused for its headers; the refusal's span, with no tags."""
    before = gw.ledger.count()
    reply = gw.client.post("/api/chat", json=CHAT, headers=headers)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert isinstance(error, str) and TAGS in error, error
    assert gw.ledger.count() == before + 1
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.status, span.http_status, span.tags) == ("error", 400, {})
    assert span.id == reply.headers["x-ometer-span-id"]
    return error


_NESTED = "[" * 60_000
_HOSTILE = {
    "not JSON": ('{"job": ', "not JSON"),
    "JSON nested past any depth": (_NESTED, "not JSON"),
    "a list": ('["job", "nightly"]', "JSON object"),
    "a string": ('"job=nightly"', "JSON object"),
    "a number for a value": ('{"job": 1}', "not int"),
    "null for a value": ('{"job": null}', "not NoneType"),
    "an object for a value": ('{"job": {"a": "b"}}', "not dict"),
    "a number past any float": ('{"job": 1e999999}', "not float"),
    "a number of 10,000 digits": ('{"job": ' + "9" * 10_000 + "}", "not JSON"),
    "NaN": ('{"job": NaN}', "not float"),
    "a key that is no name": ('{"a b": "c"}', "'a b'"),
    "an empty key": ('{"": "c"}', "''"),
    "a key past 64 characters": (json.dumps({"k" * 65: "v"}), "name rules"),
    "a value past 256 characters": (json.dumps({"job": "v" * 257}), "256 printable"),
    "a bell in a value": (json.dumps({"job": "a\u0007b"}), "256 printable"),
    "a newline in a value": (json.dumps({"job": "a\nb"}), "256 printable"),
    "a line separator in a value": (json.dumps({"job": "a\u2028b"}), "256 printable"),
    "a lone surrogate in a value": ('{"job": "\\ud800"}', "256 printable"),
    "65 tags": (json.dumps({f"t{n}": "v" for n in range(65)}), "at most 64"),
    "100,000 tags": (json.dumps({f"t{n}": "" for n in range(100_000)}), "bytes"),
    "a key given twice": ('{"job": "a", "job": "b"}', "'job' twice"),
    "the gateway's own mark": ('{"user_verified": "true"}', "user_verified"),
    "a megabyte": (json.dumps({"job": "v" * 1_000_000}), "bytes"),
}


@pytest.mark.parametrize("case", _HOSTILE)
def test_a_hostile_tags_header_is_a_400_naming_it(
    plain: Gateway, emulator: OllamaEmulator, case: str
) -> None:
    header, said = _HOSTILE[case]
    error = _refused(plain, {TAGS: header, "X-Ometer-Department": "sales"})
    assert said in error, error
    assert len(error) < 600, error  # never the header back, whatever its size
    assert emulator.requests_to("/api/chat") == []  # nothing reached Ollama


def test_a_tags_header_given_twice_is_refused_however_it_is_spelled(plain: Gateway) -> None:
    twice = [(TAGS, '{"job": "a"}'), (TAGS.lower(), '{"job": "a"}')]
    assert "given 2 times" in _refused(plain, twice)
    # A proxy that folds the two lines into one makes them one header that is not JSON.
    assert "not JSON" in _refused(plain, {TAGS: '{"job": "a"}, {"job": "b"}'})


def test_no_tags_an_empty_header_or_an_empty_object_is_a_call_without_tags(
    plain: Gateway, emulator: OllamaEmulator
) -> None:
    for headers in ({}, {TAGS: ""}, {TAGS: "{}"}, {TAGS: " { } "}):
        assert plain.client.post("/api/chat", json=CHAT, headers=headers).status_code == 200
        (span,) = plain.ledger.latest(SpanFilter(), 1)
        assert span.tags == {}, headers
    said = {TAGS: json.dumps({"job": "été 🌙"}, ensure_ascii=False).encode()}
    assert plain.client.post("/api/chat", json=CHAT, headers=said).status_code == 200
    (span,) = plain.ledger.latest(SpanFilter(), 1)
    assert span.tags == {"job": "été 🌙"}  # UTF-8 as curl sends it, not read as Latin-1
    # Sent on as the gateway's word, not the caller's bytes: for a gateway behind it (_onward)
    sent = emulator.requests[-1].headers[TAGS.lower()]
    assert sent.isascii() and json.loads(sent) == {"job": "été 🌙"}


def test_any_header_is_either_its_tags_exactly_or_a_400_naming_it(plain: Gateway) -> None:
    objects = st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=4)
    headers = st.one_of(
        TAG_SETS.map(json.dumps),
        objects.map(json.dumps),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    )

    @_property(150)
    @given(header=headers)
    def run(header: str) -> None:
        reply = plain.client.post("/api/chat", json=CHAT, headers={TAGS: header})
        (span,) = plain.ledger.latest(SpanFilter(), 1)
        if reply.status_code == 200:
            parsed = json.loads(header) if header.strip() else {}
            assert span.tags == parsed, header
        else:
            assert reply.status_code == 400, (header, reply.text)
            assert TAGS in reply.json()["error"], (header, reply.text)
            assert span.tags == {}, header

    run()


def test_on_v1_a_bad_header_is_openais_error_object(plain: Gateway) -> None:
    body = {"model": "llama3.1:8b", "messages": HI}
    reply = plain.client.post("/v1/chat/completions", json=body, headers={TAGS: "[]"})
    assert reply.status_code == 400
    assert TAGS in reply.json()["error"]["message"]


def test_a_keyed_caller_sets_its_tags_the_key_decides_who_pays(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Tags are labels, not who pays: with keys required a caller's tags are kept, and the
    key's tenant and department win over the headers as ever. A bad header is refused and
    charged to the key."""
    gw = app_on(emulator.url, sqlite_url, require_key=True)
    _, secret = gw.ledger.create_key(name="bot", tenant="acme", department="hr", user="alice")
    key = {"X-Ometer-Key": secret, "X-Ometer-Department": "ops"}
    reply = gw.client.post("/api/chat", json=CHAT, headers={**key, TAGS: '{"job": "nightly"}'})
    assert reply.status_code == 200, reply.text
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.tenant, span.department, span.user, span.tags) == (
        "acme",
        "hr",
        "alice",
        {"job": "nightly"},
    )
    error = _refused(gw, {**key, TAGS: '{"job": 1}'})
    assert "not int" in error
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.tenant, span.department, span.user) == ("acme", "hr", "alice")
    no_key = gw.client.post("/api/chat", json=CHAT, headers={TAGS: '{"job": "x"}'})
    assert no_key.status_code == 401


def test_a_flood_of_hostile_tags_costs_other_callers_nothing(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway]
) -> None:
    """Four threads send the largest headers the server takes, each refused; a caller beside
    them gets its answer, its own tags on its span, and no refusal takes its tags or its
    department."""
    gw = serve_on(emulator.url, sqlite_url)
    worst = [
        "[" * 60_000,
        json.dumps({f"t{n}": "" for n in range(4_000)}),
        json.dumps({"job": "\U0001f319" * 5_000}),
        '{"a": "' + "\\u0000" * 10_000 + '"}',
    ]
    refused: list[int] = []

    def flood(header: str) -> None:
        for _ in range(10):
            reply = gw.client.post(
                "/api/chat", json=CHAT, headers={TAGS: header, "X-Ometer-Department": "evil"}
            )
            refused.append(reply.status_code)

    threads = [threading.Thread(target=flood, args=(header,)) for header in worst]
    for thread in threads:
        thread.start()
    mine = {"job": "nightly", "team": "ops"}
    for _ in range(5):
        reply = gw.client.post(
            "/api/chat",
            json=CHAT,
            headers={TAGS: json.dumps(mine), "X-Ometer-Department": "sales"},
        )
        assert reply.status_code == 200, reply.text
    for thread in threads:
        thread.join()
    gw.settle()
    assert refused == [400] * 40
    spans = gw.ledger.latest(SpanFilter(), 100)
    assert sorted((s.status, s.department, json.dumps(s.tags)) for s in spans) == sorted(
        [("ok", "sales", json.dumps(mine))] * 5 + [("error", "unassigned", "{}")] * 40
    )


@pytest.mark.parametrize("user", [None, "ann"])
def test_a_client_tagged_user_verified_calls_through_a_gateway(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], user: str | None
) -> None:
    """A client may carry a user_verified tag of its own (its rules allow it); the gateway
    refuses the header that sets it (its own word): every call of the client through a
    gateway was a 400. The client leaves it out of the header: the gateway's word stands."""
    gw = serve_on(emulator.url, sqlite_url)
    own = {"user_verified": "yes", "job": "nightly"}
    with MeteredClient(gw.url, db_url=sqlite_url, user=user, tags=own) as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.id, answer.meter.recorded_by) == (answer.meter.id, gw.url)
    assert span.tags == {"job": "nightly", **(UNVERIFIED if user else {}), **NOTED}


@pytest.mark.parametrize("letter", ["\u00e9", "\u4e2d"])
def test_a_clients_longest_tags_in_any_script_reach_the_gateways_span(
    emulator: OllamaEmulator, sqlite_url: str, serve_on: Callable[..., Gateway], letter: str
) -> None:
    """64 tags of 256 accented or CJK characters: tags any call may carry. As ASCII JSON
    (6 bytes a character) they took 98 KB, past the gateway's 64 KiB of headers, and every
    call of the client through a gateway was refused (431). Long tags go as UTF-8."""
    gw = serve_on(emulator.url, sqlite_url)
    tags = {f"t{n:02}" + "k" * 61: letter * 256 for n in range(64)}
    with MeteredClient(gw.url, db_url=sqlite_url, department="sales", tags=tags) as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 1)
    assert (span.id, answer.meter.recorded_by) == (answer.meter.id, gw.url)
    assert span.tags == {**tags, **NOTED}  # the 64 the most a call takes, the note besides
