"""The dashboard's numbers: one period, optionally one tenant, department or model.

Everything comes from the report functions (:func:`spend_report`,
:func:`perf_report`, :func:`failures_report`) and :func:`budget_status`, so the
dashboard, ``/api/dash`` and ``ometer report`` always agree. Money is never
summed across currencies: every amount here sits next to its currency, and the
counts (calls, errors, tokens) are the only figures that span currencies.
Reads the ledger; never writes it. ``/api/dash``'s JSON is built in :mod:`._dashboard_json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

from ollama_meter.budgets import BudgetStatus, budget_status
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import FailureCount, Ledger, Ranking, SpanFilter
from ollama_meter.periods import (
    Window,
    bucket_bounds,
    day_of,
    local_midnight,
    month_start,
    next_month,
    parse_period,
    window_between,
)
from ollama_meter.records import EACH_TENANT, Micros, UnreadableBudget
from ollama_meter.reports._perf import PerfReport, perf_report
from ollama_meter.reports._rows import SpendRow, per_department
from ollama_meter.reports._spend import SpendReport, spend_and_top, spend_report
from ollama_meter.reports._top import Listed, top_lists

PERIOD_CHOICES = {
    "today": "Today",
    "week": "This week",
    "month": "This month",
    "previous-month": "Previous month",
    "custom": "Custom range",
}
"""The dashboard's period selector: value → label. ``YYYY-MM`` and ``YYYY-MM-DD`` work too."""
DASH_PERIOD_HELP = f"{', '.join(PERIOD_CHOICES)}, YYYY-MM or YYYY-MM-DD"

TOP = 10
"""How many users and models the top lists show."""
LISTED = 25
"""How many departments and models ``/api/dash`` lists per currency, and models' timings; the
others are one row, their sums (``ometer report`` and ``ometer perf`` list every one)."""


class Filters(TypedDict):
    tenant: str | None
    department: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class DashQuery:
    """What the dashboard was asked for; the URL's query parameters, validated."""

    period: str | None = None
    """The period word as asked; None: none was (this month, or the dates' custom range)."""
    since: str | None = None
    until: str | None = None
    tenant: str | None = None
    department: str | None = None
    model: str | None = None
    scope: tuple[str, str] | None = None
    """The (tenant, department) of the key that asked, which sees only its own; None: all."""

    def filters(self) -> Filters:
        return {"tenant": self.tenant, "department": self.department, "model": self.model}

    @property
    def selected(self) -> str:
        """The period as the selector shows it: with no period asked, ``custom`` when dates
        name the window and ``month`` when none do. A period asked for is kept as asked, so
        ``month`` with dates is the conflict it is (:func:`dash_window`), not a custom range."""
        if self.period is None:
            return "custom" if self.since or self.until else "month"
        return self.period


LONGEST_RANGE_YEARS = 20
"""The longest custom range: its trend is 240 monthly points (and the period before it
stays in the calendar)."""


def dash_window(query: DashQuery, *, tz: ZoneInfo, now: datetime) -> Window:
    """The window a :class:`DashQuery` names: a period word, a month or day, or a range.

    A period other than ``custom`` (``month`` too: it is the default only when none is asked) with dates is a
    :class:`ValidationError`: answering for either would drop what the other asked for.
    """
    period = query.selected
    if period == "custom":
        if not query.since:
            raise ValidationError("a custom range needs a start date (since=YYYY-MM-DD)")
        window = window_between(query.since, query.until, tz=tz, now=now, names=("since", "until"))
        first, end = (day_of(moment, tz) for moment in (window.start, window.end))
        if end > _years_after(first, LONGEST_RANGE_YEARS):
            raise ValidationError(
                f"a custom range is at most {LONGEST_RANGE_YEARS} years ({window.label} is "
                f"longer): the trend draws a point a month"
            )
        return window
    if query.since or query.until:
        raise ValidationError(
            f"period {period[:64]!r} and since/until ask for different stretches; "
            "give the dates with period=custom, or the period alone"
        )
    if period == "previous-month":
        first = month_start(day_of(now, tz))
        previous = month_start(first - timedelta(days=1))
        return parse_period(previous.strftime("%Y-%m"), tz=tz, now=now)
    return parse_period(period, tz=tz, now=now, choices=DASH_PERIOD_HELP)


