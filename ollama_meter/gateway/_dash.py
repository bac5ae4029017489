"""What the gateway shows about itself: ``/api/dash`` (JSON), ``/dashboard`` (charts), ``/metrics``.

The numbers come from :func:`ollama_meter.reports.dashboard_report` and the page
from the reports' HTML renderer, so the dashboard, ``/api/dash``, ``ometer report``
and the HTML files always agree. This module only reads the URL, runs the
report on a ledger thread and answers; it writes no SQL and no markup. The page
loads nothing from anywhere (its Content-Security-Policy says so).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ollama_meter.config import Settings
from ollama_meter.errors import LedgerError, OmeterError
from ollama_meter.gateway._threads import in_thread
from ollama_meter.meter import Meter, utc_now
from ollama_meter.periods import parse_period
from ollama_meter.reports import (
    Dashboard,
    DashQuery,
    Links,
    content_security_policy,
    dashboard_report,
    render_dashboard,
    render_error_page,
    spend_report,
)


def dash_query(params: Mapping[str, str]) -> DashQuery:
    """The dashboard's URL parameters: ``period``, ``since``, ``until``, ``tenant``, ``dept``, ``model``."""
    return DashQuery(
        period=(params.get("period") or "month").strip().lower(),
        since=params.get("since") or None,
        until=params.get("until") or None,
        tenant=params.get("tenant") or None,
        department=params.get("dept") or None,
        model=params.get("model") or None,
    )


_KEPT = ("period", "since", "until", "tenant", "dept", "model", "token")
_PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def dashboard_routes(get_meter: Callable[[], Meter], settings: Settings) -> list[Route]:
    """The routes; who may call them is the app's access policy (``_access.py``)."""

    async def report(request: Request) -> Dashboard:
        """The dashboard's reports for the URL's query; raises OmeterError for a bad one."""
        query = dash_query(request.query_params)
        meter = get_meter()
        return await in_thread(  # type: ignore[no-any-return]
            lambda: dashboard_report(meter.ledger, query, tz=settings.tz, now=meter.clock())
        )

    async def api_dash(request: Request) -> Response:
        try:
            result = await report(request)
        except LedgerError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except OmeterError as exc:  # a bad period or filter
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result.to_json())

    async def dashboard(request: Request) -> Response:
        params = {key: value for key in _KEPT if (value := request.query_params.get(key))}
        links = Links("/dashboard", params)
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": content_security_policy()}
        try:
            result = await report(request)
        except OmeterError as exc:
            status = 503 if isinstance(exc, LedgerError) else 400
            home = Links("/dashboard", {"token": params.get("token", "")}).href()
            page = render_error_page(str(exc), home=home)
            return HTMLResponse(page, status_code=status, headers=headers)
        page = await in_thread(
            lambda: render_dashboard(result, links=links, zone=settings.timezone)
        )
        return HTMLResponse(page, headers=headers)

    async def metrics(request: Request) -> Response:
        text = await in_thread(prometheus_text, get_meter(), settings)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return [
        Route("/api/dash", api_dash, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def prometheus_text(meter: Meter, settings: Settings) -> str:
    """This month's counters in the Prometheus text format, built with ``prometheus_client``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily

    window = parse_period("month", tz=settings.tz, now=utc_now())
    report = spend_report(meter.ledger, window, ["tenant", "department", "model"], tz=settings.tz)

    class Ledger:
        def collect(self) -> Any:
            calls = CounterMetricFamily(
                "ometer_requests",
                "Metered calls this month.",
                labels=["tenant", "department", "model"],
            )
            errors = CounterMetricFamily(
                "ometer_errors",
                "Failed calls this month.",
                labels=["tenant", "department", "model"],
            )
            tokens = CounterMetricFamily(
                "ometer_tokens",
                "Tokens this month.",
                labels=["tenant", "department", "model", "type"],
            )
            cost = CounterMetricFamily(
                "ometer_cost_micros",
                "Cost this month, millionths of the currency.",
                labels=["tenant", "department", "model", "currency"],
            )
            for r in report.rows:
                who = [str(r["tenant"]), str(r["department"]), str(r["model"])]
                calls.add_metric(who, float(str(r["requests"])))
                errors.add_metric(who, float(str(r["errors"])))
                tokens.add_metric([*who, "input"], float(str(r["input_tokens"])))
                tokens.add_metric([*who, "output"], float(str(r["output_tokens"])))
                cost.add_metric([*who, str(r["currency"])], float(str(r["cost"])))
            yield from (calls, errors, tokens, cost)

    registry = CollectorRegistry()
    registry.register(Ledger())
    return generate_latest(registry).decode()
