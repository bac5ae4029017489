"""Rules for tenant, department, user and time zone names, shared by settings, the meter and the ledger."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
MAX_NAME = 64
MAX_USER = 128
NO_TENANT, NO_DEPARTMENT = "default", "unassigned"
"""The names a call is charged to when nothing names its tenant or department."""
UNVERIFIED_TAG = "user_verified"
"""The gateway's mark on a span whose user no key vouches for (``"false"``): its word beside
a caller's tags, not one of them (a caller's 64 through a gateway are kept with it). A
client's own tag of that name is not sent to a gateway, which refuses a header that sets it."""
CLIENT_SPAN_TAG = "ometer.client_span"
"""The gateway's note on its span of the call an ometer client named its own span id for
(``X-Ometer-Client-Span``): that client, killed before any answer, is not recorded again as
interrupted (``meter/_recovery.py``). Like :data:`UNVERIFIED_TAG`, not one of a caller's tags."""


def origin_of(span_id: str, tags: Mapping[str, str]) -> str:
    """The id a call goes by along a chain of meters (an ometer client, then gateways): its
    client's span, noted (:data:`CLIENT_SPAN_TAG`), else its own ``span_id``. A gateway names
    it onward, so the last gateway's span notes the client's, and each meter finds it by it."""
    return tags.get(CLIENT_SPAN_TAG) or span_id


KEY_PREFIX = "om_"
"""How a gateway API key starts: then 32 characters of ``secrets.token_urlsafe(24)``."""
_KEY_IN_TEXT = re.compile(rf"(?<![A-Za-z0-9]){KEY_PREFIX}[A-Za-z0-9_-]{{32}}")
HOLDS_KEY = (
    "holds a gateway API key (om_...), which would be stored and shown in clear (the ledger "
    "keeps keys only as digests): a key goes in X-Ometer-Key or Authorization, never in a name"
)
"""Why a name or tag holding a key is refused: said without the key."""


def holds_key(text: str) -> bool:
    """Whether ``text`` holds a gateway API key anywhere (``Bearer om_...``, quoted, alone).

    A name or tag is stored on every span, and shown by reports, the dashboard and errors:
    a client that sends its key where a name goes must not put it there in clear."""
    return KEY_PREFIX in text and _KEY_IN_TEXT.search(text) is not None


GATEWAY_TAGS = (UNVERIFIED_TAG, CLIENT_SPAN_TAG)
"""The tags only a gateway sets on its spans: never counted among a caller's, nor sent by one."""


def name_problem(value: str, *, limit: int = MAX_NAME) -> str | None:
    """Why ``value`` is not a valid name, or None when it is."""
    if not isinstance(value, str):  # from Python callers: no type is checked before here
        return f"must be text, not {type(value).__name__}"
    if not value:
        return "is empty"
    if holds_key(value):
        return HOLDS_KEY
    if len(value) > limit:
        return f"is longer than {limit} characters"
    if not _NAME.fullmatch(value):  # fullmatch: `$` would let a trailing newline through
        return (
            f"{value!r} has characters other than letters, digits and . _ @ + - "
            "(and must start with a letter or digit)"
        )
    return None


_HOST_ZONES = frozenset({"localtime", "posixrules", "factory"})
"""Files in the zone database that are no zone of their own: the host's zone (another on
each machine that reads the ledger), a copy of some zone, and one with no offset at all.
The ``right/`` copies count leap seconds, which Python's zoneinfo does not read: it takes
``right/Europe/Berlin`` to be an hour off for months at a time, so they are refused too. The
``posix/`` copies are the zones themselves under a second name that many machines lack
(Python's ``tzdata`` package, Debian's tzdata without tzdata-legacy): a ledger whose days
began at one was refused by every process on such a machine, so they are refused as well."""
_COPIES = ("right/", "posix/")


