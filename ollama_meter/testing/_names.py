"""Model names as Ollama reads them: which model a name resolves to, and which are no names."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ollama_meter.testing._models import EmulatedModel


def normalize_name(name: str) -> str:
    """The canonical form Ollama resolves a name to: lower case, ``:latest`` if untagged,
    without a scheme and the default registry and namespace (``registry.ollama.ai/library/``)."""
    scheme, cut, rest = name.strip().casefold().partition("://")  # read past a host's scheme
    name = rest if cut and "/" not in scheme else scheme + cut + rest
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts) + ("" if ":" in parts[-1] else ":latest")


_PARTS = (
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),  # host
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),  # namespace
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),  # model
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),  # tag
)
"""What each part of a name may hold in Ollama's ``model.ParseName`` (``IsValid``): ASCII only."""


def ollama_parses(name: str) -> bool:
    """Whether Ollama's ``model.ParseName(name).IsValid()``: it neither trims nor folds past
    ASCII, so ``"llama3.1:8b "``, a tab before a name or a Kelvin sign for a ``k`` is no name
    (answered ``model '...' not found``), whatever it resolves to once cleaned."""
    host, namespace, tag = "registry.ollama.ai", "library", "latest"
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
    rest, slash, model = name.rpartition("/")
    if slash:
        rest, slash, namespace = rest.rpartition("/")
        if slash:
            host = rest.partition("://")[2] or rest
    parts = (host, namespace, model, tag)
    return all(pattern.fullmatch(part) for pattern, part in zip(_PARTS, parts, strict=True))


def find_model(models: Iterable[EmulatedModel], name: str) -> EmulatedModel | None:
    """The model ``name`` resolves to, or None when it is not "pulled" (or is no name Ollama
    parses: :func:`ollama_parses`)."""
    if not ollama_parses(name):
        return None
    wanted = normalize_name(name)
    for model in models:
        if normalize_name(model.name) == wanted:
            return model
    return None


__all__ = ["find_model", "normalize_name", "ollama_parses"]
