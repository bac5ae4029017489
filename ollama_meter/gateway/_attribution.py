"""Who a gateway call is charged to: headers, then the API key, then the defaults (DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from ollama_meter.config import Settings
from ollama_meter.ledger import Ledger
from ollama_meter.ledger._keys import ApiKey, find_key
from ollama_meter.meter import Attribution

HEADER_TENANT = "x-ometer-tenant"
HEADER_DEPARTMENT = "x-ometer-department"
HEADER_USER = "x-ometer-user"
HEADER_KEY = "x-ometer-key"


class Unauthorized(Exception):
    """No valid key where one is required."""


@dataclass(frozen=True, slots=True)
class Caller:
    attribution: Attribution
    key: ApiKey | None


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get(HEADER_KEY) or None


def resolve(
    request: Request,
    ledger: Ledger,
    settings: Settings,
    *,
    require_key: bool,
    default_user: str | None = None,
) -> Caller:
    """Attribution for ``request``; raises :class:`Unauthorized` or ``ValidationError`` (names)."""
    secret = presented_key(request)
    key = None
    if secret is not None:
        with ledger.read() as conn:
            key = find_key(conn, secret)
    if require_key and key is None:
        raise Unauthorized(
            "a valid API key is required: send `Authorization: Bearer <key>` (see `ometer keys create`)"
        )
    headers = request.headers
    if require_key:
        assert key is not None
        # With keys required, the key decides: headers cannot move a call to another budget.
        tenant, department = key.tenant, key.department
    else:
        tenant = headers.get(HEADER_TENANT) or (key.tenant if key else settings.tenant)
        department = headers.get(HEADER_DEPARTMENT) or (
            key.department if key else settings.department
        )
    user = headers.get(HEADER_USER) or default_user
    return Caller(Attribution(tenant=tenant, department=department, user=user), key)
