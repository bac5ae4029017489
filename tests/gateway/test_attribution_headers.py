"""Whom a call's attribution headers charge it to, read from any list of headers as they come.

``resolve`` is given the request's headers as the server hands them over (names in lower
case, values as bytes, in the order sent) beside any number of other headers, ometer's own
(``X-Ometer-Key``, ``X-Ometer-Client-Span``...) among them. The rules (README, Attribution):
a name given once names the caller; given twice or more it is refused, naming the first such
header in the order tenant, department, user, tags; a value is read a byte a character and,
when it is UTF-8, as the client wrote it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from starlette.datastructures import Headers

from ollama_meter.config import Settings
from ollama_meter.errors import ValidationError
from ollama_meter.gateway._attribution import resolve

NAMES = ("x-ometer-tenant", "x-ometer-department", "x-ometer-user")
OTHERS = ("x-ometer-key", "x-ometer-client-span", "x-ometer-whatever", "host", "content-type")
SETTINGS = Settings(tenant="home", department="desk")

valid = st.sampled_from(["acme", "sales", "ops", "alice", "b\u00e9a"]).map(str.encode)
values = valid | st.binary(min_size=1, max_size=6).filter(lambda v: v.strip() == v)
pairs = st.tuples(st.sampled_from(NAMES + OTHERS), values)


def expected(raw: list[tuple[bytes, bytes]]) -> tuple[str, str, str | None] | str:
    """The tenant, department and user the headers name, or the message of their refusal."""
    given: dict[str, list[bytes]] = {name: [] for name in NAMES}
    for name, value in raw:
        if (text := name.decode()) in given:
            given[text].append(value)
    for name in NAMES:
        if len(given[name]) > 1:
            return f"{name.title()} is given {len(given[name])} times; give it once, for one caller"
    read = {}
    for name, found in given.items():
        if found:
            try:
                read[name] = found[0].decode()  # UTF-8, as the client wrote it
            except UnicodeDecodeError:
                read[name] = found[0].decode("latin-1")
    return (
        read.get("x-ometer-tenant") or "home",
        read.get("x-ometer-department") or "desk",
        read.get("x-ometer-user") or None,
    )


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(pairs.map(lambda p: (p[0].encode(), p[1])), max_size=8))
def test_attribution_headers_read_as_the_rules_say(raw: list[tuple[bytes, bytes]]) -> None:
    want = expected(raw)
    read: tuple[str, str, str | None] | str
    try:
        got = resolve(Headers(raw=raw), None, SETTINGS, require_key=False)
        read = (got.tenant, got.department, got.user)
    except ValidationError as refused:
        read = str(refused)
    if isinstance(want, str) or not isinstance(read, str):
        assert read == want
    else:  # a name the rules take, refused for what it is: not for being given twice
        assert "times; give it once" not in read


def test_a_name_given_twice_after_another_is_named_in_the_rules_order() -> None:
    raw = [(b"x-ometer-user", b"a"), (b"x-ometer-user", b"b")]
    raw += [(b"x-ometer-tenant", b"x"), (b"x-ometer-tenant", b"y"), (b"x-ometer-tenant", b"z")]
    with pytest.raises(ValidationError, match="^X-Ometer-Tenant is given 3 times"):
        resolve(Headers(raw=raw), None, SETTINGS, require_key=False)
