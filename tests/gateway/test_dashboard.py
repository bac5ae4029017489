"""/api/dash, /dashboard and /metrics read the ledger's numbers exactly; the admin token guards them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import ollama
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ollama_meter.budgets import Budget
from ollama_meter.gateway._dash import DASH_CACHE_SECONDS
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, office_spans, token_prices, two_currencies
from tests.gateway.conftest import Gateway

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
TODAY = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


@pytest.fixture
def dash(
    app: Callable[..., Gateway], emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    """A gateway (in process) whose clock stands at :data:`NOW`, so "this month" is November 2026.

    Its reads may take 30 s, not 5: on a machine loaded past its cores (CI beside other
    suites) a report on PostgreSQL answered 503 once, the ledger slower than the wait."""
    monkeypatch.setenv("OMETER_LEDGER_WAIT", "30")
    return app(emulator.url, clock=lambda: NOW)


def fill(gw: Gateway, at: datetime = TODAY) -> None:
    gw.ledger.record(
        [
            make_span(
                started_at=at,
                department="sales",
                user="alice",
                cost_total=1_250_000,
                cost_tokens=1_250_000,
                unpriced=False,
                latency_ns=2_000_000,
            ),
            make_span(
                started_at=at,
                department="support",
                user="bob",
                cost_total=500_000,
                cost_tokens=500_000,
                unpriced=False,
                latency_ns=4_000_000,
                request_model="qwen2.5:7b",
            ),
            make_span(
                started_at=at,
                department="sales",
                user="<script>x</script>",
                status="error",
                error_type="timeout",
                input_tokens=0,
                output_tokens=0,
                latency_ns=1_000_000,
            ),
            make_span(started_at=datetime(2020, 1, 1, tzinfo=UTC), department="old", cost_total=9),
        ]
    )


def test_api_dash_matches_the_ledger(dash: Gateway) -> None:
    fill(dash)
    reply = dash.client.get("/api/dash?period=month")
    assert reply.headers["cache-control"] == "no-store"  # everyone's spend: no copy kept
    data: dict[str, Any] = reply.json()
    assert data["period"]["label"] == "2026-11"
    assert data["summary"] == {
        "requests": 3,
        "errors": 1,
        "input_tokens": 14,
        "output_tokens": 24,
        "unpriced_requests": 0,
        "error_rate": "0.3333",
    }
    assert data["spend"] == [
        {
            "currency": "USD",
            "cost": "1.750000",
            "previous_cost": "0.000000",
            "change_percent": None,
            "requests": 3,
            "unpriced_requests": 0,
            "capped": False,
        }
    ]
    assert data["warnings"] == []
    assert [
        (r["department"], r["day"], r["cost"], r["currency"])
        for r in data["spend_by_department_by_day"]
    ] == [("sales", "2026-11-20", "1.250000", "USD"), ("support", "2026-11-20", "0.500000", "USD")]
    assert {m["model"]: m["cost"] for m in data["models"]} == {
        "llama3.1:8b": "1.250000",
        "qwen2.5:7b": "0.500000",
    }
    assert [u["user"] for u in data["top_users"]] == ["alice", "bob", "<script>x</script>"]
    assert {r["model"]: r["latency_p95_ms"] for r in data["timing_by_model"]} == {
        "llama3.1:8b": "2.000",
        "qwen2.5:7b": "4.000",
    }
    assert data["failures"] == [{"status": "error", "error_type": "timeout", "requests": 1}]
    only = dash.client.get("/api/dash?period=month&dept=support").json()
    assert only["spend"][0]["cost"] == "0.500000"
    nobody = dash.client.get("/api/dash?period=month&tenant=nobody").json()
    assert nobody["summary"]["requests"] == 0 and nobody["spend"] == []
    old = dash.client.get("/api/dash?since=2020-01-01&until=2020-01-31").json()
    assert old["spend"][0]["cost"] == "0.000009"


def test_a_filter_finds_a_name_as_it_was_stored_and_never_breaks_the_query(dash: Gateway) -> None:
    """A NUL or a lone surrogate in a filter (PostgreSQL refuses both) reads as the U+FFFD the
    meter stored in its place: the dashboard answers, on every database."""
    from ollama_meter.records import make_storable

    dash.ledger.record([make_storable(make_span(started_at=TODAY, request_model="odd\x00one"))])
    found = dash.client.get("/api/dash", params={"model": "odd\x00one"}).json()
    assert (
        found["summary"]["requests"] == 1 and found["models"][0]["model"] == "odd\ufffdone:latest"
    )
    assert dash.client.get("/dashboard", params={"model": "odd\x00one"}).status_code == 200
    for name in ("tenant", "dept", "model"):
        none = dash.client.get("/api/dash", params={name: "a\x00b"})
        assert none.status_code == 200 and none.json()["summary"]["requests"] == 0
    spans = dash.ledger.latest(SpanFilter(model="odd\ud800one", user="\x00"), 10)
    assert spans == []  # a lone surrogate cannot even be sent to PostgreSQL
    assert [s.model for s in dash.ledger.latest(SpanFilter(model="odd\ud800one"), 10)] == [
        "odd\ufffdone"
    ]


def test_mixed_currencies_are_never_summed_or_relabelled(dash: Gateway) -> None:
    dash.ledger.record(two_currencies(TODAY))
    answer = dash.client.get("/api/dash")
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert [(s["currency"], s["cost"]) for s in data["spend"]] == [
        ("EUR", "1.200000"),
        ("USD", "1.250000"),
    ]
    page = dash.client.get("/dashboard").text
    assert '<div class="card-label">Spend (EUR)</div>' in page
    assert '<div class="card-label">Spend (USD)</div>' in page
    assert 'data-currency="EUR"' in page and 'data-currency="USD"' in page
    assert "2.45" not in page and "2.450000" not in page


def test_dashboard_page_has_the_numbers_without_script(dash: Gateway) -> None:
    fill(dash)
    reply = dash.client.get("/dashboard?period=month&tenant=acme")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert reply.headers["cache-control"] == "no-store"
    policy = reply.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    text = reply.text
    assert re.search(
        r'id="card-spend-USD" data-value="1.750000"[^>]*>\s*<div class="card-label">'
        r'Spend \(USD\)</div>\s*<div class="card-value">1.75</div>',
        text,
    )
    assert 'id="card-calls" data-value="3"' in text
    assert 'id="card-error-rate" data-value="33.33"' in text
    # spend per department per day: one column, stacked sales on support, a legend of totals
    assert 'data-tip="sales · 2026-11-20: 1.250000 USD"' in text
    assert 'data-tip="support · 2026-11-20: 0.500000 USD"' in text
    assert re.search(r'<details id="dept-USD-0" class="drill" data-department="sales">', text)
    assert "<script>x" not in text and "&lt;script&gt;x&lt;/script&gt;" in text
    assert not re.search(r"https?://", text)  # nothing fetched from anywhere
    assert text.count("<script>") == 1  # our own, allowed by its hash
    assert 'option value="acme" selected' in text


@pytest.mark.parametrize(
    "query",
    [
        "period=fortnight",
        "period=9999-12",
        "since=9999-12-31",
        "period=custom",
        "since=0001-01-01&until=0001-01-02",
        "since=2026-13-45",
        "since=2026-11-02&until=2026-11-01",
    ],
)
def test_a_bad_period_is_a_400_with_one_line(dash: Gateway, query: str) -> None:
    reply = dash.client.get(f"/api/dash?{query}")
    assert reply.status_code == 400 and "\n" not in reply.json()["error"]
    assert "--" not in reply.json()["error"]  # names the URL's parameter, not a CLI option
    page = dash.client.get(f"/dashboard?{query}")
    assert page.status_code == 400 and 'role="alert"' in page.text
    assert 'href="/dashboard"' in page.text


_TWO = (
    "period {!r} and since/until ask for different stretches; give the dates with "
    "period=custom, or the period alone"
)


@pytest.mark.parametrize(
    "period", ["today", "week", "month", "previous-month", "2026-10", "2026-11-19"]
)
@pytest.mark.parametrize(
    "dates", ["since=2026-11-01", "until=2026-11-10", "since=2026-11-01&until=2026-11-10"]
)
def test_a_period_with_dates_is_a_400_naming_both(dash: Gateway, period: str, dates: str) -> None:
    """``period=today&since=2026-11-01`` answered for today and dropped the dates unsaid;
    ``period=month&since=...`` answered for the dates and dropped the month unsaid (``month``
    is only the default when no period is given at all)."""
    api = dash.client.get(f"/api/dash?period={period}&{dates}")
    assert api.status_code == 400 and api.json() == {"error": _TWO.format(period)}
    page = dash.client.get(f"/dashboard?period={period}&{dates}")
    assert page.status_code == 400 and _TWO.format(period).replace("'", "&#39;") in page.text


@pytest.mark.parametrize(
    "query",
    [
        "since=2026-11-02&until=2026-11-05",
        "period=custom&since=2026-11-02&until=2026-11-05",
        "period=&since=2026-11-02&until=2026-11-05",
    ],
)
def test_dates_make_a_custom_range_and_say_so(dash: Gateway, query: str) -> None:
    period = dash.client.get(f"/api/dash?{query}").json()["period"]
    assert (period["query"], period["label"]) == ("custom", "2026-11-02..2026-11-05")
    page = dash.client.get(f"/dashboard?{query}").text
    assert '<option value="custom" selected>' in page


def test_empty_dates_leave_the_period_alone(dash: Gateway) -> None:
    """What the form sends without script: the date fields are there, and empty."""
    period = dash.client.get("/api/dash?period=today&since=&until=").json()["period"]
    assert (period["query"], period["label"]) == ("today", "2026-11-20")


def test_an_unknown_period_names_the_dashboards_choices(dash: Gateway) -> None:
    reply = dash.client.get("/api/dash?period=last-month")
    assert reply.status_code == 400 and reply.json() == {
        "error": "period 'last-month' is not one of: today, week, month, previous-month, "
        "custom, YYYY-MM or YYYY-MM-DD"
    }


def test_a_new_span_shows_once_the_figures_are_older_than_the_cache_time(dash: Gateway) -> None:
    fill(dash)
    asked = time.monotonic()  # the figures are from after this, and from before `answered`
    assert dash.client.get("/api/dash").json()["summary"]["requests"] == 3
    answered = time.monotonic()
    dash.ledger.record([make_span(started_at=TODAY)])
    calls = dash.client.get("/api/dash").json()["summary"]["requests"]
    page = dash.client.get("/dashboard?period=month").text  # the page reads the same figures
    if time.monotonic() - asked < DASH_CACHE_SECONDS:  # a stalled machine may be past it
        assert calls == 3 and 'id="card-calls" data-value="3"' in page
    time.sleep(max(0.0, answered + DASH_CACHE_SECONDS - time.monotonic()) + 0.05)
    assert dash.client.get("/api/dash").json()["summary"]["requests"] == 4
    assert 'id="card-calls" data-value="4"' in dash.client.get("/dashboard").text


def test_polls_at_once_share_one_computation(app: Any, emulator: OllamaEmulator) -> None:
    """Dashboards on a wall refreshing together, or a page and its JSON: one report for all
    (each report reads the ledger on one of the gateway's threads, which calls need too)."""
    reports: list[datetime] = []

    def clock() -> datetime:  # read once per report, before the ledger
        reports.append(NOW)
        time.sleep(0.3)  # a big ledger: the other polls arrive while this one runs
        return NOW

    gw = app(emulator.url, clock=clock)
    fill(gw)
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(gw.client.get, ["/api/dash", "/dashboard?period=month"] * 10))
    assert [r.status_code for r in replies] == [200] * 20
    assert len(reports) == 1
    assert {r.json()["summary"]["requests"] for r in replies[::2]} == {3}


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def _total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and labels.items() <= dict(pairs).items()
    )


