"""A connect that failed is said plainly, whatever the client library: the address and the
system's reason.

aiohttp prints ``Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed
('127.0.0.1', 9)]``: its TLS setting (for plain http too) and asyncio's words. That went as
it was into spans' ``error_message``, the gateway's answers and its log; the ollama SDK's
httpx said only "All connection attempts failed", so the CLI said no reason at all."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from types import SimpleNamespace

import aiohttp
import httpx
from hypothesis import given, strategies as st

from ollama_meter.upstream._classify import no_connection

HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True),
)
CODES = st.sampled_from(
    [errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET]
)


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _aiohttp(host: str, port: int, cause: OSError) -> BaseException:
    key = SimpleNamespace(host=host, port=port, ssl=True, is_ssl=False)
    return aiohttp.ClientConnectorError(key, cause)  # type: ignore[arg-type]


def _httpx(cause: OSError) -> BaseException:
    try:  # as httpcore maps it, and httpx maps httpcore's
        try:
            raise cause
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as exc:
        return exc


@st.composite
def failed_connects(draw: st.DrawFn) -> tuple[BaseException, str, str]:
    """What a client library raises for a connect that failed, the URL and the words expected."""
    host, port, code = draw(HOSTS), draw(st.integers(1, 65535)), draw(CODES)
    how = draw(st.sampled_from(["asyncio", "plain", "several", "name"]))
    if how == "asyncio":  # asyncio's words for one address
        cause: OSError = OSError(code, f"Connect call failed ('{host}', {port})")
    elif how == "plain":
        cause = OSError(code, os.strerror(code))
    elif how == "several":  # every address of a name failed alike
        said = ", ".join(f"[Errno {code}] Connect call failed ('{a}', {port})" for a in "ab")
        cause = OSError(f"Multiple exceptions: {said}")
    else:
        cause = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    words = "Name or service not known" if how == "name" else os.strerror(code)
    error = draw(st.sampled_from([_aiohttp, lambda h, p, c: _httpx(c)]))(host, port, cause)
    return error, f"http://{_shown(host)}:{port}", f"{_shown(host)}:{port}: {words}"


@given(failed_connects())
def test_a_failed_connect_is_its_address_and_the_systems_reason(
    failed: tuple[BaseException, str, str],
) -> None:
    error, url, reason = failed
    said = str(no_connection(error, host=url, reason="what the library said"))
    assert said.startswith(f"cannot reach Ollama at {url} ({reason}): is it running?"), said


def test_a_tls_handshake_that_failed_keeps_its_own_words() -> None:
    handshake = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error = aiohttp.ClientConnectorSSLError(
        SimpleNamespace(host="gpu1", port=443, ssl=True, is_ssl=True),  # type: ignore[arg-type]
        handshake,
    )
    said = str(no_connection(error, host="https://gpu1", reason="aiohttp's"))
    # errno 1 is OpenSSL's, not the system's "Operation not permitted"
    assert f"(gpu1:443: {handshake})" in said, said


def test_both_transports_say_a_refused_connect_alike() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # nothing listens there now
        port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    async def by_aiohttp() -> BaseException:
        async with aiohttp.ClientSession() as session:
            try:
                await session.get(url)
            except aiohttp.ClientError as exc:
                return exc
        raise AssertionError("nothing listens there")

    try:
        httpx.get(url)
    except httpx.ConnectError as exc:
        refused_httpx: BaseException = exc
    for error in (asyncio.run(by_aiohttp()), refused_httpx):
        said = str(no_connection(error, host=url, reason=str(error)))
        assert f"(127.0.0.1:{port}: Connection refused)" in said and "ssl:" not in said, said
