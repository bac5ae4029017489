"""Who a gateway call is charged to: headers, then the API key, then the defaults (DESIGN §3).

With keys required the key decides the tenant and department, and a key can
vouch for its users (one fixed user, or an allow-list). A user that only a
header names, with no key vouching for it, is kept but tagged
``user_verified=false`` on the span.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from ollama_meter.config import Settings
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import ApiKey
from ollama_meter.meter import Attribution

HEADER_TENANT = "x-ometer-tenant"
HEADER_DEPARTMENT = "x-ometer-department"
HEADER_USER = "x-ometer-user"
HEADER_KEY = "x-ometer-key"
UNVERIFIED = {"user_verified": "false"}


class Forbidden(Exception):
    """The caller's key does not allow what the request asks (a user it does not vouch for)."""


def resolve(
    given: Headers,
    key: ApiKey | None,
    settings: Settings,
    *,
    require_key: bool,
    default_user: str | None = None,
) -> Attribution:
    """Attribution for a call; raises :class:`Forbidden` or ``ValidationError`` (names)."""
    headers = _once(given)
    if require_key and key is not None:
        # With keys required, the key decides: headers cannot move a call to another budget.
        tenant, department = key.tenant, key.department
    else:
        tenant = headers.get(HEADER_TENANT) or (key.tenant if key else settings.tenant)
        department = headers.get(HEADER_DEPARTMENT) or (
            key.department if key else settings.department
        )
    named = headers.get(HEADER_USER) or None
    tags: dict[str, str] = {}
    if key is not None and key.user is not None and (require_key or named is None):
        user: str | None = key.user
    elif named is None:
        user = default_user
    elif key is not None and key.vouches_for(named):
        user = named
    elif require_key and key is not None and key.users:
        raise Forbidden(
            f"this key may not call as user {named[:128]!r}; it allows {', '.join(key.users)}"
        )
    else:
        user, tags = named, UNVERIFIED
    return Attribution(tenant=tenant, department=department, user=user, tags=tags)


def vouched(key: ApiKey | None, settings: Settings, default_user: str | None = None) -> Attribution:
    """Who a call is charged to when its headers cannot be read (a name given twice or not a
    name, a user the key does not allow): what the key vouches for, its fixed user too, else
    the defaults. A refusal of a call with a key fixed to a user is that user's call."""
    if key is None:
        return Attribution(
            tenant=settings.tenant, department=settings.department, user=default_user
        )
    return Attribution(tenant=key.tenant, department=key.department, user=key.user)


def _once(headers: Headers) -> dict[str, str]:
    """The attribution headers, each given at most once: two would charge the call to whichever
    one a proxy on the way reads, so ``ValidationError``."""
    found: dict[str, str] = {}
    for name in (HEADER_TENANT, HEADER_DEPARTMENT, HEADER_USER):
        values = headers.getlist(name)
        if len(values) > 1:
            raise ValidationError(
                f"{name.title()} is given {len(values)} times; give it once, for one caller"
            )
        if values:
            found[name] = _as_sent(values[0])
    return found


def _as_sent(value: str) -> str:
    """A header's value as the client wrote it: HTTP reads a byte a character (Latin-1), and a
    name beyond ASCII (refused: names are ASCII) is UTF-8 from most clients, so an error then
    names ``'été'``, not ``'Ã©tÃ©'``."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode()
    except UnicodeError:  # no UTF-8 (or not bytes read as Latin-1): as it is
        return value
