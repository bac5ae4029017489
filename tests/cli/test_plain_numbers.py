"""A duration setting (seconds) is a number as a user writes one: ASCII digits, a point and
optionally an exponent. pydantic read ``OMETER_UPSTREAM_TIMEOUT=1_0`` as 10 seconds, a value
nobody wrote, where the same underscore in an integer setting or an amount is refused
(``tests/cli/test_whole_numbers.py``); now it is one line naming the setting."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.config import Settings
from ollama_meter.errors import ConfigError

FLOAT_SETTINGS = {
    "OMETER_UPSTREAM_TIMEOUT": "upstream_timeout",
    "OMETER_RETRY_BACKOFF": "retry_backoff",
    "OMETER_BREAKER_RESET": "breaker_reset",
    "OMETER_LEDGER_WAIT": "ledger_wait",
    "OMETER_EXPORT_TIMEOUT": "export_timeout",
    "OMETER_DISCOVERY_INTERVAL": "discovery_interval",
    "OMETER_DRAIN_TIMEOUT": "drain_timeout",
}
MILLISECOND_SETTINGS = {"otlp_timeout", "otlp_traces_timeout", "otlp_metrics_timeout"}
"""Seconds too, but written as whole milliseconds, the spec's unit for them: checked stricter
(``1_0`` and ``1.5`` refused alike) in ``tests/telemetry/test_otlp_timeout.py``."""
PLAIN = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
"""A number as a user writes one (and as an amount is written: 12.50, 1e3)."""

lenient = st.one_of(
    st.builds(lambda a, b: f"{a}_{b}", st.integers(1, 9), st.integers(0, 9)),
    st.builds(lambda a, b: f"{a}.{b}_5", st.integers(1, 9), st.integers(0, 9)),
    st.sampled_from(["1_0", "1e1_0", "١٠", "１０", "0x10", "10s", "", " ", "nan", "inf"]),
)
texts = st.text(string.digits + "_.+-eE \tx", max_size=6)


def test_every_float_setting_is_checked() -> None:
    """A new duration setting without the check would read ``1_0`` again."""
    floats = {
        name for name, field in Settings.model_fields.items() if "float" in repr(field.annotation)
    }
    assert floats == set(FLOAT_SETTINGS.values()) | MILLISECOND_SETTINGS


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variable=st.sampled_from(sorted(FLOAT_SETTINGS)), value=st.one_of(lenient, texts))
def test_a_duration_setting_is_a_plain_number_or_one_line_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_meter.config import load_settings

    with monkeypatch.context() as env:
        env.setenv(variable, value)
        try:
            read: object = getattr(load_settings(), FLOAT_SETTINGS[variable])
        except ConfigError as exc:
            said: str | None = str(exc)
        else:
            said = None
    if said is not None:
        assert said.startswith(f"{variable}: ") and "\n" not in said
    if value.strip() and not PLAIN.fullmatch(value):
        assert said is not None, f"{variable}={value!r} read as {read!r}"
        assert said.startswith(f"{variable}: {value!r} is not a number"), said
    elif said is None and value.strip():
        assert read == float(value)
