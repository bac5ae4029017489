"""A dashboard filtered by a name no call in its window has says so, as ``ometer report`` does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ollama_meter.records import make_storable
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def dash(app: Callable[..., Gateway], emulator: OllamaEmulator) -> Gateway:
    gw = app(emulator.url, clock=lambda: NOW)
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    gw.ledger.record(
        [
            make_span(started_at=at, tenant="acme", department="sales", cost_total=5),
            make_span(started_at=at, tenant="acme", department="support", cost_total=7),
            # as the ledger keeps a name too long or with a NUL, which a filter finds as sent
            make_storable(make_span(started_at=at, department="d" * 100, request_model="m\x00")),
        ]
    )
    return gw


@pytest.mark.parametrize(
    ("params", "said"),
    [
        (
            {"tenant": " acme "},
            "no call in 2026-11 has tenant ' acme ' (did you mean 'acme'?)",
        ),
        (
            {"dept": "salse", "model": "lama3.1:8b"},
            "no call in 2026-11 has department 'salse' (did you mean 'sales'?); "
            "no call in 2026-11 has model 'lama3.1:8b' (did you mean 'llama3.1:8b'?)",
        ),
        (
            {"dept": "legal\u202e<b>", "period": "2026-10"},
            "no call in 2026-10 has department 'legal\\u202e<b>'",
        ),
    ],
)
def test_a_filter_no_call_has_is_a_warning_with_the_near_names(
    dash: Gateway, params: dict[str, str], said: str
) -> None:
    """Typed into the filter field (past 500 names) or the URL, ``acme `` showed a dashboard
    of nothing, and nothing said why; ``ometer report --tenant 'acme '`` says so."""
    warnings = dash.client.get("/api/dash", params=params).json()["warnings"]
    assert warnings == [said]
    page = dash.client.get("/dashboard", params=params).text
    assert 'id="unmatched-banner"' in page and "<b>" not in page.split("unmatched-banner")[1]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"tenant": "acme"},
        {"model": "LLAMA3.1:8B"},
        {"dept": "sales"},
        {"dept": "d" * 100},  # kept cut short, and found so
        {"model": "m\x00"},  # kept with U+FFFD, and found so
    ],
)
def test_a_filter_some_call_has_says_nothing(dash: Gateway, params: dict[str, str]) -> None:
    assert dash.client.get("/api/dash", params=params).json()["warnings"] == []
    assert 'id="unmatched-banner"' not in dash.client.get("/dashboard", params=params).text


def test_among_thousands_of_names_a_typo_of_case_or_blanks_still_finds_its_name(
    app: Callable[..., Gateway], emulator: OllamaEmulator
) -> None:
    """Each name compared letter by letter with the typo: 40,000 alike ones took 3 s a page."""
    gw = app(emulator.url, clock=lambda: NOW)
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    gw.ledger.record([make_span(started_at=at, department=f"team-{n:04d}") for n in range(2001)])
    warnings = gw.client.get("/api/dash", params={"dept": " TEAM-0042"}).json()["warnings"]
    assert warnings == [
        "no call in 2026-11 has department ' TEAM-0042' (did you mean 'team-0042'?)"
    ]
    warnings = gw.client.get("/api/dash", params={"dept": "team-0042x"}).json()["warnings"]
    assert warnings == ["no call in 2026-11 has department 'team-0042x'"]
