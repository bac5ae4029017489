"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

A gateway with seven weeks of known spans and four budgets, its clock fixed at
:data:`OFFICE_NOW`; the browser reads the numbers off the page and compares them
with sums computed here from the spans. Screenshots go to ``OMETER_TEST_SCREENSHOTS``
(the README's come from ``OMETER_TEST_SCREENSHOTS=docs``) or to the test's tmp dir.
Nothing is downloaded: Playwright drives ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from ollama_meter.budgets import Budget
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.meter import SpanRecord
from ollama_meter.pricing import format_micros
from ollama_meter.records import counted_model, make_storable
from ollama_meter.reports._html import money
from ollama_meter.testing import OllamaEmulator
from tests.factories import OFFICE_NOW, make_span, office_spans
from tests.gateway.conftest import Gateway
from tests.reports.test_html_names import page_and_file

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "s3cret"
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
BUDGETS = [
    Budget("acme", "engineering", "month", 500_000_000, "USD"),
    Budget("acme", "sales", "month", 300_000_000, "USD"),
    Budget("globex", None, "month", 1_000_000_000, "USD", hard=False),
    Budget("acme", "support", "day", 40_000_000, "USD"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("OMETER_TEST_REQUIRE_BROWSER"):
            pytest.fail("OMETER_TEST_REQUIRE_BROWSER is set but /usr/bin/chromium is missing")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def spans() -> list[SpanRecord]:
    return office_spans()


@pytest.fixture
def office(
    serve_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    sqlite_url: str,
    spans: list[SpanRecord],
) -> Gateway:
    gw = serve_on(emulator.url, sqlite_url, clock=lambda: OFFICE_NOW, admin_token=TOKEN)
    gw.ledger.record(spans)
    for budget in BUDGETS:
        gw.ledger.save_budget(budget)
    return gw


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``OMETER_TEST_SCREENSHOTS`` (relative to the repository) or tmp."""
    wanted = os.environ.get("OMETER_TEST_SCREENSHOTS")
    folder = REPO / wanted if wanted else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Watched:
    """A page and everything that went wrong on it: console errors, script errors, outside requests."""

    page: Any
    problems: list[str] = field(default_factory=list)


def open_page(browser: Any, url: str, allowed: str, **context: Any) -> Watched:
    ctx = browser.new_context(device_scale_factor=1, **context)
    page = ctx.new_page()
    watched = Watched(page)

    def console(message: Any) -> None:
        if message.type in ("error", "warning"):
            watched.problems.append(f"console {message.type}: {message.text}")

    def route(route: Any) -> None:
        if route.request.url.startswith((allowed, "data:")):
            route.continue_()
        else:
            watched.problems.append(f"request outside the gateway: {route.request.url}")
            route.abort()

    page.on("console", console)
    page.on("pageerror", lambda error: watched.problems.append(f"script error: {error}"))
    ctx.route("**/*", route)
    page.goto(url)
    return watched


def cost(spans: list[SpanRecord], start: datetime, end: datetime, **match: str) -> int:
    return sum(
        s.cost_total
        for s in spans
        if start <= s.started_at < end and all(getattr(s, k) == v for k, v in match.items())
    )


def percent(part: int, whole: int) -> str:
    return f"{(Decimal(part * 100) / whole).quantize(Decimal('0.1'), ROUND_HALF_EVEN)}"


def card(page: Any, key: str) -> tuple[str, str]:
    element = page.locator(f"#card-{key}")
    return element.locator(".card-value").inner_text(), element.get_attribute("data-value")


def test_dashboard_numbers_drill_down_and_filters(
    browser: Any, office: Gateway, spans: list[SpanRecord], shots: Path
) -> None:
    watched = open_page(
        browser,
        f"{office.url}/dashboard?token={TOKEN}",
        office.url,
        viewport={"width": 1280, "height": 900},
    )
    page = watched.page
    month = [s for s in spans if NOVEMBER <= s.started_at < OFFICE_NOW]
    total = cost(spans, NOVEMBER, OFFICE_NOW)
    assert page.locator("#period-label").inner_text() == "2026-11"
    assert card(page, "spend-USD") == (money(total, "USD"), format_micros(total))
    assert card(page, "calls") == (f"{len(month):,}", str(len(month)))
    errors = sum(s.status == "error" for s in month)
    assert card(page, "error-rate")[1] == f"{Decimal(errors * 100) / len(month):.2f}"
    unpriced = sum(s.unpriced_usage for s in month)
    assert card(page, "unpriced") == (str(unpriced), str(unpriced)) and unpriced > 0
    assert page.get_by_role("alert").inner_text().startswith(f"{unpriced} call(s) matched no price")

    # the budget gauges, as a screen reader (or this test) reads them
    meters = {
        m.get_attribute("data-scope"): m
        for m in page.get_by_role("meter").all()  # role="meter" with aria-valuenow
    }
    assert set(meters) == {"acme/engineering", "acme/sales", "globex", "acme/support"}
    today = datetime(2026, 11, 20, tzinfo=UTC)
    expected = {
        "acme/engineering": (
            cost(spans, NOVEMBER, OFFICE_NOW, department="engineering"),
            500,
            "ok",
        ),
        "acme/sales": (cost(spans, NOVEMBER, OFFICE_NOW, department="sales"), 300, "warning"),
        "globex": (cost(spans, NOVEMBER, OFFICE_NOW, tenant="globex"), 1000, "over"),
        "acme/support": (cost(spans, today, OFFICE_NOW, department="support"), 40, "exhausted"),
    }
    for scope, (spent, limit, state) in expected.items():
        meter = meters[scope]
        assert meter.get_attribute("aria-valuenow") == percent(spent, limit * 10**6), scope
        assert meter.get_attribute("data-state") == state, scope
        assert f"{money(spent, 'USD')} of {limit:,}.00 USD" in meter.inner_text()
    assert "on pace to exceed" in meters["acme/sales"].inner_text()
    assert "calls are refused" in meters["acme/support"].inner_text()

    # hover a column segment: its exact value
    segment = page.locator('rect.mark[data-series="engineering (acme)"]').first  # two tenants
    segment.hover()
    tip = page.locator(".tip")
    assert tip.is_visible() and tip.inner_text() == segment.get_attribute("data-tip")
    assert tip.inner_text().endswith(f"{segment.get_attribute('data-value')} USD")
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    # drill-down: the legend's engineering opens engineering's models, users and days
    drill = page.locator('details[data-department="engineering"]')
    assert not drill.evaluate("el => el.open")
    page.locator(".legend a", has_text="engineering").click()
    assert drill.evaluate("el => el.open")
    engineering = [s for s in month if s.department == "engineering"]
    by_model: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in engineering:
        by_model[s.response_model or s.request_model][0] += 1
        by_model[s.response_model or s.request_model][1] += s.cost_total
    rows = [
        [cell.inner_text() for cell in row.locator("td").all()]
        for row in drill.locator(".drill-models tbody tr").all()
    ]
    assert rows == [
        [model, str(calls), money(micros, "USD")]
        for model, (calls, micros) in sorted(by_model.items(), key=lambda kv: (-kv[1][1], kv[0]))
    ]
    assert drill.locator(".drill-models tbody tr").first.is_visible()
    users = drill.locator(".drill-users tbody tr td:first-child").all_inner_texts()
    assert sorted(users) == sorted({s.user for s in engineering if s.user})

    # a filter: the URL says what is shown, and the numbers follow
    page.select_option("#f-dept", "sales")
    page.wait_for_url("**dept=sales**")
    assert page.url == f"{office.url}/dashboard?dept=sales&token={TOKEN}"  # month: the default
    sales = cost(spans, NOVEMBER, OFFICE_NOW, department="sales")
    assert card(page, "spend-USD")[1] == format_micros(sales) != format_micros(total)
    assert page.locator("details.drill").count() == 1
    assert {m.get_attribute("data-scope") for m in page.get_by_role("meter").all()} == {
        "acme/sales",
        "globex",
    }
    page.select_option("#f-period", "previous-month")
    page.wait_for_url("**period=previous-month**")
    assert page.locator("#period-label").inner_text() == "2026-10"
    assert card(page, "spend-USD")[1] == format_micros(
        cost(spans, OCTOBER, NOVEMBER, department="sales")
    )
    page.go_back()
    page.wait_for_url(f"**/dashboard?dept=sales&token={TOKEN}")
    assert card(page, "spend-USD")[1] == format_micros(sales)
    assert watched.problems == []


def test_dashboard_on_a_phone_in_the_dark(browser: Any, office: Gateway, shots: Path) -> None:
    url = f"{office.url}/dashboard?token={TOKEN}"
    for name, options in {
        "dashboard-phone.png": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
        "dashboard-dark.png": {"viewport": {"width": 1280, "height": 900}, "color_scheme": "dark"},
    }.items():
        watched = open_page(browser, url, office.url, **options)
        page = watched.page
        width = options["viewport"]["width"]  # type: ignore[index]
        # nothing sticks out sideways; wide charts scroll inside their card
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.get_by_role("meter").first.is_visible()
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        dark = options.get("color_scheme") == "dark"
        assert background == ("rgb(14, 18, 24)" if dark else "rgb(244, 246, 249)")
        page.screenshot(path=str(shots / name), full_page=True)
        assert watched.problems == []


def test_a_budget_over_its_limit_reads_its_share_not_100(browser: Any, office: Gateway) -> None:
    """Each gauge said ``aria-valuemax="100"``; a meter's value is kept between its bounds,
    so Chromium's accessibility tree (what a screen reader announces) said 100 for globex's
    budget at 102.5 % and support's at 121.5 %, as for one just at its limit."""
    watched = open_page(browser, f"{office.url}/dashboard?token={TOKEN}", office.url)
    page = watched.page
    shown = {
        m.get_attribute("data-scope"): Decimal(m.get_attribute("aria-valuenow"))
        for m in page.get_by_role("meter").all()
    }
    tree = page.context.new_cdp_session(page).send("Accessibility.getFullAXTree")
    read = {
        node["name"]["value"].removeprefix("Budget ").split(",")[0]: Decimal(
            f"{node['value']['value']:.1f}"  # a float32 in the tree: 75.9000015
        )
        for node in tree["nodes"]
        if node.get("role", {}).get("value") == "meter"
    }
    assert max(shown.values()) > 100  # the office has budgets over their limit
    assert read == shown
    assert watched.problems == []


def test_numbers_read_with_javascript_off(
    browser: Any, office: Gateway, spans: list[SpanRecord]
) -> None:
    watched = open_page(
        browser,
        f"{office.url}/dashboard?token={TOKEN}",
        office.url,
        java_script_enabled=False,
        viewport={"width": 1280, "height": 900},
    )
    page = watched.page
    total = cost(spans, NOVEMBER, OFFICE_NOW)
    assert card(page, "spend-USD") == (money(total, "USD"), format_micros(total))
    drill = page.locator('details[data-department="finance"]')
    drill.locator("summary").click()  # a details element opens without any script
    assert drill.locator(".drill-models tbody tr").first.is_visible()
    page.select_option("#f-model", "mistral:7b")
    page.locator("#filters button").click()
    page.wait_for_url("**model=mistral%3A7b**")
    mistral = sum(
        s.cost_total
        for s in spans
        if NOVEMBER <= s.started_at < OFFICE_NOW and s.request_model == "mistral:7b"
    )
    assert card(page, "spend-USD")[1] == format_micros(mistral)
    # dates typed in, the selector left at "This month": the dates are what was asked for
    page.fill('input[name="since"]', "2026-11-02")
    page.fill('input[name="until"]', "2026-11-05")
    page.locator("#filters button").click()
    page.wait_for_url("**since=2026-11-02**")
    assert page.locator("#period-label").inner_text() == "2026-11-02..2026-11-05"
    assert page.locator("#f-period").input_value() == "custom"
    assert watched.problems == []
    # then another period with the dates still there: one line saying so, not either stretch
    page.select_option("#f-period", "today")
    page.locator("#filters button").click()
    page.wait_for_url("**period=today**")
    assert page.get_by_role("alert").inner_text() == (
        "period 'today' and since/until ask for different stretches; "
        "give the dates with period=custom, or the period alone"
    )
    assert watched.problems == [
        "console error: Failed to load resource: the server responded with a status of 400 "
        "(Bad Request)"
    ]


def test_html_report_file_in_the_browser(
    browser: Any, cli: Any, office: Gateway, sqlite_url: str, tmp_path: Path, shots: Path
) -> None:
    out = tmp_path / "spend.html"
    db = sqlite_url
    result = cli(
        "report", "--db", db, "--period", "2026-11", "--by", "department,day",
        "--format", "html", "--out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    watched = open_page(browser, out.as_uri(), "file:", viewport={"width": 1280, "height": 1000})
    page = watched.page
    csv = cli(
        "report", "--db", db, "--period", "2026-11", "--by", "department,day", "--format", "csv"
    )
    assert page.locator("#rows tbody tr").count() == len(csv.stdout.splitlines()) - 1
    assert page.locator("svg.chart rect.mark").count() > 0
    page.screenshot(path=str(shots / "report.png"))  # the top: totals, chart, first rows
    assert watched.problems == []


def test_an_html_file_runs_no_script_even_one_that_got_into_it(
    browser: Any, cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """The report and chargeback files had no policy of their own: names in them are escaped,
    but markup that got into one (a template's slip, an edit on the way) ran when the file was
    opened. Each now says in a ``<meta>`` that it takes its inline style and no script."""
    Ledger(sqlite_url).record(
        [make_span(started_at=datetime(2026, 11, 18, 10, tzinfo=UTC), cost_total=5)]
    )
    for command in (["report", "--by", "department,day"], ["chargeback", "--month", "2026-11"]):
        out = tmp_path / f"{command[0]}.html"
        period = ["--period", "2026-11"] if command[0] == "report" else []
        result = cli(*command, *period, "--db", sqlite_url, "--format", "html", "--out", str(out))
        assert result.code == 0, result.stderr
        slipped = '<script>window.pwned=1</script><img src="data:," onerror="window.pwned=2">'
        out.write_text(out.read_text().replace("<main>", f"<main>{slipped}", 1))
        watched = open_page(browser, out.as_uri(), "file:")
        page = watched.page
        assert page.evaluate("() => window.pwned") is None
        # its own style still applies: the cards are laid out as a grid, not a list
        assert page.locator("section.cards").evaluate("e => getComputedStyle(e).display") == "grid"
        assert watched.problems and all(
            "Content Security Policy" in problem for problem in watched.problems
        )


def test_the_same_department_in_two_tenants_opens_and_filters_its_own_panel(
    browser: Any, serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Acme's and globex's ``research`` were one panel spending both tenants' money, and its
    "Show only" link filtered ``dept=research`` across both."""
    gw = serve_on(emulator.url, sqlite_url, clock=lambda: OFFICE_NOW)
    at = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    gw.ledger.record(
        [
            make_span(started_at=at, tenant=tenant, department="research", user=user,
                      cost_total=micros, unpriced=False)
            for tenant, user, micros in [
                ("acme", "alice", 1_250_000), ("globex", "alice", 500_000), ("globex", "bob", 250_000)
            ]
        ]
    )  # fmt: skip
    watched = open_page(
        browser, f"{gw.url}/dashboard", gw.url, viewport={"width": 1280, "height": 900}
    )
    page = watched.page
    acme = page.locator('details[data-department="research"][data-tenant="acme"]')
    globex = page.locator('details[data-department="research"][data-tenant="globex"]')
    page.locator(".legend a", has_text="research (globex)").click()
    assert globex.evaluate("el => el.open") and not acme.evaluate("el => el.open")
    assert globex.locator("summary .name").inner_text() == "research (globex)"
    assert globex.locator("summary .num").first.get_attribute("title") == "0.750000 USD"
    assert globex.locator(".drill-users tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[2].dataset.value])"
    ) == [["alice", "0.500000"], ["bob", "0.250000"]]
    globex.locator("a.drill-link").click()
    page.wait_for_url("**dept=research**")
    assert page.url == f"{gw.url}/dashboard?tenant=globex&dept=research"
    assert card(page, "spend-USD")[1] == "0.750000"
    assert page.locator("details.drill").count() == 1
    assert watched.problems == []


HOSTILE = [
    "</script><script>window.pwned=1</script>",
    '"><img src=x onerror="window.pwned=1">',
    "' onmouseover='window.pwned=1' x='",
    "javascript:window.pwned=1",
    "\u202eevil\u202c<b>bold</b>",
    "bell\x07nul\x00esc\x1b[31m",
    "{{7*7}}${7*7}",
    "L" + "o" * 3000 + "ng",
]


def test_hostile_names_in_the_ledger_render_inert(
    browser: Any, serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """Names as a ledger might hold them (old rows, another writer), in every place they show."""
    gw = serve_on(emulator.url, sqlite_url, clock=lambda: OFFICE_NOW)
    at = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    gw.ledger.record(
        [
            make_storable(
                make_span(
                    started_at=at, tenant=name[:64], department=name[:64], user=name[:128],
                    request_model=name, response_model=name, cost_total=1_000_000 + n,
                    status="error" if n % 2 else "ok", error_type=name[:32] if n % 2 else None,
                )
            )
            for n, name in enumerate(HOSTILE)
        ]
    )  # fmt: skip
    stored = {counted_model(s.request_model) for s in gw.ledger.latest(SpanFilter(), 100)}
    watched = open_page(
        browser, f"{gw.url}/dashboard", gw.url, viewport={"width": 1280, "height": 900}
    )
    page = watched.page
    for mark in page.locator("[data-tip]").all()[:200]:
        mark.hover(force=True)  # the tooltip shows each name as text
    for details in page.locator("details").all():
        details.locator("summary").first.click()
    models = set(page.locator("#f-model option").evaluate_all("os => os.map(o => o.value)"))
    assert stored <= models  # each name round-trips as text, byte for byte
    page.select_option("#f-model", counted_model(HOSTILE[0]))  # the form applies itself
    page.wait_for_url("**model=**")
    assert page.evaluate("() => [window.pwned, document.scripts.length]") == [None, 1]
    assert page.locator("img, [onerror], [onmouseover]").count() == 0
    assert watched.problems == []  # a blocked inline script would be a console error


def test_hostile_names_in_the_report_and_bill_files_render_inert(
    browser: Any, cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """The mailed files as the dashboard above: names as a ledger might hold them in every
    column of every report grouping and of the bill, and in the filters of the title, run no
    script, make no element of their own and load nothing from anywhere."""
    at = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    Ledger(sqlite_url).record(
        [
            make_storable(
                make_span(
                    started_at=at, tenant=name[:64], department=name[:64], user=name[:128],
                    request_model=name, cost_total=1_000_000 + n, load_duration_ns=200_000_000,
                )
            )
            for n, name in enumerate(HOSTILE)
        ]
    )  # fmt: skip
    runs = [
        ["report", "--period", "2026-11", "--by", "tenant,department,user,model,day"],
        ["report", "--period", "2026-11", "--by", "user", "--model", HOSTILE[0]],
        ["report", "--period", "2026-11", "--by", "model,week", "--tenant", HOSTILE[1][:64]],
        ["chargeback", "--month", "2026-11", "--fixed-cost", "100", "--idle", "separate"],
    ]
    for n, args in enumerate(runs):
        out = tmp_path / f"{n}.html"
        done = cli(*args, "--db", sqlite_url, "--format", "html", "--out", str(out))
        assert done.code == 0, done.stderr
        watched = open_page(browser, out.as_uri(), "file:")
        page = watched.page
        assert page.evaluate("() => [window.pwned, document.scripts.length]") == [None, 0]
        assert page.locator("img, iframe, [onerror], [onmouseover]").count() == 0
        if not {"--model", "--tenant"} & set(args):  # each name as text, its own
            assert "\u202eevil\u202c<b>bold</b>" in page.locator("body").inner_text()
        assert watched.problems == []


def test_a_link_whose_hash_is_no_valid_escape_opens_the_page_without_a_script_error(
    browser: Any, office: Gateway
) -> None:
    """A department's link pasted cut short (``#%``, ``#%E0%A4%A``) threw a URIError in the
    script that opens its panel; the hash is read as written instead."""
    for broken in ("%", "%E0%A4%A", "dept%zz"):
        watched = open_page(browser, f"{office.url}/dashboard?token={TOKEN}#{broken}", office.url)
        assert watched.page.locator("details[open]").count() == 0
        assert watched.problems == []


def test_a_right_to_left_name_cannot_move_the_numbers_beside_it(
    browser: Any, serve_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """A name with an unclosed right-to-left override (U+202E) drew the amount after it on its
    left (``1.23 (live) live`` for ``evil (evil)``), and into every tooltip and sentence that
    named it; a 255-character model name widened the filter form past the screen, and an
    amount of a billion did not fit its card. An unpriced model of 300 characters widened the
    page to 2,820 px through the banner that names it."""
    gw = serve_on(emulator.url, sqlite_url, clock=lambda: OFFICE_NOW)
    at = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    rtl, hebrew, long = "\u202eevil", "\u05de\u05d5\u05d3\u05dc", "m" * 255
    gw.ledger.record(
        [
            make_storable(make_span(started_at=at, tenant=rtl, department=rtl, user=rtl,
                                    request_model=hebrew, cost_total=1_234_567)),
            make_span(started_at=at, tenant="acme", department="sales", request_model=long,
                      cost_total=10**15, unpriced=False),
            # no rule priced them: the banner names their models, 300 characters and all
            make_span(started_at=at, tenant="acme", department="sales", request_model=hebrew),
            make_span(started_at=at, tenant="acme", department="sales", request_model="u" * 300),
            # a closing isolate of its own (U+2069) ended the one around it, and a paragraph
            # separator (U+2029) every one: the override after them reversed the legend's amount
            make_span(started_at=at, tenant="acme", department="\u2069\u202ebad",
                      user="x\u2029\u202ebad", cost_total=2_000_000, unpriced=False),
        ]
    )  # fmt: skip
    watched = open_page(
        browser, f"{gw.url}/dashboard", gw.url, viewport={"width": 1280, "height": 900}
    )
    page = watched.page
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert (
        page.locator(".card-value").evaluate_all(
            "cards => cards.filter(c => c.scrollWidth > c.clientWidth).map(c => c.textContent)"
        )
        == []
    )
    # each legend entry and department row reads name first, then its amount
    misplaced = page.evaluate(
        """() => [...document.querySelectorAll('.legend li, details.drill summary')].filter(row => {
            const amount = row.querySelector('b, .num');
            if (!amount) return false;
            const name = document.createRange();
            name.setStartBefore(row.firstChild);
            name.setEndBefore(amount);
            return name.getBoundingClientRect().right > amount.getBoundingClientRect().left + 0.5;
        }).map(row => row.textContent)"""
    )
    assert misplaced == []
    tips = page.locator(f'rect.mark[data-series*="{rtl}"]').evaluate_all(
        "marks => marks.map(m => m.dataset.tip)"
    )
    tip = f"\u2068{rtl}\u2069 (\u2068{rtl}\u2069) · 2026-11-18: 1.234567 USD"
    assert tips == [tip, tip]  # the stacked chart and the department's own
    banner = page.get_by_role("alert").text_content()
    assert f", \u2068{hebrew}:latest\u2069)." in banner  # a model's name is a name too
    assert watched.problems == []


def test_no_name_widens_the_page_or_the_file(browser: Any, sqlite_url: str, tmp_path: Path) -> None:
    """Names of one unbroken word as long as they come (a model of 300 characters, a
    department of 64, a user of 128), in the dashboard and the HTML file by model, on a
    screen and a phone: the file's legend drew a 300-character model on one line, 2,413 px
    wide at 1280."""
    at = datetime(2026, 11, 18, 10, tzinfo=UTC)
    ledger = Ledger(sqlite_url)
    ledger.record(
        [
            make_span(started_at=at, department="d" * 64, user="u" * 128,
                      request_model=f"{n}{'m' * 299}", cost_total=10**6 * n, unpriced=n == 0)
            for n in range(3)
        ]
    )  # fmt: skip
    for name, html in zip(("page", "file"), page_and_file(ledger, "model"), strict=True):
        path = tmp_path / f"{name}.html"
        path.write_text(html)
        for width in (1280, 390):
            watched = open_page(
                browser, path.as_uri(), "file:", viewport={"width": width, "height": 900}
            )
            wide = watched.page.evaluate("document.documentElement.scrollWidth")
            assert (name, wide) == (name, width)
            watched.page.context.close()
