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


def test_a_forwarded_header_from_a_caller_on_loopback_changes_nothing(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = serve_on(emulator.url, sqlite_url, require_key=True)
    said = _refused_from(
        gateway, caplog, **{"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https"}
    )
    assert said == _LOGGED.format("127.0.0.1")


@pytest.mark.parametrize("trusted", ["127.0.0.1", "127.0.0.0/8,10.0.0.5", "*"])
def test_a_proxy_the_operator_names_is_believed(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
) -> None:
    gateway = serve_on(
        emulator.url, sqlite_url, server_options={"trusted_proxies": trusted}, require_key=True
    )
    said = _refused_from(gateway, caplog, **{"X-Forwarded-For": "10.9.9.9"})
    assert said == _LOGGED.format("10.9.9.9")


def test_a_proxy_the_operator_names_elsewhere_is_not_the_caller(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = serve_on(
        emulator.url, sqlite_url, server_options={"trusted_proxies": "10.0.0.5"}, require_key=True
    )
    said = _refused_from(gateway, caplog, **{"X-Forwarded-For": "10.9.9.9"})
    assert said == _LOGGED.format("127.0.0.1")


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
