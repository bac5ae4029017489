"""Copying a record's fields by name: to and from rows, and between records that share names.

Records and the ledger's rows name most fields alike (``tenant`` is ``tenant``);
the few that differ (``limit`` is stored as ``limit_micros``) are given by hand, so
a mapping states only what is special about it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

R = TypeVar("R")


def record_from(cls: type[R], source: object, **given: Any) -> R:
    """A ``cls`` (a dataclass) whose fields are ``given``, else ``source``'s same-named attributes."""
    names = [field.name for field in fields(cls) if field.init]  # type: ignore[arg-type]
    return cls(**{name: given[name] if name in given else getattr(source, name) for name in names})


def values_of(record: object, *, skip: tuple[str, ...] = (), **given: Any) -> dict[str, Any]:
    """``record``'s fields by name (but ``skip``), then ``given`` values: a row to write."""
    names = [field.name for field in fields(record) if field.name not in skip]  # type: ignore[arg-type]
    return {**{name: getattr(record, name) for name in names}, **given}
