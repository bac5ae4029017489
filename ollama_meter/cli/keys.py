"""``ometer keys``: the gateway's API keys, made, listed, replaced and revoked."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from ollama_meter.cli._common import (
    Column,
    DbOption,
    DeptOption,
    JsonFlag,
    RowId,
    TenantOption,
    ledger_at,
    ledger_for,
    settings,
    table,
)
from ollama_meter.cli._console import err, out, write_data
from ollama_meter.errors import ValidationError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ollama_meter.ledger import ApiKey, Ledger

app = typer.Typer(
    help="Gateway API keys: each maps to a tenant and department.", no_args_is_help=True
)
_LENGTH = re.compile(r"(-?[0-9]{1,9})([dh])")
_UNIT = {"d": timedelta(days=1), "h": timedelta(hours=1)}
ExpiresOption = Annotated[
    str | None,
    typer.Option(
        "--expires",
        help="When the key stops working: a local date (YYYY-MM-DD, at its midnight) or a "
        "length from now (90d, 12h). Default: never (until revoked).",
    ),
]


def _length(text: str, what: str) -> timedelta | None:
    """``text`` as a length of time (``90d``, ``12h``), None if it is not written as one."""
    found = _LENGTH.fullmatch(text.strip())
    if found is None:
        return None
    number = int(found[1])
    if number <= 0:
        raise ValidationError(
            f"{what} {text.strip()} is no length of time: give a whole number of days or hours"
        )
    return number * _UNIT[found[2]]


def _expiry(text: str | None, tz: "ZoneInfo", now: datetime) -> datetime | None:
    """The instant ``--expires`` names, after ``now``; None when not given."""
    from ollama_meter.periods import LAST_DAY, LATEST, local_midnight, parse_day

    if text is None:
        return None
    if (length := _length(text, "--expires")) is not None:
        if length >= LATEST - now:
            raise ValidationError(
                f"--expires {text.strip()} is after the last day ometer works with ({LAST_DAY})"
            )
        return now + length
    if not re.fullmatch(r"\s*[0-9]{4}-[0-9]{2}-[0-9]{2}\s*", text):
        raise ValidationError(
            f"--expires {text!r} is neither a date (YYYY-MM-DD) nor a length such as 90d or 12h"
        )
    ends = local_midnight(parse_day(text, what="--expires"), tz)
    if ends <= now:
        raise ValidationError(
            f"--expires {text.strip()} is not after now: give a later date or a length"
        )
    return ends


def _grace(text: str) -> timedelta:
    if text.strip() in ("0", "0d", "0h"):
        return timedelta(0)
    length = _length(text, "--grace")
    if length is None:
        raise ValidationError(f"--grace {text!r} is not a length such as 0, 1h or 7d")
    return length


def _users(key: "ApiKey") -> str:
    if key.user:
        return f", user {key.user}"
    if key.users:
        return f", users {', '.join(key.users)}"
    return ""


def _when(at: datetime, tz: "ZoneInfo") -> str:
    return f"{at.astimezone(tz):%Y-%m-%d %H:%M} {tz.key}"


def _said(key: "ApiKey", tz: "ZoneInfo") -> str:
    ends = f", expires {_when(key.expires_at, tz)}" if key.expires_at else ""
    return f"key {key.id} ({key.name}) for {key.tenant}/{key.department}{_users(key)}{ends}"


def _show_once(ledger: "Ledger", key: "ApiKey", secret: str) -> None:
    """Print ``secret``; a key no one saw (stdout refused it, Ctrl-C) is revoked, and said so."""
    try:
        out.file.write(secret + "\n")
        out.file.flush()  # a full disk refuses it here, not at exit, once the key is live
    except BaseException:
        ledger.revoke_key(key.id)
        err.print(
            f"note: key {key.id} ({key.name}) is revoked: it could not be shown; run the command again"
        )
        raise


@app.command("create")
def create_key(
    tenant: TenantOption = None,
    dept: DeptOption = None,
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. crm-bot.")] = "key",
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Charge every call with this key to this user."),
    ] = None,
    allow_users: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-user",
            help="A user callers with this key may name in X-Ometer-User (repeat for more).",
        ),
    ] = None,
    expires: ExpiresOption = None,
    db: DbOption = None,
) -> None:
    """Create a key for a tenant and department; the key is printed once and stored hashed."""
    from ollama_meter.meter import Attribution

    cfg = settings(db_url=db, tenant=tenant, department=dept)
    who = Attribution(tenant=cfg.tenant, department=cfg.department)
    ends = _expiry(expires, cfg.tz, datetime.now(UTC))
    ledger = ledger_for(cfg)
    key, secret = ledger.create_key(
        name=name,
        tenant=who.tenant,
        department=who.department,
        user=user,
        users=tuple(allow_users or ()),
        expires_at=ends,
    )
    err.print(f"{_said(key, cfg.tz)}; it is shown only this once:")
    _show_once(ledger, key, secret)
    from ollama_meter.cli import _hints  # a typo'd name charges every call to it

    _hints.note_unused_scope(ledger, "key", key.tenant, key.department)


@app.command("rotate")
def rotate_key(
    key_id: RowId,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="How long the old key keeps working (0, 1h, 7d): time for its callers to "
            "switch. Default 0: it is revoked at once.",
        ),
    ] = "0",
    expires: ExpiresOption = None,
    db: DbOption = None,
) -> None:
    """Replace a live key: a new one with its tenant, department, users and limits is printed
    once, and the old one ends (at once, or after --grace)."""
    cfg = settings(db_url=db)
    now = datetime.now(UTC)
    ends, keep = _expiry(expires, cfg.tz, now), _grace(grace)
    ledger = ledger_for(cfg, existing=True)
    old, new, secret = ledger.replace_key(key_id, expires_at=ends)
    fate = "revoked now"
    if keep:
        until = now + keep if old.expires_at is None else min(old.expires_at, now + keep)
        fate = f"which expires {_when(until, cfg.tz)}"
    err.print(f"{_said(new, cfg.tz)} replaces key {old.id}, {fate}; it is shown only this once:")
    _show_once(ledger, new, secret)  # not shown: the new key is revoked, the old one as it was
    ledger.retire_key(old.id, keep)


@app.command("list")
def list_keys(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Every key (never the secret), live, expired or revoked."""
    cfg = settings(db_url=db)
    keys, unreadable = ledger_for(cfg, existing=True).readable_keys()
    now = datetime.now(UTC)
    for problem in unreadable:  # edited by hand in SQL: named, and no other key hidden
        err.print(f"note: {problem}")
    if as_json:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "tenant": k.tenant,
                "department": k.department,
                "user": k.user,
                "allowed_users": list(k.users),
                "prefix": k.prefix,
                "created_at": k.created_at.isoformat(),
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "revoked": k.revoked_at is not None,
                "expired": k.revoked_at is None and not k.live(now),
            }
            for k in keys
        ]
        write_data(json.dumps(rows, indent=2) + "\n")
        return
    columns = [
        Column("id", numeric=True),
        Column("name"),
        Column("tenant/dept"),
        Column("users"),
        Column("prefix"),
        Column("created"),
        Column("state"),
    ]
    cells = [
        [
            str(k.id),
            k.name,
            f"{k.tenant}/{k.department}",
            k.user or ", ".join(k.users) or "any (unverified)",
            f"om_{k.prefix}…",
            f"{k.created_at:%Y-%m-%d}",
            _state(k, now, cfg.tz),
        ]
        for k in keys
    ]
    none = "no keys; create one with `ometer keys create --name NAME --dept D`"
    out.print(table("gateway keys", columns, cells, caption=None if cells else none))


def _state(key: "ApiKey", now: datetime, tz: "ZoneInfo") -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is None:
        return "live"
    return f"live until {_when(key.expires_at, tz)}" if key.live(now) else "expired"


@app.command("revoke")
def revoke_key(key_id: RowId, db: DbOption = None) -> None:
    """Revoke a key (its id from `ometer keys list`): the gateway refuses it from the next request on."""
    ledger_at(db, existing=True).revoke_key(key_id)
    out.print(f"revoked key {key_id}")
