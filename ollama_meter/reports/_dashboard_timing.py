"""The dashboard's charts of calls, failures and time: latency, TTFT, speed, cold loads, queues.

Built from a :class:`~ollama_meter.reports._dashboard.Dashboard`'s perf and failure
reports; money is :mod:`._dashboard_page`'s. Builds charts; reads nothing.
"""

from __future__ import annotations

from decimal import Decimal

from ollama_meter._text import isolate
from ollama_meter.reports._charts import (
    Bar,
    Chart,
    LegendItem,
    Segment,
    Series,
    bars,
    columns,
    lines,
)
from ollama_meter.reports._dashboard import TOP, Dashboard
from ollama_meter.reports._html import ms, num, short_label


def timing_charts(d: Dashboard) -> dict[str, Chart]:
    """The charts of where the time goes, and of calls and failures, keyed as the page uses them."""
    by_time = {r.label(d.unit): r for r in d.timing_by_time.rows}
    xs = d.buckets

    def percentiles(label: str, column: str, css: str) -> Chart:
        series = []
        for p in ("p50", "p95"):
            values: list[Decimal | None] = []
            for x in xs:
                row = by_time.get(x)
                value = None if row is None else row.get(f"{column}_{p}_ms")
                values.append(value if isinstance(value, Decimal) else None)
            tips = [
                f"{label} {p} · {x}: {'no data' if v is None else f'{v:f} ms'}"
                for x, v in zip(xs, values, strict=True)
            ]
            exact = ["" if v is None else f"{v:f}" for v in values]
            series.append(Series(f"{p}", css, values, tips, exact, dashed=p == "p95"))
        return lines(
            f"{label} per {d.unit}, p50 and p95",
            xs,
            series,
            unit="ms",
            x_text=lambda x: short_label(x, d.unit),
        )

    models = d.timing_by_model.rows

    def model_bars(
        label: str, unit: str, rows: list[tuple[str, Decimal, str, str]], *, slowest: str
    ) -> Chart:
        """The :data:`TOP` models that show the most of the trouble (``slowest``: ``low`` or
        ``high`` values first), and how many more under the chart."""
        ranked = sorted(rows, key=lambda r: (r[1] if slowest == "low" else -r[1], r[0]))
        return bars(
            label,
            [
                Bar(name, [Segment(value, "accent", tip, f"{value:f}")], text)
                for name, value, text, tip in ranked
            ],
            unit=unit,
            limit=TOP,
        )

    speed = model_bars(
        "Output tokens per second by model (median)",
        "tok/s",
        [
            (
                isolate(r.label("model")),
                v,
                f"{v:,f}",
                f"{isolate(r.label('model'))}: {v:f} tokens/s",
            )
            for r in models
            if (v := r.tokens_per_s) is not None
        ],
        slowest="low",
    )
    cold = model_bars(
        "Cold model loads",
        "loads",
        [
            (
                isolate(r.label("model")),
                Decimal(r.cold_loads),
                f"{r.cold_loads} ({r.cold_load_s} s)",
                f"{isolate(r.label('model'))}: {r.cold_loads} cold load(s), {r.cold_load_s} s loading",
            )
            for r in models
            if r.cold_loads > 0
        ],
        slowest="high",
    )
    queue = model_bars(
        "Waiting inside Ollama, p95 by model",
        "ms",
        [
            (
                isolate(r.label("model")),
                v,
                ms(v),
                f"{isolate(r.label('model'))}: p50 {r.queue_p50_ms} ms, p95 {v:f} ms",
            )
            for r in models
            if (v := r.queue_p95_ms) is not None
        ],
        slowest="high",
    )
    failures = bars(
        "Failed calls by type",
        [
            Bar(
                label=f"{f.status} · {isolate(f.error_type)}" if f.error_type else f.status,
                segments=[
                    Segment(
                        Decimal(f.requests),
                        "err",
                        f"{f.status} {isolate(f.error_type or '')}: {f.requests} call(s)",
                        str(f.requests),
                    )
                ],
                text=num(f.requests),
            )
            for f in d.failures
        ],
        unit="calls",
        limit=TOP,
    )
    calls = d.requests_by_time()
    counts = columns(
        f"Calls and errors per {d.unit}",
        xs,
        [
            Series(
                "calls without error",
                "calls",
                [Decimal(calls[x]["requests"] - calls[x]["errors"]) for x in xs],
                [f"{x}: {calls[x]['requests']} call(s), {calls[x]['errors']} error(s)" for x in xs],
                [str(calls[x]["requests"] - calls[x]["errors"]) for x in xs],
            ),
            Series(
                "errors",
                "err",
                [Decimal(calls[x]["errors"]) for x in xs],
                [f"{x}: {calls[x]['errors']} error(s)" for x in xs],
                [str(calls[x]["errors"]) for x in xs],
            ),
        ],
        unit="calls",
        x_text=lambda x: short_label(x, d.unit),
    )
    counts.legend = [LegendItem("calls without error", "calls"), LegendItem("errors", "err")]
    return {
        "ttft": percentiles("Time to first token", "ttft", "ttft"),
        "latency": percentiles("Latency", "latency", "lat"),
        "speed": speed,
        "cold": cold,
        "queue": queue,
        "failures": failures,
        "calls": counts,
    }
