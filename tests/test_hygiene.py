"""Rules the tests themselves keep, checked over their source."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _is_given(function: ast.FunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and getattr(d.func, "id", "") == "given"
        for d in function.decorator_list
    )


def _refused(node: ast.AST) -> set[int]:
    """Lines of the calls made inside ``with pytest.raises(...)``: a ledger that is refused."""
    lines: set[int] = set()
    for block in ast.walk(node):
        if isinstance(block, ast.With) and any(
            "raises" in ast.unparse(item.context_expr) for item in block.items
        ):
            lines |= {
                n.lineno for stmt in block.body for n in ast.walk(stmt) if hasattr(n, "lineno")
            }
    return lines


def _ledgers_left_open(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef) or not _is_given(function):
            continue
        source = ast.unparse(function)
        if "dispose" in source or "close_ledger" in source:
            continue
        refused = _refused(function)
        for call in ast.walk(function):
            if (
                isinstance(call, ast.Call)
                and getattr(call.func, "id", "") == "Ledger"
                and call.lineno not in refused
            ):
                out.append(f"{path.relative_to(TESTS.parent)}:{call.lineno} {function.name}")
    return out


def test_a_property_disposes_of_each_ledger_its_examples_open() -> None:
    """The CI failure of 2026-12-06: a property made ``Ledger(db_url)`` in each example and never
    closed it. On PostgreSQL each kept its sessions; shrinking a real failure ran hundreds of
    examples and the server refused the rest ("too many clients already"), so the report
    showed two failures, the second a lie. Open them with ``tests.factories.opened``."""
    left = [line for path in sorted(TESTS.rglob("test_*.py")) for line in _ledgers_left_open(path)]
    assert left == []
