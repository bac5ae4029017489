"""Exact money: Decimal in, integer micro-units out, never float."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS = 1_000_000
_MICRO = Decimal("0.000001")


def to_micros(amount: Decimal) -> int:
    """Round an exact amount to integer micro-units (banker's rounding)."""
    return int((amount * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_micros(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS).quantize(_MICRO)


def format_micros(micros: int) -> str:
    """``31000`` → ``"0.031000"``: six decimals, exact, for JSON, CSV and tables."""
    return f"{from_micros(micros):f}"


def parse_amount(text: str | int | Decimal, *, what: str = "amount") -> Decimal:
    """Parse a non-negative, finite decimal amount given by a user."""
    if isinstance(text, float):
        raise TypeError("money must not be a float; pass a str or Decimal")
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{what} {text!r} is not a finite number")
    if value < 0:
        raise ValueError(f"{what} {text!r} must not be negative")
    return value
