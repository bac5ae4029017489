"""The Python API: ``MeteredClient`` and ``AsyncMeteredClient``, drop-ins for the ``ollama`` clients.

Same ``chat``, ``generate`` and ``embed`` calls, plus who to charge. Every call
goes through the one meter; answers are the ``ollama`` response objects with a
``meter`` attribute (on the last chunk of a stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ollama
from pydantic import Field

from ollama_meter.config import load_settings
from ollama_meter.meter import Attribution, Meter, Run, SpanRecord
from ollama_meter.pricing import from_micros

Hook = Callable[[SpanRecord], None]


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What the meter recorded for a call: ids, tokens, exact cost and its parts, timings."""

    id: str
    """The ledger's id of the call: what ``ometer log`` shows (also :attr:`span_id`)."""
    trace_id: str
    otel_span_id: str
    """The OpenTelemetry span id, as exported; not the ledger's id."""
    status: str
    input_tokens: int
    output_tokens: int
    token_source: str
    cost: Decimal
    currency: str
    unpriced: bool
    cost_parts: dict[str, Decimal] = field(default_factory=dict)
    durations_ns: dict[str, int | None] = field(default_factory=dict)
    duration_source: str | None = None
    """``reported`` (Ollama's own timing) or ``measured`` (the meter's clock, where Ollama gave none)."""

    @property
    def span_id(self) -> str:
        """The ledger's id of the call, as ``ometer chat --json`` names it: :attr:`id`.

        Not ``SpanRecord.span_id``, which is the OpenTelemetry span id (:attr:`otel_span_id`).
        """
        return self.id

    @classmethod
    def of(cls, span: SpanRecord) -> MeterInfo:
        return cls(
            id=span.id,
            trace_id=span.trace_id,
            otel_span_id=span.span_id,
            status=span.status,
            input_tokens=span.input_tokens,
            output_tokens=span.output_tokens,
            token_source=span.token_source,
            cost=from_micros(span.cost_total),
            currency=span.currency,
            unpriced=span.unpriced,
            cost_parts={
                part: from_micros(getattr(span, f"cost_{part}"))
                for part in ("tokens", "compute", "energy", "fee")
            },
            durations_ns=span.durations(),
            duration_source=span.duration_source,
        )


