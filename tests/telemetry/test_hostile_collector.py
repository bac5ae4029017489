"""A collector (or whatever answers in its place) that answers badly costs one failed export:
a bounded number of requests, a line when failing starts, a count of what was dropped, and
no traceback, whatever it says. Real HTTP over loopback; each answer is canned bytes."""

from __future__ import annotations

import logging
import threading

import pytest

from ollama_meter import load_settings
from ollama_meter.records import make_storable
from ollama_meter.telemetry._setup import Telemetry
from tests._otlp import SilentCollector
from tests.factories import make_span


def _answer(status: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    head = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status, head, len(body), body)


HOSTILE = {
    "retry-after-huge": _answer(b"429 Too Many Requests", b"Retry-After: 99999999999"),
    "retry-after-negative": _answer(b"429 Too Many Requests", b"Retry-After: -5"),
    "retry-after-garbage": _answer(b"503 Unavailable", b"Retry-After: soon\x01"),
    "retry-after-date-past": _answer(
        b"503 Unavailable", b"Retry-After: Wed, 21 Oct 2015 07:28:00 GMT"
    ),
    "500-html": _answer(b"500 Internal Server Error", body=b"<html>oops</html>" * 100),
    "413-too-large": _answer(b"413 Content Too Large", b"Connection: close", body=b"\xff" * 99),
    "redirect-to-itself": _answer(b"301 Moved Permanently", b"Location: /v1/traces"),
    "redirect-elsewhere": _answer(b"307 Temporary Redirect", b"Location: http://example.com/"),
    # A sign-in page of a proxy in front of the collector, or a web app at a wrong endpoint:
    # 200, so every export "succeeded" and nothing got there, without a word.
    "200-web-page": _answer(
        b"200 OK", b"Content-Type: text/html; charset=utf-8", body=b"<html>Sign in</html>"
    ),
    "closes-mid-answer": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "hangs-up-at-once": b"\r\n",
    "header-line-too-long": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("answer", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_collector_that_answers_badly_costs_a_failed_export_and_two_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, answer: bytes
) -> None:
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "0.5")
    caplog.set_level(logging.DEBUG)
    with SilentCollector(answer=answer) as collector:
        url = f"{collector.url}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        for _ in range(3):
            span = make_storable(make_span())
            telemetry.observer.on_start(span)
            telemetry.observer.on_end(span)
        flushing = threading.Thread(target=telemetry.flush, daemon=True)
        flushing.start()
        flushing.join(60)  # a bound for a hang, not a timing
        assert not flushing.is_alive()
        assert telemetry.failures() == [url]
        assert 1 <= collector.connections <= 12  # the SDK's six tries, each retried once
        telemetry.shutdown()
    (exporter,) = telemetry.span_exporters
    assert exporter.dropped == 3
    said = [r for r in caplog.records if r.name == "ollama_meter.telemetry"]
    status = answer[9:12] if answer[:9] == b"HTTP/1.1 " and answer[9:10] in b"345" else b""
    why = f" (it answered HTTP {status.decode()})" if status and answer.count(b"\r\n\r\n") else ""
    assert [r.getMessage() for r in said if r.levelno >= logging.WARNING] == [
        f"could not export spans to {url}{why}; they are dropped until it answers "
        "(the ledger keeps every call)",
        f"spans not sent to {url}: 3 (the ledger keeps every call)",
    ]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
