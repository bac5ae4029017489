"""Reports: ledger aggregates turned into rows, and rows rendered as CSV, JSON or HTML.

Reads the ledger through its queries; never writes it. Tables for the terminal
are drawn by the CLI, which alone imports rich. Every name loads on first use
(PEP 562): the command line reads the choices for its help without loading the
ledger, and a command that prints no HTML never pays for Jinja2.
"""

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names, names_in

if TYPE_CHECKING:
    from ollama_meter.ledger import COLD_LOAD_NS
    from ollama_meter.periods import (
        PERIOD_HELP,
        TIME_UNITS,
        Window,
        bucket_bounds,
        local_midnight,
        parse_day,
        parse_period,
        window_between,
    )
    from ollama_meter.reports._allocation import allocate, union_length
    from ollama_meter.reports._chargeback import Chargeback, chargeback
    from ollama_meter.reports._choices import (
        BY_CHOICES,
        IDLE,
        IDLE_MODES,
        PERF_BY_CHOICES,
        PERF_DEFAULT_BY,
        IdleMode,
    )
    from ollama_meter.reports._dashboard import (
        PERIOD_CHOICES,
        Dashboard,
        DashQuery,
        dashboard_report,
        failures_report,
    )
    from ollama_meter.reports._dashboard_page import Links, render_dashboard
    from ollama_meter.reports._html import (
        content_security_policy,
        render_chargeback_html,
        render_error_page,
        render_spend_html,
    )
    from ollama_meter.reports._perf import (
        PERF_METRICS,
        PerfReport,
        histogram_percentile,
        parse_perf_by,
        percentile,
        perf_report,
    )
    from ollama_meter.reports._render import iso_utc, safe_cell, span_to_dict, to_csv, to_json
    from ollama_meter.reports._rows import (
        CHARGEBACK_COLUMNS,
        ChargebackRow,
        PerfRow,
        Row,
        SpendRow,
    )
    from ollama_meter.reports._spend import SpendReport, gpu_seconds, parse_by, spend_report

_NAMES = {
    "ollama_meter.ledger": "COLD_LOAD_NS",
    "ollama_meter.periods": "PERIOD_HELP TIME_UNITS Window bucket_bounds local_midnight "
    "parse_day parse_period window_between",
    "._allocation": "allocate union_length",
    "._chargeback": "Chargeback chargeback",
    "._choices": "BY_CHOICES IDLE IDLE_MODES PERF_BY_CHOICES PERF_DEFAULT_BY IdleMode",
    "._dashboard": "PERIOD_CHOICES Dashboard DashQuery dashboard_report failures_report",
    "._dashboard_page": "Links render_dashboard",
    "._html": "content_security_policy render_chargeback_html render_error_page render_spend_html",
    "._perf": "PERF_METRICS PerfReport histogram_percentile parse_perf_by percentile perf_report",
    "._render": "iso_utc safe_cell span_to_dict to_csv to_json",
    "._rows": "CHARGEBACK_COLUMNS ChargebackRow PerfRow Row SpendRow",
    "._spend": "SpendReport gpu_seconds parse_by spend_report",
}
"""Module → the public names it defines, each imported when first read."""

__getattr__ = lazy_names(globals(), names_in(_NAMES))


__all__ = [
    "BY_CHOICES",
    "CHARGEBACK_COLUMNS",
    "COLD_LOAD_NS",
    "IDLE",
    "IDLE_MODES",
    "PERF_BY_CHOICES",
    "PERF_DEFAULT_BY",
    "PERF_METRICS",
    "PERIOD_CHOICES",
    "PERIOD_HELP",
    "TIME_UNITS",
    "Chargeback",
    "ChargebackRow",
    "DashQuery",
    "Dashboard",
    "IdleMode",
    "Links",
    "PerfReport",
    "PerfRow",
    "Row",
    "SpendReport",
    "SpendRow",
    "Window",
    "allocate",
    "bucket_bounds",
    "chargeback",
    "content_security_policy",
    "dashboard_report",
    "failures_report",
    "gpu_seconds",
    "histogram_percentile",
    "iso_utc",
    "local_midnight",
    "parse_by",
    "parse_day",
    "parse_perf_by",
    "parse_period",
    "percentile",
    "perf_report",
    "render_chargeback_html",
    "render_dashboard",
    "render_error_page",
    "render_spend_html",
    "safe_cell",
    "span_to_dict",
    "spend_report",
    "to_csv",
    "to_json",
    "union_length",
    "window_between",
]
