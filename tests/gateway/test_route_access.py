"""Every route the app registers, walked in process: a new route cannot be left open by mistake.

Only the routes Ollama's clients call (metered and pass-through) take a caller's key; every
other route, present or future, is the gateway's own or manages models, and needs the admin
token when one is set. Only ``/healthz`` is open to anyone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import assume, given, strategies as st
from starlette.routing import Route

from ollama_meter._urls import normalize_host
from ollama_meter.errors import ValidationError
from ollama_meter.gateway import PASSTHROUGH, GatewayOptions
from ollama_meter.gateway._connections import listening_url
from ollama_meter.gateway._hosts import is_local_host
from ollama_meter.gateway._requests import OLLAMA_ROUTES, OPENAI_ROUTES
from ollama_meter.ledger import Ledger
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "admin-s3cret"
OPEN = frozenset({"/healthz"})
METERED = frozenset({*OLLAMA_ROUTES, *OPENAI_ROUTES})
FOR_CALLERS = frozenset({*METERED, *PASSTHROUGH})
"""Routes a caller's key opens; any route not named here or in OPEN is an admin route."""


def routes(gw: Gateway) -> Iterator[tuple[str, str]]:
    app = gw.client.app  # type: ignore[attr-defined]
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: walk it here too"
        for method in sorted(route.methods or ()):
            yield method, route.path


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def key_on(sqlite_url: str) -> Callable[[], str]:
    def make() -> str:
        return Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]

    return make


@pytest.mark.parametrize(
    ("require_key", "admin_token"), [(True, TOKEN), (True, None), (False, TOKEN)]
)
def test_every_registered_route_asks_what_the_policy_says(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    key_on: Callable[[], str],
    require_key: bool,
    admin_token: str | None,
) -> None:
    key = key_on()
    gw = app_on(
        emulator.url, sqlite_url, require_key=require_key, allow_admin=True, admin_token=admin_token
    )
    walked = list(routes(gw))
    assert {path for _, path in walked} >= {"/dashboard", "/api/dash", "/metrics", "/api/pull"}
    for method, path in walked:
        if path in OPEN:
            continue
        needs_key = require_key or (admin_token is not None and path not in FOR_CALLERS)
        for headers in ({}, bearer("om_forged"), {"X-Ometer-Key": "om_forged"}):
            reply = gw.client.request(method, path, headers=headers, json={"model": "m"})
            # A metered call charges the key it presents: a forged one is refused on any gateway.
            refused = needs_key or (bool(headers) and path in METERED)
            assert (reply.status_code == 401) is refused, (method, path, headers)
        with_key = gw.client.request(method, path, headers=bearer(key), json={"model": "m"})
        admin_only = admin_token is not None and path not in FOR_CALLERS
        assert (with_key.status_code == 401) is admin_only, (method, path)
        if admin_token is not None:
            with_token = gw.client.request(
                method, path, headers=bearer(admin_token), json={"model": "m"}
            )
            assert (with_token.status_code == 401) is (path in FOR_CALLERS and require_key), (
                method,
                path,
            )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/blobs/sha256:" + "0" * 64, 405),
        ("POST", "/api/signin", 404),
        ("POST", "/v1/images/generations", 404),
        ("GET", "/v1/responses", 405),
        ("GET", "/v1/messages", 405),
        ("DELETE", "/v1/models/llama3.1:8b", 405),
        ("GET", "/api/pull", 405),
        ("GET", "/api/delete", 405),
        ("POST", "/api/dash", 405),
        ("PUT", "/v1/chat/completions", 405),
    ],
)
def test_a_route_the_gateway_does_not_serve_is_refused_in_its_clients_error_shape(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    method: str,
    path: str,
    status: int,
) -> None:
    """Never forwarded (only the routes above are), and answered as Ollama or OpenAI
    clients read an error: one line, not Starlette's plain text."""
    gw = app_on(emulator.url, sqlite_url, allow_admin=True)
    reply = gw.client.request(method, path, json={"model": "m"})
    assert reply.status_code == status
    assert not emulator.requests
    if method == "HEAD":
        return
    error = reply.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert path in message and "\n" not in message


def test_a_route_asked_with_or_without_its_slash_is_redirected_relative_never_to_the_host_header(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """As Ollama's router does, the Location is the path (as sent, still percent-encoded) and
    the query: Starlette's own was absolute, built from the caller's Host header."""
    gw = app_on(emulator.url, sqlite_url)
    seen = 0
    served = {path for _, path in routes(gw)}
    for method, path in routes(gw):
        if (
            "{" in path
            or path == "/"
            or method == "HEAD"
            or any(p.startswith(f"{path}/") for p in served)
        ):
            continue  # /v1/models/ is /v1/models/{model:path}'s, as Ollama routes it
        hostile = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        for asked, told in ((f"{path}/", path), (f"{path}//?a=%0A&b", f"{path}?a=%0A&b")):
            reply = gw.client.request(method, asked, headers=hostile, follow_redirects=False)
            assert (reply.status_code, reply.headers["location"]) == (307, told), asked
            seen += 1
    assert seen > 20
    for asked, told in (("/api/tags%2F", "/api/tags"), ("/api/tags%2F/", "/api/tags")):
        reply = gw.client.get(asked, headers={"Host": "evil.example"}, follow_redirects=False)
        assert (reply.status_code, reply.headers.get("location")) == (307, told), asked
    for stray in ("/nothing/", "/api/chat/x/", "/api/nothing"):
        assert gw.client.get(stray, follow_redirects=False).status_code == 404, stray
    assert not emulator.calls


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_PORT = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))


