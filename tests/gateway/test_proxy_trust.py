"""No ``X-Forwarded-For`` changes the address a caller is known by unless the operator named
the proxies that may send it (``--trusted-proxies``, or ``FORWARDED_ALLOW_IPS``).

uvicorn believes the header from 127.0.0.1 by default, so any program on the gateway's own
machine (every caller of a gateway on loopback) chose the address ometer logged refused
calls under, with one header: ``X-Forwarded-For: 10.9.9.9`` put another machine in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

_LOGGED = "refused 1 unauthenticated request(s) in the last 10 s (latest: /api/tags from {})"


def _refused_from(gateway: Gateway, caplog: pytest.LogCaptureFixture, **headers: str) -> str:
    """The address the gateway logs a refused call from, the call made over loopback."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ollama_meter"):
        answer = httpx.get(f"{gateway.url}/api/tags", headers=headers, timeout=30)
    assert answer.status_code == 401, answer.text
    [said] = [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]
    return said


@pytest.mark.parametrize(
    ("trusted", "caller"),
    [
        ("", "127.0.0.1"),  # none named (the default): the header changes nothing
        ("10.0.0.5", "127.0.0.1"),  # a proxy elsewhere: this caller is no proxy
        ("127.0.0.1", "10.9.9.9"),
        ("127.0.0.0/8,10.0.0.5", "10.9.9.9"),
        ("*", "10.9.9.9"),
    ],
)
def test_a_forwarded_header_is_believed_only_from_a_proxy_the_operator_names(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
    caller: str,
) -> None:
    gateway = serve_on(
        emulator.url, sqlite_url, server_options={"trusted_proxies": trusted}, require_key=True
    )
    forwarded = {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https"}
    assert _refused_from(gateway, caplog, **forwarded) == _LOGGED.format(caller)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("proxy.internal", "'proxy.internal' is not an IP address or network"),
        ("10.0.0.5,,", "'' is not an IP address or network"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    ],
)
def test_a_trusted_proxy_that_is_no_address_is_refused(
    cli: Callable[..., object], given: str, said: str
) -> None:
    done = cli("serve", "--trusted-proxies", given)
    assert done.code == 2  # type: ignore[attr-defined]
    assert said in done.stderr, done.stderr  # type: ignore[attr-defined]
