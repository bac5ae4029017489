"""The HTML files: self-contained, escaped, and with exactly the CSV's cells and totals."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, strategies as st

from ollama_meter.ledger import Ledger
from ollama_meter.records import counted_model, minor_places
from ollama_meter.reports import (
    CHARGEBACK_COLUMNS,
    chargeback,
    parse_period,
    render_chargeback_html,
    render_spend_html,
    spend_report,
    to_csv,
)
from ollama_meter.reports._charts import nice_ticks, tick_text
from ollama_meter.reports._html import money, short_label
from tests._templates import LedgerTemplates
from tests.conftest import CliResult
from tests.factories import OFFICE_NOW, make_span, office_spans, two_currencies

UTC_ZONE = ZoneInfo("UTC")
HOSTILE = "<script>alert('x')</script>&\"'"


class Tables(HTMLParser):
    """Every table's rows as lists of cell texts, split into body and foot."""

    def __init__(self) -> None:
        super().__init__()
        self.body: list[list[str]] = []
        self.foot: list[list[str]] = []
        self.head: list[str] = []
        self._part = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("thead", "tbody", "tfoot"):
            self._part = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._part == "thead":
                self.head = self._row
            else:
                (self.foot if self._part == "tfoot" else self.body).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> Tables:
    parser = Tables()
    parser.feed(page)
    return parser


def assert_self_contained(page: str) -> None:
    """Nothing a mail client or browser would fetch: no URL, no script, no external reference."""
    assert page.startswith("<!doctype html>")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I)
    assert "<script" not in page.lower()
    assert not re.search(r"\bsrc=|@import|url\(", page, re.I)
    assert '<link rel="icon" href="data:,">' in page


def _recorded(url: str) -> Ledger:
    ledger = Ledger(url)
    ledger.record(office_spans())
    return ledger


@pytest.fixture
def ledger(db_url: str, templates: LedgerTemplates) -> Ledger:
    """A copy of a ledger that recorded the office's spans (tests/_templates.py)."""
    templates.copy(db_url, "test_html's office", _recorded)
    return Ledger(db_url)


@pytest.mark.parametrize("by", [["department", "day"], ["model"], ["tenant", "department"], []])
def test_report_file_has_exactly_the_csv(ledger: Ledger, by: list[str]) -> None:
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    report = spend_report(ledger, window, by, tz=UTC_ZONE)
    page = render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW, title="Spend")
    assert_self_contained(page)
    rows = list(csv.reader(io.StringIO(to_csv(report.columns, report.rows))))
    found = tables(page)
    assert found.head == rows[0]
    assert found.body == rows[1:]
    # the totals line sums the CSV's own cells
    if by:
        (total,) = found.foot
        for index, name in enumerate(rows[0]):
            if name in ("requests", "errors", "input_tokens", "output_tokens"):
                assert int(total[index]) == sum(int(r[index]) for r in rows[1:])
            if name in ("cost", "gpu_seconds"):
                assert Decimal(total[index]) == sum(Decimal(r[index]) for r in rows[1:])
    cost = sum(int(str(r["cost"])) for r in report.rows)
    assert f'<div class="card-value">{money(cost, "USD")}</div>' in page
    assert page.count("<svg") == (1 if by else 0)
    november = [s for s in office_spans() if s.started_at >= datetime(2026, 11, 1, tzinfo=UTC)]
    unpriced = sum(s.unpriced_usage for s in november)
    assert unpriced and f"{unpriced} call(s) matched no price rule" in page


def test_report_file_with_two_currencies_totals_each(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.record(two_currencies(datetime(2026, 11, 3, 9, tzinfo=UTC)))
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    report = spend_report(ledger, window, ["department"], tz=UTC_ZONE)
    page = render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW, title="x")
    found = tables(page)
    cost = found.head.index("cost")
    assert [(row[cost], row[-1]) for row in found.foot] == [
        ("1.200000", "EUR"),
        ("1.250000", "USD"),
    ]
    assert "2.45" not in page and "2.450000" not in page  # never the two added together
    assert page.count("<svg") == 2  # one chart per currency


def test_chargeback_file_has_exactly_the_csv(ledger: Ledger) -> None:
    result = chargeback(
        ledger,
        "2026-10",
        tz=UTC_ZONE,
        now=OFFICE_NOW,
        currency="USD",
        fixed_cost=Decimal("2400.00"),
        idle="separate",
    )
    page = render_chargeback_html(result, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW)
    assert_self_contained(page)
    rows = list(csv.reader(io.StringIO(to_csv(CHARGEBACK_COLUMNS, result.rows))))
    found = tables(page)
    assert found.head == rows[0] and found.body == rows[1:]
    (total,) = found.foot
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows[1:]:
        for index, name in enumerate(rows[0]):
            if name not in ("month", "tenant", "department", "currency"):
                sums[name] += Decimal(row[index])
    assert total[:3] == ["total", "", ""] and total[-1] == "USD"
    assert {name: Decimal(total[rows[0].index(name)]) for name in sums} == sums
    assert sums["fixed_cost_share"] == Decimal("2400.00")
    assert "GPU capacity used" in page