def _years_after(day: date, years: int) -> date:
    """The same day ``years`` on (29 February, in a year without one: 1 March)."""
    return date(day.year + years, day.month, 1) + (day - day.replace(day=1))


def previous_window(window: Window, *, tz: ZoneInfo, now: datetime) -> Window:
    """The period to compare ``window`` with: the one before it, as far into it as we are now.

    A calendar month compares with the month before; any other window with as many
    days right before it. While ``window`` is still running (it holds ``now``), the
    comparison stops as far into the earlier period as ``now`` is into this one, so
    the first 20 days of a month are set against the first 20 days of the last.
    """
    first, last = day_of(window.start, tz), day_of(window.end, tz)
    if first == month_start(first) and last == next_month(first):
        before = month_start(first - timedelta(days=1))
    else:
        before = first - (last - first)
    # Built here, not parsed: the period before the first allowed day is still a comparison.
    label = f"{before.isoformat()}..{(first - timedelta(days=1)).isoformat()}"
    earlier = Window(local_midnight(before, tz), local_midnight(first, tz), label)
    if window.start <= now < window.end:
        # By the wall clock (the 20th at 10:00 against the 20th at 10:00), not elapsed time,
        # which a DST change between the two would set an hour apart.
        local = now.astimezone(tz)
        wall = datetime.combine(before + (local.date() - first), local.time(), tzinfo=tz)
        cut = min(max(wall.astimezone(UTC), earlier.start), earlier.end)
        return Window(
            earlier.start, cut, f"{before.isoformat()}..{_minute(cut, tz)} (same stretch)"
        )
    return earlier


