"""Where Langfuse is: ``LANGFUSE_BASE_URL``, its own name today, or ``LANGFUSE_HOST``.

Langfuse hands out a new API key as ``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY`` and
``LANGFUSE_BASE_URL``, and its SDK reads ``LANGFUSE_BASE_URL`` first, then ``LANGFUSE_HOST``.
ometer read ``LANGFUSE_HOST`` only: those three, pasted as given, exported nothing to Langfuse
and nothing said so; nor did the keys with no URL at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ollama_meter import MeteredClient, load_settings
from ollama_meter.errors import ConfigError
from ollama_meter.records import make_storable
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, spans, wait_for
from tests.factories import make_span

HI = [{"role": "user", "content": "hi"}]


def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "TRACELOOP_API_KEY", "LANGFUSE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-2")


@pytest.mark.parametrize("host_too", [False, True])
def test_langfuse_base_url_is_where_spans_go(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_too: bool
) -> None:
    """As Langfuse's SDK: ``LANGFUSE_BASE_URL``, before a ``LANGFUSE_HOST`` set too."""
    _keys(monkeypatch)
    with OtlpHttpReceiver() as rx, OtlpHttpReceiver() as other:
        monkeypatch.setenv("LANGFUSE_BASE_URL", rx.url + "/")
        if host_too:
            monkeypatch.setenv("LANGFUSE_HOST", other.url)
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        (view,) = wait_for(lambda: spans(rx), what="the span at Langfuse")
        telemetry.shutdown()
        assert not other.requests
    assert rx.requests[0].path == "/api/public/otel/v1/traces"
    assert rx.requests[0].headers["authorization"].startswith("Basic ")
    assert view.name == "chat llama3.1:8b"


def test_a_bad_langfuse_base_url_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _keys(monkeypatch)
    monkeypatch.setenv("LANGFUSE_BASE_URL", "cloud.langfuse.com")
    with pytest.raises(ConfigError, match=r"^LANGFUSE_BASE_URL: "):
        load_settings()


@pytest.mark.parametrize("collector", [False, True])
def test_keys_with_no_url_say_nothing_goes_to_langfuse(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, collector: bool
) -> None:
    """The keys alone (Langfuse's SDK would send to its cloud; ometer, on-prem, sends prompts
    nowhere it was not told): nothing to Langfuse, and a warning that says what to set, with
    an OTLP collector set or not."""
    _keys(monkeypatch)
    monkeypatch.delenv("LANGFUSE_BASE_URL", raising=False)
    if collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    caplog.set_level(logging.WARNING, logger="ollama_meter.telemetry")
    monkeypatch.setattr("ollama_meter.telemetry._said", [])  # said once a process
    for _ in range(2):
        telemetry = telemetry_for(load_settings())
        assert (telemetry is not None) == collector
        if telemetry is not None:
            names = telemetry.exporter_names()
            telemetry.shutdown()  # nothing to send: no call was made
            assert names == ["http://127.0.0.1:9/v1/traces", "http://127.0.0.1:9/v1/metrics"]
    (said,) = [r.getMessage() for r in caplog.records if "LANGFUSE" in r.getMessage()]
    assert "LANGFUSE_BASE_URL" in said and "nothing is exported to Langfuse" in said


URL = "LANGFUSE_BASE_URL (or LANGFUSE_HOST)"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"LANGFUSE_PUBLIC_KEY": "pk-lf-1"}, ["LANGFUSE_SECRET_KEY", URL]),
        ({"LANGFUSE_SECRET_KEY": "sk-lf-2"}, ["LANGFUSE_PUBLIC_KEY", URL]),
        ({"LANGFUSE_PUBLIC_KEY": "pk-lf-1", "LANGFUSE_HOST": "http://lf:3000"}, ["LANGFUSE_SECRET_KEY"]),
        ({"LANGFUSE_SECRET_KEY": "sk-lf-2", "LANGFUSE_BASE_URL": "http://lf:3000"}, ["LANGFUSE_PUBLIC_KEY"]),
        ({"LANGFUSE_BASE_URL": "http://lf:3000"}, ["LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"]),
    ],
)  # fmt: skip
def test_half_a_langfuse_configuration_says_what_is_missing_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    given: dict[str, str],
    missing: list[str],
) -> None:
    """One key without the other (or a URL with neither) sent nothing to Langfuse, and said
    nothing: one WARNING line names what is set, what is missing and what to set."""
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT", "TRACELOOP_API_KEY", "LANGFUSE_HOST", "LANGFUSE_BASE_URL",
        "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="ollama_meter.telemetry")
    monkeypatch.setattr("ollama_meter.telemetry._said", [])  # said once a process
    for _ in range(2):
        assert telemetry_for(load_settings()) is None
    said = [r for r in caplog.records if "LANGFUSE" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]
    line = said[0].getMessage()
    named = " and ".join(given)
    verb = "is" if len(given) == 1 else "are"
    assert line.startswith(
        f"{named} {verb} set, but not {' or '.join(missing)}: nothing is exported to Langfuse; "
        f"set {missing[0]} ("
    )
    assert all(f" and {name} (" in line for name in missing[1:])
    assert "pk-lf-1" not in line and "sk-lf-2" not in line


@pytest.mark.parametrize(
    "given", ["/api/public/otel", "/api/public/otel/", "/api/public/otel/v1/traces", "/lf"]
)
def test_langfuses_otlp_endpoint_given_as_its_url_is_where_spans_go(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """Langfuse's pages give its OTLP endpoint, ``https://cloud.langfuse.com/api/public/otel``,
    to set up an exporter with: pasted as ``LANGFUSE_BASE_URL``, every export went to
    ``.../api/public/otel/api/public/otel/v1/traces`` and was refused (404). A Langfuse served
    under a path of its own (``/lf``) keeps it."""
    _keys(monkeypatch)
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("LANGFUSE_BASE_URL", rx.url + given)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None
        span = make_storable(make_span())
        telemetry.observer.on_start(span)
        telemetry.observer.on_end(span)
        telemetry.shutdown()
    base = "/lf" if given == "/lf" else ""
    assert [r.path for r in rx.requests] == [f"{base}/api/public/otel/v1/traces"]
    assert telemetry.failures() == []
