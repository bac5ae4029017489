"""What the gateway shows about itself: ``/api/dash`` (JSON), ``/dashboard`` (charts), ``/metrics``.

The numbers come from :func:`ollama_meter.reports.dashboard_report` and the page
from the reports' HTML renderer, so the dashboard, ``/api/dash``, ``ometer report``
and the HTML files always agree. This module only reads the URL, runs the
report on a ledger thread and answers; it writes no SQL and no markup. The page
loads nothing from anywhere (its Content-Security-Policy says so).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ollama_meter._text import json_text
from ollama_meter.config import Settings
from ollama_meter.errors import LedgerError, OmeterError, ValidationError
from ollama_meter.gateway._threads import in_thread
from ollama_meter.meter import Meter
from ollama_meter.meter._prices import ledger_zone
from ollama_meter.reports import (
    Dashboard,
    DashQuery,
    Links,
    content_security_policy,
    dashboard_report,
    render_dashboard,
    render_error_page,
)

_PARAMS = ("period", "since", "until", "tenant", "dept", "model")
_KEPT = (*_PARAMS, "token")
KEY_SCOPE = "ometer.key_scope"
"""Where a request's ASGI scope holds the (tenant, department) of the key it came with."""
METRICS_NEED_TOKEN = (
    "/metrics counts every tenant's calls, so a key does not open it: start the gateway "
    "with an admin token (OMETER_ADMIN_TOKEN) and scrape with it as the bearer token"
)


class OutOfScope(OmeterError):
    """A key asked the dashboard for another tenant's or department's figures (403)."""


def dash_query(
    params: Iterable[tuple[str, str]], scope: tuple[str, str] | None = None
) -> DashQuery:
    """The dashboard's URL parameters: ``period``, ``since``, ``until``, ``tenant``, ``dept``, ``model``.

    ``params`` are the URL's pairs as given. A name the dashboard does not take, or one given
    twice, is a :class:`ValidationError`: answering for one of two periods, or with a filter
    silently dropped (``department=`` for ``dept=``), would show figures nobody asked for.
    ``scope``: the (tenant, department) of the key that asks, whose figures are all it sees
    (:class:`OutOfScope` when it names others).
    """
    given: dict[str, str] = {}
    for name, value in params:
        if name not in _KEPT:
            raise ValidationError(
                f"the dashboard has no parameter {name[:64]!r}; it takes "
                f"{', '.join(_PARAMS)} (and token)"
            )
        if name in given:
            raise ValidationError(f"the parameter {name!r} is given twice; give it once")
        given[name] = value
    tenant, department = given.get("tenant") or None, given.get("dept") or None
    if scope is not None:
        if tenant not in (None, scope[0]) or department not in (None, scope[1]):
            raise OutOfScope(
                f"this key sees its own tenant and department only ({scope[0]}, "
                f"{scope[1]}); the admin token (OMETER_ADMIN_TOKEN) sees every one"
            )
        tenant, department = scope
    query = DashQuery(
        # No period: this month, or the dates' custom range. ``month`` asked for with dates
        # is the conflict it is (a 400), not the custom range answered unsaid.
        period=given["period"].strip().lower() if given.get("period", "").strip() else None,
        since=given.get("since") or None,
        until=given.get("until") or None,
        tenant=tenant,
        department=department,
        model=given.get("model") or None,
        scope=scope,
    )
    return dataclasses.replace(query, period=query.selected)  # one cache key per window


MAX_REPORTS = 8
"""Distinct reports the dashboard runs at once, on the ledger threads the calls' spans are
written on; a query past them is answered 503 (a query already running is joined). A report
runs on for a caller that hung up (the next poll takes it): a new query per request, each
abandoned, queued a report each, without end."""
KEY_REPORTS = 2
"""Distinct reports one key's scope (its tenant and department) runs at once, of the
:data:`MAX_REPORTS`: one key asking a new query per request (a model name each) took every
report, and every other tenant's dashboard answered 503 while it went on."""
REPORTS_RETRY_AFTER = 5


class ReportsBusy(OmeterError):
    """As many reports as :data:`MAX_REPORTS` are running: try again in a few seconds (503)."""


DASH_CACHE_SECONDS = 3.0
"""How long ``/api/dash`` and the dashboard answer from figures already computed."""

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
"""Figures of this moment: no cache in between keeps them (a proxy would serve stale counts),
and no browser reads them as anything but their type (JSON or text holding a caller's model
name is never sniffed into a page)."""
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PAGE_HEADERS = {"Referrer-Policy": "no-referrer", **NO_STORE}
"""The page and its JSON hold everyone's spend: no browser or proxy keeps a copy. Every answer
of the two routes carries these, a refusal too (it may quote the URL)."""


