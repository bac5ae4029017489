"""What the gateway shows about itself: ``/api/dash`` (JSON), ``/dashboard`` (charts), ``/metrics``.

Aggregates come from the same report functions as the CLI, so the dashboard and
``ometer report`` always agree. Charts are SVG drawn here on the server: no
script, nothing fetched from a CDN, readable on an offline site.
"""

from __future__ import annotations

import hmac
import html
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ollama_meter.budgets import budget_status
from ollama_meter.config import Settings
from ollama_meter.errors import LedgerError, OmeterError
from ollama_meter.gateway._threads import in_thread
from ollama_meter.meter import Meter, utc_now
from ollama_meter.periods import parse_period
from ollama_meter.pricing import format_micros
from ollama_meter.reports import perf_report, spend_report


def dash_data(
    meter: Meter,
    settings: Settings,
    *,
    period: str,
    tenant: str | None,
    department: str | None,
    model: str | None,
) -> dict[str, Any]:
    """The dashboard's numbers for a period, optionally for one tenant, department or model."""
    tz = settings.tz
    window = parse_period(period, tz=tz, now=utc_now())
    filters = {"tenant": tenant, "department": department, "model": model}
    ledger = meter.ledger
    by_day = spend_report(ledger, window, ["department", "day"], tz=tz, **filters)
    models = spend_report(ledger, window, ["model"], tz=tz, **filters)
    users = spend_report(ledger, window, ["user"], tz=tz, **filters)
    totals = spend_report(ledger, window, [], tz=tz, **filters).rows
    latency = perf_report(ledger, window, ["model"], **filters)
    budgets = [
        b
        for b in budget_status(ledger, tz=tz, now=utc_now())
        if tenant is None or b.tenant in (tenant, "*")
    ]
    total = totals[0] if totals else {}
    return {
        "period": {
            "label": window.label,
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
        },
        "totals": {
            "requests": total.get("requests", 0),
            "errors": total.get("errors", 0),
            "input_tokens": total.get("input_tokens", 0),
            "output_tokens": total.get("output_tokens", 0),
            "cost": format_micros(int(str(total.get("cost", 0)))),
            "currency": total.get("currency", settings.currency),
        },
        "spend_by_department_by_day": [
            {
                "day": r["day"],
                "department": r["department"],
                "cost": format_micros(int(str(r["cost"]))),
            }
            for r in by_day.rows
        ],
        "models": [
            {
                "model": r["model"],
                "requests": r["requests"],
                "input_tokens": r["input_tokens"],
                "output_tokens": r["output_tokens"],
                "cost": format_micros(int(str(r["cost"]))),
            }
            for r in models.rows
        ],
        "budgets": [
            {
                "id": b.budget.id,
                "scope": b.budget.scope(b.tenant),
                "period": b.budget.period,
                "spent": format_micros(b.spent),
                "limit": format_micros(b.budget.limit),
                "percent": b.percent,
                "state": b.state,
            }
            for b in budgets
        ],
        "latency": [
            {
                "model": r["model"],
                "p50_ms": _text(r["latency_p50_ms"]),
                "p95_ms": _text(r["latency_p95_ms"]),
            }
            for r in latency.rows
        ],
        "top_users": sorted(
            (
                {
                    "user": r["user"] or "(none)",
                    "requests": r["requests"],
                    "cost": format_micros(int(str(r["cost"]))),
                }
                for r in users.rows
            ),
            key=lambda u: (-Decimal(str(u["cost"])), str(u["user"])),
        )[:10],
    }


def _text(value: object) -> str | None:
    return None if value is None else f"{value}"


def _bars(title: str, items: list[tuple[str, Decimal]], unit: str) -> str:
    """A horizontal bar chart as inline SVG; labels escaped."""
    if not items:
        return f"<section><h2>{html.escape(title)}</h2><p class=empty>no data</p></section>"
    top = max((v for _, v in items), default=Decimal(1)) or Decimal(1)
    rows = []
    for index, (label, value) in enumerate(items):
        width = float(value / top) * 360 if top else 0.0
        y = index * 26
        rows.append(
            f'<text x="0" y="{y + 16}" class="label">{html.escape(label)}</text>'
            f'<rect x="170" y="{y + 4}" width="{width:.1f}" height="16" class="bar"/>'
            f'<text x="{176 + width:.1f}" y="{y + 16}" class="value">{html.escape(f"{value}")} {html.escape(unit)}</text>'
        )
    height = len(items) * 26 + 6
    return (
        f'<section><h2>{html.escape(title)}</h2><svg class="chart" width="640" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">{"".join(rows)}</svg></section>'
    )