def test_metrics_count_this_gateways_calls_and_only_go_up(
    serve: Any, emulator: OllamaEmulator
) -> None:
    first = serve(emulator.url)
    first.ledger.add_price_rule(token_prices())
    fill(first)  # spans another process wrote: this gateway did not meter them
    sales = ollama.Client(host=first.url, headers={"X-Ometer-Department": "sales"})
    sales.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
    for _ in sales.chat(
        model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        pass
    support = ollama.Client(host=first.url, headers={"X-Ometer-Department": "support"})
    support.generate(model="qwen2.5:7b", prompt="hello")
    with pytest.raises(ollama.ResponseError):
        support.chat(model="no-such-model", messages=[])
    samples = _samples(first.url)
    calls = {
        d: _total(samples, "ometer_requests_total", department=d) for d in ("sales", "support")
    }
    assert calls == {"sales": 2.0, "support": 2.0}
    assert _total(samples, "ometer_errors_total", error_type="model_not_found") == 1.0
    spans = [s for s in first.ledger.latest(SpanFilter(), 10) if s.source == "gateway"]
    assert len(spans) == 4
    assert (
        _total(samples, "ometer_cost_micros_total", currency="USD")
        == sum(s.cost_total for s in spans)
        > 0
    )
    assert _total(samples, "ometer_tokens_total", type="output") == sum(
        s.output_tokens for s in spans
    )
    assert _total(samples, "gen_ai_client_operation_duration_seconds_count") == 4.0
    assert _total(samples, "gen_ai_client_operation_time_to_first_chunk_seconds_count") >= 1.0
    assert _total(samples, "ometer_requests_in_flight") == 0.0
    # A second gateway on the same ledger counts its own calls: the sum is the truth.
    second = serve(emulator.url)
    ollama.Client(host=second.url).chat(model="llama3.1:8b", messages=[])
    assert _total(_samples(second.url), "ometer_requests_total") == 1.0
    again = _samples(first.url)
    assert _total(again, "ometer_requests_total") == 4.0  # unchanged: not the ledger's total
    assert all(again[key] >= value for key, value in samples.items() if key[0].endswith("_total"))


def test_admin_token_guards_the_dashboard(app: Any, emulator: OllamaEmulator) -> None:
    gw = app(emulator.url, admin_token="s3cret")
    assert gw.client.get("/api/dash").status_code == 401
    assert gw.client.get("/dashboard").status_code == 401
    assert gw.client.get("/dashboard?token=wrong").status_code == 401
    assert gw.client.get("/api/dash", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = gw.client.get("/dashboard?token=s3cret&dept=sales")
    assert page.status_code == 200 and 'name="token" value="s3cret"' in page.text
    assert 'href="/api/dash?dept=sales&amp;token=s3cret"' in page.text  # links keep the token
    assert gw.client.get("/metrics").status_code == 401  # spend per tenant: the token's
    metrics = gw.client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert metrics.status_code == 200
    assert 'ometer_gateway_unauthenticated_requests_total{route="/metrics"} 1.0' in metrics.text
    assert gw.client.get("/api/dash?token=s3cret").json()["spend"] == []


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/dashboard?token=s3cret", 200, "text/html"),
        ("/dashboard?token=s3cret&period=%3Cscript%3E", 400, "text/html"),
        ("/dashboard?token=wrong", 401, "application/json"),
        ("/api/dash?token=s3cret", 200, "application/json"),
        ("/api/dash?token=s3cret&period=%3Cscript%3E", 400, "application/json"),
        ("/api/dash?token=s3cret&model=%3Ca%3E&model=b", 400, "application/json"),
        ("/api/dash", 401, "application/json"),
        ("/metrics", 401, "application/json"),
    ],
)
def test_every_answer_of_the_own_pages_is_its_own_type_and_kept_nowhere(
    app_on: Any, sqlite_url: str, emulator: OllamaEmulator, path: str, status: int, kind: str
) -> None:
    """No answer of the dashboard, ``/api/dash`` or ``/metrics`` said ``nosniff``, and a
    refusal (a bad period, quoted back) said ``no-store`` on the page only: JSON or text that
    quotes a caller's words must never be read as a page, nor kept by a proxy."""
    gw = app_on(emulator.url, sqlite_url, admin_token="s3cret")
    answer = gw.client.get(path)
    assert answer.status_code == status
    assert answer.headers["content-type"].split(";")[0] == kind
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_metrics_take_the_admin_token_only_in_a_header(app: Any, emulator: OllamaEmulator) -> None:
    """``?token=`` is for a browser (the dashboard, ``/api/dash``); in a scrape URL it would show
    in Prometheus' target list and any proxy's log, and the README promises it only there."""
    gw = app(emulator.url, admin_token="s3cret")
    for query in ("?token=s3cret", "?token=wrong&token=s3cret"):
        refused = gw.client.get(f"/metrics{query}")
        assert refused.status_code == 401 and refused.json() == {
            "error": "this needs the admin token: Authorization: Bearer <token>"
        }
    assert gw.client.get("/dashboard").json() == {
        "error": "this needs the admin token: Authorization: Bearer <token> or ?token="
    }
    assert gw.client.get("/api/dash?token=s3cret").status_code == 200


