"""The dashboard's work grows with the names in its window: none of it runs on the event loop.

With 40,000 made-up department names in a month (any caller can send a new
``X-Ometer-Department`` per call when keys are not required), building ``/api/dash``'s
JSON took 11 s and encoding it 30 MB: on the event loop, every call through the gateway
waited behind it (one waited 12 s). Which thread runs what is watched with a profile
hook on the threads the gateway starts, so the test says where the work ran, not how
long it took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import pytest

from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway, threads_profiled

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
ROUTES = {"api_dash", "dashboard"}
"""The route functions of ``gateway/_dash.py``: the thread they run on is the event loop's."""
HEAVY = {
    ("dashboard_report", "_dashboard.py"),
    ("dashboard_json", "_dashboard_json.py"),
    ("render_dashboard", "_dashboard_page.py"),
    ("encode", "json/encoder.py"),
}
"""Work that grows with the window's names: the reports, the JSON, its encoding, the page."""


def heavy(name: str, file: str) -> bool:
    return any(name == n and file.endswith(suffix) for n, suffix in HEAVY)


@pytest.fixture
def calls_by_thread() -> Iterator[list[tuple[int, str, str]]]:
    """(thread id, function, file) of every watched Python call in threads started from now."""
    seen: list[tuple[int, str, str]] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_code.co_name
        if event == "call" and (name in ROUTES or heavy(name, frame.f_code.co_filename)):
            seen.append((threading.get_ident(), name, frame.f_code.co_filename))

    with threads_profiled(hook):
        yield seen


def test_the_dashboards_reports_json_and_page_are_built_off_the_event_loop(
    app: Callable[..., Gateway],
    emulator: OllamaEmulator,
    calls_by_thread: list[tuple[int, str, str]],
) -> None:
    gw = app(emulator.url, clock=lambda: NOW)
    gw.ledger.record(
        [
            make_span(started_at=NOW, department=f"dept{index}", user=f"user{index}")
            for index in range(30)
        ]
    )
    assert gw.client.get("/api/dash?period=month").json()["summary"]["requests"] == 30
    page = gw.client.get("/dashboard?period=month")
    assert page.status_code == 200 and "dept29" in page.text

    loop = {
        ident
        for ident, name, file in calls_by_thread
        if name in ROUTES and file.endswith("_dash.py")
    }
    assert len(loop) == 1  # both routes ran, on the one event loop
    on_loop = {name for ident, name, file in calls_by_thread if ident in loop and heavy(name, file)}
    assert on_loop == set()
