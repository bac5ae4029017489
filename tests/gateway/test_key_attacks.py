"""Gateway keys and the admin token, tried as an attacker would, in process.

A credential is the caller's to the gateway: it never travels on to Ollama, whichever header
carries it. A key row someone edited in SQL is either a key as ``ometer keys create`` would
have stored it, or a refusal naming the row; never a 500, never a call charged to a name
the ledger would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from hypothesis import given, strategies as st

from ollama_meter.gateway._hosts import holds_credential
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "admin-s3cret"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


HI = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize("require_key", [True, False])
@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "X-Ometer-Key"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", HI),
        ("POST", "/v1/chat/completions", HI),
        ("POST", "/v1/messages", {**HI, "max_tokens": 5}),
        ("GET", "/api/tags", None),
        ("POST", "/api/show", {"model": "llama3.1:8b"}),
        ("GET", "/v1/models/llama3.1:8b", None),
    ],
)
def test_a_key_never_travels_on_to_ollama_in_any_header(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    require_key: bool,
    header: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    """``X-Api-Key`` (what Anthropic's clients send) reached Ollama with the gateway's key in
    it, on every route: a log or a proxy beside Ollama then held a live key."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    gw = app_on(emulator.url, sqlite_url, require_key=require_key)
    value = f"Bearer {secret}" if header == "Authorization" else secret
    reply = gw.client.request(method, path, json=body, headers={header: value})
    assert reply.status_code == 200, reply.text
    (sent,) = emulator.requests
    assert [name for name, v in sent.headers.items() if secret in v] == []


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            "department = 'a' || char(10) || 'b'",
            "department name 'a\\nb' has characters other than letters, digits and . _ @ + - "
            "(and must start with a letter or digit)",
        ),
        ("tenant = printf('%.100c', 't')", "tenant name is longer than 64 characters"),
        ("user = ''", "user name is empty"),
        ("created_at = 'garbage'", "its created_at 'garbage' is not a value of the column's type"),
    ],
)
@pytest.mark.parametrize("require_key", [True, False])
def test_a_key_row_edited_in_sql_is_a_503_naming_it_on_every_route(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    require_key: bool,
    edit: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Such a row was a 500 for every call with its key (or, for a bad user, a 400 telling
    the caller their user name was wrong), and its key opened the pass-through routes. Only
    the caller sees the answer, so the log says it too, a line every 10 s."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE api_keys SET {edit}")
    engine.dispose()
    gw = app_on(emulator.url, sqlite_url, require_key=require_key, admin_token=TOKEN)
    message = (
        f"the API key cannot be checked, so the call was not made: key 1 in the ledger cannot "
        f"be read: {reason}; fix or delete the row in SQL (`ometer keys create` makes a new key)"
    )
    routes = [("POST", "/api/chat", HI), ("GET", "/api/tags", None)]
    for method, path, body in routes if require_key else routes[:1]:
        reply = gw.client.request(method, path, json=body, headers=bearer(secret))
        assert (reply.status_code, reply.json()) == (503, {"error": message}), path
        # when to try again, as each other 503 of the ledger's says: without it the OpenAI
        # and Anthropic clients retried at once, and the gateway's x-should-retry: false
        # (for what it had retried itself) would not have kept them from it either
        assert reply.headers.get("retry-after") == "5", path
    assert emulator.requests == []
    said = [r.getMessage() for r in caplog.records if r.name == "ollama_meter.gateway"]
    assert said == [f"checking an API key failed: {message.split(': ', 1)[1]}"]


