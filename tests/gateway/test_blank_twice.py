"""A header sent twice, one of the two blank: twice all the same.

README: an attribution header given twice is a 400, and a key header given twice counts as
none (a proxy on the way may have read the other one). A blank ``X-Ometer-Key`` (or
``X-Api-Key``) beside a real one was not counted: the other was taken as the call's key, as
if the header had come once. Hypothesis sends header lists in which some header comes more
than once, and checks the answer is the one the same list gets with each blank value of such a
header made a value that is no key and no name's problem ("ollama"): whatever the values, a
header sent twice is refused the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings, strategies as st

from tests.gateway.conftest import Gateway
from tests.gateway.test_attribution_properties import NAME_HEADERS, Keys, body_for, keyed

__all__ = ["keyed"]  # the fixture, used here

LIVE = "{live}"
"""Stands for a live key's secret in a drawn header list."""
KEY_VALUES = ("", " ", LIVE, "ollama")
BEARERS = ("", "Bearer ", f"Bearer {LIVE}", "Bearer ollama")


@st.composite
def doubled(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Headers in which at least one name comes more than once."""
    pair = st.one_of(
        st.tuples(st.sampled_from(["X-Ometer-Key", "X-Api-Key"]), st.sampled_from(KEY_VALUES)),
        st.tuples(st.just("Authorization"), st.sampled_from(BEARERS)),
        st.tuples(st.sampled_from(NAME_HEADERS), st.sampled_from(["", "ops"])),
    )
    headers = draw(st.lists(pair, min_size=1, max_size=5))
    twice = draw(st.sampled_from(headers))
    headers.insert(draw(st.integers(0, len(headers))), (twice[0], draw(st.sampled_from(["", " "]))))
    return headers


def _filled(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with each blank value of a header given more than once made a plain one."""
    counts = {name.lower(): 0 for name, _ in headers}
    for name, _ in headers:
        counts[name.lower()] += 1
    plain = {"authorization": "Bearer ollama"}
    return [
        (n, plain.get(n.lower(), "ollama") if counts[n.lower()] > 1 and not v.strip() else v)
        for n, v in headers
    ]


def _answer(gw: Gateway, headers: list[tuple[str, str]]) -> tuple[int, str, int]:
    before = gw.ledger.count()
    body = json.dumps(body_for("/api/chat", "bob")).encode()
    reply = gw.client.post("/api/chat", content=body, headers=headers)
    message = reply.json().get("error", "") if reply.status_code != 200 else ""
    return reply.status_code, str(message), gw.ledger.count() - before


_PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check(gw: Gateway, keys: Keys, headers: list[tuple[str, str]]) -> None:
    live = next(iter(keys.live))
    sent = [(n, v.replace(LIVE, live)) for n, v in headers]
    assert _answer(gw, sent) == _answer(gw, _filled(sent)), sent


def test_with_keys_required_a_blank_header_beside_another_is_a_header_sent_twice(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    gw, keys = keyed(True)

    @_PROPERTY
    @given(headers=doubled())
    @example(headers=[("X-Ometer-Key", ""), ("X-Ometer-Key", LIVE)])
    @example(headers=[("X-Api-Key", LIVE), ("X-Api-Key", " ")])
    def run(headers: list[tuple[str, str]]) -> None:
        _check(gw, keys, headers)

    run()


def test_without_keys_required_a_blank_header_beside_another_is_a_header_sent_twice(
    keyed: Callable[[bool], tuple[Gateway, Keys]],
) -> None:
    gw, keys = keyed(False)

    @_PROPERTY
    @given(headers=doubled())
    @example(headers=[("X-Ometer-Key", ""), ("X-Ometer-Key", LIVE)])
    @example(headers=[("X-Ometer-Department", ""), ("X-Ometer-Department", "ops")])
    def run(headers: list[tuple[str, str]]) -> None:
        _check(gw, keys, headers)

    run()
