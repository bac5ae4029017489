"""Who a gateway call is charged to: headers, then the API key, then the defaults (DESIGN §3).

With keys required the key decides the tenant and department, and a key can
vouch for its users (one fixed user, or an allow-list). A user that only a
header names, with no key vouching for it, is kept but tagged
``user_verified=false`` on the span.

A call's tags come in ``X-Ometer-Tags`` (a JSON object of text to text), with a key or
without: they are labels, not who pays. They follow the rules of tags given any other way;
``user_verified`` is the gateway's own word, never a caller's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers

from ollama_meter._names import CLIENT_SPAN_TAG, HOLDS_KEY, UNVERIFIED_TAG, holds_key
from ollama_meter.config import Settings
from ollama_meter.errors import ValidationError
from ollama_meter.ledger import ApiKey
from ollama_meter.meter import Attribution
from ollama_meter.meter._attribution import shown_key, tags_problem
from ollama_meter.records import trace_parent
from ollama_meter.records._trace import TRACEPARENT, TRACESTATE
from ollama_meter.upstream._recorded import CLIENT_SPAN_HEADER, TAGS_HEADER, TAGS_PARTS, tags_part

HEADER_TENANT = "x-ometer-tenant"
HEADER_DEPARTMENT = "x-ometer-department"
HEADER_USER = "x-ometer-user"
HEADER_TAGS = TAGS_HEADER.lower()
TAGS_PARTS_HEADERS = tuple(tags_part(n).lower() for n in range(1, TAGS_PARTS + 1))
"""The tags' headers: ``X-Ometer-Tags``, then its parts (``X-Ometer-Tags-2``...)."""
_ATTRIBUTION = (HEADER_TENANT, HEADER_DEPARTMENT, HEADER_USER, *TAGS_PARTS_HEADERS)
HEADER_KEY = "x-ometer-key"
_SPAN_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
"""A span id as ometer makes one (a ULID): ``X-Ometer-Client-Span`` naming anything else is
not noted."""
UNVERIFIED = {UNVERIFIED_TAG: "false"}
MAX_TAGS_BYTES = 64 * 1024
"""The longest ``X-Ometer-Tags`` read (its parts together), as long as the server's default for all the headers
(``--max-header-bytes``), parsed on the event loop in about a millisecond at worst: 64 tags
of 256 ASCII characters take 21 KB (a character beyond ASCII, escaped, 6 bytes; 12 past
U+FFFF). Past it the header is refused unread, whatever the server takes."""


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
    ours = [(name, value) for name, value in given.raw if name.startswith(b"x-ometer-")]
    if not ours and key is None:  # nothing names anyone: the defaults (made once, checked once)
        return _unkeyed(settings.tenant, settings.department, default_user)
    headers = _once(ours)
    keyed = require_key and key is not None
    for name in (HEADER_USER,) if keyed else (HEADER_TENANT, HEADER_DEPARTMENT, HEADER_USER):
        if name in headers and not headers[name].strip():  # `X-Ometer-Department: $DEPT`, unset
            raise ValidationError(
                f"{name.title()} is empty: name the {name.rsplit('-', 1)[1]}, or leave the "
                "header out for the default"
            )
    if require_key and key is not None:
        # With keys required, the key decides: headers cannot move a call to another budget.
        tenant, department = key.tenant, key.department
    else:
        tenant = headers.get(HEADER_TENANT) or (key.tenant if key else settings.tenant)
        department = headers.get(HEADER_DEPARTMENT) or (
            key.department if key else settings.department
        )
    named = headers.get(HEADER_USER) or None
    if named is not None and holds_key(named):  # before any message that would show it
        raise ValidationError(f"user name {HOLDS_KEY}")
    labels = _tags([headers[name] for name in TAGS_PARTS_HEADERS if name in headers])
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
    return Attribution(
        tenant=tenant,
        department=department,
        user=user,
        tags={**labels, **tags, **_client_span(given)},
    )


def _client_span(headers: Headers) -> dict[str, str]:
    """The client's own span of the call, noted on the gateway's (:data:`CLIENT_SPAN_TAG`),
    when ``X-Ometer-Client-Span`` names one, once. The caller's word, and only ever read to
    spare a dead client's interrupted copy of a call this gateway recorded, charged alike."""
    given = headers.getlist(CLIENT_SPAN_HEADER)
    if len(given) == 1 and _SPAN_ID.fullmatch(given[0]):
        return {CLIENT_SPAN_TAG: given[0]}
    return {}


def in_trace(charged: Attribution, headers: Headers) -> Attribution:
    """``charged`` with the caller's span of the call, when its W3C ``traceparent`` names one
    (``records.trace_parent``: anything else is no parent, never an error)."""
    parent = trace_parent(headers.getlist(TRACEPARENT), headers.getlist(TRACESTATE))
    return charged if parent is None else dataclasses.replace(charged, parent=parent)


