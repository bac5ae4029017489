"""What to say when a filter matched nothing, or a cap names what no call has: the names no span
has, and the near ones; or when a cap can never bind, another being as low or lower."""

from __future__ import annotations

from difflib import get_close_matches
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger
    from ollama_meter.periods import Window
    from ollama_meter.records import Budget, Limit, PriceRule


def unmatched(ledger: Ledger, **given: str | None) -> str:
    """The filters in ``given`` (tenant, department, user, model, status) that name what no span in
    the ledger has, with the names closest to each; "" when every name is known (the filters
    together, or the window, matched nothing)."""
    said = []
    for column, value in given.items():
        if value is None:
            continue
        what, known = column, ledger.names(column) if column != "status" else []
        if column == "status":  # `log --status` takes a status or an error type
            from ollama_meter.records import Status

            what = "status or error type"
            known = sorted({s.value for s in Status} | set(ledger.names("error_type")) - {"*"})
        named = value
        if column == "model":  # known as the one name each model counts under
            from ollama_meter.records import counted_model

            named = counted_model(value)
        if named in known:
            continue
        close = get_close_matches(named, known, n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        said.append(f"no span has {what} {shown(value)}{hint}")
    return "; ".join(said)


def note_unmatched(ledger: Ledger, **given: str | None) -> None:
    """After an answer with no rows: on stderr, the filters that name what no span has."""
    from ollama_meter.cli._console import err

    hint = unmatched(ledger, **given) if any(v is not None for v in given.values()) else ""
    if hint:
        err.print(f"note: {hint}")


def note_unused_scope(ledger: Ledger, what: str, tenant: str, department: str | None) -> None:
    """After a cap was set (a budget, a limit), or a key made: on stderr, a tenant or
    department no span has.

    The cap is kept (a new department's may come before its first call), but one on a typo
    (``salse``) binds no call while whoever set it thinks sales capped; a key for a typo
    charges every call to it, which no cap of sales binds."""
    from ollama_meter.cli._console import err

    if not ledger.names("tenant"):  # nothing recorded yet: every name is new, none a typo
        return
    hint = unmatched(ledger, tenant=tenant, department=department)
    if hint:
        then = f"the {what} binds no call until one names it"
        if what == "key":
            then = "the key charges its calls to it, which no cap on another name binds"
        err.print(f"note: {hint}: {then}")


def note_budgets(ledger: Ledger, saved: list[Budget], cfg: Settings, now: datetime) -> None:
    """After ``budget set``: on stderr, each budget row the ledger cannot read (edited by hand
    in SQL: the save worked, and its notes go on without that row), then
    :func:`note_unreached_budgets` and :func:`note_uncounted_spend` of the rest."""
    from ollama_meter.cli._console import err

    readable, unreadable = ledger.readable_budgets()
    for row in unreadable:
        err.print(f"note: {row.problem}")
    note_unreached_budgets(readable, saved)
    note_uncounted_spend(ledger, readable, saved, cfg, now)


def note_unreached_budgets(budgets: list[Budget], saved: list[Budget]) -> None:
    """On stderr, each of ``budgets`` whose limit can never be reached because a hard one
    over the same spend (a daily cap above the monthly cap) refuses first, where either is
    one just ``saved`` (:func:`~ollama_meter.records.unreached_notes`)."""
    from ollama_meter.cli._console import err
    from ollama_meter.records import unreached_notes

    for note in unreached_notes(budgets, {budget.id for budget in saved}):
        err.print(f"note: {note}")


def note_uncounted_spend(
    ledger: Ledger, budgets: list[Budget], saved: list[Budget], cfg: Settings, now: datetime
) -> None:
    """On stderr, what the scope of a budget just ``saved`` spent this period in another
    currency, which it cannot count: set again in the currency its rules changed to
    mid-month, it said 0 spent and capped the month afresh, without a word."""
    from ollama_meter.budgets import budget_status
    from ollama_meter.cli._console import err
    from ollama_meter.meter._prices import ledger_zone

    ids = {budget.id for budget in saved}
    zone = ledger_zone(ledger, cfg)
    for status in budget_status(ledger, tz=zone, now=now, budgets=budgets):
        if status.budget.id in ids and (note := status.uncounted_note()):
            err.print(f"note: {note}")


def note_unbound_limits(ledger: Ledger, saved: Limit) -> None:
    """After ``limit set``: on stderr, each limit row the ledger cannot read, then a
    department's caps that can never bind because its
    tenant's limit on all departments together is as low or lower (or, the tenant's just set,
    the departments' caps that no longer can)."""
    from ollama_meter.cli._console import err

    limits, unreadable = ledger.limits_in_force()
    for _, problem in unreadable:  # edited by hand in SQL: the save worked, the notes go on
        err.print(f"note: {problem}")
    nested = [
        (own, wide)
        for own in limits
        for wide in limits
        if saved.scope() in (own.scope(), wide.scope())
    ]
    for own, wide in nested:
        if caps := own.never_bound(wide):
            err.print(
                f"note: {', '.join(caps)} of {own.scope()} can never bind: {wide.scope()}'s "
                f"are as low or lower ({wide.describe()}), and count every call of it"
            )


def note_unmatched_rule(ledger: Ledger, rule: PriceRule) -> None:
    """After ``pricing set``: on stderr, a pattern that matches no model a span has. The rule
    is kept (a model may be priced before its first call), but one on a typo (``lama3.1:*``)
    prices nothing while the calls it was meant for stay unpriced."""
    from ollama_meter.cli._console import err

    models = ledger.names("model")
    if not models or any(rule.matches(model) for model in models):
        return
    close = get_close_matches(rule.pattern, models, n=3)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    err.print(
        f"note: no span has a model {shown(rule.pattern)} matches{hint}: the rule prices no "
        "call until one does"
    )


def note_tenants_summed(
    ledger: Ledger, window: Window, columns: list[str], *, tz: ZoneInfo, **filters: str | None
) -> None:
    """After a report grouped by department or user but not tenant: on stderr, the rows that
    sum the same name of several tenants (two tenants' ``research``), and how to see each.
    The rows stay as asked; a reader just cannot tell a summed one from the others."""
    from ollama_meter.cli._console import err
    from ollama_meter.reports import spend_report

    named = [c for c in columns if c in ("department", "user")]
    if not named or "tenant" in columns or filters.get("tenant") is not None:
        return
    split = spend_report(ledger, window, ["tenant", *columns], tz=tz, **filters)
    tenants: dict[tuple[str, ...], set[str]] = {}
    for row in split.rows:
        tenants.setdefault(tuple(row.label(c) for c in named), set()).add(row.label("tenant"))
    # A call that names no user has the name "" in no tenant: it is neither shared nor said.
    summed = {
        key: sorted(found) for key, found in sorted(tenants.items()) if len(found) > 1 and any(key)
    }
    if not summed:
        return
    how = f"add tenant to --by (--by {','.join(['tenant', *columns])}) to see each"

    def names(key: tuple[str, ...]) -> str:
        return " and ".join(f"{c} {shown(v)}" for c, v in zip(named, key, strict=True) if v)

    if len(summed) == 1:
        [(key, found)] = summed.items()
        verb = "is" if len(named) == 1 else "are"
        said = (
            f"{names(key)} {verb} in {len(found)} tenants ({', '.join(found)}), summed in one row"
        )
    else:
        listed = [f"{names(k)} in {', '.join(found)}" for k, found in list(summed.items())[:3]]
        more = f"; and {len(summed) - 3} more" if len(summed) > 3 else ""
        said = f"{len(summed)} rows sum several tenants ({'; '.join(listed)}{more})"
    err.print(f"note: {said}: {how}")


def shown(value: str) -> str:
    """A name as a note quotes it: its repr, cut when long."""
    return repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value):,} characters)"
