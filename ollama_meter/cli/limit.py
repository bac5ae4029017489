"""``ometer limit ...``: how fast and how much a department (or tenant, or key) may call."""

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter.cli._common import Column, DbOption, JsonFlag, ledger_at, settings, table
from ollama_meter.cli._console import err, out, write_data
from ollama_meter.errors import ValidationError
from ollama_meter.records import Limit, values_of

if TYPE_CHECKING:
    from ollama_meter.ledger import Ledger

app = typer.Typer(
    help="Limits per department: calls and tokens per minute, concurrency, share of slots.",
    no_args_is_help=True,
)

DeptArgument = Annotated[
    str | None,
    typer.Argument(help="Department; leave out for the whole tenant (all its departments)."),
]
TenantOption = Annotated[
    str | None, typer.Option("--tenant", "-t", help="Tenant (default OMETER_TENANT).")
]
KeyOption = Annotated[
    int | None,
    typer.Option("--key", help="An API key's own limits (id from `ometer keys list`)."),
]


def _scope(department: str | None, tenant: str | None, key: int | None, db: str | None) -> Limit:
    if key is not None and (department is not None or tenant is not None):
        raise ValidationError("give either --key or a department/--tenant, not both")
    cfg = settings(db_url=db, tenant=tenant)
    return Limit(tenant=cfg.tenant, department=department, key_id=key)


@app.command("set")
def set_limit(
    department: DeptArgument = None,
    tenant: TenantOption = None,
    key: KeyOption = None,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Calls per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="Tokens (in + out) per minute.")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", help="Calls holding a slot at once; more wait their turn."),
    ] = None,
    weight: Annotated[
        int | None,
        typer.Option("--weight", help="Share of slots when calls queue (default 1)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Set limits; options left out keep their value. Gateways apply them within 10 s."""
    if rpm is None and tpm is None and concurrency is None and weight is None:
        raise ValidationError("give at least one of --rpm, --tpm, --concurrency, --weight")
    scope = _scope(department, tenant, key, db)
    limit = replace(scope, rpm=rpm, tpm=tpm, concurrency=concurrency, weight=weight)
    ledger = ledger_at(db)
    saved = ledger.set_limit(limit)
    out.print(f"limits for {saved.scope()}: {saved.describe()}")
    if key is None:  # a key's scope is the key's own, named when it was made
        from ollama_meter.cli import _hints

        _hints.note_unused_scope(ledger, "limit", scope.tenant, department)
        _hints.note_unbound_limits(ledger, saved)


@app.command("rm")
def remove_limit(
    department: DeptArgument = None,
    tenant: TenantOption = None,
    key: KeyOption = None,
    db: DbOption = None,
) -> None:
    """Remove every limit of a department, tenant or key."""
    scope = _scope(department, tenant, key, db)
    ledger_at(db, existing=True).remove_limit(scope.tenant, department, key)
    out.print(f"removed the limits of {scope.scope() if key is None else f'key {key}'}")


def _readable(ledger: "Ledger") -> list[Limit]:
    """The limits the ledger can read; each row it cannot (edited by hand in SQL) a note on
    stderr, so one such row hides no other limit."""
    limits, unreadable = ledger.limits_in_force()
    for _, problem in unreadable:
        err.print(f"note: {problem}")
    return limits


@app.command("list")
def list_limits(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Every limit, per tenant, department and key."""
    limits = _readable(ledger_at(db, existing=True))
    if as_json:
        rows = [
            values_of(lim, updated_at=lim.updated_at.isoformat() if lim.updated_at else None)
            for lim in limits
        ]
        write_data(json.dumps(rows, indent=2) + "\n")
        return
    columns = [
        Column("scope"),
        Column("calls/min", numeric=True),
        Column("tokens/min", numeric=True),
        Column("at once", numeric=True),
        Column("weight", numeric=True),
    ]

    def cell(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    cells = [
        [lim.scope(), cell(lim.rpm), cell(lim.tpm), cell(lim.concurrency), cell(lim.weight)]
        for lim in limits
    ]
    caption = "counted per gateway process; - = not limited (weight: 1)" if limits else "no limits"
    out.print(table("limits", columns, cells, caption=caption))
