"""/api/dash, /dashboard and /metrics read the ledger's numbers exactly; the admin token guards them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ollama_meter.config import load_settings
from ollama_meter.meter import utc_now
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span
from tests.gateway.conftest import Gateway


def fill(gw: Gateway) -> None:
    today = utc_now()  # always inside this month's window, whatever the date and time zone
    gw.ledger.record(
        [
            make_span(
                started_at=today,
                department="sales",
                user="alice",
                cost_total=1_250_000,
                cost_tokens=1_250_000,
                unpriced=False,
                latency_ns=2_000_000,
            ),
            make_span(
                started_at=today,
                department="support",
                user="bob",
                cost_total=500_000,
                cost_tokens=500_000,
                unpriced=False,
                latency_ns=4_000_000,
                request_model="qwen2.5:7b",
            ),
            make_span(
                started_at=today,
                department="sales",
                user="<script>x</script>",
                status="error",
                input_tokens=0,
                output_tokens=0,
                latency_ns=1_000_000,
            ),
            make_span(started_at=datetime(2020, 1, 1, tzinfo=UTC), department="old", cost_total=9),
        ]
    )


def test_api_dash_matches_the_ledger(gateway: Gateway) -> None:
    fill(gateway)
    data: dict[str, Any] = httpx.get(f"{gateway.url}/api/dash?period=month").json()
    assert data["totals"] == {
        "requests": 3,
        "errors": 1,
        "input_tokens": 14,
        "output_tokens": 24,
        "cost": "1.750000",
        "currency": "USD",
    }
    assert sorted((r["department"], r["cost"]) for r in data["spend_by_department_by_day"]) == [
        ("sales", "1.250000"),
        ("support", "0.500000"),
    ]
    assert {m["model"]: m["cost"] for m in data["models"]} == {
        "llama3.1:8b": "1.250000",
        "qwen2.5:7b": "0.500000",
    }
    assert [u["user"] for u in data["top_users"]] == ["alice", "bob", "<script>x</script>"]
    assert {r["model"]: r["p95_ms"] for r in data["latency"]} == {
        "llama3.1:8b": "2.000",
        "qwen2.5:7b": "4.000",
    }
    only = httpx.get(f"{gateway.url}/api/dash?period=month&dept=support").json()
    assert only["totals"]["cost"] == "0.500000"
    assert (
        httpx.get(f"{gateway.url}/api/dash?period=month&tenant=nobody").json()["totals"]["requests"]
        == 0
    )
    assert httpx.get(f"{gateway.url}/api/dash?period=fortnight").status_code == 400


def test_dashboard_page_shows_the_numbers_escaped(gateway: Gateway) -> None:
    fill(gateway)
    page = httpx.get(f"{gateway.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert '<span id="total-cost">1.750000 USD</span>' in text
    assert text.count("<svg") >= 4 and "sales" in text and "support" in text
    day = utc_now().astimezone(load_settings().tz).date().isoformat()
    # spend per department over days: one column, stacked sales on support, a legend of totals
    assert f"<title>{day} · sales: 1.250000 USD</title>" in text
    assert f"<title>{day} · support: 0.500000 USD</title>" in text
    assert "sales <b>1.250000 USD</b>" in text and "support <b>0.500000 USD</b>" in text
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from anywhere


def test_metrics_are_prometheus_text(gateway: Gateway) -> None:
    fill(gateway)
    reply = httpx.get(f"{gateway.url}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    calls = {
        s.labels["department"]: s.value
        for s in families["ometer_requests"].samples
        if s.name.endswith("_total")
    }
    assert calls == {"sales": 2.0, "support": 1.0}
    cost = {
        s.labels["department"]: s.value
        for s in families["ometer_cost_micros"].samples
        if s.name.endswith("_total")
    }
    assert cost == {"sales": 1_250_000.0, "support": 500_000.0}


def test_admin_token_guards_the_dashboard(serve: Any, emulator: OllamaEmulator) -> None:
    gw = serve(emulator.url, admin_token="s3cret")
    assert httpx.get(f"{gw.url}/api/dash").status_code == 401
    assert httpx.get(f"{gw.url}/dashboard").status_code == 401
    assert (
        httpx.get(f"{gw.url}/api/dash", headers={"Authorization": "Bearer s3cret"}).status_code
        == 200
    )
    page = httpx.get(f"{gw.url}/dashboard?token=s3cret")
    assert page.status_code == 200 and 'name="token" value="s3cret"' in page.text
    assert httpx.get(f"{gw.url}/metrics").status_code == 200
    assert Decimal(httpx.get(f"{gw.url}/api/dash?token=s3cret").json()["totals"]["cost"]) == 0


CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def test_dashboard_in_headless_chromium(gateway: Gateway, tmp_path: Any) -> None:
    import os
    import shutil
    import subprocess

    import pytest

    if not os.path.exists(CHROMIUM):
        if os.environ.get("OMETER_REQUIRE_BROWSER"):
            pytest.fail("OMETER_REQUIRE_BROWSER is set but /usr/bin/chromium is missing")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    fill(gateway)
    profile = tmp_path / "profile"
    url = f"{gateway.url}/dashboard?period=month"
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'data-ready="1"' in dom.stdout
    assert "1.750000 USD" in dom.stdout and "sales" in dom.stdout and "support" in dom.stdout
    assert dom.stdout.count("<rect") >= 6  # the charts' bars were rendered into the page
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1100,1400",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, "/tmp/ometer-dashboard.png")
