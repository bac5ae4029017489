"""A TLS mismatch with the place exports go is said as one, with what to check.

An ``https://`` endpoint of a collector that speaks plain HTTP, an ``http://`` one of a
collector that speaks TLS, a certificate the exporter does not trust: each was said as "could
not export spans to ...; they are dropped until it answers", the words of a collector that is
away (or "it answered HTTP 400"), and the reader looked for a network fault. The line now
names the TLS failure and the setting to check.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_meter import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry._setup import Telemetry
from tests._otlp import OtlpGrpcReceiver, OtlpHttpReceiver, spans
from tests._raw_http import RawServer
from tests.factories import make_span
from tests.telemetry.test_failure_said_why import _said_after_one_span


def _said(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> str:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")  # the spans' line alone
    return _said_after_one_span(monkeypatch, caplog, timeout="5")  # a handshake on a busy CI


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_https_to_a_plain_collector_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    rx = OtlpHttpReceiver() if protocol == "http/protobuf" else OtlpGrpcReceiver()
    with rx:
        plain = rx.url if isinstance(rx, OtlpHttpReceiver) else rx.endpoint
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", plain.replace("http://", "https://"))
        said = _said(monkeypatch, caplog)
    assert "(TLS failed: the endpoint is https:// and the place answered plain HTTP; " in said
    assert "use http://" in said


_GO_TLS_SERVER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
"""What a Go server (the OpenTelemetry Collector with TLS on) answers plain HTTP."""
_NGINX = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 58\r\n\r\n"
    b"<center>The plain HTTP request was sent to HTTPS port</center>"
)


_APACHE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 215\r\n\r\n"
    b"<p>Your browser sent a request that this server could not understand.<br />\n"
    b"Reason: You're speaking plain HTTP to an SSL-enabled server port.<br />\n"
    b"Instead use the HTTPS scheme to access this URL, please.<br />\n</p>"
)


@pytest.mark.parametrize("answer", [_GO_TLS_SERVER, _NGINX, _APACHE])
def test_http_to_a_tls_collector_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, answer: bytes
) -> None:
    server = RawServer(lambda: answer, threaded=True)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
        said = _said(monkeypatch, caplog)
    finally:
        server.close()
    assert "(TLS failed: the endpoint is http:// and the place speaks TLS; use https://" in said


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def _tls_listener(cert: Path, key: Path) -> Iterator[int]:
    """A port whose connections do a TLS handshake with ``cert`` and are closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                context.wrap_socket(conn, server_side=True).close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_certificate_not_trusted_is_said_with_the_setting_to_check(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    self_signed: tuple[Path, Path],
    protocol: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with _tls_listener(*self_signed) as port:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{port}")
        said = _said(monkeypatch, caplog)
    assert "(TLS failed: its certificate is not trusted" in said
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in said


def test_a_refusal_that_is_no_tls_mismatch_is_said_as_before(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with OtlpHttpReceiver(status=400) as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        said = _said(monkeypatch, caplog)
    assert "(it answered HTTP 400)" in said and "TLS" not in said


@pytest.mark.parametrize("scheme", ["HTTP", "Http"])
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_endpoint_whose_scheme_is_in_capitals_is_the_same_endpoint(
    monkeypatch: pytest.MonkeyPatch, protocol: str, scheme: str
) -> None:
    """A URL's scheme is the same in any case (RFC 3986), and ``HTTP://collector:4317`` was
    taken as such, but over gRPC only ``http://`` was plain: every export went in TLS to a
    plain collector, and failed, said as a TLS mismatch of an ``https://`` endpoint."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    rx = OtlpHttpReceiver() if protocol == "http/protobuf" else OtlpGrpcReceiver()
    with rx:
        plain = rx.url if isinstance(rx, OtlpHttpReceiver) else rx.endpoint
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", plain.replace("http", scheme, 1))
        telemetry = Telemetry(load_settings())
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)
        telemetry.shutdown()
    assert [s.span_id for s in spans(rx)] == [span.span_id]
    assert telemetry.failures() == []


def _answered_400(body: bytes) -> bytes:
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"message":"Invalid OTLP request; see https://langfuse.com/docs/opentelemetry"}',
        b'{"code":3,"message":"bad span: the https: scheme in url.full is not allowed"}',
    ],
)
def test_a_refusal_whose_words_name_https_is_no_tls_mismatch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """A place's 400 that mentions ``https`` (a link to its documentation, as Langfuse's
    answers give) was said as a TLS mismatch: "the place speaks TLS; use https://", and a
    reader who did so had exports fail for good. Only the words a TLS server answers plain
    HTTP with say that."""
    server = RawServer(lambda: _answered_400(body), threaded=True)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
        said = _said(monkeypatch, caplog)
    finally:
        server.close()
    assert "(it answered HTTP 400)" in said and "TLS" not in said
