"""Gateway API keys: created once (shown once), stored hashed, compared in constant time.

A key maps to a tenant and department, and may vouch for its users: one fixed
user, or an allow-list of users its caller may name. Names follow the same
rules as tenants and departments, checked here for every way a key is made, and for
every row read back: one edited in SQL to a name the ledger refuses, a digest that is
none, or a date it cannot read is a :class:`LedgerError` naming the row (as budgets,
price rules and limits are, :mod:`._stored`), never a 500 or a call charged to it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, insert, or_, select, update

from ollama_meter._names import KEY_PREFIX, MAX_USER, name_problem
from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger._stored import read_records, readable_records
from ollama_meter.ledger.models import API_KEYS

_KEYS: Table = API_KEYS
_PREFIX = re.compile(r"[A-Za-z0-9_-]{8}")  # the first 8 characters of token_urlsafe's
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIX = "fix or delete the row in SQL (`ometer keys create` makes a new key)"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    tenant: str
    department: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    user: str | None = None
    """Every call with this key is charged to this user."""
    users: tuple[str, ...] = ()
    """The users a caller with this key may name in ``X-Ometer-User``; empty: any, unverified."""
    expires_at: datetime | None = None
    """From this instant the key is no live key (None: it lives until revoked)."""

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def vouches_for(self, user: str) -> bool:
        return user == self.user or user in self.users


def _hash(key: str) -> str:
    # Keys are 192 random bits: a plain digest is enough, no slow hash needed.
    return hashlib.sha256(key.encode()).hexdigest()


def _to_key(row: Any) -> ApiKey:
    """The key a row holds, as :func:`create_key` stores one; ValueError for a row that is not."""
    allowed = row.allowed_users
    if allowed is not None and not isinstance(allowed, str):
        raise ValueError(f"allowed_users {allowed!r} is not a list of names")
    users = tuple(allowed.split(",")) if allowed else ()
    user = row.user
    if user is not None and users:
        raise ValueError("it has both a user and allowed_users; a key has one or the other")
    if problem := _names_problem(
        row.name, row.tenant, row.department, (user,) if user is not None else users
    ):
        raise ValueError(problem)
    if not (isinstance(row.prefix, str) and _PREFIX.fullmatch(row.prefix)):
        raise ValueError(f"its prefix {row.prefix!r} is not the 8 characters a key starts with")
    if not (isinstance(row.key_hash, str) and _DIGEST.fullmatch(row.key_hash)):
        raise ValueError("its key_hash is not a SHA-256 digest (64 hex digits)")
    return ApiKey(
        row.id,
        row.name,
        row.tenant,
        row.department,
        row.prefix,
        row.created_at,
        row.revoked_at,
        user,
        users,
        row.expires_at,
    )


def _names_problem(name: str, tenant: str, department: str, users: tuple[str, ...]) -> str | None:
    for what, value, limit in (
        ("key name", name, 64),
        ("tenant name", tenant, 64),
        ("department name", department, 64),
        *(("user name", user, MAX_USER) for user in users),
    ):
        problem = name_problem(value, limit=limit)
        if problem:
            return f"{what} {problem}"
    return None


def _check_names(name: str, tenant: str, department: str, users: tuple[str, ...]) -> None:
    if problem := _names_problem(name, tenant, department, users):
        raise ValidationError(problem)


def _read(conn: Connection, *where: Any) -> list[ApiKey]:
    """The keys of the rows ``where`` picks, in id order; LedgerError for a row that holds none."""
    return _read_query(conn, select(_KEYS).where(*where).order_by(_KEYS.c.id))


def _read_query(
    conn: Connection, query: Select[Any], parameters: dict[str, Any] | None = None
) -> list[ApiKey]:
    return read_records(
        conn,
        _KEYS,
        query,
        _to_key,
        what=lambda row: f"key {row.id}",
        fix=lambda row: _FIX,
        parameters=parameters,
    )


# A gateway that requires keys reads one every call: its statements are made once (made with
# SQLAlchemy at every look-up, they took more than half of its CPU: 480 µs a look-up, now 205).
_LIVE = (
    _KEYS.c.revoked_at.is_(None),
    or_(_KEYS.c.expires_at.is_(None), _KEYS.c.expires_at > bindparam("now")),
)
_LIVE_WITH_PREFIX = select(_KEYS.c.id, _KEYS.c.key_hash).where(
    _KEYS.c.prefix == bindparam("prefix"), *_LIVE
)
_LIVE_WITH_ID = select(_KEYS).where(_KEYS.c.id == bindparam("key_id"), *_LIVE).order_by(_KEYS.c.id)


def create_key(
    conn: Connection,
    name: str,
    tenant: str,
    department: str,
    user: str | None,
    users: tuple[str, ...],
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key; the secret is returned here and never again.

    ``user`` fixes the user of every call; ``users`` lists those a caller may name;
    ``expires_at`` ends it (none: it lives until revoked).
    """
    if user is not None and users:
        raise ValidationError("give a key either one fixed user or a list of allowed users")
    users = tuple(dict.fromkeys(users))
    _check_names(name, tenant, department, (user,) if user is not None else users)
    secret = KEY_PREFIX + secrets.token_urlsafe(24)
    prefix = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    now = datetime.now(UTC)
    new = conn.execute(
        insert(_KEYS).values(
            name=name,
            tenant=tenant,
            department=department,
            prefix=prefix,
            key_hash=_hash(secret),
            created_at=now,
            user=user,
            allowed_users=",".join(users) or None,
            expires_at=expires_at,
        )
    ).inserted_primary_key
    assert new is not None
    made = ApiKey(int(new[0]), name, tenant, department, prefix, now, None, user, users, expires_at)
    return made, secret


