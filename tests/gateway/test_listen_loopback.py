"""Whether ``ometer serve`` listens only on this machine is the address its socket binds, not
how ``--host`` spells it.

``127.1``, ``0x7f000001``, ``::ffff:127.0.0.1`` and a name this machine resolves to 127.0.0.1
bind loopback, and were taken for the network: refused without a key or a token, and once
started with ``--insecure-open`` (the only way the refusal left), served with no Host check,
so a web page whose name was pointed at 127.0.0.1 (DNS rebinding) read the dashboard and
spent budgets through the visitor's browser. ``0``, ``::`` and ``::ffff:0.0.0.0`` bind every
interface and are the network's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_meter.gateway import is_loopback
from ollama_meter.testing import OllamaEmulator
from tests.gateway.test_security import clean_env, launch, raw, stop


@pytest.mark.parametrize("options", [[], ["--insecure-open"]])
@pytest.mark.parametrize("host", ["127.1", "0x7f000001", "::ffff:127.0.0.1"])
def test_a_host_that_binds_loopback_starts_without_a_key_and_checks_host_names(
    emulator: OllamaEmulator, tmp_path: Path, host: str, options: list[str]
) -> None:
    env = clean_env(OMETER_DB_URL=f"sqlite:///{tmp_path / 'l.db'}")
    proc, url = launch(env, emulator.url, tmp_path / "gw.log", *options, host=host)
    try:
        named = raw(url, b"GET /api/tags HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n")
        local = raw(url, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    finally:
        stop(proc)
    assert named.startswith(b"HTTP/1.1 403 "), named[:200]
    assert local.startswith(b"HTTP/1.1 200 "), local[:200]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("[::1]", True),
        ("::ffff:127.0.0.1", True), ("localhost", True),
        ("0.0.0.0", False), ("::", False), ("::ffff:0.0.0.0", False), ("0", False),
        ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("nosuch.invalid", False),
    ],
)  # fmt: skip
def test_loopback_is_read_from_the_address(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
