"""``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` turn a signal's OTLP export off.

The SDK configuration spec names the exporter of each signal, ``otlp`` by default, ``none``
for none. ometer read neither: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set both signals went,
so a collector that takes traces only (Langfuse's OTLP endpoint) answered every metrics
export with an error, and the exit warned of it every time, with no way to say no; and
``OTEL_TRACES_EXPORTER=console`` (or a typo) went unread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.errors import ConfigError
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator, unreachable_url
from tests._otlp import OtlpHttpReceiver, wait_for

HI = [{"role": "user", "content": "hello"}]
SIGNALS = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER"}


@pytest.mark.parametrize("off", ["traces", "metrics"])
def test_a_signal_whose_exporter_is_none_is_not_sent(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, off: str
) -> None:
    (on,) = set(SIGNALS) - {off}
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OLLAMA_HOST", emulator.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv(SIGNALS[off], " None ")  # read trimmed, in any case, as the SDK does
        client = MeteredClient(db_url=f"sqlite:///{tmp_path / 'l.db'}")
        client.chat(model="llama3.1:8b", messages=HI)
        telemetry = telemetry_for(load_settings())
        assert telemetry is not None and telemetry.flush()
        wait_for(lambda: [r for r in rx.requests if r.path == f"/v1/{on}"], what=on)
        telemetry.shutdown()
        assert {r.path for r in rx.requests} == {f"/v1/{on}"}
        assert telemetry.exporter_names() == [f"{rx.url}/v1/{on}"]


def test_both_signals_none_exports_nothing_and_loads_no_telemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nowhere = unreachable_url()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere)
    for name in SIGNALS.values():
        monkeypatch.setenv(name, "none")
    assert not load_settings().telemetry_configured
    # Langfuse is no OTLP exporter of the SDK's configuration: still exported to.
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
    monkeypatch.setenv("LANGFUSE_HOST", nowhere)
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None
    assert telemetry.exporter_names() == [f"{nowhere}/api/public/otel/v1/traces"]
    telemetry.shutdown()


EXPORTERS = st.one_of(
    st.sampled_from(
        [
            *("", " ", "otlp", " OTLP ", "otlp,otlp", "none", "NONE", " none "),
            *("console", "zipkin", "prometheus", "logging", "otlp,console", "none,otlp", "otl p"),
            *("otlp,", ",", "jaeger"),
        ]
    ),
    # no environment holds a NUL, nor a lone surrogate
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(signal=st.sampled_from(sorted(SIGNALS)), value=EXPORTERS)
def test_an_exporter_is_otlp_none_or_an_error_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, signal: str, value: str
) -> None:
    """Empty is unset (``otlp``); a list of ``otlp`` is ``otlp``; ``none`` alone is none; any
    other exporter (``console``, ``zipkin``, ``prometheus``...) ometer has not: one line saying
    which it takes, before any call."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable_url())
    for name in SIGNALS.values():  # the fixture's, kept from the example before
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(SIGNALS[signal], value)
    names = {part.strip().lower() for part in value.split(",")} - {""}
    if names <= {"otlp"} or names == {"none"}:
        loaded = load_settings()
        exported = loaded.otlp_of("endpoint", signal) is not None
        assert exported == (names != {"none"})
        assert loaded.telemetry_configured
        return
    with pytest.raises(ConfigError) as raised:
        load_settings()
    said = str(raised.value)
    assert said.startswith(f"{SIGNALS[signal]}: ") and "otlp or none" in said
    assert "\n" not in said