def zone_problem(value: str) -> str | None:
    """Why ``value`` is not an IANA time zone name, or None when it is."""
    if value.lower() in _HOST_ZONES:
        return (
            f"{value!r} is not a zone of its own (it is whatever the host says); use an IANA "
            "name such as Europe/Berlin or UTC"
        )
    if value[:6].lower() == "right/":
        return f"{value!r} counts leap seconds; use {value[6:]}"
    if value[:6].lower() == "posix/":
        return f"{value!r} is {value[6:]} under a name not every machine knows; use {value[6:]}"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: longer than a file name
        return f"{value!r} is not a known time zone; use an IANA name such as Europe/Berlin or UTC"
    return None


def _zone_of_tz(tz: str) -> str | None:
    """The zone ``TZ`` sets the host's clock in (``Europe/Berlin``, ``:EST5EDT``, a zone file's
    path), or None: a POSIX rule (``CET-1CEST,M3.5.0,M10.5.0/3``) names none."""
    name = tz.removeprefix(":")
    if os.path.isabs(name):
        real = os.path.realpath(name)
        roots = [root.rstrip("/") + "/" for root in TZPATH]
        name = next((real[len(root) :] for root in roots if real.startswith(root)), "")
    if name[:6].lower() in _COPIES:
        name = name[6:]
    return name if name and not zone_problem(name) else None


def system_timezone() -> str:
    """The machine's IANA zone name, UTC when it cannot be told. ``TZ`` first, as the C library
    reads it: tzlocal takes only the names it maps to a Windows zone, and passed over
    ``EST5EDT`` or ``PST8PDT`` for /etc/timezone (UTC in most containers)."""
    if (tz := os.environ.get("TZ")) and (zone := _zone_of_tz(tz)):
        return zone
    try:
        import tzlocal

        name = tzlocal.get_localzone_name()
    except Exception:  # tzlocal raises various errors on unusual systems
        return "UTC"
    if name and name[:6].lower() in _COPIES:  # the same civil time: without leap seconds,
        name = name[6:]  # or by the name every machine knows
    return name if name and not zone_problem(name) else "UTC"


_said_tz: set[str] = set()


def warn_tz() -> None:
    """Say, once a process, that ``TZ`` sets the host's clock in a zone it does not name (a POSIX
    rule), and which zone periods are cut in instead (/etc/timezone's, as tzlocal finds it)."""
    tz = os.environ.get("TZ")
    if not tz or tz in _said_tz or _zone_of_tz(tz):
        return
    _said_tz.add(tz)
    zone = system_timezone()
    logging.getLogger("ollama_meter.config").warning(
        "TZ=%r names no time zone ometer can read (a zone's name, such as Europe/Berlin): days, "
        "weeks and months are cut in %s; set OMETER_TIMEZONE to the zone's name",
        tz,
        zone,
    )


WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")
"""An integer as a user writes one: ASCII digits. ``int()`` (and so typer and pydantic) also
reads ``1_0``, ``10.0`` and other scripts' digits, so a typo ran on a value nobody wrote."""
PLAIN_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
"""A number as a user writes one: ASCII digits, a point, an exponent (``1.5``, ``1e3``)."""


def whole_number(value: object) -> object:
    """``value`` for an integer setting; a ValueError for text that is not ASCII digits."""
    if isinstance(value, str) and not WHOLE_NUMBER.fullmatch(value):
        raise ValueError(f"{value!r} is not a whole number (digits only, e.g. 30)")
    return value


LONGEST_MODEL = 1024
"""The longest model name a process keeps whole as a key (a price rule's choice, recent calls,
what ``/api/show`` said, a circuit): far past any name Ollama takes (its host, namespace, model
and tag are at most 350, 80, 80 and 80 characters), far below the 32 MB a body may hold."""


def model_cache_key(model: str) -> str | bytes:
    """``model`` as a process keeps it: itself, or past :data:`LONGEST_MODEL` characters its
    SHA-256 digest (bytes, so equal to no name sent). A caller may name a new model of
    megabytes each call: kept whole, a cache of a thousand names held gigabytes."""
    if len(model) <= LONGEST_MODEL:
        return model
    return hashlib.sha256(model.encode("utf-8", "surrogatepass")).digest()