_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(["", "today", "week", "month", "previous-month", "custom", "2026-11",
                     "2026-11-20", "9999-12", "0000-01", "2026-02-30", "1970-01-01"])  # fmt: skip


@pytest.fixture
def office_gateway(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> Gateway:
    gw = app_on(emulator.url, sqlite_url, clock=lambda: NOW)
    gw.ledger.record(office_spans(NOW))
    return gw


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(
        st.sampled_from(["period", "since", "until", "tenant", "dept", "model"]), _text
    )
)
def test_any_query_is_a_page_or_a_400(office_gateway: Gateway, params: dict[str, str]) -> None:
    """Whatever the URL says, the answer is the dashboard or one line of error, never a 500."""
    api = office_gateway.client.get("/api/dash", params=params)
    page = office_gateway.client.get("/dashboard", params=params)
    assert api.status_code in (200, 400), api.text
    assert page.status_code == api.status_code
    if api.status_code == 400:
        assert "\n" not in api.json()["error"]
    else:
        assert api.json()["filters"]["tenant"] == (params.get("tenant") or None)
        assert page.text.count("<script") == 1  # ours; any name in the page is text


_NAMES = ("period", "since", "until", "tenant", "dept", "model", "token")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(_NAMES) | st.text(st.characters(codec="utf-8"), min_size=1),
            st.sampled_from(["", "today", "2026-11-20", "acme", "llama3.1:8b"]),
        ),
        max_size=5,
    )
)
def test_an_unknown_or_repeated_parameter_is_a_400_naming_it(
    office_gateway: Gateway, pairs: list[tuple[str, str]]
) -> None:
    """``period=today&period=month`` answered for one of the two; ``zone=`` was dropped unseen."""
    names = [name for name, _ in pairs]
    wrong = [name for at, name in enumerate(names) if name not in _NAMES or name in names[:at]]
    api = office_gateway.client.get("/api/dash", params=pairs)
    page = office_gateway.client.get("/dashboard", params=pairs)
    assert page.status_code == api.status_code
    if wrong:
        assert api.status_code == 400, pairs
        error = api.json()["error"]
        assert "\n" not in error and any(repr(name[:64]) in error for name in wrong)
    else:
        assert api.status_code in (200, 400), api.text


