"""No credential of the caller's travels on to Ollama, however its header name is spelled.

A browser sends every cookie of the gateway's host name to it, whatever port set it (another
local app's session), and the gateway passed the ``Cookie`` on to Ollama, a host elsewhere
perhaps; every ``X-Ometer-*`` header is the gateway's own with its caller (a gateway behind
this one would read them as this caller's word). Any other header still goes through.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.datastructures import Headers

from ollama_meter.gateway._forwarded import forward_headers, forwarded
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

SECRET = "s3cretvalue42"
CREDENTIALS = ["cookie", "proxy-authorization", "authorization", "x-api-key", "x-ometer-key"]
CHARGED = {"x-ometer-tenant", "x-ometer-department", "x-ometer-user", "x-ometer-tags"}
"""Whom the call is charged to: the gateway says it again upstream, as it charged the call
(``_onward``, for a gateway behind it), so a value given there travels as the gateway's word."""
OWN = st.from_regex(r"x-ometer-[a-z0-9]{1,12}(-[a-z0-9]{1,8})?", fullmatch=True).filter(
    lambda name: name not in CHARGED
)


def _spelled(name: str, upper: list[bool]) -> str:
    return "".join(
        c.upper() if up else c for c, up in zip(name, upper + [False] * len(name), strict=False)
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(CREDENTIALS) | OWN,
    upper=st.lists(st.booleans(), max_size=30),
    path=st.sampled_from(["/api/chat", "/v1/chat/completions", "/api/show"]),
)
def test_no_credential_header_reaches_ollama_in_any_spelling(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    name: str,
    upper: list[bool],
    path: str,
) -> None:
    gw = app_on(emulator.url, sqlite_url)
    body: dict[str, object] = {"model": "llama3.1:8b"}
    if path != "/api/show":
        body |= {"messages": [{"role": "user", "content": "hi"}], "stream": False}
    before = len(emulator.requests)
    headers = {_spelled(name, upper): SECRET, "X-Request-Id": "r-1"}
    reply = gw.client.post(path, json=body, headers=headers)
    if reply.status_code != 200:  # refused at the door (a key not the gateway's): never sent
        assert len(emulator.requests) == before
        return
    sent = emulator.requests[-1]
    assert [k for k, v in sent.headers.items() if SECRET in v] == []
    assert sent.headers.get("x-request-id") == "r-1"  # any other header goes through


HEADER_NAMES = st.sampled_from([*CREDENTIALS, *CHARGED, "host", "x-ometer-other", "accept"]) | (
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
)


@given(
    headers=st.lists(
        st.tuples(HEADER_NAMES, st.text(st.characters(min_codepoint=32, max_codepoint=255))),
        max_size=12,
    )
)
def test_headers_read_as_they_came_are_passed_on_as_read_one_by_one(
    headers: list[tuple[str, str]],
) -> None:
    """What goes on is what each header, read as Starlette reads it, says: repeated names too."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    read = Headers(raw=raw)
    assert forward_headers(read) == {k: v for k, v in read.items() if forwarded(k)}
    assert forward_headers(dict(read.items())) == forward_headers(read)
