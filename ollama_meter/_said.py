"""A setting's value refused by its type or bounds, said as a user reads it: the value given
and what the setting takes (pydantic's own words, "Input should be a valid boolean, unable
to interpret input", said neither)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic.functional_validators import BeforeValidator
from pydantic_core import PydanticCustomError

from ollama_meter._names import PLAIN_NUMBER, WHOLE_NUMBER

_NUMBER_ERRORS = frozenset(
    {
        "int_parsing",
        "int_from_float",
        "int_type",
        "float_parsing",
        "float_type",
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "decimal_parsing",
    }
)
_CHOICES = re.compile(r"\^\(([\w|]+)\)\$")


def said(error: Any, info: FieldInfo | None) -> str:
    """What is wrong with a value pydantic refused (one of its ``errors()``); a value in quotes
    is told they are part of it: ``docker run --env-file`` keeps them (``OMETER_TIMEZONE=
    "Europe/Berlin"``), and the value was refused with them, the quotes in it unremarked."""
    message = _words(error, info) or str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, str) and len(given) > 1 and given[0] == given[-1] and given[0] in "\"'":
        message += "; the quotes are part of the value as given: remove them (docker's --env-file keeps them)"
    return message


def _words(error: Any, info: FieldInfo | None) -> str | None:
    """What :func:`said` says of a refusal pydantic words as no user reads it, or None to keep
    its message (an error a validator of ours raised says it already)."""
    kind, given = error["type"], error.get("input")
    shown = _shown(given)
    if kind in ("bool_parsing", "bool_type"):
        return f"{shown} is not true or false (1/0, yes/no and on/off are read too)"
    if kind == "string_pattern_mismatch":
        choices = _CHOICES.search(str(error.get("ctx", {}).get("pattern", "")))
        if choices:
            return f"{shown} is not one of {', '.join(choices.group(1).split('|'))}"
    if kind in _NUMBER_ERRORS and info is not None:
        return f"{shown} is not {_expected(info)}"
    return None


def digits(value: object) -> object:
    """An integer setting's ``value``, refused unless it is written in ASCII digits: pydantic
    reads ``1_0``, ``10.0`` and other scripts' digits as 10 (:func:`said` words the refusal)."""
    if isinstance(value, str) and not WHOLE_NUMBER.fullmatch(value):
        raise PydanticCustomError("int_parsing", "not a whole number")
    return value


def plain(value: object) -> object:
    """A number setting's ``value`` (seconds), refused unless written as a number is: ASCII
    digits, a point and an exponent. pydantic reads ``1_0`` as 10, as it does for an integer."""
    if isinstance(value, str) and not PLAIN_NUMBER.fullmatch(value):
        raise PydanticCustomError("float_parsing", "not a number")
    return value


def _shown(given: object) -> str:
    text = repr(given) if isinstance(given, str) else str(given)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def _expected(info: FieldInfo) -> str:
    """``a whole number from 1 to 65,535``, ``a number above 0 and at most 3,600``..."""
    kinds = (info.annotation, *getattr(info.annotation, "__args__", ()))
    whole = any(getattr(kind, "__origin__", kind) is int for kind in kinds)  # Annotated too
    low = high = ""
    for bound in info.metadata:
        if (ge := getattr(bound, "ge", None)) is not None:
            low = f"from {ge:,}"
        elif (gt := getattr(bound, "gt", None)) is not None:
            low = f"from {gt + 1:,}" if whole else f"above {gt:,}"
        if (le := getattr(bound, "le", None)) is not None:
            high = f"to {le:,}" if low.startswith("from") else f"at most {le:,}"
        elif (lt := getattr(bound, "lt", None)) is not None:
            high = f"to {lt - 1:,}" if whole else f"below {lt:,}"
    if low.startswith("above") and high:
        high = "and " + high
    elif low.startswith("from") and not high:
        high = "up"
    kind = "a whole number" if whole else "a number"
    return " ".join(part for part in (kind, low, high) if part)


Int = Annotated[int, BeforeValidator(digits)]
"""An integer setting: written in digits (``1_0`` and ``10.0`` are refused, not read as 10)."""
Float = Annotated[float, BeforeValidator(plain)]
"""A number setting: written as ``1.5`` or ``1e3`` (``1_0`` is refused, not read as 10)."""

MIN_SECONDS = 0.001
"""The shortest a timer setting may be: a call given less than a millisecond can only time
out, a ledger wait that short only spools, and an interval that short spins."""
Seconds = Annotated[Float, Field(ge=MIN_SECONDS)]
"""A timer setting, in seconds: a number of at least :data:`MIN_SECONDS` (its most, its own)."""

MAX_TIMEOUT_MS = 3_600_000
"""The longest an OTLP export may take, in milliseconds: an hour, as ``OMETER_EXPORT_TIMEOUT``."""


def _millis(value: object) -> object:
    """An OTLP timeout as the spec writes it (``OTEL_EXPORTER_OTLP_*TIMEOUT``), in seconds: a
    whole number of milliseconds, 0 no limit (taken as :data:`MAX_TIMEOUT_MS`, as the spec
    allows). The SDK read seconds, a fraction too; an empty value crashed its grpc exporter."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else str(value)
    number = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= number <= MAX_TIMEOUT_MS:
        raise ValueError(
            f"{_shown(value)} is not a whole number of milliseconds from 0 to "
            f"{MAX_TIMEOUT_MS:,} (an hour; 0: no limit); fix or unset it"
        )
    return (number or MAX_TIMEOUT_MS) / 1000


Millis = Annotated[float | None, BeforeValidator(_millis)]
"""An OTLP exporter's timeout: milliseconds in the environment (the spec's unit), seconds here."""