def test_budget_gauges_cut_periods_where_the_gate_does(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, sqlite_url: str
) -> None:
    """The gauges read each budget's period at the ledger's midnights, as the gate enforcing
    it and ``ometer budget status`` do. They were cut in the gateway's OMETER_TIMEZONE: one in
    UTC on a Berlin ledger showed October's spend at 00:30 on 1 November in Berlin (and no
    money held: the gate's leases are keyed by Berlin's month), while the gate was already
    counting November's."""
    from ollama_meter.budgets import Budget
    from ollama_meter.ledger import Ledger

    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    ledger.save_budget(Budget("acme", "sales", "month", 10_000_000, "USD"))
    ledger.record(
        [
            make_span(started_at=datetime(2026, 10, 15, tzinfo=UTC), cost_total=3_000_000),
            make_span(started_at=datetime(2026, 10, 31, 23, 10, tzinfo=UTC), cost_total=1_000),
        ]
    )
    at = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)  # November in Berlin, October in UTC
    gw = app_on(emulator.url, sqlite_url, clock=lambda: at)  # OMETER_TIMEZONE=UTC
    [gauge] = gw.client.get("/api/dash").json()["budgets"]
    assert (gauge["period_label"], gauge["spent"]) == ("2026-11", "0.001000")


def two_research_departments(gw: Gateway) -> None:
    """Acme's research spends 1.25 and globex's 0.75 (alice 0.50, bob 0.25): never one 2.00."""
    gw.ledger.record(
        [
            make_span(started_at=TODAY, tenant=tenant, department=dept, user=user,
                      cost_total=micros, unpriced=False)
            for tenant, dept, user, micros in [
                ("acme", "research", "alice", 1_250_000),
                ("globex", "research", "alice", 500_000),
                ("globex", "research", "bob", 250_000),
                ("acme", "sales", "carol", 100_000),
            ]
        ]
    )  # fmt: skip