def list_keys(conn: Connection) -> list[ApiKey]:
    return _read(conn)


def readable_keys(conn: Connection) -> tuple[list[ApiKey], list[str]]:
    """Every key whose row can be read, and the ledger's words on each row that cannot."""
    query = select(_KEYS).order_by(_KEYS.c.id)
    keys, broken = readable_records(
        conn, _KEYS, query, _to_key, what=lambda row: f"key {row.id}", fix=lambda row: _FIX
    )
    return keys, [why for _, why in broken]


def key_with_id(conn: Connection, key_id: int) -> ApiKey | None:
    """The key with this id, live or not; only its own row is read."""
    found = _read(conn, _KEYS.c.id == key_id)
    return found[0] if found else None


def live_key(conn: Connection, key_id: int) -> ApiKey | None:
    """The key with this id if it is live now (neither revoked nor expired)."""
    found = _read_query(conn, _LIVE_WITH_ID, {"key_id": key_id, "now": datetime.now(UTC)})
    return found[0] if found else None


def make_like(conn: Connection, old: ApiKey, expires_at: datetime | None) -> tuple[ApiKey, str]:
    """A new key in ``old``'s image (names, users, limits) that expires at ``expires_at``."""
    from ollama_meter.ledger._limits import copy_limits

    made = create_key(conn, old.name, old.tenant, old.department, old.user, old.users, expires_at)
    copy_limits(conn, old.id, made[0].id)
    return made


def retire_key(conn: Connection, key_id: int, grace: timedelta) -> ApiKey | None:
    """End the live key ``key_id`` ``grace`` from now (at once: revoked), never later than it
    would have ended; the key as it now is, or None if it was not live."""
    key = live_key(conn, key_id)
    if key is None:
        return None
    ends = datetime.now(UTC) + grace
    if grace <= timedelta(0):
        revoke_key(conn, key_id)
    elif key.expires_at is None or key.expires_at > ends:
        conn.execute(update(_KEYS).where(_KEYS.c.id == key_id).values(expires_at=ends))
    return key_with_id(conn, key_id)


def revoke_key(conn: Connection, key_id: int) -> bool:
    result = conn.execute(
        update(_KEYS)
        .where(_KEYS.c.id == key_id, _KEYS.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return result.rowcount > 0


def find_key(conn: Connection, secret: str) -> ApiKey | None:
    """The live key ``secret`` belongs to, or None. Revocation counts at once: no cache.

    Only the row the secret matches is read whole, so a row broken in SQL refuses its own
    key (LedgerError), never another's that shares its prefix; two live rows with one
    digest (a row copied to move a key) are refused too, not charged to whichever came last.
    """
    if not secret.startswith(KEY_PREFIX):
        return None
    prefix = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    digest = _hash(secret).encode()
    now = datetime.now(UTC)
    rows = conn.execute(_LIVE_WITH_PREFIX, {"prefix": prefix, "now": now}).all()
    # Every row compared, in constant time: bytes, as a hand-edited digest may not be ASCII.
    matched = [
        key_id
        for key_id, stored in rows
        if hmac.compare_digest(str(stored).encode(), digest) and isinstance(stored, str)
    ]
    if not matched:
        return None
    if len(matched) > 1:
        ids = sorted(matched)
        named = ", ".join(str(i) for i in ids[:-1]) + f" and {ids[-1]}"
        raise LedgerError(
            f"keys {named} in the ledger hold the same key; revoke all but one "
            "(`ometer keys revoke ID`)"
        )
    # Revoked since the read above (PostgreSQL reads each statement afresh): no key.
    found = _read_query(conn, _LIVE_WITH_ID, {"key_id": matched[0], "now": now})
    return found[0] if found else None
