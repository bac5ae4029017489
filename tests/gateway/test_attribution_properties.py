"""Whoever a request's headers say it is, a call is charged to what its key vouches for.

Hypothesis sends metered calls with any set of attribution and key headers (given twice,
in any case, blank, other services' keys beside ours, revoked and mistyped keys, names
of other tenants) and bodies that name a user of their own (OpenAI's ``user``,
Anthropic's ``metadata.user_id``), and checks each answer and its span against the
README's rules ("Attribution", "Security"), not against the code's own reading of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import ApiKey, Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway, key_in_authorization

ROUTES = ("/api/chat", "/v1/chat/completions", "/v1/messages", "/api/embed")
KEY_HEADERS = ("X-Ometer-Key", "X-Api-Key", "Authorization")
NAME_HEADERS = ("X-Ometer-Tenant", "X-Ometer-Department", "X-Ometer-User")
NAMES = ("acme", "globex", "sales", "hr", "ops", "alice", "bob", "carol", "mallory")
UNVERIFIED = {"user_verified": "false"}


@dataclass
class Keys:
    """The ledger's keys: live ones (each its own tenant and department), and dead ones."""

    live: dict[str, ApiKey]
    dead: list[str]


def body_for(route: str, body_user: str) -> dict[str, Any]:
    hi = [{"role": "user", "content": "hi"}]
    if route == "/api/embed":
        return {"model": "nomic-embed-text", "input": "hi"}
    if route == "/v1/messages":
        meta = {"user_id": body_user}
        return {"model": "llama3.1:8b", "max_tokens": 8, "messages": hi, "metadata": meta}
    body: dict[str, Any] = {"model": "llama3.1:8b", "messages": hi, "stream": False}
    return {**body, "user": body_user} if route.startswith("/v1/") else body


@st.composite
def requests(draw: st.DrawFn, keys: Keys) -> tuple[str, list[tuple[str, str]], str]:
    """A route, its headers in order (a name may come twice, in any case), a body user."""
    secrets = [*keys.live, *keys.dead]
    values = st.one_of(
        st.sampled_from(secrets),
        st.sampled_from(secrets).map(lambda s: f"  {s} "),
        st.sampled_from(["ollama", "sk-ant-api03-x", "", "om_", *NAMES]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
    )
    bearer = st.one_of(
        values.map(lambda v: f"Bearer {v}"),
        values.map(lambda v: f"bearer   {v}"),
        values.map(lambda v: f"Basic {v}"),
        values,
    )
    pair = st.one_of(
        st.tuples(st.sampled_from(KEY_HEADERS[:2]), values),
        st.tuples(st.just("Authorization"), bearer),
        st.tuples(st.sampled_from(NAME_HEADERS), st.sampled_from(NAMES) | values),
    )
    headers = draw(st.lists(pair, max_size=6))
    cased = [(draw(st.sampled_from([n, n.lower(), n.upper()])), v.strip()) for n, v in headers]
    route = draw(st.sampled_from(ROUTES))
    return route, cased, draw(st.sampled_from(NAMES))


def given_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for header, value in headers if header.lower() == name.lower()]


def offered(headers: list[tuple[str, str]]) -> list[str]:
    """Every value a key could be read from, whatever the rules for picking one."""
    found = [*given_values(headers, "X-Ometer-Key"), *given_values(headers, "X-Api-Key")]
    found += [
        key
        for value in given_values(headers, "Authorization")
        if (key := key_in_authorization(value))
    ]
    return [value.strip() for value in found]


def chosen_key(headers: list[tuple[str, str]], keys: Keys) -> ApiKey | None:
    """The key the README says counts, when no key header is given twice: the first of
    X-Ometer-Key, X-Api-Key and the bearer that holds a gateway key (``om_...``)."""
    ours = [value for value in offered(headers) if value.startswith("om_")]
    return keys.live.get(ours[0]) if ours else None


def key_header_twice(headers: list[tuple[str, str]]) -> bool:
    return any(len(given_values(headers, name)) > 1 for name in KEY_HEADERS)


def sole_key(headers: list[tuple[str, str]], keys: Keys) -> str | None:
    """The one key a request plainly presents: our only key in it, in a header given once,
    and no other key header given twice (README: a key header sent twice counts as none)."""
    for name in KEY_HEADERS:
        if len(given_values(headers, name)) > 1:
            return None
    ours = [value for value in offered(headers) if value.startswith("om_")]
    return ours[0] if len(ours) == 1 and ours[0] in keys.live else None


