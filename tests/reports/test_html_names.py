"""Any name the ledger can hold is text on the dashboard and in the HTML files, never markup.

A model name is whatever a caller or an upstream said (up to 255 printable characters), an
error type up to 32: whatever they are, each page has the same elements and attributes as it
has for a plain name, and the name reads back from the page as it was stored.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.periods import parse_period
from ollama_meter.records import counted_model, make_storable
from ollama_meter.reports import (
    DashQuery,
    Links,
    dashboard_report,
    render_dashboard,
    render_spend_html,
    spend_report,
)
from tests.factories import OFFICE_NOW, make_span

UTC_ZONE = ZoneInfo("UTC")
AT = datetime(2026, 11, 18, 10, tzinfo=UTC)
ledgers = itertools.count()


class Skeleton(HTMLParser):
    """The page's elements with their attribute names, and every option's value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shape: list[tuple[str, tuple[str, ...]]] = []
        self.options: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.shape.append((tag, tuple(sorted(name for name, _ in attrs))))
        if tag == "option":
            self.options.append(dict(attrs).get("value") or "")


def skeleton(page: str) -> Skeleton:
    parser = Skeleton()
    parser.feed(page)
    parser.close()
    return parser


def pages(folder: Path, model: str, error: str) -> tuple[str, str]:
    ledger = Ledger(f"sqlite:///{folder / f'{next(ledgers)}.db'}")
    ledger.record(
        [
            make_storable(make_span(started_at=AT, request_model=model, cost_total=1_500_000)),
            make_storable(
                make_span(started_at=AT, request_model=model, status="error", error_type=error)
            ),
        ]
    )
    page, file = page_and_file(ledger, "model")
    ledger.dispose()
    return page, file


def page_and_file(ledger: Ledger, group: str) -> tuple[str, str]:
    """November's dashboard page, and its HTML file by ``group`` and day."""
    dash = dashboard_report(ledger, DashQuery(), tz=UTC_ZONE, now=OFFICE_NOW)
    page = render_dashboard(dash, links=Links("/dashboard", {"token": "t"}), zone="UTC")
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    report = spend_report(ledger, window, [group, "day"], tz=UTC_ZONE)
    file = render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW, title="t")
    return page, file


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("names")


@pytest.fixture(scope="module")
def plain(folder: Path) -> tuple[Skeleton, Skeleton]:
    page, file = pages(folder, "llama3.1:8b", "timeout")
    return skeleton(page), skeleton(file)


printable = st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Cn", "Co", "Zl", "Zp"))
names = st.text(printable, min_size=1, max_size=255).filter(str.isprintable)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model=st.one_of(
        names,
        st.sampled_from(["</script><script>x()</script>", '"><img src=x onerror=x()>',
                         "</style><b>", "{{7*7}}{% raw %}", "javascript:x()", "]]><!--"]),
    ),
    error=st.text(printable, min_size=1, max_size=32).filter(str.isprintable),
)  # fmt: skip
def test_any_name_is_text_on_the_dashboard_and_in_the_file(
    folder: Path, plain: tuple[Skeleton, Skeleton], model: str, error: str
) -> None:
    page, file = pages(folder, model, error)
    shown, written = skeleton(page), skeleton(file)
    assert shown.shape == plain[0].shape
    assert written.shape == plain[1].shape
    # The model filter offers the one name it counts under (``counted_model``).
    assert counted_model(model) in shown.options