def test_keys_list_names_a_row_it_cannot_read(cli: Any, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET created_at = 'garbage'")
    engine.dispose()
    done = cli("keys", "list", "--db", sqlite_url)
    assert (done.code, done.stderr.strip()) == (  # the others listed (none here), exit 0
        0,
        "note: key 1 in the ledger cannot be read: its created_at 'garbage' is not a value of "
        "the column's type; fix or delete the row in SQL (`ometer keys create` makes a new key)",
    )


@pytest.mark.parametrize("how", ["env", "option"])
def test_an_empty_admin_token_stops_serve_as_a_blank_one_does(
    cli: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``OMETER_ADMIN_TOKEN=" "`` stopped ``ometer serve``, but ``OMETER_ADMIN_TOKEN=""`` (a
    secret file that was not there) started it with no token: with ``--require-key`` every key
    then read everyone's spend, and with ``--allow-admin`` pulled and deleted models."""
    if how == "env":
        monkeypatch.setenv("OMETER_ADMIN_TOKEN", "")
    token = ["--admin-token", ""] if how == "option" else []
    done = cli(
        *("serve", "--require-key", "--allow-admin", *token),
        *("--upstream", emulator.url, "--db", "nonsense://"),  # never listens, whatever happens
    )
    assert (done.code, done.stderr.strip()) == (
        2,
        "error: --admin-token (OMETER_ADMIN_TOKEN): is blank; give letters, digits and "
        "punctuation (e.g. the output of `openssl rand -hex 32`)",
    )


@pytest.mark.parametrize("require_key", [True, False])
@pytest.mark.parametrize("scheme", ["", "Bearer ", "bearer\t", "Token ", "Basic "])
def test_a_key_in_authorization_is_the_key_whatever_scheme_it_is_sent_with(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    require_key: bool,
    scheme: str,
) -> None:
    """``Authorization: om_...`` (no scheme, or another than Bearer) was read as no key: without
    ``--require-key`` the call was charged to the defaults, and a revoked key went on working."""
    ledger = Ledger(sqlite_url)
    key, secret = ledger.create_key(name="bot", tenant="acme", department="sales")
    gw = app_on(emulator.url, sqlite_url, require_key=require_key)
    sent = {"Authorization": f"{scheme}{secret}"}
    assert gw.client.post("/api/chat", json=HI, headers=sent).status_code == 200
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.tenant, span.department, span.http_status) == ("acme", "sales", 200)
    ledger.revoke_key(key.id)
    refused = gw.client.post("/api/chat", json=HI, headers=sent)
    assert refused.status_code == 401, refused.text
    assert gw.ledger.count() == 1 and len(emulator.calls) == 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", HI),
        ("POST", "/v1/chat/completions", HI),
        ("GET", "/api/tags", None),
        ("POST", "/api/show", {"model": "llama3.1:8b"}),
        ("GET", "/v1/models/llama3.1:8b", None),
    ],
)
@pytest.mark.parametrize(
    "query",
    [
        "token={token}",
        "key={key}",
        "api_key={key}&x=1",
        "t=+{key}",
        "a=Bearer%20{token}",
        "{key}",  # the key as a name of its own
        "{key}=1",
        "auth=%22{key}%22",  # quoted, as JSON writes it
        "auth=key:{key}",
        "h=X-Ometer-Key%3A{key}",
        "auth=%22{token}%22",
        "{token}",
    ],
)
def test_a_key_or_the_admin_token_in_a_url_is_refused_never_sent_on(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
    query: str,
) -> None:
    """The dashboard takes the admin token as ``?token=``, so a user tried it on the Ollama
    routes too (and some clients send a key as ``?key=``): the gateway read neither there,
    passed the URL on as it came, and Ollama's log kept the token or key of every such call
    (a metered call went on, charged to the defaults). A URL holding either is now a 400
    saying where it goes; nothing is sent on, nothing recorded."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    gw = app_on(emulator.url, sqlite_url, admin_token=TOKEN)
    url = f"{path}?{query.format(token=TOKEN, key=secret)}"
    reply = gw.client.request(method, url, json=body)
    assert reply.status_code == 400, reply.text
    text = reply.text
    assert "in a header" in text and TOKEN not in text and secret not in text
    assert emulator.requests == []
    assert gw.ledger.latest(SpanFilter(), 10) == []


def test_the_dashboard_still_takes_its_token_in_the_url(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    gw = app_on(emulator.url, sqlite_url, admin_token=TOKEN)
    assert gw.client.get(f"/dashboard?token={TOKEN}").status_code == 200
    assert gw.client.get(f"/api/dash?token={TOKEN}").status_code == 200
    assert gw.client.get("/api/tags?name=om").status_code == 200  # no credential: as before


@pytest.mark.parametrize("path", ["/dashboard", "/api/dash"])
@pytest.mark.parametrize("order", ["wrong first", "right first"])
def test_a_token_given_twice_in_the_url_is_no_token_in_either_order(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str, path: str, order: str
) -> None:
    """``?token=wrong&token=right`` passed the token check (the last one was read) and then met
    the repeated-parameter 400; the other order was a 401. As a key header given twice, a
    token given twice is none: the same 401 either way, saying so."""
    gw = app_on(emulator.url, sqlite_url, admin_token=TOKEN)
    tokens = ["wrong", TOKEN] if order == "wrong first" else [TOKEN, "wrong"]
    reply = gw.client.get(path, params=[("token", t) for t in tokens])
    assert reply.status_code == 401, reply.text
    assert "?token= is given twice, so no token is read from it: give it once" in reply.text
    assert TOKEN not in reply.text
    assert gw.client.get(path, params=[("token", TOKEN)] * 2).status_code == 401


_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(
    key=st.text(st.sampled_from(_KEY_CHARS), min_size=32, max_size=32).map(lambda k: f"om_{k}"),
    before=st.text(st.characters(codec="ascii", exclude_characters=_KEY_CHARS), max_size=4),
    after=st.text(st.characters(codec="ascii"), max_size=4),
    others=st.lists(st.tuples(st.sampled_from(["model", "x", "q"]), st.sampled_from(["1", "a b"]))),
    as_name=st.booleans(),
    encoded=st.booleans(),
)
def test_a_key_anywhere_in_a_query_is_a_credential_in_the_url(
    key: str, before: str, after: str, others: list[tuple[str, str]], as_name: bool, encoded: bool
) -> None:
    """Whatever surrounds a gateway key in a query (quotes, a colon, a header's name, nothing:
    the key as a name of its own), in either encoding: the URL holds a credential. Only a key
    alone in a value, or after a blank, was seen: ``?{key}`` and ``?auth="{key}"`` went on to
    Ollama, into its log."""
    held = before + key + after
    pair = (held, "1") if as_name else ("auth", held)
    query = (
        urlencode([*others, pair]) if encoded else "&".join(f"{n}={v}" for n, v in [*others, pair])
    )
    assert holds_credential(query.encode("latin-1", "replace"), None)


@pytest.mark.parametrize(
    "query", ["", "model=llama3.1:8b", "name=om", "x=custom_abcdefgh12", "om_=1"]
)
def test_a_query_holding_no_key_is_no_credential(query: str) -> None:
    assert not holds_credential(query.encode(), TOKEN)


_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_AROUND = "\"':,;()[]{}<> "


@given(
    token=st.text(st.sampled_from(_TOKEN_CHARS), min_size=16, max_size=64),
    before=st.text(st.sampled_from(_AROUND), max_size=3).map(lambda b: "Bearer " + b),
    after=st.text(st.sampled_from(_AROUND), max_size=3),
    as_name=st.booleans(),
)
def test_the_admin_token_quoted_or_as_a_name_in_a_query_is_a_credential_in_the_url(
    token: str, before: str, after: str, as_name: bool
) -> None:
    """The token as ``openssl rand -hex 32`` makes one (letters, digits, ``-_.~``), in a value
    as JSON or a header writes it (``"TOKEN"``, ``Bearer:TOKEN``) or as a name of its own
    (``?TOKEN``): only a value that was the token, or a blank-separated word of one, was
    seen, and the rest went on to Ollama, into its log."""
    held = before.removeprefix("Bearer ") if as_name else before
    pair = (held + token + after, "") if as_name else ("auth", held + token + after)
    query = urlencode([("model", "m"), pair])
    assert holds_credential(query.encode(), token)
