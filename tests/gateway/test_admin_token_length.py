"""An admin token on a gateway others can reach is long enough not to be guessed.

The token alone opens every tenant's spend (``/dashboard``, ``/api/dash``), ``/metrics``
and, with ``--allow-admin``, model management; a refused guess costs a caller nothing but a
round trip. ``--admin-token s3cret --host 0.0.0.0`` listened, guarded by six characters.
On loopback any token is taken: only this machine reaches it.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, strategies as st

from ollama_meter.gateway._limits import MIN_SHARED_TOKEN, short_token
from ollama_meter.testing import OllamaEmulator

_PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@given(token=st.text(_PRINTABLE, min_size=1, max_size=3 * MIN_SHARED_TOKEN))
def test_a_token_shorter_than_16_characters_guards_loopback_only(token: str) -> None:
    assert MIN_SHARED_TOKEN == 16
    problem = short_token(token, "0.0.0.0", loopback=False)
    assert (problem is None) == (len(token) >= MIN_SHARED_TOKEN)
    # A secret, even a weak one, is never printed: the message is its length's alone.
    assert problem == short_token("x" * len(token), "0.0.0.0", loopback=False)
    assert short_token(token, "127.0.0.1", loopback=True) is None


@pytest.mark.parametrize("how", ["option", "environment"])
def test_serve_refuses_a_short_admin_token_beyond_loopback_before_listening(
    cli: Any, emulator: OllamaEmulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    host = "0.0.0.0"  # refused before listening: were the token taken, the test would hang
    if how == "environment":
        monkeypatch.setenv("OMETER_ADMIN_TOKEN", "s3cret\n")
    token = ["--admin-token", "s3cret"] if how == "option" else []
    done = cli("serve", "--host", host, *token, "--upstream", emulator.url, "--db", sqlite_url)
    assert done.code == 2 and "ometer gateway on" not in done.stderr
    assert done.stderr.strip() == (
        "error: --admin-token (OMETER_ADMIN_TOKEN) has 6 characters: on 0.0.0.0 anyone "
        "who reaches the port may guess one that short and read every tenant's spend; give at "
        "least 16 (e.g. the output of `openssl rand -hex 32`), or listen on 127.0.0.1"
    )


def test_a_long_enough_token_gets_past_the_check(
    cli: Any, emulator: OllamaEmulator, sqlite_url: str
) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # listening then fails (no hang)
        port = str(taken.getsockname()[1])
        done = cli(
            "serve", "--host", "0.0.0.0", "--port", port, "--admin-token", "x" * MIN_SHARED_TOKEN,
            "--upstream", emulator.url, "--db", sqlite_url,
        )  # fmt: skip
    assert done.code == 2 and f"cannot listen on 0.0.0.0:{port}: the port is in use" in done.stderr
