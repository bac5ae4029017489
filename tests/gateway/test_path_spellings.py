"""Every spelling of a guarded route, by every method, on a real server: never opened unasked.

Hypothesis spells the gateway's guarded routes as a hostile caller would (characters
percent-encoded in either case, letters in another case, slashes doubled or added, dot
segments, a query, HTTP/1.0) and sends them by any method, with no credential, a forged
key or a live key, to a gateway started with ``--require-key``, an admin token, and model
management allowed or not. Whatever the spelling: no answer but a refusal (or a relative
redirect to the route as it is spelt), nothing reaches Ollama, and no spend is shown.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.meter import utc_now
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway
from tests.gateway.test_security import raw

TOKEN = "admin-s3cret-" + "t" * 32
MANAGING = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
BLOB = "/api/blobs/sha256:" + "0" * 64
OWN = ("/api/dash", "/dashboard", "/metrics")
FOR_KEYS = ("/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/tags")
REFUSED = {400, 401, 403, 404, 405}
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "get")


def _spelt(path: str, data: st.DataObject) -> str:
    """``path`` as a caller may spell it: half the time a spelling that still names the route
    (characters percent-encoded, a query), else anything (case, slashes, dot segments)."""
    routed = data.draw(st.booleans())
    ways = ["as", "as", "hex", "HEX"] if routed else ["as", "as", "as", "upper", "hex", "HEX"]
    out = []
    for char in path:
        how = data.draw(st.sampled_from(ways))
        if how == "upper":
            out.append(char.swapcase())
        elif how == "hex" and char != "/":
            out.append(f"%{ord(char):02x}")
        elif how == "HEX":
            out.append(f"%{ord(char):02X}")
        else:
            out.append(char)
    if routed:
        return "".join(out) + data.draw(st.sampled_from(["", "?a=1", "?period=month&x"]))
    before = data.draw(st.sampled_from(["", "/", "/.", "/x/..", "/%2e", "/%2E%2E"]))
    after = data.draw(
        st.sampled_from(["", "/", "//", "/.", "%2F", "%2f/", "/..", ";", "?a=1", "?token=x", "/x"])
    )
    return before + "".join(out) + after


def _ask(url: str, method: str, target: str, version: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} {version}", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    body = b"" if method in ("GET", "HEAD") else b'{"model":"llama3.1:8b"}'
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return raw(url, ("\r\n".join(lines) + "\r\n\r\n").encode() + body, timeout=60)


@pytest.mark.parametrize("allow_admin", [False, True])
def test_no_spelling_of_a_guarded_route_opens_it(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    allow_admin: bool,
) -> None:
    gw = serve_on(
        emulator.url, sqlite_url, require_key=True, admin_token=TOKEN, allow_admin=allow_admin
    )
    _, key = gw.ledger.create_key(name="bot", tenant="acme", department="sales")
    # Spend of this month, of a tenant no answer may name: any figure shown would.
    gw.ledger.record([make_span(started_at=utc_now(), tenant="globex", department="legal")])

    forged = {"Authorization": "Bearer om_forged0123456789"}
    keyed = [{"Authorization": f"Bearer {key}"}, {"X-Api-Key": key}]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from([*MANAGING, BLOB, *OWN, *FOR_KEYS]))
        target = _spelt(route, data)
        version = data.draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
        # A live key opens the routes for keys: not what is looked at here.
        callers = [{}, forged] + ([] if route in FOR_KEYS else keyed)
        for method, headers in itertools.product(METHODS, callers):
            answer = _ask(gw.url, method, target, version, headers)
            status_line, _, rest = answer.partition(b"\r\n")
            status = int(status_line.split(b" ")[1])
            said = (method, target, version, headers, answer[:300])
            if status == 307:
                head = rest.partition(b"\r\n\r\n")[0].lower()
                (location,) = [h for h in head.split(b"\r\n") if h.startswith(b"location:")]
                where = location.split(b":", 1)[1].strip()
                assert where.startswith(b"/") and not where.startswith(b"//"), said
            else:
                assert status in REFUSED, said
            assert b"globex" not in answer and b"legal" not in answer, said
            assert not emulator.requests, (said, emulator.requests)

    check()
