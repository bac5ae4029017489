"""A process loads the CA bundle once for all its clients to Ollama, and again only when
``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` names another."""

from __future__ import annotations

import subprocess
import sys

import certifi
import pytest

from ollama_meter.upstream._tls import client_tls

COUNTS = """
import asyncio, ssl
made = []
real = ssl.create_default_context
def counted(*args, **kwargs):
    made.append(1)
    return real(*args, **kwargs)
ssl.create_default_context = counted
import ollama  # its module-level client makes one of its own
before = len(made)
from ollama_meter.upstream._sdk import Upstream
ups = [Upstream("http://127.0.0.1:1") for _ in range(3)]
async def asks():
    return [up.async_client for up in ups]
asyncio.run(asks())
print(before, len(made) - before)
"""


def test_every_client_to_ollama_in_a_process_shares_one_loaded_ca_bundle() -> None:
    """Each client loaded it again (20 ms of CPU on a quiet machine, 90 on a busy one), and
    so did the request writer that never connects, at import: three times in ``ometer chat``,
    once more for each meter a gateway made."""
    done = subprocess.run(
        [sys.executable, "-c", COUNTS], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["1", "1"], done


def test_another_cert_file_is_read_when_it_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    first = client_tls()
    assert client_tls() is first
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    named = client_tls()
    assert named is not first and client_tls() is named
    monkeypatch.delenv("SSL_CERT_FILE")
    assert client_tls() is first
