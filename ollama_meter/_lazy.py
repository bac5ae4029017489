"""Names a package loads on first use (PEP 562), so importing it stays cheap.

A package lists which module defines each such name and sets
``__getattr__ = lazy_names(globals(), {...})``; the names still appear, typed, under
``TYPE_CHECKING`` as ``name as name``: an explicit re-export for readers and mypy, so no
``__all__`` has to list them a third time. Imports nothing of ours.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(namespace: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: each name in ``where`` is read from its module when first asked.

    Modules are absolute (``ollama_meter.errors``) or relative to the package
    (``._app``). A name once loaded is kept in ``namespace``, so later reads are plain.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__


def names_in(modules: Mapping[str, str]) -> dict[str, str]:
    """``{module: "its names, space-separated"}`` turned round: name → module, for :func:`lazy_names`."""
    return {name: module for module, names in modules.items() for name in names.split()}


def lazy_modules(namespace: dict[str, Any], package: str, names: str) -> None:
    """Bind each of ``names`` (modules of ``package``, space-separated) in a module's
    ``namespace`` to a stand-in that imports the module when an attribute is first read of
    it, and puts the module in its place: later reads are plain. For modules only some of
    a module's functions use; type checkers are shown the import under ``TYPE_CHECKING``."""
    for name in names.split():
        namespace[name] = _Later(namespace, package, name)


class _Later:
    __slots__ = ("_name", "_namespace", "_package")

    def __init__(self, namespace: dict[str, Any], package: str, name: str) -> None:
        self._namespace, self._package, self._name = namespace, package, name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(f"{self._package}.{self._name}")
        self._namespace[self._name] = module
        return getattr(module, attribute)
