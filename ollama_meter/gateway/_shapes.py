"""What every checked request body is built from: Go's strictness, the body, fail-fast lists.

Shared by the routes' shapes (``_requests.py``, and ``_responses.py`` for OpenAI's
Responses API); holds no route of its own.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, FailFast, model_validator
from pydantic_core import PydanticCustomError


def _model_name(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("model", "must not be blank")
    return value


def _go_int(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise PydanticCustomError(
            "go_int", "must be an integer Ollama can read, from -2^63 to 2^63-1"
        )
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise PydanticCustomError(
            "positive", "must be a positive number of tokens (Ollama refuses 0 or less here)"
        )
    return value


class _FailFast(FailFast):
    __hash__ = object.__hash__  # one instance, in unions (``Items[str] | None``), which hash


T = TypeVar("T")
Items = Annotated[list[T], _FailFast()]
"""A list checked to its first wrong item: one problem per item would be millions of them
for a body of ``[1,1,...]`` (4 MB: 10 s and 2.9 GB to refuse), with no object to count."""
ModelName = Annotated[str, AfterValidator(_model_name)]
GoInt = Annotated[int, AfterValidator(_go_int)]
"""A field Ollama decodes into a Go ``int``: a number past 64 bits is no request to it (a
reply cap of 2^70 would be one the meter read and Ollama refused)."""
PositiveGoInt = Annotated[int, AfterValidator(_go_int), AfterValidator(_positive)]


DEBUG_RENDER = "_debug_render_only"
"""Ollama's chat and generate (and its OpenAI chat and completions) answer a body with this
set to true with the prompt the model's template renders, and run nothing: a 200 that is no
answer, which the gateway took for a failing model (a 502, the prompt charged as estimated,
and a failure towards the model's circuit: two callers' few such requests refused the model
to everyone for a minute). Refused instead, as a request the gateway does not meter."""


class _GoStruct(BaseModel):
    """A body (or part of one) that Ollama decodes into a Go struct.

    Go's decoder matches a key to a field whatever its case (``Prompt``, ``PROMPT``, and
    ``stream`` with a long s all set ``prompt`` or ``stream``), and the last one wins; the
    gateway reads keys exactly. A key that is a field's name in another case would make
    the two read different requests (a prompt, a reply cap, a model the meter never saw),
    so it is refused.
    """

    model_config = ConfigDict(strict=True, extra="allow")
    renders_for_debug: ClassVar[bool] = False
    """Ollama reads ``_debug_render_only`` in this body (:data:`DEBUG_RENDER`)."""

    @model_validator(mode="before")
    @classmethod
    def _spelled_exactly(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.keys() <= _field_names(cls):  # (in C)
            fields = _field_names(cls)
            for key in data:
                if isinstance(key, str) and key not in fields:
                    folded = key.casefold()
                    if folded == DEBUG_RENDER and cls.renders_for_debug and data[key] is True:
                        raise PydanticCustomError(
                            "debug_render",
                            "{key} asks Ollama for the prompt it would run instead of running "
                            "the model; the gateway meters calls to models and does not relay "
                            "that (ask Ollama itself, or leave the field out)",
                            {"key": json.dumps(key)},
                        )
                    name = _folded_fields(cls).get(folded)
                    if name is not None:
                        raise PydanticCustomError(
                            "field_spelling",
                            "{key} is {field} spelled another way, which Ollama would read "
                            "as {field}; spell it {field}",
                            {"key": json.dumps(key), "field": json.dumps(name)},
                        )
        return data


@functools.cache
def _field_names(shape: type[BaseModel]) -> frozenset[str]:
    """A shape's field names, once: read per object of a body (pydantic's own property took
    10 s for a body of a million messages)."""
    return frozenset(shape.model_fields)


@functools.cache
def _folded_fields(shape: type[BaseModel]) -> dict[str, str]:
    return {name.casefold(): name for name in shape.model_fields}


class _Body(_GoStruct):
    operation: ClassVar[str]
    streams_by_default: ClassVar[bool] = False
    can_stream: ClassVar[bool] = True

    model: ModelName
    stream: bool | None = None

    def streamed(self) -> bool:
        if not self.can_stream:
            return False
        return self.streams_by_default if self.stream is None else self.stream