def test_departments_and_users_of_the_same_name_in_two_tenants_stay_apart(dash: Gateway) -> None:
    """Acme's and globex's ``research`` were one department spending 2.00 (one panel, one
    series, a link filtering both), and alice of either tenant one user."""
    two_research_departments(dash)
    data = dash.client.get("/api/dash").json()
    assert [
        (r["tenant"], r["department"], r["day"], r["cost"])
        for r in data["spend_by_department_by_day"]
    ] == [
        ("acme", "research", "2026-11-20", "1.250000"),
        ("acme", "sales", "2026-11-20", "0.100000"),
        ("globex", "research", "2026-11-20", "0.750000"),
    ]
    assert [
        (d["tenant"], d["department"], d["cost"], [(u["user"], u["cost"]) for u in d["users"]])
        for d in data["departments"]
    ] == [
        ("acme", "research", "1.250000", [("alice", "1.250000")]),
        ("globex", "research", "0.750000", [("alice", "0.500000"), ("bob", "0.250000")]),
        ("acme", "sales", "0.100000", [("carol", "0.100000")]),
    ]
    assert [(u["tenant"], u["user"], u["cost"]) for u in data["top_users"]] == [
        ("acme", "alice", "1.250000"),
        ("globex", "alice", "0.500000"),
        ("globex", "bob", "0.250000"),
        ("acme", "carol", "0.100000"),
    ]
    page = dash.client.get("/dashboard").text
    assert 'data-tip="research (acme) · 2026-11-20: 1.250000 USD"' in page
    assert 'data-tip="research (globex) · 2026-11-20: 0.750000 USD"' in page
    assert "2.000000" not in page
    panels = re.findall(
        r'<details id="(dept-USD-\d)" class="drill" data-department="research" '
        r'data-tenant="(\w+)">\s*<summary>.*?<span class="name">([^<]*)</span>'
        r'<span class="num" title="([\d.]+) USD">.*?<a class="drill-link" href="([^"]*)">',
        page,
        re.S,
    )
    assert panels == [
        ("dept-USD-0", "acme", "research (acme)", "1.250000",
         "/dashboard?tenant=acme&amp;dept=research"),
        ("dept-USD-1", "globex", "research (globex)", "0.750000",
         "/dashboard?tenant=globex&amp;dept=research"),
    ]  # fmt: skip
    users = re.findall(
        r'<tr data-user="(\w+)" data-tenant="(\w+)"><td>([^<]*)</td>.*?data-value="([\d.]+)"',
        page.split('class="data top-users"')[1].split("</table>")[0],
    )
    assert users == [
        ("alice", "acme", "alice (acme)", "1.250000"),
        ("alice", "globex", "alice (globex)", "0.500000"),
        ("bob", "globex", "bob (globex)", "0.250000"),
        ("carol", "acme", "carol (acme)", "0.100000"),
    ]
    # The link shows globex's research alone: its 0.75, not both tenants' 2.00.
    only = dash.client.get("/api/dash?tenant=globex&dept=research").json()
    assert [(s["cost"], s["requests"]) for s in only["spend"]] == [("0.750000", 2)]