def test_a_bills_chart_draws_the_biggest_bills_and_counts_the_rest(tmp_path: Path) -> None:
    """A bar per department drew a bill of 5,000 departments as an SVG 140,000 px tall (3.5 MB
    of an email); the report's chart of groups draws its 25 biggest. The bill's does too,
    the biggest first, and says how many more the table holds."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    at = datetime(2026, 10, 5, tzinfo=UTC)
    ledger.record(
        [
            make_span(
                department=f"d{n:02d}", started_at=at + timedelta(minutes=n), unpriced=False,
                cost_total=(n + 1) * 1_000_000, cost_tokens=(n + 1) * 1_000_000,
            )
            for n in range(40)
        ]
    )  # fmt: skip
    result = chargeback(ledger, "2026-10", tz=UTC_ZONE, now=OFFICE_NOW, currency="USD")
    page = render_chargeback_html(result, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW)
    drawn = re.findall(r'data-series="usage" data-at="acme / ([^"]+)"', page)
    assert drawn == [f"d{n:02d}" for n in range(39, 14, -1)]
    assert "and 15 more" in page
    assert len(tables(page).body) == 40


@pytest.mark.parametrize(("currency", "total"), [("JPY", "1000"), ("KWD", "1000.000")])
def test_a_bills_total_line_has_its_currencys_places(
    ledger: Ledger, currency: str, total: str
) -> None:
    """The rows' shares are whole yen ('334'), but their total line read '1000.00' yen."""
    result = chargeback(
        ledger, "2026-10", tz=UTC_ZONE, now=OFFICE_NOW, currency=currency,
        fixed_cost=Decimal(1000),
    )  # fmt: skip
    found = tables(render_chargeback_html(result, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW))
    column = list(CHARGEBACK_COLUMNS).index("fixed_cost_share")
    (foot,) = [row for row in found.foot if row[-1] == currency]
    assert foot[column] == total


def test_a_bill_says_which_calls_no_price_rule_covered(ledger: Ledger) -> None:
    """Calls without a price count as 0 in ``usage_cost``; the bill said nothing of them, though
    it is the one report that goes to finance (the design's "silent $0" complaint)."""
    result = chargeback(
        ledger, "2026-11", tz=UTC_ZONE, now=datetime(2026, 12, 2, tzinfo=UTC), currency="USD"
    )
    november = [
        s
        for s in office_spans()
        if datetime(2026, 11, 1, tzinfo=UTC) <= s.started_at and s.unpriced_usage
    ]
    per_group: dict[tuple[str, str], int] = defaultdict(int)
    for s in november:
        per_group[(s.tenant, s.department)] += 1
    assert len(november) > 0 and len(per_group) > 1
    groups = ", ".join(f"{t}/{d} ({n})" for (t, d), n in sorted(per_group.items()))
    assert result.warnings == [
        f"{len(november)} call(s) matched no price rule and count as 0 in usage_cost: "
        f"{groups}; add a rule with `ometer pricing set`, then `ometer reprice`"
    ]
    assert {
        (r.tenant, r.department): r.unpriced_requests for r in result.rows if r.unpriced_requests
    } == per_group
    page = render_chargeback_html(result, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW)
    assert f"{len(november)} call(s) matched no price rule" in page
    assert page.count('<tr class="unpriced"') == len(per_group)
    # the CSV keeps its columns: cron jobs and spreadsheets read them by position
    assert to_csv(CHARGEBACK_COLUMNS, result.rows).splitlines()[0] == ",".join(CHARGEBACK_COLUMNS)


def test_names_are_text_not_markup(db_url: str) -> None:
    ledger = Ledger(db_url)
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record([make_span(started_at=at, user=HOSTILE, request_model=HOSTILE, cost_total=5)])
    window = parse_period("2026-11", tz=UTC_ZONE, now=OFFICE_NOW)
    report = spend_report(ledger, window, ["user", "model", "day"], tz=UTC_ZONE)
    page = render_spend_html(report, tz=UTC_ZONE, zone="UTC", generated=OFFICE_NOW, title=HOSTILE)
    assert_self_contained(page)
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;&#39;" in page
    assert tables(page).body[0][:2] == [HOSTILE, counted_model(HOSTILE)]  # and reads back as it