def dashboard_routes(
    meter_of: Callable[[Request], Meter],
    settings: Settings,
    *,
    servers_of: Callable[[Request], dict[str, Any]] | None = None,
) -> list[Route]:
    """The routes, reading the ledger of ``meter_of(request)``; who may call them is the app's
    access policy (``_access.py``). ``servers_of``: the Ollama servers and the queue right now,
    for ``/api/dash``."""

    # Ledger-wide sums change by the call, but nobody reads them that often: answer repeated
    # polls (several dashboards, a reload, the page and its JSON) from the last few seconds',
    # and polls that come while a report runs wait for it rather than each start their own
    # (each holds one of the ledger threads that calls need too). Only the event loop
    # touches these two.
    recent: dict[DashQuery, tuple[float, Dashboard]] = {}
    running: dict[DashQuery, asyncio.Task[Any]] = {}

    def compute(query: DashQuery, meter: Meter) -> Dashboard:
        return dashboard_report(
            meter.ledger,
            query,
            tz=settings.tz,
            now=meter.clock(),
            budget_tz=ledger_zone(meter.ledger, settings),
        )

    def keep(query: DashQuery, task: asyncio.Task[Any]) -> None:
        del running[query]
        if task.cancelled() or task.exception() is not None:  # a bad query: nothing to keep
            return
        now = time.monotonic()
        for old in [q for q, (at, _) in recent.items() if now - at >= DASH_CACHE_SECONDS]:
            del recent[old]
        if len(recent) > 64:
            recent.clear()
        recent[query] = (now, task.result())

    async def report(request: Request) -> Dashboard:
        """The dashboard's reports for the URL's query; raises OmeterError for a bad one."""
        scope = request.scope.get(KEY_SCOPE)
        query, meter = dash_query(request.query_params.multi_items(), scope), meter_of(request)
        hit = recent.get(query)
        if hit is not None and time.monotonic() - hit[0] < DASH_CACHE_SECONDS:
            return hit[1]
        task = running.get(query)
        if task is None:
            if len(running) >= MAX_REPORTS:
                raise ReportsBusy(
                    f"the dashboard is running {len(running)} other reports, the most it runs "
                    f"at once; try again in {REPORTS_RETRY_AFTER} s"
                )
            if scope is not None and (own := sum(q.scope == scope for q in running)) >= KEY_REPORTS:
                raise ReportsBusy(
                    f"this key's dashboard is running {own} other reports, the most one "
                    f"tenant and department runs at once; try again in {REPORTS_RETRY_AFTER} s"
                )
            task = running[query] = asyncio.ensure_future(in_thread(compute, query, meter))
            task.add_done_callback(functools.partial(keep, query))
        # A caller hanging up leaves the report to the others (and to the cache).
        return await asyncio.shield(task)

    async def api_dash(request: Request) -> Response:
        try:
            result = await report(request)
        except OmeterError as exc:  # a bad period or filter (400), or out of the key's scope
            return JSONResponse(
                {"error": str(exc)}, status_code=_status_of(exc), headers=_refused_headers(exc)
            )
        live = (
            {}
            if servers_of is None
            else for_scope(servers_of(request), request.scope.get(KEY_SCOPE))
        )
        # Building and encoding the JSON grows with the names in the window (40,000 made-up
        # departments: 11 s and 30 MB): a ledger thread's work, never the event loop's.
        body = await in_thread(_json_body, result, live)
        return Response(body, media_type="application/json", headers=_PAGE_HEADERS)

    async def dashboard(request: Request) -> Response:
        params = {key: value for key in _KEPT if (value := request.query_params.get(key))}
        links = Links("/dashboard", params)
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": content_security_policy()}
        try:
            result = await report(request)
        except OmeterError as exc:
            status = _status_of(exc)
            home = Links("/dashboard", {"token": params.get("token", "")}).href()
            page = render_error_page(str(exc), home=home)
            return HTMLResponse(page, status_code=status, headers=_refused_headers(exc, headers))
        page = await in_thread(
            lambda: render_dashboard(result, links=links, zone=settings.timezone)
        )
        return HTMLResponse(page, headers=headers)

    async def metrics(request: Request) -> Response:
        text = await in_thread(prometheus_text, meter_of(request), settings)
        return Response(text, media_type=METRICS_TYPE, headers=NO_STORE)

    return [
        Route("/api/dash", api_dash, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _json_body(result: Dashboard, live: dict[str, Any]) -> bytes:
    """``/api/dash``'s body: the report's JSON (built once per report, however many polls the
    cache answers with it) with the servers and queue of this moment; what a terminal acts on
    in a name (U+009B, U+202E: ``curl`` prints the body) written as its ``\\u`` escape."""
    answer = {**result.to_json(), **live}
    return json_text(answer, allow_nan=False, separators=(",", ":")).encode()


def for_scope(servers: dict[str, Any], scope: tuple[str, str] | None) -> dict[str, Any]:
    """What ``/api/dash`` says of the servers and the queue, for a key of ``scope``: the calls
    in flight and waiting in all (figures of the gateway's load right now), and of those
    waiting its own department's only, not the other departments' names; no server's count
    of calls served, which counts every tenant's since the start (as ``/metrics`` does)."""
    if scope is None:
        return servers
    shown = dict(servers)
    if isinstance(listed := servers.get("servers"), list):
        shown["servers"] = [
            {k: v for k, v in server.items() if k != "served"}
            if isinstance(server, dict)
            else server
            for server in listed
        ]
    if isinstance(queue := servers.get("queue"), dict):
        own = f"{scope[0]}/{scope[1]}"
        waiting = queue.get("by_department", {})
        shown["queue"] = {**queue, "by_department": {n: c for n, c in waiting.items() if n == own}}
    return shown


def _status_of(exc: OmeterError) -> int:
    """A report the dashboard could not give: the ledger's fault (or too many reports at once),
    the key's, or the query's."""
    if isinstance(exc, LedgerError | ReportsBusy):
        return 503
    return 403 if isinstance(exc, OutOfScope) else 400


def _refused_headers(exc: OmeterError, headers: dict[str, str] = _PAGE_HEADERS) -> dict[str, str]:
    busy = isinstance(exc, ReportsBusy)
    return {**headers, "Retry-After": str(REPORTS_RETRY_AFTER)} if busy else headers


def prometheus_text(meter: Meter, settings: Settings) -> str:
    """This process's counters and histograms in the Prometheus text format (see ``_metrics``)."""
    from ollama_meter.gateway._metrics import install

    return install(meter).text()