def test_one_tenant_on_the_page_names_departments_and_users_as_before(dash: Gateway) -> None:
    """With a tenant filter (or one tenant in the ledger) nothing needs telling apart: the
    names stay bare, and a department's link keeps the filter already there."""
    two_research_departments(dash)
    page = dash.client.get("/dashboard?tenant=globex").text
    assert re.search(
        r'<details id="dept-USD-0" class="drill" data-department="research">\s*<summary>'
        r'<span class="swatch [\w-]+"></span><span class="name">research</span>',
        page,
    )
    assert 'href="/dashboard?tenant=globex&amp;dept=research">Show only research' in page
    assert '<tr data-user="alice"><td>alice</td>' in page and "(globex)" not in page
    data = dash.client.get("/api/dash?tenant=globex").json()
    assert [(d["tenant"], d["department"], d["cost"]) for d in data["departments"]] == [
        ("globex", "research", "0.750000")
    ]


def test_each_currency_shows_its_own_minor_unit(dash: Gateway) -> None:
    """Yen have no cents and dinars have fils: ``1,235 JPY`` and ``1.235 KWD`` on every card,
    bar, legend, table and gauge, where each showed two decimals (``1,234.57 JPY``)."""
    dash.ledger.save_budget(Budget("acme", "sales", "month", 5_000_000_000, "JPY"))
    dash.ledger.record(
        [
            make_span(started_at=TODAY, cost_total=micros, currency=currency, unpriced=False)
            for currency, micros in [("JPY", 1_234_567_890), ("KWD", 1_234_567), ("USD", 1_234_567)]
        ]
    )
    page = dash.client.get("/dashboard").text
    for currency, shown in [("JPY", "1,235"), ("KWD", "1.235"), ("USD", "1.23")]:
        panel = page[page.index(f'id="currency-{currency}"') :]
        panel = panel[: panel.index("</section>\n</div>\n</section>")]
        assert re.search(
            rf'id="card-spend-{currency}" [^>]*>\s*<div class="card-label">Spend \({currency}\)'
            rf'</div>\s*<div class="card-value">{re.escape(shown)}</div>',
            page,
        ), currency
        cells = re.findall(r'<td class="num" title="[^"]*" data-value="[^"]*">([^<]*)</td>', panel)
        legend = re.findall(r"<b>([^<]*)</b>", panel)
        assert set(cells) == {shown} and set(legend) == {shown}, currency
    # the yen budget's gauge, and what its scope spent in the others, which it cannot count
    assert "1,235 of 5,000 JPY" in page
    notes = re.findall(r'<div class="gauge-note uncounted" [^>]*>and ([^<]*) spent', page)
    assert notes == ["1.235 KWD", "1.23 USD"]
    assert "1,234.57" not in page and "1.23 " not in page.replace("1.23 KWD", "").replace(
        "and 1.23 USD", ""
    )