def test_cli_writes_html_files(cli, sqlite_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    Ledger(sqlite_url).record(office_spans(datetime.now(UTC)))
    out = tmp_path / "spend.html"
    result: CliResult = cli(
        "report",
        "--db",
        sqlite_url,
        "--by",
        "department,day",
        "--format",
        "html",
        "--out",
        str(out),
    )
    assert result.code == 0, result.stderr
    assert_self_contained(out.read_text())
    # Last month: whole, and full of the office's calls (this one may be minutes old).
    month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    bill = tmp_path / "bill.html"
    result = cli(
        "chargeback", "--db", sqlite_url, "--month", month, "--format", "html", "--out", str(bill)
    )
    assert result.code == 0, result.stderr
    page = bill.read_text()
    assert_self_contained(page) and "Chargeback" in page
    csv_out = cli("chargeback", "--db", sqlite_url, "--month", month).stdout
    assert tables(page).body == list(csv.reader(io.StringIO(csv_out)))[1:]


@given(
    st.decimals(min_value=0, max_value=10**15, places=6),
    st.sampled_from([Decimal(0), *(Decimal(1).scaleb(-p) for p in (0, 2, 3, 6))]),
)
def test_axis_ticks_are_round_and_cover_the_top(top: Decimal, least: Decimal) -> None:
    """``least``: none, or a currency's minor unit (a yen, a cent, a fils, a micro-unit)."""
    ticks = nice_ticks(top, least=least)
    step = ticks[1]
    assert ticks[0] == 0 and ticks[-1] >= top and 2 <= len(ticks) <= 5
    assert step >= least and (not least or step % least == 0)
    assert ticks == [step * i for i in range(len(ticks))]
    assert step.normalize().as_tuple().digits[0] in (1, 2, 5)


def test_axis_labels() -> None:
    for top, ticks in [
        (Decimal(0), ["0", "0.5", "1"]),
        (Decimal(57), ["0", "20", "40", "60"]),
        (Decimal("1234.5"), ["0", "500", "1,000", "1,500"]),
        (Decimal("0.003"), ["0", "0.001", "0.002", "0.003"]),
    ]:
        assert [tick_text(t) for t in nice_ticks(top)] == ticks
    assert short_label("2026-11-03", "day") == "3 Nov"
    assert short_label("2026-W45", "week") == "W45"
    assert money(1_234_567_891, "USD") == "1,234.57"
    assert money(5_000, "USD") == "0.01" and money(4_999, "USD") == "0.00"


@given(
    micros=st.integers(min_value=0, max_value=10**21) | st.integers(min_value=0, max_value=10**60),
    currency=st.sampled_from(["USD", "EUR", "JPY", "ISK", "KWD", "BHD", "CLF", "XAU"]),
)
@example(micros=10**28 + 1, currency="XAU")
def test_money_shows_each_currencys_own_minor_unit(micros: int, currency: str) -> None:
    """JPY has no cents and KWD has fils: ``1,235`` yen and ``1.235`` dinar, never ``1,234.57``.

    At any size: through Decimal's 28 digits, 10^28 micro-units of gold raised InvalidOperation
    (a budget's projection from its first milliseconds reaches that), and a bigger amount in
    dollars was rounded to 28 digits before it was rounded to the cent."""
    shown = money(micros, currency)
    places = minor_places(currency)
    assert len(shown.partition(".")[2]) == places and (places > 0 or "." not in shown)
    # half a minor unit rounds up, and the amount shown is the nearest one
    unit = 10 ** (6 - places)
    nearest = micros // unit + (2 * (micros % unit) >= unit)
    assert int(shown.replace(",", "").replace(".", "")) == nearest
    assert [
        money(v, c)
        for v, c in [
            (1_234_567_890, "JPY"),
            (1_234_567, "KWD"),
            (1_234_567, "USD"),
            (500_000, "JPY"),
        ]
    ] == ["1,235", "1.235", "1.23", "1"]


def test_a_gold_budget_spent_in_its_first_microseconds_is_drawn(tmp_path: Path) -> None:
    """A hundred of the costliest calls in the first 40 µs of the month, seen 50 µs into it:
    the pace projects 4.8·10^28 micro-units, past Decimal's 28 digits with gold's six places,
    and the dashboard failed (InvalidOperation) where it should draw the gauge."""
    from ollama_meter.records import MAX_CALL_COST, Budget
    from ollama_meter.reports import DashQuery, Links, dashboard_report, render_dashboard

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", zone="UTC")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    ledger.save_budget(Budget("acme", "sales", "month", 10**18, "XAU", hard=False))
    ledger.record(
        [
            make_span(
                started_at=start + timedelta(microseconds=n % 40), cost_total=MAX_CALL_COST,
                cost_tokens=MAX_CALL_COST, currency="XAU",
            )
            for n in range(100)
        ]
    )  # fmt: skip
    dash = dashboard_report(
        ledger, DashQuery(), tz=UTC_ZONE, now=start + timedelta(microseconds=50)
    )
    (status,) = dash.budgets
    assert status.projected == 100 * MAX_CALL_COST * (30 * 86_400 * 10**6) // 50
    page = render_dashboard(dash, links=Links("/dashboard", {}), zone="UTC")
    assert f"{status.projected // 10**6:,}.{status.projected % 10**6:06d}" == money(
        status.projected, "XAU"
    )
    assert money(status.projected, "XAU") in page


@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["", "(none)", "a", "a / b", "b"]),  # a model a caller named so
            st.sampled_from(["", "u"]),
            st.integers(1, 10**6),
        ),
        min_size=1,
        max_size=8,
    ),
    by=st.sampled_from([["model", "day"], ["user", "model", "day"], ["model", "user", "week"]]),
)
def test_every_call_is_in_the_spend_chart_whatever_its_models_name(
    tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[str, str, int]], by: list[str]
) -> None:
    """The chart drew one series per name shown: a call with no model ('(none)') and one
    naming the model '(none)' were one series, holding one of the two amounts."""
    url = f"sqlite:///{tmp_path_factory.mktemp('chart') / 'l.db'}"
    ledger = Ledger(url)
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger.record(
        [make_span(started_at=at, request_model=m, user=u, cost_total=c) for m, u, c in calls]
    )
    zone = ZoneInfo("UTC")
    report = spend_report(ledger, parse_period("2026-11", tz=zone, now=OFFICE_NOW), by, tz=zone)
    page = render_spend_html(report, tz=zone, zone="UTC", generated=OFFICE_NOW, title="t")
    ledger.dispose()
    drawn = re.findall(r'class="mark [^"]*"[^>]* data-value="([0-9.]+)"', page)
    assert sum(Decimal(v) for v in drawn) == Decimal(sum(c for _, _, c in calls)).scaleb(-6)


