"""A gateway key sent where a name or a tag goes is never stored, shown or echoed.

The ledger holds keys only as SHA-256 digests, so a stolen ledger gives no usable key. A
client configured with its key in the wrong header (``X-Ometer-User: $KEY``, a tag holding
it, ``Bearer $KEY`` pasted as a department) had the key stored in clear on every span, as
its user or a tag, or in the refusal's error message, and shown by ``ometer log --json``,
reports and the dashboard. Such a name or tag is refused with a line that never shows it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import MeteredClient, ValidationError
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

TOKEN = "admin-token-0123456789"
HI = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
PLACES = {
    "user": lambda secret: {"X-Ometer-User": secret},
    "department": lambda secret: {"X-Ometer-Department": secret},
    "tenant": lambda secret: {"X-Ometer-Tenant": secret},
    "tag value": lambda secret: {"X-Ometer-Tags": json.dumps({"auth": secret})},
    "tag value, after a scheme": lambda secret: {"X-Ometer-Tags": json.dumps({"a": f"Bearer {secret}"})},
    "tag key": lambda secret: {"X-Ometer-Tags": json.dumps({secret: "x"})},
    "user, after a scheme": lambda secret: {"X-Ometer-User": f"Bearer {secret}"},
    "department, quoted": lambda secret: {"X-Ometer-Department": f'"{secret}"'},
}  # fmt: skip
_IGNORED_UNDER_KEYS = {"department", "tenant", "department, quoted"}
"""Headers a key overrides with ``--require-key``: not read, so not refused."""


def _everything_shown(gw: Gateway, cli: Callable[..., object], db: str) -> str:
    """The ledger as ``ometer log --json`` prints it, and the dashboard's JSON."""
    spans = gw.ledger.latest(SpanFilter(), 100)
    dash = gw.client.get(
        "/api/dash", params={"period": "today"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert dash.status_code == 200, dash.text
    log = cli("log", "--json", "--limit", "100", "--db", db)
    return repr(spans) + dash.text + log.stdout + log.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("require_key", [True, False], ids=["require-key", "keys-optional"])
@pytest.mark.parametrize("listed", [False, True], ids=["any-user", "listed-users"])
@pytest.mark.parametrize("place", PLACES)
def test_a_key_where_a_name_or_tag_goes_is_refused_never_stored(
    app: Callable[..., Gateway],
    emulator: OllamaEmulator,
    db_url: str,
    cli: Callable[..., object],
    place: str,
    require_key: bool,
    listed: bool,
) -> None:
    gw = app(emulator.url, require_key=require_key, admin_token=TOKEN)
    users = ("bob",) if listed else ()  # a user it does not list is refused naming the user
    _, secret = gw.ledger.create_key(name="bot", tenant="acme", department="sales", users=users)
    headers = {"X-Ometer-Key": secret, **PLACES[place](secret)}
    reply = gw.client.post("/api/chat", json=HI, headers=headers)
    if require_key and place in _IGNORED_UNDER_KEYS:
        assert reply.status_code == 200, reply.text
    else:
        assert reply.status_code == 400, reply.text
        assert "gateway API key" in reply.json()["error"], reply.text
    assert secret not in reply.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert (span.tenant, span.department) == ("acme", "sales")
    shown = _everything_shown(gw, cli, db_url)
    assert secret not in shown
    assert secret[:20] not in shown


_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
keys = st.text(st.sampled_from(_KEY_CHARS), min_size=32, max_size=32).map(lambda k: f"om_{k}")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=keys,
    around=st.tuples(
        st.sampled_from(["", "Bearer ", "x=", "a.", "@"]), st.sampled_from(["", ".", "-x"])
    ),
    what=st.sampled_from(["tenant", "department", "user", "tag"]),
)
def test_the_python_api_refuses_a_key_as_a_name_or_tag_without_showing_it(
    emulator: OllamaEmulator, key: str, around: tuple[str, str], what: str
) -> None:
    text = around[0] + key + around[1]
    given_ = {"tags": {"auth": text}} if what == "tag" else {what: text}
    with pytest.raises(ValidationError) as raised:
        MeteredClient(host=emulator.url, **given_).chat(  # type: ignore[arg-type]
            model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}]
        )
    assert "gateway API key" in str(raised.value)
    assert key[:20] not in str(raised.value)


@pytest.mark.parametrize(
    "name",
    [
        "om_sales",
        "om_analytics",
        "custom_" + "a" * 32,
        "x" * 64,
        "om-" + "a" * 32,
        "om_" + "a" * 31,
    ],
)
def test_a_name_that_only_looks_like_a_key_is_a_name(
    app: Callable[..., Gateway], emulator: OllamaEmulator, name: str
) -> None:
    gw = app(emulator.url)
    reply = gw.client.post("/api/chat", json=HI, headers={"X-Ometer-Department": name})
    assert reply.status_code == 200, reply.text
    gw.settle()
    (span,) = gw.ledger.latest(SpanFilter(), 10)
    assert span.department == name


@pytest.mark.parametrize("route", ["/api/chat", "/v1/chat/completions"])
def test_a_key_where_the_model_goes_is_refused_never_stored(
    app: Callable[..., Gateway],
    emulator: OllamaEmulator,
    db_url: str,
    cli: Callable[..., object],
    route: str,
) -> None:
    """A model name is stored on every span as a name is: one holding a key is refused."""
    gw = app(emulator.url, admin_token=TOKEN)
    _, secret = gw.ledger.create_key(name="bot", tenant="acme", department="sales")
    for model in (secret, f"llama3.1:8b {secret}", f"{secret}:latest"):
        reply = gw.client.post(route, json={**HI, "model": model}, headers={"X-Ometer-Key": secret})
        assert reply.status_code == 400, reply.text
        assert "gateway API key" in reply.text and secret not in reply.text
    gw.settle()
    shown = _everything_shown(gw, cli, db_url)
    assert secret not in shown and secret[:20] not in shown
    assert not [asked for asked in emulator.requests if asked.path == route]  # nothing sent


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=st.text(max_size=5), after=st.text(max_size=5))
def test_the_python_api_refuses_a_model_holding_a_key(
    emulator: OllamaEmulator, before: str, after: str
) -> None:
    secret = "om_" + "A" * 32
    asked = len(emulator.requests)
    with pytest.raises(ValidationError) as refused:
        MeteredClient(host=emulator.url).chat(
            model=f"{before} {secret} {after}", messages=[{"role": "user", "content": "hi"}]
        )
    assert "gateway API key" in str(refused.value) and secret not in str(refused.value)
    assert len(emulator.requests) == asked  # nothing sent
