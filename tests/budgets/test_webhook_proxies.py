"""A webhook and the proxies in the environment (``HTTP_PROXY``, ``ALL_PROXY``...).

A webhook on this machine (a local relay on 127.0.0.1) is posted to straight, as an Ollama on
this machine is called: through a proxy it reaches the proxy's own loopback, never this
machine's. A proxy httpx cannot use is said naming its variable, never a bug's text.
A real local webhook (``Receiver``) and, for the proxy, a port nothing listens on.
"""

from __future__ import annotations

import importlib.util
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ollama_meter.budgets import WebhookChannel
from ollama_meter.records import Alert
from tests.budgets.test_alert_retry import certificate  # noqa: F401 (a fixture)
from tests.budgets.test_gate import Receiver, receiver  # noqa: F401 (a fixture)

ALERT = Alert(1, 1, "acme", "sales", "month", "2026-11", datetime(2026, 11, 1, tzinfo=UTC), 90, 9, 10, "USD")  # fmt: skip


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_webhook_on_this_machine_is_posted_to_straight_past_a_proxy(
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    host: str,
) -> None:
    """A corporate HTTP_PROXY set for the gateway's host sent the alert for
    http://127.0.0.1:PORT to the proxy ('ConnectError posting to http://127.0.0.1:PORT', or
    the proxy's 502 for its own loopback), each of 15 tries: no alert ever arrived."""
    monkeypatch.setenv(variable, f"http://127.0.0.1:{_dead_port()}")
    url = receiver.url.replace("127.0.0.1", host)
    assert WebhookChannel(url).send(ALERT) == f"sent to http://{host}:{receiver.server.server_port}"
    assert [p["threshold"] for p in receiver.posts] == [90]


@pytest.mark.parametrize(
    ("variable", "proxy", "said"),
    [
        (
            "ALL_PROXY",
            "socks5://127.0.0.1:1080",
            "ALL_PROXY is a SOCKS proxy, which needs the socksio package: pip install "
            "'httpx[socks]', or unset it",
        ),
        (
            "HTTPS_PROXY",
            "ftp://user:secret@proxy.example",
            "HTTPS_PROXY is not a proxy httpx can use (ftp://): give an http://, https:// or "
            "socks5:// URL, or unset it (NO_PROXY names hosts called straight)",
        ),
    ],
)
def test_a_proxy_httpx_cannot_use_is_said_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,  # noqa: F811
    variable: str,
    proxy: str,
    said: str,
) -> None:
    """It raised httpx's ImportError ('... Make sure to install httpx using `pip install
    httpx[socks]`') or ValueError (the proxy's URL, password and all), recorded with the alert.
    A webhook on this machine is posted to all the same."""
    if proxy.startswith("socks") and importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: httpx can use a SOCKS proxy")
    monkeypatch.setenv(variable, proxy)
    with pytest.raises(OSError) as failed:
        WebhookChannel("https://hooks.example.org/T0/B1/secret").send(ALERT)
    assert str(failed.value) == f"{said}; the alert to https://hooks.example.org goes through it"
    assert "secret" not in str(failed.value)
    assert WebhookChannel(receiver.url).send(ALERT).startswith("sent to ")


def test_a_webhook_on_this_machine_over_tls_is_trusted_as_ssl_cert_file_says(
    receiver: Receiver,  # noqa: F811
    certificate: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Posted straight, it is still verified against the certificates ``SSL_CERT_FILE``
    names, as every other webhook and Ollama's calls are."""
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    receiver.server.socket = tls.wrap_socket(receiver.server.socket, server_side=True)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_dead_port()}")
    url = receiver.url.replace("http://", "https://")
    assert WebhookChannel(url).send(ALERT) == f"sent to {url.removesuffix('/hook')}"
    assert [p["threshold"] for p in receiver.posts] == [90]
