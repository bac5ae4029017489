"""What the Python API's calls are given, read as the ``ollama`` client reads it.

The arguments of ``MeteredClient`` and of its calls, checked before anything is metered:
what is no setting is refused (the settings ignore unknown names), who to charge is
told apart from the request, and the request is read once, as the ``ollama`` client
would send it (an iterable of messages as a list; None left out only where that client
leaves it out).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import ollama

from ollama_meter.config import Settings
from ollama_meter.errors import ValidationError

WHO = ("tenant", "department", "user", "tags")
"""The parameters of every call that say who to charge; they are not part of the request."""


def check_settings(client: str, given: Mapping[str, Any]) -> None:
    """Refuse what is no setting: the settings ignore unknown names (the environment holds
    many), so a misspelt ``departmnet=`` would charge every call to the default, unseen."""
    known = {
        name
        for field, info in Settings.model_fields.items()
        for name in (field, info.validation_alias)
        if isinstance(name, str)
    }
    for name in given:
        if name not in known:
            raise TypeError(
                f"{client}() got an unexpected keyword argument {name!r}: it takes host, who "
                "to charge (tenant, department, user, tags), on_start, on_end, db_url and "
                "ometer's settings by name (the timeout to Ollama is upstream_timeout=)"
            )


def tags_of(tags: object) -> Mapping[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError(
            f"tags are a mapping of text to text, e.g. {{'job': 'nightly'}}, not {type(tags).__name__}"
        )
    return tags


def read_once(value: Any) -> Any:
    """``value``, with an iterable of parts (messages, images, inputs...) as a list.

    The ``ollama`` client takes any iterable there; a generator is used up by its first
    reading, so a retry would send nothing, and the meter would count nothing.
    """
    if isinstance(value, str | bytes | Mapping | list) or not isinstance(value, Iterable):
        return value
    if hasattr(type(value), "model_fields"):  # a model (ollama.Options) iterates its fields
        return value
    return list(value)


NOT_NONE = {
    operation: frozenset(
        name
        for name, parameter in inspect.signature(
            getattr(ollama.Client, operation)
        ).parameters.items()
        if parameter.default not in (None, inspect.Parameter.empty)
    )
    for operation in ("chat", "generate", "embed", "embeddings")
}
"""Parameters the ``ollama`` client defaults to something else than None: None given there is
passed on (and refused by it), not left out for its default (``embed(input=None)`` is not ``''``)."""


def names_no_model(request: Mapping[str, Any]) -> bool:
    """Whether the request names no model (None, empty, blank, or anything else empty: 0,
    ``[]``, ``b""``): refused, never sent. A name of the wrong type that is not empty is the
    ``ollama`` client's to refuse, and it says so."""
    model = request.get("model")
    return not model.strip() if isinstance(model, str) else not model
