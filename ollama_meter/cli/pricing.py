"""``ometer pricing ...`` and ``ometer reprice``: price rules and re-pricing the ledger."""

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

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
from ollama_meter.cli._console import err, named, out, write_data
from ollama_meter.cli._files import STDIN, file_to_read, stdin_bytes
from ollama_meter.cli._stopped import tallied
from ollama_meter.errors import PricingError, ValidationError
from ollama_meter.periods import FIRST_DAY, local_midnight, parse_day, window_between
from ollama_meter.records import PRICE_FIELDS, PriceRule, parse_amount

app = typer.Typer(help="Price rules: what calls to each model cost.", no_args_is_help=True)


def _amount(value: str | None, flag: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_amount(value, what=flag)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


@app.command("set")
def set_rule(
    pattern: Annotated[str, typer.Argument(help="Model name or glob, e.g. 'llama3.1:*' or '*'.")],
    input_per_1m: Annotated[
        str | None, typer.Option("--input-per-1m", help="Price per 1M input tokens.")
    ] = None,
    output_per_1m: Annotated[
        str | None, typer.Option("--output-per-1m", help="Price per 1M output tokens.")
    ] = None,
    gpu_hour: Annotated[
        str | None, typer.Option("--gpu-hour", help="Price per GPU-hour of Ollama busy time.")
    ] = None,
    watts: Annotated[
        str | None, typer.Option("--watts", help="Average power draw while busy (W).")
    ] = None,
    kwh_price: Annotated[
        str | None, typer.Option("--kwh-price", help="Electricity price per kWh.")
    ] = None,
    per_request: Annotated[
        str | None, typer.Option("--per-request", help="Fee per request.")
    ] = None,
    fee_per_1m: Annotated[
        str | None, typer.Option("--fee-per-1m", help="Fee per 1M tokens (in + out).")
    ] = None,
    charge_load: Annotated[
        bool, typer.Option("--charge-load", help="Also charge model load time.")
    ] = False,
    currency: Annotated[
        str | None, typer.Option("--currency", help="ISO currency (default OMETER_CURRENCY).")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="In force from this local date (YYYY-MM-DD).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="In force until this local date, exclusive.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Add a price rule. The most specific pattern wins; a later --from supersedes."""
    cfg = settings(db_url=db, currency=currency)
    given = {
        "input_per_1m": input_per_1m,
        "output_per_1m": output_per_1m,
        "gpu_hour": gpu_hour,
        "watts": watts,
        "kwh_price": kwh_price,
        "per_request": per_request,
        "fee_per_1m": fee_per_1m,
    }
    prices: dict[str, Any] = {
        name: _amount(value, "--" + name.replace("_", "-")) for name, value in given.items()
    }
    try:
        rule = PriceRule(
            pattern=pattern,
            currency=cfg.currency,
            charge_load=charge_load,
            effective_from=parse_day(start, what="--from") if start else None,
            effective_until=parse_day(until, what="--until") if until else None,
            **prices,
        )
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if rule.effective_until is not None and rule.effective_until <= FIRST_DAY:
        raise ValidationError(
            f"--until {rule.effective_until} ends the rule before the first day ometer works "
            f"with ({FIRST_DAY}), so it would price no call; give a later date"
        )
    ledger = ledger_for(cfg)
    ((saved, new),) = ledger.add_price_rules([rule])
    parts = ", ".join(f"{name} {value:f}" for name, value in saved.prices().items())
    out.print(
        f"rule {saved.id}: {saved.pattern} → {parts} {saved.currency}"
        + (", load time charged" if saved.charge_load else "")
        + (f" from {saved.effective_from}" if saved.effective_from else "")
        + (f" until {saved.effective_until}" if saved.effective_until else "")
        + ("" if new else " (already there)")
    )
    from ollama_meter.cli import _hints

    _hints.note_unmatched_rule(ledger, saved)


def rule_to_dict(rule: PriceRule) -> dict[str, object]:
    data: dict[str, object] = {"id": rule.id, "pattern": rule.pattern, "currency": rule.currency}
    data.update(
        {
            name: (f"{v:f}" if (v := getattr(rule, name)) is not None else None)
            for name in PRICE_FIELDS
        }
    )
    data.update(
        charge_load=rule.charge_load,
        effective_from=rule.effective_from.isoformat() if rule.effective_from else None,
        effective_until=rule.effective_until.isoformat() if rule.effective_until else None,
        source=rule.source,
    )
    return data


@app.command("list")
def list_rules(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Show every price rule."""
    from ollama_meter.pricing import sort_rules

    readable, unreadable = ledger_at(db, existing=True).readable_price_rules()
    for broken in unreadable:  # edited by hand in SQL: named, and no other rule hidden
        err.print(f"note: {broken.problem}")
    rules = sort_rules(readable)
    if as_json:
        write_data(json.dumps([rule_to_dict(r) for r in rules], indent=2) + "\n")
        return
    if not rules:
        out.print(
            "no price rules: every call is unpriced. Add one with `ometer pricing set 'MODEL*' ...`"
        )
        return
    names = ["id", "pattern", "currency", *PRICE_FIELDS, "charge_load", "from", "until", "source"]
    numeric = {"id", *PRICE_FIELDS}
    columns = [Column(name.replace("_", " "), numeric=name in numeric) for name in names]
    rows = []
    for rule in rules:
        row = rule_to_dict(rule)
        rows.append(
            [
                str(rule.id),
                rule.pattern,
                rule.currency,
                *[str(row[name] or "") for name in PRICE_FIELDS],
                "yes" if rule.charge_load else "",
                str(row["effective_from"] or ""),
                str(row["effective_until"] or ""),
                rule.source,
            ]
        )
    out.print(table("price rules", columns, rows))


@app.command("rm")
def remove_rule(rule_id: RowId, db: DbOption = None) -> None:
    """Remove a price rule (its id from `ometer pricing list`).

    Spans already priced keep their cost until `ometer reprice`.
    """
    ledger_at(db, existing=True).remove_price_rule(rule_id)
    out.print(f"removed rule {rule_id}")


@app.command("import")
def import_rules(
    file: Annotated[
        Path,
        typer.Argument(
            # Help is rich markup, where [rule] is a style: the \\ keeps the brackets shown.
            help="TOML file with [\\[rule]] tables (at most 10 MiB), a pipe: <(command), or - "
            "for stdin.",
            parser=file_to_read,
        ),
    ],
    db: DbOption = None,
) -> None:
    """Add every rule in a TOML file (see README for the format)."""
    from ollama_meter._paths import read_bounded
    from ollama_meter.pricing import MAX_PRICING_BYTES, parse_pricing_toml, pricing_text

    cfg = settings(db_url=db)
    try:
        if file == STDIN:
            piped = stdin_bytes(
                "pricing file", "ometer pricing import", "curl URL | ometer pricing import -"
            )
            content = read_bounded(piped, limit=MAX_PRICING_BYTES, what="pricing file")
            file = Path("stdin")
        else:
            content = read_bounded(file, limit=MAX_PRICING_BYTES, what="pricing file")
        rules = parse_pricing_toml(
            pricing_text(content, file), default_currency=cfg.currency, source="cli"
        )
    except ValueError as exc:
        raise PricingError(f"{file}: {exc}") from None
    added = ledger_for(cfg).add_price_rules(rules)
    new = sum(is_new for _, is_new in added)
    same = f" ({len(added) - new} already there)" if new < len(added) else ""
    out.print(f"imported {new} new rule(s) from {named(file)}{same}")


def reprice_command(
    since: Annotated[
        str,
        typer.Option(
            "--since",
            help="Re-price spans from this date (YYYY-MM-DD), in the ledger's zone as rule dates.",
        ),
    ],
    until: Annotated[
        str | None, typer.Option("--until", help="Through this date (inclusive).")
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            "--batch", min=1, max=100_000, help="Spans re-priced per transaction (a page)."
        ),
    ] = 2000,
    db: DbOption = None,
) -> None:
    """Recompute recorded costs with today's price rules and say how much moved."""
    from ollama_meter.ledger import SpanFilter
    from ollama_meter.meter import PriceSource, reprice

    cfg = settings(db_url=db)
    _window(since, until, cfg.tz)  # a date no one can read is refused before the ledger is opened
    ledger = ledger_for(cfg, existing=True)  # what was recorded: none is nothing to reprice
    prices = PriceSource(ledger, settings=cfg)
    book = prices.load()
    # The dates are read where the rules' --from/--until are (the ledger's midnights): from
    # this host's OMETER_TIMEZONE, 'reprice --since' a rule's first day left out the calls
    # between the two midnights, priced by the rule before while the rules said the new one.
    start, end = _window(since, until, book.tz)
    total = ledger.count(SpanFilter(since=start, until=end))
    with tallied(
        "re-pricing",
        lambda done: (
            f"stopped after re-pricing {done:,} of {total:,} span(s), the page in progress not "
            "(the rollups follow each page); run the same reprice again for the rest (spans "
            "already re-priced do not move again)"
        ),
        total=total,
    ) as tally:
        summary = reprice(
            ledger,
            book,
            since=start,
            until=end,
            batch=batch,
            progress=tally.add,
            reload=prices.load,
        )
    span = f"since {since}" if until is None else f"from {since} through {until}"
    out.print(f"examined {summary.examined} span(s) {span}; {summary.changed} changed")
    for currency, delta in summary.delta().items():
        sign = "+" if delta >= 0 else "-"
        out.print(
            f"  {currency}: {money(summary.before[currency])} → {money(summary.after[currency])} "
            f"({sign}{money(abs(delta))})"
        )
    if summary.newly_priced or summary.newly_unpriced:
        out.print(f"  {summary.newly_priced} newly priced, {summary.newly_unpriced} now unpriced")
    if summary.pruned_before is not None:
        err.print(
            f"warning: spans that started before {summary.pruned_before:%Y-%m-%d %H:%M} UTC were "
            "pruned: their days keep the costs they were recorded with (only rollups are left)"
        )


def _window(since: str, until: str | None, tz: ZoneInfo) -> tuple[datetime, datetime | None]:
    """From ``since``'s midnight in ``tz``, through ``until`` or with no end."""
    if until is not None:  # given empty: refused, not "from that day on"
        window = window_between(since, until, tz=tz, now=utc_now())
        return window.start, window.end
    return local_midnight(parse_day(since, what="--since", tz=tz), tz), None  # whatever its date
