"""Reports: ledger aggregates turned into rows, and rows rendered as CSV, JSON or HTML.

Reads the ledger through its queries; never writes it. Tables for the terminal
are drawn by the CLI, which alone imports rich. Every name loads on first use
(PEP 562): the command line reads the choices for its help without loading the
ledger, and a command that prints no HTML never pays for Jinja2.
"""

from typing import TYPE_CHECKING

from ollama_meter._lazy import lazy_names, names_in

if TYPE_CHECKING:
    from ollama_meter._text import isolate as isolate
    from ollama_meter.ledger import COLD_LOAD_NS as COLD_LOAD_NS
    from ollama_meter.periods import (
        PERIOD_HELP as PERIOD_HELP,
        TIME_UNITS as TIME_UNITS,
        Window as Window,
        bucket_bounds as bucket_bounds,
        local_midnight as local_midnight,
        parse_day as parse_day,
        parse_period as parse_period,
        window_between as window_between,
    )
    from ollama_meter.reports._allocation import allocate as allocate, union_length as union_length
    from ollama_meter.reports._chargeback import Chargeback as Chargeback, chargeback as chargeback
    from ollama_meter.reports._choices import (
        BY_CHOICES as BY_CHOICES,
        IDLE as IDLE,
        IDLE_MODES as IDLE_MODES,
        PERF_BY_CHOICES as PERF_BY_CHOICES,
        PERF_DEFAULT_BY as PERF_DEFAULT_BY,
        IdleMode as IdleMode,
    )
    from ollama_meter.reports._dashboard import (
        PERIOD_CHOICES as PERIOD_CHOICES,
        Dashboard as Dashboard,
        DashQuery as DashQuery,
        dashboard_report as dashboard_report,
        failures_report as failures_report,
    )
    from ollama_meter.reports._dashboard_page import (
        Links as Links,
        render_dashboard as render_dashboard,
    )
    from ollama_meter.reports._html import (
        content_security_policy as content_security_policy,
        render_chargeback_html as render_chargeback_html,
        render_error_page as render_error_page,
        render_spend_html as render_spend_html,
    )
    from ollama_meter.reports._perf import (
        PERF_METRICS as PERF_METRICS,
        PerfReport as PerfReport,
        histogram_percentile as histogram_percentile,
        parse_perf_by as parse_perf_by,
        percentile as percentile,
        perf_report as perf_report,
    )
    from ollama_meter.reports._render import (
        iso_utc as iso_utc,
        safe_cell as safe_cell,
        span_to_dict as span_to_dict,
        to_csv as to_csv,
        to_json as to_json,
    )
    from ollama_meter.reports._rows import (
        CHARGEBACK_COLUMNS as CHARGEBACK_COLUMNS,
        ChargebackRow as ChargebackRow,
        PerfRow as PerfRow,
        Row as Row,
        SpendRow as SpendRow,
    )
    from ollama_meter.reports._spend import (
        SpendReport as SpendReport,
        gpu_seconds as gpu_seconds,
        parse_by as parse_by,
        spend_report as spend_report,
    )

_NAMES = {
    "ollama_meter._text": "isolate",
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
