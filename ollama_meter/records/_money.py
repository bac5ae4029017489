"""Exact money: Decimal in, integer micro-units out, never float.

Every amount a user gives is bounded here, once, so that whatever a call can
cost fits the ledger's 64-bit integer columns (and SQLite's 64-bit SUM) with
room to spare: a price is at most :data:`MAX_PRICE` per unit (less for power
and electricity, :data:`PRICE_LIMITS`), a budget or a fixed cost at most
:data:`MAX_AMOUNT`. With counts and durations bounded too (see the span), no call
can cost more than about 10^9 units, so a thousand of the worst still sum in 64 bits.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation

MICROS = 1_000_000

MAX_PRICE = Decimal(100_000)
"""The most a price may say per unit (per 1M tokens, per GPU-hour, per request)."""
PRICE_LIMITS = {"watts": Decimal(100_000), "kwh_price": Decimal(1_000)}
"""Tighter bounds where the unit is physical: 100 kW of draw, 1,000 per kWh."""
MAX_AMOUNT = Decimal(1_000_000_000_000)
"""The largest budget or fixed monthly cost: a trillion units of the currency."""
MAX_CALL_COST = (2**63 - 1) // 1000
"""The most one call can cost, in micro-units: more than any price within bounds can charge
(a test keeps it so), and a thousand such calls still sum in a 64-bit column."""
MAX_DIGITS = 40
"""Significant digits an amount may have; more is a typo, not a price."""

_CURRENCY = re.compile(r"[A-Z]{3}")
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:s?nan|inf(?:inity)?)",
    re.IGNORECASE,
)
"""What an amount may be written as: ASCII digits, a point, an exponent (and the names of
the non-numbers, refused by :func:`check_amount` with their own message). ``Decimal()``
alone also takes '１２' and '٣' (any script's digits) and '1_000'."""


class Micros(int):
    """An exact amount of money: integer micro-units of a currency the record beside it names.

    An ``int`` in every way (sums, comparisons, JSON), typed so that a field holding
    money says so, and renderers show it as six decimals (:func:`format_micros`)
    rather than as a count.
    """

    __slots__ = ()

    def __add__(self, other: int) -> Micros:
        if not isinstance(other, int):
            return NotImplemented  # a Decimal or a float is no amount of micro-units
        return Micros(int(self) + int(other))

    __radd__ = __add__


def to_micros(amount: Decimal) -> int:
    """Round an exact amount to integer micro-units, once, half to even.

    As a ratio of integers: Decimal arithmetic rounds to 28 digits first, so
    0.0000025000000000000000000000000001 came to 2, not 3."""
    numerator, denominator = amount.as_integer_ratio()
    return round_half_even(numerator * MICROS, denominator)


def round_half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` (``denominator`` > 0) to the nearest integer, ties to even."""
    quotient, remainder = divmod(numerator, denominator)  # remainder >= 0: floor division
    twice = 2 * remainder
    return quotient + (twice > denominator or (twice == denominator and quotient % 2 == 1))


def from_micros(micros: int) -> Decimal:
    """``micros`` as an amount with six decimals, exact for any integer (dividing in Decimal's
    28 digits failed past 10^22 units: a refusal naming what a 10^30-token cap may cost)."""
    digits = tuple(int(d) for d in str(abs(micros)))
    return Decimal((int(micros < 0), digits, -6))


def format_micros(micros: int) -> str:
    """``31000`` → ``"0.031000"``: six decimals, exact, for JSON, CSV and tables."""
    return f"{from_micros(micros):f}"


def parse_amount(
    text: str | int | Decimal,
    *,
    what: str = "amount",
    limit: Decimal = MAX_PRICE,
    positive: bool = False,
    places: int | None = None,
) -> Decimal:
    """Parse a non-negative, finite decimal amount given by a user, at most ``limit``, with at
    most ``places`` decimal places (refused, not rounded) when given."""
    if isinstance(text, float):
        raise TypeError("money must not be a float; pass a str or Decimal")
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        raise ValueError(f"{what} must be an amount such as 100 or 12.50, not {text!r}")
    written = _written(text)
    if not _NUMBER.fullmatch(written):
        raise ValueError(
            f"{what} {_quoted(text)} is not a number; write it with the digits 0-9 and a "
            "point, such as 12.50"
        )
    try:
        value = Decimal(written)
    except InvalidOperation:  # written right, but its exponent is past any Decimal's
        raise ValueError(
            f"{what} {_shown(written)} has an exponent no amount has; write it such as 12.50"
        ) from None
    if positive and value.is_finite() and value <= 0:  # -1 was told "a positive amount, or 0"
        raise ValueError(f"{what} {_shown(written)} must be more than 0")
    check_amount(value, what=what, limit=limit)
    if places is not None and value != value.quantize(Decimal(1).scaleb(-places)):
        most = f"more than {places} decimal places" if places else "decimals; give a whole number"
        raise ValueError(f"{what} {_shown(written)} has {most}")
    return value.copy_abs()  # '-0' is 0: never listed as a price of -0


def _written(value: str | int | Decimal) -> str:
    """An amount's text; a Decimal (read from JSON or TOML) in plain digits when it has a
    hundred or fewer: ``Decimal("0.0000001")`` prints as ``1E-7``, a number no user wrote."""
    if isinstance(value, Decimal) and value.is_finite():
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= -100 and value.adjusted() <= 100:
            return format(value, "f")
    return str(value).strip()


def exact_number(text: str) -> Decimal | str:
    """A number read from TOML or JSON (their ``parse_float``), exactly; one whose exponent
    no Decimal holds ('1e-99999999999999999999') stays text, for :func:`parse_amount` to
    refuse naming its field: Decimal's InvalidOperation went through the parser as "a bug
    in ometer" (exit 70) on every command that read the file or setting."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return text


def exact_integer(text: str) -> int | Decimal:
    """An integer read from JSON (its ``parse_int``); one past the 4,300 digits Python converts
    is a Decimal, for the field's bound to refuse (``int()`` raised "Exceeds the limit ... use
    sys.set_int_max_str_digits()", advice that is no user's to take)."""
    return int(text) if len(text) <= 4000 else Decimal(text)


TOO_LONG = f"a number has thousands of digits (an amount has at most {MAX_DIGITS})"
"""Why the TOML parser refused an integer past the 4,300 digits Python converts."""


def _shown(text: object) -> str:
    """``text`` as an error shows it: whole when short, else its ends and its length (an amount
    of 5,000 digits made an error line of 5,000 characters)."""
    written = str(text)
    if len(written) <= 60:
        return written
    return f"{written[:20]}...{written[-10:]} ({len(written):,} characters)"


def _quoted(text: object) -> str:
    """``text`` quoted as an error names a value: its ends and its own length when long."""
    if isinstance(text, str) and len(text) > 60:
        return f"{text[:20]!r}...{text[-10:]!r} ({len(text):,} characters)"
    return _shown(repr(text))


def check_amount(value: Decimal, *, what: str, limit: Decimal = MAX_PRICE) -> None:
    """Raise ValueError unless ``value`` is a finite amount in [0, ``limit``] of sane length."""
    # Named as it is typed ("1e30"), not as Decimal prints it ("1E+30"), which nobody wrote.
    shown = _shown(str(value).replace("E+", "e").replace("E", "e"))
    if not value.is_finite():
        raise ValueError(f"{what} {shown} is not a finite number")
    if value < 0:
        raise ValueError(f"{what} {shown} must not be negative (a positive amount, or 0)")
    if value > limit:
        raise ValueError(f"{what} {shown} is more than the largest allowed, {limit:,f}")
    # A zero has one digit whatever its exponent: '0e-999999999' is exactly 0, but its exact
    # text (how a price is stored and listed) is a billion zeros. Its places count as digits.
    _, digits, exponent = value.as_tuple()
    places = abs(int(exponent)) if not value else 0
    if (
        len(digits) > MAX_DIGITS
        or places > MAX_DIGITS
        or (value and value.adjusted() < -MAX_DIGITS)
    ):
        raise ValueError(f"{what} {shown} has more than {MAX_DIGITS} digits")


def parse_currency(text: object, *, what: str = "currency") -> str:
    """An ISO 4217-shaped code (three letters), upper-cased: ``" eur"`` → ``"EUR"``."""
    stripped = text.strip() if isinstance(text, str) else ""
    code = stripped.upper() if stripped.isascii() else ""  # 'Aß'.upper() is 'ASS'
    if not _CURRENCY.fullmatch(code):
        given = f"{what} {_quoted(text)}".strip()  # a line of an import may be megabytes
        raise ValueError(f"{given} is not a 3-letter ISO 4217 code such as USD or EUR")
    return code


def known_currency(text: object, *, what: str = "currency") -> str:
    """:func:`parse_currency`, and a code ISO 4217 lists (not XXX, no currency, or XTS, for
    tests): 'UDS' is refused where it is typed, not found later as a row of its own in every
    report. Records read back from a ledger are checked by shape only, so a code an earlier
    ometer took still reads."""
    code = parse_currency(text, what=what)
    if code != "USD" and code not in _iso_4217():  # the default needs no list loaded
        given = f"{what} {code!r}".strip()
        raise ValueError(f"{given} is not a currency in ISO 4217; check the code (USD, EUR, ...)")
    return code


MICRO_PLACES = 6
"""Decimal places of a micro-unit, the finest amount the ledger keeps."""


def minor_places(code: str) -> int:
    """Decimal places of the smallest unit of currency ``code``, as ISO 4217 lists it: 2 for
    USD and EUR (a cent), 0 for JPY and ISK, 3 for KWD and BHD (a fils), 4 for CLF. A code
    ISO lists with no minor unit (gold, XDR) is counted in micro-units; a code ISO does not
    list (one an earlier ometer took) in hundredths, as every bill was before."""
    if code in ("USD", "EUR"):  # the usual ones need no list loaded
        return 2
    exponent = _iso_exponents().get(code, 2)
    return MICRO_PLACES if exponent is None else min(exponent, MICRO_PLACES)


@functools.cache
def _iso_exponents() -> dict[str, int | None]:
    from iso4217 import Currency

    return {c.code: c.exponent for c in Currency}


@functools.cache
def _iso_4217() -> frozenset[str]:
    from iso4217 import Currency  # parses its XML when imported: only where a code is typed

    return frozenset(c.code for c in Currency) - {"XXX", "XTS"}