def test_a_gauges_scope_shows_its_tenant_before_its_department(dash: Gateway) -> None:
    """A ``*`` budget's gauge for tenant א and department 2024 read "2024/א" in Chromium: the
    department's digits took the tenant's direction and were drawn before it. Each part of
    a gauge's scope is set apart, as every other name on the page is."""
    dash.ledger.save_budget(Budget("*", None, "month", 10_000_000, "USD"))
    dash.ledger.save_budget(Budget("*", "2024", "month", 10_000_000, "USD"))
    dash.ledger.record(
        [make_span(started_at=TODAY, tenant="\u05d0", department="2024", cost_total=1_000_000)]
    )
    page = dash.client.get("/dashboard").text
    scopes = re.findall(r'<span class="scope">([^<]*)</span>', page)
    assert sorted(scopes) == ["\u2068\u05d0\u2069", "\u2068\u05d0\u2069/2024"]
    assert sorted(re.findall(r'data-scope="([^"]*)"', page)) == ["\u05d0", "\u05d0/2024"]


def test_api_dash_writes_what_a_terminal_acts_on_as_escapes(office_gateway: Gateway) -> None:
    """``curl /api/dash`` printed a model or user name's U+009B (CSI to a terminal), DEL,
    U+202E or line separator as they were, as ``ometer report --format json`` no longer does:
    the same document to any JSON reader, nothing in its bytes a terminal acts on."""
    name = "a\x9b2J\x7f\x85\u202e\u2066\u2028\u2029\u05d0"
    office_gateway.ledger.record(
        [make_span(started_at=TODAY, user=name, request_model=name, cost_total=10**9)]
    )
    body = office_gateway.client.get("/api/dash").content.decode()
    assert not re.search(
        "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]", body
    )
    assert json.loads(body)["top_users"][0]["user"] == name  # the same name, escaped