def _minute(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def chart_unit(window: Window) -> str:
    """Days for up to two months, weeks for up to a year, months beyond."""
    days = round((window.end - window.start) / timedelta(days=1))  # a DST change is an hour
    if days <= 62:
        return "day"
    return "week" if days <= 366 else "month"


def failures_report(
    ledger: Ledger,
    window: Window,
    *,
    tenant: str | None = None,
    department: str | None = None,
    model: str | None = None,
) -> list[FailureCount]:
    """Calls that did not end ``ok`` per (status, error type), most frequent first."""
    where = SpanFilter(
        since=window.start, until=window.end, tenant=tenant, department=department, model=model
    )
    return sorted(ledger.failures(where), key=lambda f: (-f.requests, f.status, f.error_type or ""))


def share(part: int, whole: int, places: int = 1) -> Decimal | None:
    """``part`` as a percentage of ``whole``, exactly rounded (half to even); None when whole is 0."""
    if whole == 0:
        return None
    return Decimal(round(Fraction(part * 100, whole) * 10**places)).scaleb(-places)


@dataclass(frozen=True, slots=True)
class DepartmentDrill:
    """One department's drill-down in one currency: its sums and its rows by model, user and time.

    A department is a tenant's: acme's ``research`` and globex's are two departments.
    """

    tenant: str
    name: str
    cost: Micros
    row: SpendRow
    models: list[SpendRow]
    users: Listed
    days: list[SpendRow]


@dataclass
class Dashboard:
    """The dashboard's reports for one query. ``cost`` values are integer micro-units."""

    query: DashQuery
    window: Window
    previous: Window
    now: datetime
    unit: str
    buckets: list[str]
    options: dict[str, list[str]]
    """Tenants, departments and models with calls in the window, whatever the filters."""
    spend: SpendReport
    """By tenant, department and model, beside by tenant, department and :attr:`unit`
    (:meth:`SpendReport.beside`): the charts, the model list and the drill-down."""
    users: dict[tuple[str, ...], Listed]
    """The top users per currency, ``(currency,)``: a user is a tenant's (two tenants' alice
    are two); and per department, ``(tenant, department, currency)``: :data:`TOP` each."""
    previous_totals: list[SpendRow]
    timing_by_time: PerfReport
    timing_by_model: PerfReport
    failures: list[FailureCount]
    budgets: list[BudgetStatus]
    unreadable_budgets: list[UnreadableBudget] = field(default_factory=list)
    """Budget rows in view the ledger cannot read (edited by hand in SQL): each is a gauge
    saying what to fix, and a warning."""
    department_keys: list[tuple[str, str]] = field(default_factory=list)
    """(department, tenant) with calls in the window, whatever the filters, in order: each
    keeps its place (and so its colour) whatever is filtered."""
    totals: list[SpendRow] = field(init=False)
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _drills: dict[str, list[DepartmentDrill]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.totals = self.spend.totals()

    @property
    def currencies(self) -> list[str]:
        return [t.currency for t in self.totals]

    @property
    def several_tenants(self) -> bool:
        """Whether the figures span more than one tenant: a name alone then says too little."""
        return len({row.label("tenant") for row in self.spend.rollup(["tenant"])}) > 1

    def counts(self) -> dict[str, int]:
        """Calls, errors, tokens and unpriced calls over every currency: counts, never money."""
        return {
            "requests": sum(t.requests for t in self.totals),
            "errors": sum(t.errors for t in self.totals),
            "input_tokens": sum(t.input_tokens for t in self.totals),
            "output_tokens": sum(t.output_tokens for t in self.totals),
            "unpriced_requests": sum(t.unpriced_requests for t in self.totals),
        }

    def previous_counts(self) -> dict[str, int]:
        return {
            "requests": sum(t.requests for t in self.previous_totals),
            "errors": sum(t.errors for t in self.previous_totals),
        }

    def previous_cost(self, currency: str) -> Micros:
        return sum((t.cost for t in self.previous_totals if t.currency == currency), Micros(0))

    def in_currency(self, rows: list[SpendRow], currency: str) -> list[SpendRow]:
        return [row for row in rows if row.currency == currency]

    def by_cost(self, rows: list[SpendRow], *names: str) -> list[SpendRow]:
        """Rows by descending cost, then ``names``: the order of every top list."""
        return sorted(rows, key=lambda r: (-r.cost, *(r.label(name) for name in names)))

    def top_users(self, currency: str) -> Listed:
        """Users in ``currency`` by cost, then name and tenant, the first :data:`TOP` of them."""
        return self.users.get((currency,)) or Listed(currency)

    def departments(self, currency: str) -> list[DepartmentDrill]:
        """Per (tenant, department) in ``currency``, by cost: its sums, models, users and days.

        Built once per currency (the page, the JSON's departments and its series each read
        them: 1.3 s a time for 1,000 departments of 20 users each)."""
        if (known := self._drills.get(currency)) is not None:
            return known
        # Each kind of row is split by department once: picking each department's rows out
        # of all of them made the work grow with the square of the departments.
        models = per_department(self.spend.rollup(["tenant", "department", "model"]), currency)
        days = per_department(self.spend.rollup(["tenant", "department", self.unit]), currency)
        rows = self.in_currency(self.spend.rollup(["tenant", "department"]), currency)
        drills = []
        for row in self.by_cost(rows, "department", "tenant"):
            key = (row.label("tenant"), row.label("department"))
            drills.append(
                DepartmentDrill(
                    tenant=key[0],
                    name=key[1],
                    cost=row.cost,
                    row=row,
                    models=self.by_cost(models.get(key, []), "model"),
                    users=self.users.get((*key, currency)) or Listed(currency),
                    days=days.get(key, []),
                )
            )
        self._drills[currency] = drills
        return drills

    def to_json(self) -> dict[str, Any]:
        """``/api/dash``: exact money as decimal strings, each with its currency.

        Built once (the gateway answers polls from one report for a few seconds): the same
        dict each time, to be read, not changed."""
        from ollama_meter.reports._dashboard_json import dashboard_json  # it builds on this module

        if self._json is None:
            self._json = dashboard_json(self)
        return self._json

    def requests_by_time(self) -> dict[str, dict[str, int]]:
        """Calls and errors per time bucket, every bucket present (0 where none)."""
        result = {label: {"requests": 0, "errors": 0} for label in self.buckets}
        for row in self.spend.rollup([self.unit]):
            cell = result[row.label(self.unit)]
            cell["requests"] += row.requests
            cell["errors"] += row.errors
        return result


def change(now: int, before: int) -> Decimal | None:
    """Percent change from ``before`` to ``now``; None when there was nothing before."""
    return None if before == 0 else share(now - before, before)


def budget_share(status: BudgetStatus) -> Decimal:
    """The share of its limit a budget spent, one decimal (a limit is never 0: 0.0 for none,
    which ``or`` would have taken for no share at all)."""
    used = share(status.spent, status.budget.limit)
    return Decimal("0.0") if used is None else used


def _shown(query: DashQuery, tenant: str | None, department: str | None) -> bool:
    """A budget line of ``tenant`` (``*``'s, one per tenant) and ``department`` is in the view."""
    return (
        query.tenant in (None, tenant, "*")
        and (query.department is None or department in (None, query.department))
        # A key's view holds its department's budgets only: a tenant's or everyone's
        # would show what the other departments spent.
        and (query.scope is None or query.scope == (tenant, department))
    )


def dashboard_report(
    ledger: Ledger,
    query: DashQuery,
    *,
    tz: ZoneInfo,
    now: datetime,
    budget_tz: ZoneInfo | None = None,
    top: int = TOP,
) -> Dashboard:
    """Every report the dashboard shows, for ``query`` as of ``now``.

    ``budget_tz``: where budget periods begin (the ledger's midnights, as the gate cuts
    them), when not ``tz``, the zone the reports are cut in. ``top``: the users listed per
    currency and per department (the others are one row of their sums)."""
    window = dash_window(query, tz=tz, now=now)
    previous = previous_window(window, tz=tz, now=now)
    unit = chart_unit(window)
    filters = query.filters()
    scoped = dict(zip(("tenant", "department"), query.scope, strict=True)) if query.scope else {}
    names = ["tenant", "department", "model"]
    # Summed by the database at the grains the page and the JSON read: by department and
    # model, and by department and time. By all four at once, 1,000 departments of a month
    # were 100,000 rows to build and sum again here (7 to 12 s for the first /api/dash).
    # One snapshot: a department's models, days and users add up to it. Users: the top ones
    # alone, ranked by the database (every one of 20,000 users' rows, built and sorted here,
    # was 1 s of CPU of the first answer at 1M spans).
    rankings = [
        Ranking(("tenant", "user"), (), ("user", "tenant"), top),
        Ranking(("tenant", "department", "user"), ("tenant", "department"), ("user",), top),
    ]
    (spend, by_time), ranked = spend_and_top(
        ledger, window, [names, ["tenant", "department", unit]], rankings, tz=tz, **filters
    )
    spend.beside(by_time)
    # The names with calls in the window whatever the filters: the same rows when nothing
    # but the key's own scope filters them.
    unfiltered = filters == {"tenant": None, "department": None, "model": None, **scoped}
    everything = spend if unfiltered else spend_report(ledger, window, names, tz=tz, **scoped)
    options = {
        name: sorted({row.label(name) for row in everything.rows})
        for name in ("tenant", "department", "model")
    }
    # A row edited by hand to what no budget can be is its own gauge saying what to fix,
    # not a 503 for the whole dashboard (``ometer budget status`` names it beside the rest).
    readable, unreadable = ledger.readable_budgets()
    budgets = [
        status
        for status in budget_status(ledger, tz=budget_tz or tz, now=now, budgets=readable)
        if _shown(query, status.tenant, status.budget.department)
    ]
    return Dashboard(
        query=query,
        window=window,
        previous=previous,
        now=now,
        unit=unit,
        buckets=[label for _, label in bucket_bounds(window, unit, tz)],
        options=options,
        spend=spend,
        users={
            part: listed
            for found, ranking in zip(ranked, rankings, strict=True)
            for part, listed in top_lists(found, ranking).items()
        },
        previous_totals=spend_report(ledger, previous, [], tz=tz, **filters).totals(),
        timing_by_time=perf_report(ledger, window, [], unit=unit, tz=tz, **filters),
        timing_by_model=perf_report(ledger, window, ["model"], **filters),
        failures=failures_report(ledger, window, **filters),
        budgets=budgets,
        unreadable_budgets=[
            b
            for b in unreadable
            if _shown(query, b.tenant, b.department)
            or (b.tenant == EACH_TENANT and _shown(query, query.tenant, b.department))
        ],
        department_keys=sorted(
            {(row.label("department"), row.label("tenant")) for row in everything.rows}
        ),
    )
