"""Gateway API keys: created once (shown once), stored hashed, compared in constant time.

A key maps to a tenant and department, and may vouch for its users: one fixed
user, or an allow-list of users its caller may name. Names follow the same
rules as tenants and departments, checked here for every way a key is made.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update

from ollama_meter._names import MAX_USER, name_problem
from ollama_meter.errors import ValidationError
from ollama_meter.ledger.models import ApiKeyRow

_KEYS: Table = ApiKeyRow.__table__  # type: ignore[assignment]
KEY_PREFIX = "om_"


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

    def vouches_for(self, user: str) -> bool:
        return user == self.user or user in self.users


def _hash(key: str) -> str:
    # Keys are 192 random bits: a plain digest is enough, no slow hash needed.
    return hashlib.sha256(key.encode()).hexdigest()


def _to_key(row: Any) -> ApiKey:
    return ApiKey(
        row.id,
        row.name,
        row.tenant,
        row.department,
        row.prefix,
        row.created_at,
        row.revoked_at,
        row.user,
        tuple(row.allowed_users.split(",")) if row.allowed_users else (),
    )


def _check_names(name: str, tenant: str, department: str, users: tuple[str, ...]) -> None:
    for what, value, limit in (
        ("key name", name, 64),
        ("tenant name", tenant, 64),
        ("department name", department, 64),
        *(("user name", user, MAX_USER) for user in users),
    ):
        problem = name_problem(value, limit=limit)
        if problem:
            raise ValidationError(f"{what} {problem}")


def create_key(
    conn: Connection,
    name: str,
    tenant: str,
    department: str,
    user: str | None,
    users: tuple[str, ...],
) -> tuple[ApiKey, str]:
    """A new key; the secret is returned here and never again.

    ``user`` fixes the user of every call; ``users`` lists those a caller may name.
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
        )
    ).inserted_primary_key
    assert new is not None
    return ApiKey(int(new[0]), name, tenant, department, prefix, now, None, user, users), secret


def list_keys(conn: Connection) -> list[ApiKey]:
    return [_to_key(row) for row in conn.execute(select(ApiKeyRow).order_by(ApiKeyRow.id))]


def revoke_key(conn: Connection, key_id: int) -> bool:
    result = conn.execute(
        update(_KEYS)
        .where(_KEYS.c.id == key_id, _KEYS.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return result.rowcount > 0


def find_key(conn: Connection, secret: str) -> ApiKey | None:
    """The live key ``secret`` belongs to, or None. Revocation counts at once: no cache."""
    if not secret.startswith(KEY_PREFIX):
        return None
    prefix = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    digest = _hash(secret)
    rows = conn.execute(
        select(ApiKeyRow).where(ApiKeyRow.prefix == prefix, ApiKeyRow.revoked_at.is_(None))
    ).all()
    found = None
    for row in rows:
        if hmac.compare_digest(row.key_hash, digest):
            found = _to_key(row)
    return found