@pytest.fixture
def keyed(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Callable[[bool], tuple[Gateway, Keys]]:
    def start(require_key: bool) -> tuple[Gateway, Keys]:
        gw = app_on(emulator.url, sqlite_url, require_key=require_key)
        made = [
            gw.ledger.create_key(name="plain", tenant="acme", department="sales"),
            gw.ledger.create_key(name="fixed", tenant="acme", department="hr", user="alice"),
            gw.ledger.create_key(
                name="listed", tenant="globex", department="ops", users=("bob", "carol")
            ),
        ]
        revoked, dead = gw.ledger.create_key(name="old", tenant="initech", department="it")
        gw.ledger.revoke_key(revoked.id)
        return gw, Keys({secret: key for key, secret in made}, [dead, dead[:-1] + "x"])

    return start


def send(gw: Gateway, example: tuple[str, list[tuple[str, str]], str]) -> Any:
    """The reply to ``example`` (route, headers, the user its body names) and the spans it added."""
    route, headers, body_user = example
    before = gw.ledger.count()
    content = json.dumps(body_for(route, body_user)).encode()
    reply = gw.client.post(route, content=content, headers=headers)
    added = gw.ledger.count() - before
    return reply, gw.ledger.latest(SpanFilter(), added) if added else []


_PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_with_keys_required_a_call_is_charged_to_the_key_it_carries_and_no_other(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    gw, keys = keyed(True)

    @_PROPERTY
    @given(example=requests(keys))
    def run(example: tuple[str, list[tuple[str, str]], str]) -> None:
        _, headers, body_user = example
        reply, new = send(gw, example)
        assert reply.status_code < 500, (headers, reply.text)
        if reply.status_code == 401:
            assert new == [], headers  # nobody grows the ledger without a key
            assert sole_key(headers, keys) is None, (headers, reply.text)
            return
        (span,) = new
        carried = [keys.live[v] for v in offered(headers) if v in keys.live]
        owner = next(
            (k for k in carried if (k.tenant, k.department) == (span.tenant, span.department)),
            None,
        )
        assert owner is not None, (headers, span.tenant, span.department)
        if (sole := sole_key(headers, keys)) is not None:
            assert owner == keys.live[sole], headers
        named = given_values(headers, "X-Ometer-User")
        if owner.user is not None:
            assert (span.user, span.tags) == (owner.user, {}), headers
        elif owner.users:
            assert reply.status_code == 403 or span.user in (None, *owner.users), headers
            assert span.tags == {}, headers
        else:
            assert span.user in (None, *named), headers
            assert span.tags == (UNVERIFIED if span.user else {}), headers
        assert (
            span.user is None
            or span.user != body_user
            or span.user
            in (
                *named,
                owner.user,
            )
        ), (headers, body_user)

    run()


def test_without_keys_required_headers_then_the_key_then_the_defaults(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    gw, keys = keyed(False)

    @_PROPERTY
    @given(example=requests(keys))
    def run(example: tuple[str, list[tuple[str, str]], str]) -> None:
        headers = example[1]
        reply, new = send(gw, example)
        assert reply.status_code < 500, (headers, reply.text)
        if reply.status_code == 401:
            assert new == [], headers
            ours = [v for v in offered(headers) if v.startswith("om_")]
            assert ours, headers
            assert key_header_twice(headers) or any(v not in keys.live for v in ours), headers
            return
        (span,) = new
        if reply.status_code != 200:
            return  # a name given twice or not a name: refused, charged to the key or defaults
        if key_header_twice(headers):
            # Counts as none (README); a call that carries a key is charged to a live key it
            # carries, never to the headers or the defaults unseen.
            carried = [keys.live[v] for v in offered(headers) if v in keys.live]
            if any(v.startswith("om_") for v in offered(headers)):
                told = {h: given_values(headers, h)[:1] for h in NAME_HEADERS[:2]}
                assert any(
                    span.tenant in (*told["X-Ometer-Tenant"], k.tenant)
                    and span.department in (*told["X-Ometer-Department"], k.department)
                    for k in carried
                ), headers
            return
        key = chosen_key(headers, keys)
        for header, field, fallback in (
            ("X-Ometer-Tenant", "tenant", key.tenant if key else "default"),
            ("X-Ometer-Department", "department", key.department if key else "unassigned"),
        ):
            told = given_values(headers, header)
            assert getattr(span, field) == (told[0] if told and told[0] else fallback), headers
        named = [user for user in given_values(headers, "X-Ometer-User") if user]
        if named:
            vouched = key is not None and named[0] in (key.user, *key.users)
            assert (span.user, span.tags) == (named[0], {} if vouched else UNVERIFIED), headers
        else:
            assert (span.user, span.tags) == (key.user if key else None, {}), headers

    run()


def test_a_call_refused_for_its_headers_is_the_user_its_key_is_fixed_to(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    """A key made with ``--user`` charges every call with it to that user, whatever a header
    says: one refused for a name header given twice was charged to no user (its department's
    call, nobody's in the report by user)."""
    gw, keys = keyed(True)
    fixed = next(secret for secret, key in keys.live.items() if key.user == "alice")
    for twice in NAME_HEADERS:
        headers = [("X-Ometer-Key", fixed), (twice, "ops"), (twice, "ops")]
        reply, (span,) = send(gw, ("/api/chat", headers, "mallory"))
        assert reply.status_code == 400, reply.text
        assert (span.tenant, span.department, span.user) == ("acme", "hr", "alice")


def test_without_keys_required_a_key_sent_twice_is_refused_not_charged_to_the_defaults(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    """A key header given twice counts as no key (a proxy in front may have read the other
    one); without --require-key the call then went to the defaults unseen, as a revoked key's
    did before it was refused: a live key so sent was charged to nobody's budget, and a
    revoked one kept working on the defaults."""
    gw, keys = keyed(False)
    live, revoked = next(iter(keys.live)), keys.dead[0]
    for headers in (
        [("X-Ometer-Key", live), ("X-Ometer-Key", live)],
        [("X-Api-Key", revoked), ("x-api-key", revoked), ("X-Ometer-Department", "ops")],
        [("Authorization", f"Bearer {revoked}"), ("Authorization", "Bearer ollama")],
    ):
        reply, new = send(gw, ("/v1/chat/completions", headers, "bob"))
        assert (reply.status_code, new) == (401, []), headers
        assert "is given twice, so no key is read from it" in reply.json()["error"]["message"]
    one = [("Authorization", f"Bearer {revoked}"), ("Authorization", "x"), ("X-Ometer-Key", live)]
    reply, (span,) = send(gw, ("/api/chat", one, "bob"))  # the other key, given once, counts
    assert (reply.status_code, span.tenant) == (200, keys.live[live].tenant)


def test_without_keys_required_a_key_that_cannot_be_checked_is_refused_as_the_headers_name(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Without --require-key the headers decide whom a call is charged to, with a key or
    without: a call whose key could not be checked (its row broken in SQL) was written to
    the defaults' department, not to the one its headers name."""
    secret = Ledger(sqlite_url).create_key(name="bot", tenant="acme", department="sales")[1]
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET tenant = 'not a name'")
    engine.dispose()
    gw = app_on(emulator.url, sqlite_url)
    headers = [("X-Ometer-Key", secret), ("X-Ometer-Department", "ops"), ("X-Ometer-User", "bob")]
    reply, (span,) = send(gw, ("/api/chat", headers, "bob"))
    assert reply.status_code == 503, reply.text
    assert (span.tenant, span.department, span.user) == ("default", "ops", "bob")
    assert span.tags == UNVERIFIED


@given(
    tenant=st.sampled_from(["acme", "globex"]),
    department=st.sampled_from(["sales", "unassigned"]),
    user=st.sampled_from([None, "ana"]),
)
def test_the_defaults_a_call_is_charged_to_are_each_gateways_own_and_carry_no_tags(
    tenant: str, department: str, user: str | None
) -> None:
    """The defaults' attribution is made once per set of names (checked once), not per call:
    a gateway with other defaults gets its own, and the one shared takes no tag in place."""
    from ollama_meter.config import Settings
    from ollama_meter.gateway._attribution import vouched

    given_ = Settings(tenant=tenant, department=department)
    charged = vouched(None, given_, user)
    assert (charged.tenant, charged.department, charged.user, dict(charged.tags)) == (
        tenant,
        department,
        user,
        {},
    )
    assert vouched(None, given_, user) is charged
    with pytest.raises(TypeError):
        charged.tags["x"] = "y"  # type: ignore[index]


_OTHER_HEADER = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
    lambda name: not name.startswith("x-ometer-")
)


@given(
    headers=st.lists(st.tuples(_OTHER_HEADER, st.text(max_size=20)), max_size=8),
    tenant=st.sampled_from(["acme", "globex"]),
    department=st.sampled_from(["sales", "unassigned"]),
    user=st.sampled_from([None, "ana"]),
    require_key=st.booleans(),
)
def test_a_call_whose_headers_name_nobody_is_charged_to_the_defaults(
    headers: list[tuple[str, str]],
    tenant: str,
    department: str,
    user: str | None,
    require_key: bool,
) -> None:
    """Without a key and without a header of ometer's, a call is the defaults' (the shared
    attribution, not one made and checked at every call), whatever other headers it carries;
    the same attribution as one made from headers and settings."""
    from starlette.datastructures import Headers

    from ollama_meter.config import Settings
    from ollama_meter.gateway._attribution import resolve, vouched
    from ollama_meter.meter import Attribution

    given_ = Settings(tenant=tenant, department=department)
    raw = [(name.encode(), value.encode()) for name, value in headers]
    charged = resolve(Headers(raw=raw), None, given_, require_key=require_key, default_user=user)
    assert charged == Attribution(tenant=tenant, department=department, user=user, tags={})
    assert charged is vouched(None, given_, user)