_PALETTE = ("#3b7dd8", "#e07b39", "#4aa564", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c")


def _spend_over_days(title: str, rows: list[dict[str, Any]], currency: str) -> str:
    """Spend per department over days: one column per day, stacked by department, as SVG."""
    head = f"<section><h2>{html.escape(title)}</h2>"
    if not rows:
        return head + "<p class=empty>no data</p></section>"
    cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        cells[(row["day"], row["department"])] += Decimal(row["cost"])
    days = sorted({day for day, _ in cells})
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for (_, department), cost in cells.items():
        totals[department] += cost
    departments = sorted(totals, key=lambda d: (-totals[d], d))
    colour = {d: _PALETTE[i % len(_PALETTE)] for i, d in enumerate(departments)}
    top = max(sum(cells.get((day, d), Decimal(0)) for d in departments) for day in days)
    left, width, height = 84, 540, 180
    step = width / len(days)
    column = max(min(step * 0.8, 28.0), 2.0)
    shapes = [
        f'<line x1="{left}" y1="{height}" x2="{left + width}" y2="{height}" class="axis"/>',
        f'<text x="{left - 6}" y="12" class="value" text-anchor="end">{html.escape(f"{top}")}</text>',
        f'<text x="{left - 6}" y="{height}" class="value" text-anchor="end">0</text>',
    ]
    label_every = max(1, len(days) // 12)
    for index, day in enumerate(days):
        x = left + index * step + (step - column) / 2
        y = float(height)
        for department in departments:
            spent = cells.get((day, department))
            if not spent:
                continue
            h = float(spent / top) * (height - 10) if top else 0.0
            y -= h
            tip = html.escape(f"{day} · {department}: {spent} {currency}")
            shapes.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{column:.1f}" height="{h:.1f}" '
                f'fill="{colour[department]}"><title>{tip}</title></rect>'
            )
        if index % label_every == 0:
            shapes.append(
                f'<text x="{x + column / 2:.1f}" y="{height + 14}" class="label" '
                f'text-anchor="middle">{html.escape(day[5:])}</text>'
            )
    legend = "".join(
        f'<li><span class="swatch" style="background:{colour[d]}"></span>{html.escape(d)} '
        f"<b>{totals[d]} {html.escape(currency)}</b></li>"
        for d in departments
    )
    return (
        f'{head}<svg class="chart" width="640" height="{height + 22}" role="img" '
        f'aria-label="{html.escape(title)}">{"".join(shapes)}</svg>'
        f'<ul class="legend">{legend}</ul></section>'
    )


def dashboard_page(
    data: dict[str, Any], *, period: str, tenant: str | None, token: str | None
) -> str:
    totals = data["totals"]
    currency = str(totals["currency"])
    charts = [
        _spend_over_days(
            "Spend per department over days", data["spend_by_department_by_day"], currency
        ),
        _bars(
            "Models by spend", [(m["model"], Decimal(m["cost"])) for m in data["models"]], currency
        ),
        _bars(
            "Budgets used",
            [(f"{b['scope']} ({b['period']})", Decimal(b["percent"])) for b in data["budgets"]],
            "%",
        ),
        _bars(
            "Latency p95 per model",
            [(r["model"], Decimal(r["p95_ms"])) for r in data["latency"] if r["p95_ms"]],
            "ms",
        ),
        _bars(
            "Latency p50 per model",
            [(r["model"], Decimal(r["p50_ms"])) for r in data["latency"] if r["p50_ms"]],
            "ms",
        ),
    ]
    users = "".join(
        f"<tr><td>{html.escape(str(u['user']))}</td><td>{u['requests']}</td><td>{u['cost']}</td></tr>"
        for u in data["top_users"]
    )
    hidden = f'<input type="hidden" name="token" value="{html.escape(token)}">' if token else ""
    choices = "".join(
        f'<option value="{p}"{" selected" if p == period else ""}>{p}</option>'
        for p in ("today", "week", "month")
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ometer dashboard</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} h1{{font-size:20px}} h2{{font-size:15px;margin:18px 0 6px}}
.chart .bar{{fill:#3b7dd8}} .chart .label{{font-size:12px}} .chart .value{{font-size:12px;fill:#444}}
.chart .axis{{stroke:#999}} .legend{{list-style:none;padding:0;margin:4px 0}} .legend li{{display:inline-block;margin-right:16px}}
.swatch{{display:inline-block;width:10px;height:10px;margin-right:4px}}
.totals span{{margin-right:18px}} table{{border-collapse:collapse}} td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}}
</style></head>
<body data-ready="1">
<h1>ometer: {html.escape(data["period"]["label"])}{" · " + html.escape(tenant) if tenant else ""}</h1>
<form method="get"><label>period <select name="period">{choices}</select></label>
<label>tenant <input name="tenant" value="{html.escape(tenant or "")}"></label>{hidden}<button>show</button></form>
<p class="totals"><span id="total-cost">{totals["cost"]} {html.escape(currency)}</span>
<span>{totals["requests"]} calls</span><span>{totals["errors"]} errors</span>
<span>{totals["input_tokens"]} in / {totals["output_tokens"]} out tokens</span></p>
{"".join(charts)}
<section><h2>Top users</h2><table><tr><th>user</th><th>calls</th><th>cost</th></tr>{users}</table></section>
</body></html>"""


def dashboard_routes(
    get_meter: Callable[[], Meter], settings: Settings, admin_token: str | None
) -> list[Route]:
    def allowed(request: Request) -> bool:
        if not admin_token:
            return True
        given = request.query_params.get("token") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), admin_token.encode())

    async def data(request: Request) -> dict[str, Any] | Response:
        if not allowed(request):
            return JSONResponse(
                {"error": "this needs the admin token: Authorization: Bearer <token> or ?token="},
                status_code=401,
            )
        q = request.query_params
        try:
            return await in_thread(  # type: ignore[no-any-return]
                lambda: dash_data(
                    get_meter(),
                    settings,
                    period=q.get("period", "month"),
                    tenant=q.get("tenant") or None,
                    department=q.get("dept") or None,
                    model=q.get("model") or None,
                )
            )
        except LedgerError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except OmeterError as exc:  # a bad period or filter
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def api_dash(request: Request) -> Response:
        result = await data(request)
        return result if isinstance(result, Response) else JSONResponse(result)

    async def dashboard(request: Request) -> Response:
        result = await data(request)
        if isinstance(result, Response):
            return result
        return HTMLResponse(
            dashboard_page(
                result,
                period=request.query_params.get("period", "month"),
                tenant=request.query_params.get("tenant") or None,
                token=request.query_params.get("token"),
            )
        )

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
