"""Report rows are typed: money is Micros, told apart by its type, never re-parsed from text."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, strategies as st

from ollama_meter.records import Micros
from ollama_meter.reports import SpendRow, to_csv, to_json


def _row(cost: int, labels: tuple[tuple[str, str], ...] = (("department", "sales"),)) -> SpendRow:
    return SpendRow(
        labels,
        requests=2,
        errors=0,
        input_tokens=10,
        output_tokens=20,
        gpu_seconds=Decimal("0.000001000"),
        cost=Micros(cost),
        currency="USD",
        unpriced_requests=0,
    )


@given(st.lists(st.integers(0, 10**12), max_size=20))
def test_money_adds_up_as_money_and_never_takes_a_decimal(amounts: list[int]) -> None:
    total = sum((Micros(a) for a in amounts), Micros(0))
    assert type(total) is Micros and total == sum(amounts)
    assert type(Micros(5) + Decimal("0.5")) is Decimal  # not truncated into micro-units


def test_a_row_reads_as_the_mapping_of_its_columns() -> None:
    row = _row(31_000)
    assert list(row) == [
        "department", "requests", "errors", "input_tokens", "output_tokens", "gpu_seconds",
        "cost", "currency", "unpriced_requests",
    ]  # fmt: skip
    assert row["department"] == row.label("department") == "sales"
    assert row["cost"] is row.cost and row == dict(row)


def test_renderers_tell_money_by_its_type_not_by_its_column_name() -> None:
    counted = {"cost": 31_000, "requests": Micros(31_000)}
    assert to_csv(["cost", "requests"], [counted]) == "cost,requests\n31000,0.031000\n"
    assert '"cost": "0.031000"' in to_json(["cost"], [_row(31_000)])
