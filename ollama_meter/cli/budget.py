"""``ometer budget ...``: caps per tenant or department, and where they stand."""

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress_bar import ProgressBar

from ollama_meter.cli._common import (
    Column,
    DbOption,
    JsonFlag,
    RowId,
    ledger_at,
    ledger_for,
    money,
    settings,
    table,
    utc_now,
)
from ollama_meter.cli._console import err, out, shown, write_data
from ollama_meter.errors import ValidationError
from ollama_meter.records import (
    DEFAULT_THRESHOLDS,
    PERIOD_ADVERB,
    Budget,
    format_micros,
    parse_limit,
    parse_thresholds,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ollama_meter.budgets import Alert, BudgetStatus
    from ollama_meter.ledger import Ledger

app = typer.Typer(help="Budgets: spending caps that refuse or alert.", no_args_is_help=True)

_STATE_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "refusing": "red",
    "over": "red",
    "exhausted": "bold red",
}


@app.command("set")
def set_budget(
    department: Annotated[
        str | None, typer.Argument(help="Department to cap; leave out for a tenant-wide cap.")
    ] = None,
    dept: Annotated[
        str | None,
        typer.Option("--dept", "--department", "-d", help="The department, as an option."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Tenant (default OMETER_TENANT).")
    ] = None,
    daily: Annotated[str | None, typer.Option("--daily", help="Limit per local day.")] = None,
    weekly: Annotated[str | None, typer.Option("--weekly", help="Limit per ISO week.")] = None,
    monthly: Annotated[str | None, typer.Option("--monthly", help="Limit per month.")] = None,
    soft: Annotated[bool, typer.Option("--soft", help="Only alert; never refuse calls.")] = False,
    thresholds: Annotated[
        str, typer.Option("--thresholds", help="Alert at these percentages of the limit.")
    ] = ",".join(str(t) for t in DEFAULT_THRESHOLDS),
    currency: Annotated[
        str | None, typer.Option("--currency", help="Currency (default OMETER_CURRENCY).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Cap a department's (or a whole tenant's) spend per day, week or month."""
    if dept is not None and department is not None and dept != department:
        raise ValidationError(
            f"two departments given ({department!r} and --dept {dept!r}); give one"
        )
    department = department if dept is None else dept
    cfg = settings(db_url=db, currency=currency, tenant=tenant)
    limits = {"day": daily, "week": weekly, "month": monthly}
    if all(value is None for value in limits.values()):  # '' was given: parse_limit says so
        raise ValidationError("give at least one of --daily, --weekly, --monthly")
    try:
        budgets = [
            Budget(
                tenant=cfg.tenant,
                department=department,
                period=period,
                limit=parse_limit(value, what=f"--{word}"),
                currency=cfg.currency,
                hard=not soft,
                thresholds=parse_thresholds(thresholds),
            )
            for (period, value), word in zip(
                limits.items(), ("daily", "weekly", "monthly"), strict=True
            )
            if value is not None
        ]
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    ledger = ledger_for(cfg)
    kept = []
    for budget in budgets:
        kept.append(saved := ledger.save_budget(budget))
        out.print(
            f"budget {saved.id}: {saved.scope()} {PERIOD_ADVERB[saved.period]} limit "
            f"{money(saved.limit, saved.currency)} ({saved.kind}, alerts at "
            f"{', '.join(f'{t}%' for t in saved.thresholds)})"
        )
    from ollama_meter.cli import _hints

    _hints.note_unused_scope(ledger, "budget", cfg.tenant, department)
    _hints.note_budgets(ledger, kept, cfg, utc_now())


def budget_to_dict(budget: Budget) -> dict[str, Any]:
    return {
        "id": budget.id,
        "tenant": budget.tenant,
        "department": budget.department,
        "period": budget.period,
        "limit": format_micros(budget.limit),
        "currency": budget.currency,
        "hard": budget.hard,
        "thresholds": list(budget.thresholds),
        "source": budget.source,
    }


def _readable(ledger: "Ledger") -> list[Budget]:
    """The budgets the ledger can read; each row it cannot (edited by hand in SQL) a note on
    stderr, so one such row hides no other budget."""
    budgets, unreadable = ledger.readable_budgets()
    for row in unreadable:
        err.print(f"note: {row.scope()}: {row.problem}")
    return budgets


@app.command("list")
def list_budgets(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Every budget, with its limit, kind and thresholds."""
    ledger = ledger_at(db, existing=True)
    budgets = _readable(ledger)
    if as_json:
        write_data(json.dumps([budget_to_dict(b) for b in budgets], indent=2) + "\n")
        return
    if not budgets:
        out.print("no budgets; add one with `ometer budget set DEPT --monthly 100`")
        return
    columns = [
        Column("id", numeric=True),
        Column("scope"),
        Column("period"),
        Column("limit", numeric=True),
        Column("kind"),
        Column("thresholds"),
        Column("source"),
    ]
    rows = [
        [
            str(b.id),
            b.scope(),
            b.period,
            money(b.limit, b.currency),
            b.kind,
            ",".join(map(str, b.thresholds)),
            b.source,
        ]
        for b in budgets
    ]
    out.print(table("budgets", columns, rows))


def alert_to_dict(alert: "Alert") -> dict[str, Any]:
    from ollama_meter.budgets import given_up

    return {
        "id": alert.id,
        "kind": alert.kind,
        "threshold": alert.threshold,
        "period_label": alert.period_label,
        "deliveries": dict(alert.deliveries),
        "runs": alert.attempts,
        "given_up": given_up(alert),
    }


def _undelivered_line(alert: "Alert") -> str:
    from ollama_meter.budgets import MAX_RUNS, given_up

    failed = [name for name, what in alert.deliveries.items() if not what.startswith("sent")]
    where = f"not delivered by {', '.join(failed)}" if failed else "not delivered yet"
    then = "given up" if given_up(alert) else "the next run tries again"
    what = "refused a call" if alert.kind == "refused" else f"crossed {alert.threshold}%"
    return (
        f"alert {alert.id}: budget {alert.budget_id} ({alert.scope}) {what} "
        f"in {alert.period} {alert.period_label}, {where} after {alert.attempts} of "
        f"{MAX_RUNS} runs; {then}"
    )


def status_to_dict(row: "BudgetStatus", undelivered: "Sequence[Alert]" = ()) -> dict[str, Any]:
    return {
        **budget_to_dict(row.budget),
        "tenant": row.tenant,
        "period_label": row.window.label,
        "period_start": row.window.start.isoformat().replace("+00:00", "Z"),
        "period_end": row.window.end.isoformat().replace("+00:00", "Z"),
        "spent": format_micros(row.spent),
        "held": format_micros(row.held),
        "percent": row.percent,
        "projected": format_micros(row.projected),
        "state": row.state,
        "uncounted": {currency: format_micros(m) for currency, m in row.uncounted},
        "capped": row.capped,
        "undelivered_alerts": [
            alert_to_dict(a)
            for a in undelivered
            if a.budget_id == row.budget.id and a.tenant == row.tenant
        ],
    }


BAR_CELLS = 10


def use_bar(spent: int, limit: int, style: str) -> ProgressBar:
    """``spent`` of ``limit`` as a bar of :data:`BAR_CELLS` cells, drawn by halves: any use
    at all is half a cell at least (under 5 % it drew nothing, as no use does)."""
    least = -(-limit // (2 * BAR_CELLS))  # one half-cell, rounded up
    shown = 0 if spent <= 0 else max(min(spent, limit), least)
    return ProgressBar(
        total=limit, completed=shown, width=BAR_CELLS, complete_style=style, finished_style=style
    )


@app.command("status")
def status(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Each budget's use this period: spent, share, bar, projection to period end, state."""
    from ollama_meter.budgets import budget_status
    from ollama_meter.meter._prices import ledger_zone

    cfg = settings(db_url=db)
    ledger = ledger_for(cfg, existing=True)
    budgets = _readable(ledger)
    rows = budget_status(ledger, tz=ledger_zone(ledger, cfg), now=utc_now(), budgets=budgets)
    undelivered = ledger.alerts(undelivered_only=True)
    if as_json:
        dicts = [status_to_dict(r, undelivered) for r in rows]
        write_data(json.dumps(dicts, indent=2) + "\n")
        return
    if not rows:
        out.print("no budgets; add one with `ometer budget set DEPT --monthly 100`")
        return
    currencies = {row.budget.currency for row in rows}
    heading = f" {next(iter(currencies))}" if len(currencies) == 1 else ""
    columns = [
        Column("id", numeric=True),
        Column("scope"),
        Column("period"),
        Column(f"spent{heading}", numeric=True),
        Column(f"limit{heading}", numeric=True),
        Column("used", numeric=True),
        Column("", width=10),
        Column(f"projected{heading}", numeric=True),
        Column("state"),
    ]
    per_row = not heading  # several currencies: each amount says its own
    lines = [
        [
            str(row.budget.id),
            row.budget.scope(row.tenant),
            f"{row.budget.period} {row.window.label}",
            money(row.spent, row.budget.currency if per_row else None),
            money(row.budget.limit, row.budget.currency if per_row else None),
            f"{row.percent}%",
            use_bar(row.spent, row.budget.limit, _STATE_STYLE[row.state]),
            money(row.projected, row.budget.currency if per_row else None),
            shown(row.state, _STATE_STYLE[row.state]),
        ]
        for row in rows
    ]
    out.print(table(f"budgets now ({cfg.timezone})", columns, lines))
    notes = (note for row in rows for note in (row.capped_note(), row.uncounted_note()))
    for note in filter(None, notes):
        out.print(shown(note, "yellow"))
    for alert in undelivered:  # an admin sees what no channel got
        out.print(shown(_undelivered_line(alert), "yellow"))


@app.command("rm")
def remove(budget_id: RowId, db: DbOption = None) -> None:
    """Remove a budget (its id from `ometer budget list`)."""
    ledger_at(db, existing=True).remove_budget(budget_id)
    out.print(f"removed budget {budget_id}")