class MeteredChatResponse(ollama.ChatResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


class MeteredGenerateResponse(ollama.GenerateResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


class MeteredEmbedResponse(ollama.EmbedResponse):
    meter: MeterInfo | None = Field(default=None, exclude=True)


_METERED: dict[type, type[Any]] = {
    ollama.ChatResponse: MeteredChatResponse,
    ollama.GenerateResponse: MeteredGenerateResponse,
    ollama.EmbedResponse: MeteredEmbedResponse,
}


def with_meter(response: Any, span: SpanRecord) -> Any:
    """The same response, as its metered subclass carrying ``meter``."""
    cls = _METERED[type(response)]
    values = {name: getattr(response, name) for name in type(response).model_fields}
    return cls.model_construct(
        _fields_set=set(response.model_fields_set), meter=MeterInfo.of(span), **values
    )


class _Hooks:
    """User callbacks as a meter observer; the meter logs their failures, never raises them."""

    def __init__(self, on_start: Hook | None, on_end: Hook | None) -> None:
        self._on_start, self._on_end = on_start, on_end

    def on_start(self, span: SpanRecord) -> None:
        if self._on_start is not None:
            self._on_start(span)

    def on_end(self, span: SpanRecord) -> None:
        if self._on_end is not None:
            self._on_end(span)


def _request(**given: Any) -> dict[str, Any]:
    return {key: value for key, value in given.items() if value is not None}


class _Base:
    def __init__(
        self,
        host: str | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_start: Hook | None = None,
        on_end: Hook | None = None,
        db_url: str | None = None,
        **settings: Any,
    ) -> None:
        cfg = load_settings(ollama_host=host, db_url=db_url, **settings)
        hooks = [_Hooks(on_start, on_end)] if on_start or on_end else []
        self.meter = Meter.from_settings(cfg, source="sdk", observers=hooks)
        self.attribution = Attribution(
            tenant=tenant or cfg.tenant,
            department=department or cfg.department,
            user=user,
            tags=dict(tags or {}),
        )

    def _who(
        self,
        tenant: str | None,
        department: str | None,
        user: str | None,
        tags: Mapping[str, str] | None,
    ) -> Attribution:
        base = self.attribution
        if tenant is None and department is None and user is None and tags is None:
            return base
        return Attribution(
            tenant=tenant or base.tenant,
            department=department or base.department,
            user=user if user is not None else base.user,
            tags={**base.tags, **(tags or {})},
        )

    def _run(self, operation: str, request: dict[str, Any], stream: bool, who: Attribution) -> Run:
        return self.meter.run(operation, request, attribution=who, stream=stream)


class MeteredClient(_Base):
    """``ollama.Client`` with metering: ``MeteredClient(department="sales").chat(...)``."""

    def chat(
        self,
        model: str = "",
        messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None,
        *,
        tools: Sequence[Any] | None = None,
        stream: bool = False,
        think: Any = None,
        format: Any = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredChatResponse | Iterator[ollama.ChatResponse]:
        request = _request(
            model=model,
            messages=messages,
            tools=tools,
            think=think,
            format=format,
            options=options,
            keep_alive=keep_alive,
        )
        answer = self._go("chat", request, stream, self._who(tenant, department, user, tags))
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    def generate(
        self,
        model: str = "",
        prompt: str = "",
        suffix: str | None = None,
        *,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        stream: bool = False,
        think: Any = None,
        raw: bool | None = None,
        format: Any = None,
        images: Sequence[Any] | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredGenerateResponse | Iterator[ollama.GenerateResponse]:
        request = _request(
            model=model,
            prompt=prompt,
            suffix=suffix,
            system=system,
            template=template,
            context=context,
            think=think,
            raw=raw,
            format=format,
            images=images,
            options=options,
            keep_alive=keep_alive,
        )
        answer = self._go("generate", request, stream, self._who(tenant, department, user, tags))
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    def embed(
        self,
        model: str = "",
        input: str | Sequence[str] = "",
        truncate: bool | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        dimensions: int | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredEmbedResponse:
        request = _request(
            model=model,
            input=input,
            truncate=truncate,
            options=options,
            keep_alive=keep_alive,
            dimensions=dimensions,
        )
        answer = self._go("embed", request, False, self._who(tenant, department, user, tags))
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    def _go(self, operation: str, request: dict[str, Any], stream: bool, who: Attribution) -> Any:
        run = self._run(operation, request, stream, who)
        if stream:
            return self._stream(run)
        (answer,) = list(run)
        return with_meter(answer, run.span)

    @staticmethod
    def _stream(run: Run) -> Iterator[Any]:
        for part in run:
            yield (
                with_meter(part, run.span)
                if run.call is not None and run.call.span.ended_at
                else part
            )

    def close(self) -> None:
        self.meter.close_upstream()

    def __enter__(self) -> MeteredClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMeteredClient(_Base):
    """``ollama.AsyncClient`` with metering; the ledger writes run off the event loop."""

    async def chat(
        self,
        model: str = "",
        messages: Sequence[Mapping[str, Any] | ollama.Message] | None = None,
        *,
        tools: Sequence[Any] | None = None,
        stream: bool = False,
        think: Any = None,
        format: Any = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredChatResponse | AsyncIterator[ollama.ChatResponse]:
        request = _request(
            model=model,
            messages=messages,
            tools=tools,
            think=think,
            format=format,
            options=options,
            keep_alive=keep_alive,
        )
        answer = await self._go("chat", request, stream, self._who(tenant, department, user, tags))
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    async def generate(
        self,
        model: str = "",
        prompt: str = "",
        suffix: str | None = None,
        *,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        stream: bool = False,
        think: Any = None,
        raw: bool | None = None,
        format: Any = None,
        images: Sequence[Any] | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredGenerateResponse | AsyncIterator[ollama.GenerateResponse]:
        request = _request(
            model=model,
            prompt=prompt,
            suffix=suffix,
            system=system,
            template=template,
            context=context,
            think=think,
            raw=raw,
            format=format,
            images=images,
            options=options,
            keep_alive=keep_alive,
        )
        answer = await self._go(
            "generate", request, stream, self._who(tenant, department, user, tags)
        )
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    async def embed(
        self,
        model: str = "",
        input: str | Sequence[str] = "",
        truncate: bool | None = None,
        options: Mapping[str, Any] | ollama.Options | None = None,
        keep_alive: float | str | None = None,
        dimensions: int | None = None,
        *,
        tenant: str | None = None,
        department: str | None = None,
        user: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> MeteredEmbedResponse:
        request = _request(
            model=model,
            input=input,
            truncate=truncate,
            options=options,
            keep_alive=keep_alive,
            dimensions=dimensions,
        )
        answer = await self._go("embed", request, False, self._who(tenant, department, user, tags))
        return answer  # type: ignore[no-any-return]  # noqa: RET504

    async def _go(
        self, operation: str, request: dict[str, Any], stream: bool, who: Attribution
    ) -> Any:
        run = self._run(operation, request, stream, who)
        if stream:
            return self._stream(run)
        answers = [part async for part in run]
        return with_meter(answers[-1], run.span)

    @staticmethod
    async def _stream(run: Run) -> AsyncIterator[Any]:
        async for part in run:
            yield (
                with_meter(part, run.span)
                if run.call is not None and run.call.span.ended_at
                else part
            )