def vouched(key: ApiKey | None, settings: Settings, default_user: str | None = None) -> Attribution:
    """Who a call is charged to when its headers cannot be read (a name given twice or not a
    name, a user the key does not allow): what the key vouches for, its fixed user too, else
    the defaults. A refusal of a call with a key fixed to a user is that user's call."""
    if key is None:
        return _unkeyed(settings.tenant, settings.department, default_user)
    return Attribution(tenant=key.tenant, department=key.department, user=key.user)


@functools.lru_cache(maxsize=64)  # the defaults, at every call: their names checked once
def _unkeyed(tenant: str, department: str, user: str | None) -> Attribution:
    # Shared by every call charged to them: no tags, and none to add in place.
    return Attribution(tenant=tenant, department=department, user=user, tags=_NO_TAGS)


_NO_TAGS: Mapping[str, str] = types.MappingProxyType({})


def _once(ours: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The attribution headers, each given at most once: two would charge the call to whichever
    one a proxy on the way reads, so ``ValidationError``. ``ours``: the request's headers that
    are ometer's, as they came (names in lower case), read in one pass: not a look through all
    of them for each of the nineteen names (each name encoded again at every call)."""
    given: dict[str, list[bytes]] = {}
    for raw_name, value in ours:
        if (name := _ATTRIBUTION_NAMES.get(raw_name)) is not None:
            given.setdefault(name, []).append(value)
    found: dict[str, str] = {}
    for name in sorted(given, key=_ATTRIBUTION_ORDER.__getitem__):  # the first twice is named
        values = given[name]
        if len(values) > 1:
            raise ValidationError(
                f"{name.title()} is given {len(values)} times; give it once, for one caller"
            )
        found[name] = _as_sent(values[0].decode("latin-1"))  # as Starlette reads a value
    return found


_ATTRIBUTION_NAMES = {name.encode(): name for name in _ATTRIBUTION}
_ATTRIBUTION_ORDER = {name: at for at, name in enumerate(_ATTRIBUTION)}


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


class _Twice(Exception):
    """A JSON object gives one key twice (Python keeps the last; a proxy's reader may not)."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, item in pairs:
        if key in found:
            raise _Twice(key)
        found[key] = item
    return found


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}


def _tags(parts: list[str]) -> dict[str, str]:
    """The tags ``X-Ometer-Tags`` and its parts give (none when absent or blank);
    ``ValidationError`` naming the header when they are not JSON objects of tags a call may
    carry, each tag given once."""
    parts = [part for part in parts if part.strip()]
    if not parts:
        return {}
    size = sum(map(len, parts))
    if size > MAX_TAGS_BYTES:
        raise ValidationError(
            f"{TAGS_HEADER} is {size:,} bytes; the gateway reads at most "
            f"{MAX_TAGS_BYTES:,}: send fewer or shorter tags"
        )
    tags: dict[str, Any] = {}
    for part in parts:
        tags = _merged(tags, _object(part))
    if UNVERIFIED_TAG in tags:
        raise ValidationError(
            f"{TAGS_HEADER} sets {UNVERIFIED_TAG}, the gateway's own tag (whether a key vouches "
            "for the call's user); name yours otherwise"
        )
    if CLIENT_SPAN_TAG in tags:
        raise ValidationError(
            f"{TAGS_HEADER} sets {CLIENT_SPAN_TAG}, the gateway's own tag (the client's span of "
            f"the call, from {CLIENT_SPAN_HEADER}); name yours otherwise"
        )
    problem = tags_problem(tags)
    if problem:
        raise ValidationError(f"{TAGS_HEADER}: {problem}")
    return tags


def _object(value: str) -> dict[str, Any]:
    """The JSON object one of the tags' headers gives, each key once."""
    example = 'send a JSON object of text to text, e.g. {"job": "nightly"}'
    try:
        tags = json.loads(_as_sent(value), object_pairs_hook=_once_each)
    except _Twice as twice:
        raise ValidationError(
            f"{TAGS_HEADER} gives {shown_key(twice.args[0])} twice; give each tag once"
        ) from None
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise ValidationError(f"{TAGS_HEADER} is not JSON; {example}") from None
    if not isinstance(tags, dict):
        what = _JSON_TYPES.get(type(tags), json.dumps(tags))  # true, false, null
        raise ValidationError(f"{TAGS_HEADER} is {what}, not a JSON object; {example}")
    return tags


def _merged(tags: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``tags`` and ``more``, from two of the tags' headers: a tag in both is refused."""
    if not tags:
        return more
    twice = next((key for key in more if key in tags), None)
    if twice is not None:
        raise ValidationError(f"{TAGS_HEADER} gives {shown_key(twice)} twice; give each tag once")
    return {**tags, **more}
