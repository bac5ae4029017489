"""``OTEL_EXPORTER_OTLP_TIMEOUT`` and its per-signal variables bound the OTLP exports.

The settings checked them (as seconds) and then gave every exporter ``OMETER_EXPORT_TIMEOUT``:
a collector's timeout set the standard way was never used. The spec has them in milliseconds
(a whole number; 0: no limit), the signal's own over the general one. Now an OTLP export of
a signal takes the signal's own, else the general one, else ``OMETER_EXPORT_TIMEOUT``, which
still bounds Langfuse and Traceloop; the exit waits for the longest of those in use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter import load_settings
from ollama_meter.errors import ConfigError
from ollama_meter.telemetry import _timeouts
from ollama_meter.telemetry._setup import Telemetry
from ollama_meter.telemetry._timeouts import export_bound, export_timeout
from tests._otlp import SilentCollector

NAMES = {
    None: "OTEL_EXPORTER_OTLP_TIMEOUT",
    "traces": "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
}
MILLIS = st.none() | st.integers(0, 3_600_000)


@settings(max_examples=150, deadline=None)
@given(general=MILLIS, traces=MILLIS, metrics=MILLIS, own=st.sampled_from([None, 0.5, 7.0]))
def test_a_signal_takes_its_own_timeout_else_the_general_one_else_ometers(
    general: int | None, traces: int | None, metrics: int | None, own: float | None
) -> None:
    given_ms = {None: general, "traces": traces, "metrics": metrics}
    env = {NAMES[k]: str(v) for k, v in given_ms.items() if v is not None}
    with pytest.MonkeyPatch.context() as mp:
        for name in NAMES.values():
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        loaded = load_settings(export_timeout=own)
    for signal in ("traces", "metrics"):
        ms, name = given_ms[signal], NAMES[signal]
        if ms is None:
            ms, name = general, NAMES[None]
        if ms is None:
            expected = (own or 3.0, "OMETER_EXPORT_TIMEOUT")
        else:  # 0 is no limit: the longest export ometer waits for, an hour
            expected = ((ms or 3_600_000) / 1000, name)
        assert export_timeout(loaded, signal) == expected


@pytest.mark.parametrize("name", list(NAMES.values()))
@pytest.mark.parametrize(
    "value", ["", " ", "1.5", "-1", "10s", "3600001", "1e3", "abc", "1_0", "١٠", "１０", "+5"]
)
def test_a_timeout_that_is_no_whole_number_of_milliseconds_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"{name}: {value!r} is not a whole number of milliseconds from 0 to 3,600,000 "
        "(an hour; 0: no limit); fix or unset it"
    )


def test_the_otlp_exporter_gives_up_at_its_signals_timeout_not_ometers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collector that never answers: the trace export gives up at its 300 ms, and the exit
    says it could not export; with OMETER_EXPORT_TIMEOUT's 30 s it waited those out, and said
    it could not within them."""
    monkeypatch.setenv("OMETER_EXPORT_TIMEOUT", "30")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    with SilentCollector() as collector:
        url = collector.url
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        telemetry = Telemetry(load_settings())
        assert (telemetry.timeout, telemetry.timeout_name) == (30.0, "OMETER_EXPORT_TIMEOUT")
        telemetry.observer.tracer.start_span("call").end()
        telemetry.shutdown()
        assert collector.connections >= 1
    # Given up by its own timeout, well within the exit's bound: not late, failed.
    assert capsys.readouterr().err == f"warning: could not export telemetry to {url}/v1/traces\n"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (3.0, "OMETER_EXPORT_TIMEOUT")),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "500"}, (3.0, "OMETER_EXPORT_TIMEOUT")),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "9000"}, (9.0, "OTEL_EXPORTER_OTLP_TIMEOUT")),
        (
            {"OTEL_EXPORTER_OTLP_TIMEOUT": "9000", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "12000"},
            (12.0, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
        ),
        (  # metrics not sent: their timeout bounds nothing
            {"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "12000"},
            (3.0, "OMETER_EXPORT_TIMEOUT"),
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"}, (3600.0, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")),
    ],
)
def test_the_exit_waits_for_the_longest_timeout_in_use(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[float, str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert export_bound(load_settings()) == expected


@settings(max_examples=100, deadline=None)
@given(ms=st.integers(0, 3_600_000), signal=st.sampled_from(["traces", "metrics"]))
def test_a_timeout_under_100_ms_is_said_to_be_milliseconds(ms: int, signal: str) -> None:
    """``OTEL_EXPORTER_OTLP_TIMEOUT=10``, meant as ten seconds (the Python SDK's reading), is
    10 ms here: every export failed, and the only line said the collector did not answer."""
    name = NAMES[signal]
    with pytest.MonkeyPatch.context() as mp, _records() as records:
        mp.setattr(_timeouts, "_said", set())
        for variable in NAMES.values():
            mp.delenv(variable, raising=False)
        mp.setenv(name, str(ms))
        _timeouts.warn_if_meant_as_seconds(*export_timeout(load_settings(), signal))
    if 0 < ms < 100:
        assert records == [
            f"{name}={ms} is {ms} milliseconds (the OpenTelemetry spec's unit; the Python SDK "
            f"reads seconds): an export that takes longer fails. For {ms} seconds, write "
            f"{ms * 1000}"
        ]
    else:
        assert records == []


def test_a_telemetry_with_a_timeout_meant_as_seconds_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_timeouts, "_said", set())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10")
    with _records() as records:
        for _ in range(2):
            Telemetry(load_settings()).shutdown()
    assert records == [
        "OTEL_EXPORTER_OTLP_TIMEOUT=10 is 10 milliseconds (the OpenTelemetry spec's unit; the "
        "Python SDK reads seconds): an export that takes longer fails. For 10 seconds, write 10000"
    ]


@contextmanager
def _records() -> Iterator[list[str]]:
    """The warnings ``ollama_meter.telemetry`` logs meanwhile, as their messages."""
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ollama_meter.telemetry")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