@given(labels=st.lists(_LABEL, min_size=1, max_size=4), port=_PORT, tld=st.sampled_from(["com", "example", "io", "localhost.evil"]))  # fmt: skip
def test_a_name_outside_this_machine_is_never_taken_for_it(
    labels: list[str], port: str, tld: str
) -> None:
    name = ".".join([*labels, tld])
    assume(name != socket.gethostname().lower())
    assert not is_local_host(name + port)
    assert is_local_host(f"{name}.localhost{port}") and is_local_host(f"{name.upper()}.LOCALHOST")


_PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
_AROUND = st.text(st.sampled_from(" \t\r\n"), max_size=3)


@given(token=_PRINTABLE, before=_AROUND, after=_AROUND)
def test_an_admin_token_is_taken_as_a_header_can_carry_it(
    token: str, before: str, after: str
) -> None:
    """A token read from a secret file (``OMETER_ADMIN_TOKEN`` ending in a line break) is the
    token: no HTTP header carries a value's surrounding blanks, so with them it could never
    be presented, and the dashboard would be locked to everyone with no word why."""
    options = GatewayOptions(admin_token=before + token + after)
    assert options.admin_token == token


@pytest.mark.parametrize("token", ["", " ", "\n", "t\x00k", "t\nk", "tök", "t\x7fk"])
def test_an_admin_token_no_header_can_carry_is_refused_at_start(token: str) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewayOptions(admin_token=token)
    assert str(refused.value) == (
        "--admin-token (OMETER_ADMIN_TOKEN): "
        + ("is blank" if not token.strip() else "has a character that is not printable ASCII")
        + "; give letters, digits and punctuation (e.g. the output of `openssl rand -hex 32`)"
    )


def test_a_token_read_with_its_line_break_opens_the_gateways_pages(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url, admin_token=TOKEN + "\n")
    assert gw.client.get("/metrics", headers=bearer(TOKEN)).status_code == 200
    assert gw.client.get("/api/dash", params={"token": TOKEN}).status_code == 200
    assert gw.client.get("/metrics", headers=bearer(TOKEN + "x")).status_code == 401


def test_serve_refuses_a_blank_admin_token_before_listening(
    cli: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blank token is no token: it must not let the gateway listen beyond loopback."""
    monkeypatch.setenv("OMETER_ADMIN_TOKEN", " \n")
    done = cli("serve", "--host", "0.0.0.0", "--upstream", emulator.url, "--db", sqlite_url)
    assert done.code == 2 and "ometer gateway on" not in done.stderr
    assert done.stderr.strip() == (
        "error: --admin-token (OMETER_ADMIN_TOKEN): is blank; give letters, digits and "
        "punctuation (e.g. the output of `openssl rand -hex 32`)"
    )


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11435"),
        ("localhost", "http://localhost:11435"),
        ("::1", "http://[::1]:11435"),
        ("[::1]", "http://[::1]:11435"),
        ("::", "http://[::]:11435"),
    ],
)
def test_the_address_serve_announces_is_a_url_a_client_can_take(host: str, url: str) -> None:
    """``--host ::1`` announced http://::1:11435, which no client (nor OLLAMA_HOST) reads."""
    assert listening_url(host, 11435) == url
    assert normalize_host(url) == url


@pytest.mark.parametrize("loopback", [True, False])
@pytest.mark.parametrize(
    "hosts", [("localhost", "evil.example"), ("evil.example", "localhost"), ("localhost",) * 2]
)
def test_a_host_given_twice_is_a_400_never_the_first_one_taken(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    loopback: bool,
    hosts: tuple[str, str],
) -> None:
    """The loopback check read the first ``Host`` and a server behind may read the other (RFC
    9112 §3.2: a request with two is answered 400)."""
    gw = app_on(emulator.url, sqlite_url, loopback=loopback)
    for method, path in (("GET", "/api/tags"), ("GET", "/api/dash"), ("POST", "/api/chat")):
        reply = gw.client.request(method, path, headers=[("Host", host) for host in hosts])
        assert reply.status_code == 400, (method, path, reply.text)
        assert reply.text.count("Host is given 2 times; give it once") == 1
    assert emulator.requests == []
