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


_A_MESSAGE = "{'role': 'user', 'content': 'hi'}"


def malformed(request: Mapping[str, Any]) -> tuple[str, bool] | None:
    """What is wrong with a request the ``ollama`` client would refuse in its own words, said
    as the gateway says it, and whether the client raised a TypeError for it (a drop-in's
    ``except TypeError`` still catches it); None for one it may build.

    No model (:func:`names_no_model`); ``messages`` that are no list of messages: the client
    read ``"hi"`` as a list of one-letter messages, and said "dictionary update sequence
    element #0 has length 1; 2 is required"."""
    if names_no_model(request):
        return "no model given; name one, e.g. model='llama3.1:8b'", False
    messages = request.get("messages")
    if not messages:  # the client sends no messages
        return None
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
        kind = type(messages).__name__
        said = f"messages must be a list of messages, e.g. [{_A_MESSAGE}], not {kind}"
        return said, isinstance(messages, bytes) or not isinstance(messages, Iterable)
    for place, message in enumerate(messages, 1):
        if not (isinstance(message, Mapping) or hasattr(type(message), "model_fields")):
            kind = type(message).__name__
            said = f"message {place} must be a message such as {_A_MESSAGE}, not {kind}"
            return said, not isinstance(message, Iterable)  # dict(message) raises which
    return None