def test_a_filtered_html_file_says_whose_it_is(cli, sqlite_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The file is made to be mailed, to someone who never saw the command: with ``--tenant
    acme --model llama3.1:8b`` it was titled "Spend by department" and its total was acme's
    llama spend alone, read as the whole company's."""
    at = datetime(2026, 11, 3, 9, tzinfo=UTC)
    Ledger(sqlite_url).record(
        [
            make_span(started_at=at, tenant="acme", cost_total=1_000_000),
            make_span(started_at=at, tenant="globex", cost_total=2_000_000),
            make_span(started_at=at, tenant="acme", request_model="<b>x</b>", cost_total=4),
        ]
    )
    filters = ["--tenant", "acme", "--dept", "sales", "--model", "llama3.1:8b"]
    page = _filtered_page(cli, sqlite_url, tmp_path / "spend.html", filters)
    heading = "Spend by department of tenant acme, department sales, model llama3.1:8b"
    assert f"<title>{heading} · 2026-11 · UTC</title>" in page
    unfiltered = _filtered_page(cli, sqlite_url, tmp_path / "all.html", ["--model", "<b>x</b>"])
    assert "<title>Spend by department of model &lt;b&gt;x&lt;/b&gt; · " in unfiltered


def _filtered_page(cli: Any, url: str, out: Path, filters: list[str]) -> str:
    """November's HTML report by department with ``filters``, as the file holds it."""
    result = cli(
        "report", "--db", url, "--period", "2026-11", *filters, "--format", "html",
        "--out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out.read_text()


def test_a_filter_in_the_title_cannot_reorder_or_hide_the_period_after_it(  # type: ignore[no-untyped-def]
    cli, sqlite_url: str, tmp_path: Path
) -> None:
    """The filters are typed by whoever ran the command (a cron line's variable, pasted text),
    and the title and heading put the period after them: ``--model`` with an unclosed
    right-to-left override (U+202E) drew "2026-11 · UTC" reversed ("CTU · 11-6202"), and an
    escape character went into the page as it was. Each filter is now shown as a log line
    shows text (controls written as their escapes) and set apart when it holds right-to-left
    letters, as names in the file are."""
    Ledger(sqlite_url).record([make_span(started_at=datetime(2026, 11, 3, 9, tzinfo=UTC))])
    filters = ["--model", "\x1b[31mx\u202e", "--dept", "\u05e9\u05dc\u05d5\u05dd"]
    page = _filtered_page(cli, sqlite_url, tmp_path / "spend.html", filters)
    heading = (
        "Spend by department of department \u2068\u05e9\u05dc\u05d5\u05dd\u2069, "
        "model \\x1b[31mx\\u202e"
    )
    assert f"<title>{heading} · 2026-11 · UTC</title>" in page
    assert f'<h1>{heading} <span class="period">2026-11 · UTC</span></h1>' in page
