"""What the Python API's calls are given, read as the ``ollama`` client reads it.

The arguments of ``MeteredClient`` and of its calls, checked before anything is metered:
what is no setting is refused (the settings ignore unknown names), who to charge is
told apart from the request, and the request is read once, as the ``ollama`` client
would send it (an iterable it walks itself as a list, a message as ``dict()`` reads it;
``stream`` as its request model reads it; None left out only where that client leaves it
out).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import ollama
import pydantic

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
                "ometer's settings by name, and the httpx arguments ollama.Client takes "
                "(headers, timeout, verify...)"
            )


HTTPX = frozenset({
    "headers", "timeout", "verify", "cert", "trust_env", "http1", "http2", "limits", "proxy",
    "follow_redirects", "max_redirects", "auth", "params", "cookies", "default_encoding",
})  # fmt: skip
"""The arguments ``ollama.Client`` hands to httpx that ours hands on as it does: to every call
to Ollama (the metered ones, their retries, and the calls that run no model)."""

_OWN_TRANSPORT = (
    "ometer's calls to Ollama go through its own transport (it sends again a request lost on "
    "a kept-alive connection, and tells how far an answer came); give its settings instead "
    "(verify, cert, proxy, limits, http2...)"
)
NOT_HTTPX = {
    "transport": _OWN_TRANSPORT,
    "mounts": _OWN_TRANSPORT,
    "event_hooks": "ometer's calls to Ollama run its own httpx hooks; yours go in on_start= "
    "and on_end=",
    "base_url": "the server is host= (the first argument), as ollama.Client takes it",
}
"""The httpx arguments ``ollama.Client`` takes that ours refuses, and why."""

_OWN_HEADERS = "x-ometer-"
"""ometer's own headers: whom a call is charged to, and what a gateway says back of it."""
_CREDENTIALS = frozenset({"x-ometer-key"})
"""ometer's headers that only present a gateway's key, as ``Authorization`` does."""


def http_options(client: str, given: dict[str, Any]) -> dict[str, Any]:
    """The httpx arguments in ``given``, taken out of it; refuses those ometer cannot honour
    (:data:`NOT_HTTPX`) and headers that would say whom to charge (:data:`_OWN_HEADERS`)."""
    for name, why in NOT_HTTPX.items():
        if name in given:
            raise TypeError(f"{client}() cannot take {name}=: {why}")
    options = {name: given.pop(name) for name in HTTPX & given.keys()}
    headers = options.get("headers")
    if headers is not None:
        options["headers"] = headers = {**headers}  # read once, as ollama.Client reads it
        for name in headers:
            said = name.lower() if isinstance(name, str) else ""
            if said.startswith(_OWN_HEADERS) and said not in _CREDENTIALS:
                raise ValidationError(
                    f"headers= may not set {name[:64]}: ometer names whom a call is charged to "
                    "itself; give tenant=, department=, user= or tags= instead"
                )
    return options


def tags_of(tags: object) -> Mapping[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError(
            f"tags are a mapping of text to text, e.g. {{'job': 'nightly'}}, not {type(tags).__name__}"
        )
    return tags


WALKED = {"chat": ("messages", "tools"), "generate": ("images",)}
"""The parameters the ``ollama`` client walks itself, so takes as any iterable; it hands the
others to its request model, which refuses a set or a generator (``embed(input=...)``,
``generate(context=...)``): read as given, they are refused as that client refuses them."""


def read_once(operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` as the ``ollama`` client sends it, each part read once: what it walks
    (:data:`WALKED`, and a message's ``images``) as a list, a message as ``dict()`` reads it.

    A generator is used up by its first reading: a retry sent nothing, the meter counted
    nothing, or (a message's images, counted first) Ollama was sent none.
    """
    read = dict(request)
    for name in WALKED.get(operation, ()):
        if name in read:
            read[name] = _listed(read[name])
    if isinstance(read.get("messages"), list):
        read["messages"] = [_message(message) for message in read["messages"]]
    return read


def _listed(value: Any) -> Any:
    """``value``, an iterable of parts (messages, images, tools...) as a list."""
    if isinstance(value, str | bytes | Mapping | list) or not isinstance(value, Iterable):
        return value
    if hasattr(type(value), "model_fields"):  # a model (ollama.Options) iterates its fields
        return value
    return list(value)


def _message(message: Any) -> Any:
    """A message as the ``ollama`` client reads it (``dict(message)``: key-value pairs are
    one), its images walked once; one ``dict()`` cannot read is left for :func:`malformed`."""
    if hasattr(type(message), "model_fields") or isinstance(message, str | bytes):
        return message  # a model's images are a list already; text is no message
    if not isinstance(message, Mapping):
        try:
            message = dict(message)
        except (TypeError, ValueError):
            return message
    images = message.get("images")
    listed = _listed(images)
    return message if listed is images else {**message, "images": listed}


_BOOL = pydantic.TypeAdapter(bool)


def stream_of(value: object) -> bool | None:
    """``stream=`` as the ``ollama`` client's request model reads it (``"no"``, ``0`` and
    ``"off"`` are false), or None where it reads no bool (``2``, ``"x"``): that client refuses
    it. None is false, the default (that client sent no ``stream``, so Ollama streamed, and
    it failed to read the chunks as one answer)."""
    if value is None:
        return False
    try:
        return _BOOL.validate_python(value)
    except pydantic.ValidationError:
        return None


def stream_refused(value: object) -> str:
    """What :func:`malformed` says of a ``stream`` :func:`stream_of` reads no bool in."""
    shown = type(value).__name__
    if isinstance(value, str | bytes | float) or (type(value) is int and value.bit_length() < 64):
        text = repr(value)
        shown = text if len(text) <= 40 else f"{text[:32]}... ({len(text):,} characters)"
    return f"stream must be True or False, not {shown}"


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
