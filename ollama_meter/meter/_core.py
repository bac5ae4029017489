"""The meter: the one sequence every metered call goes through (DESIGN §2).

    attribute → open span → call upstream → measure → price → write → observers

Entry points (CLI, gateway, Python API) differ only in how they reach Ollama;
they all open a :class:`MeteredCall` here, feed it what Ollama sent, and let
the meter close it. Budgets, telemetry and alerts attach as observers and gates
on this sequence; the ledger never calls back into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ollama

from ollama_meter._names import MAX_USER, name_problem
from ollama_meter._reloaded import Reloaded
from ollama_meter.budgets import BudgetGate, PastCall, Reservation, bound_cost
from ollama_meter.errors import (
    BudgetExceeded,
    LedgerError,
    PricingError,
    UpstreamError,
    ValidationError,
)
from ollama_meter.meter._request import RequestFacts, facts_of, with_output_cap
from ollama_meter.meter._usage import estimate_tokens, usage_of
from ollama_meter.meter._writer import GroupCommitWriter
from ollama_meter.pricing import PriceBook, parse_pricing_toml
from ollama_meter.records import (
    DurationSource,
    SpanRecord,
    Status,
    Stored,
    TokenSource,
    make_storable,
    new_otel_span_id,
    new_span_row_id,
    new_trace_id,
)

if TYPE_CHECKING:
    from ollama_meter.config import Settings
    from ollama_meter.ledger import Ledger
    from ollama_meter.upstream import Message, Upstream

Response = ollama.ChatResponse | ollama.GenerateResponse | ollama.EmbedResponse

log = logging.getLogger("ollama_meter.meter")

Clock = Callable[[], datetime]

HISTORY_TTL = 30.0
"""Seconds a model's recent calls are reused for bounding time-priced costs."""
DEFAULT_REPLY_CAP = 4096
"""Reply tokens a call under a hard budget may produce when it sets no cap of its own."""
INTERRUPTED_MESSAGE = (
    "the process that made this call ended before the call did (killed or crashed); "
    "what Ollama did with it is unknown, so only its prompt (estimated) is charged"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a call is charged to (DESIGN §3). Names are checked here, once, for every entry point."""

    tenant: str
    department: str
    user: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, value, limit in (
            ("tenant", self.tenant, 64),
            ("department", self.department, 64),
            ("user", self.user, MAX_USER),
        ):
            if value is None:
                continue
            problem = name_problem(value, limit=limit)
            if problem:
                raise ValidationError(f"{what} name {problem}")
        for key, value in self.tags.items():
            if name_problem(key) or len(str(value)) > 256:
                raise ValidationError(
                    f"tag {key!r}: keys follow the name rules and values are at most 256 characters"
                )


class SpanObserver(Protocol):
    """Something that watches calls: telemetry, alerts, user hooks. Failures are logged, never fatal."""

    def on_start(self, span: SpanRecord) -> None: ...

    def on_end(self, span: SpanRecord) -> None: ...


class MeteredCall:
    """One call in flight: collects what Ollama sends, becomes a span when the meter closes it."""

    def __init__(self, span: SpanRecord, prompt_text: str) -> None:
        self.span = span
        self.prompt_text = prompt_text
        self.reply_parts: list[str] = []
        self.content_chunks = 0
        self.final: Response | None = None
        self.reservation: Reservation | None = None
        self.output_cap: int | None = None
        """A reply cap the meter imposes (a hard budget covers a call that set none)."""
        self.stored: Stored | None = None
        """Where the span went once the call closed: the ledger, the spool, ..."""
        self._t0 = time.perf_counter_ns()
        self._first_ns: int | None = None

    def observe(self, part: Response) -> None:
        """Take one chunk (or the whole non-streamed answer) from Ollama."""
        if self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        if isinstance(part, ollama.EmbedResponse):
            self.final = part
            return
        text = (
            (part.message.content or "")
            if isinstance(part, ollama.ChatResponse)
            else (part.response or "")
        )
        if text:
            self.content_chunks += 1
            self.reply_parts.append(text)
        if part.done:
            self.final = part

    @property
    def reply(self) -> str:
        return "".join(self.reply_parts)

    def measure(self, ended_ns: int, *, ok: bool = False) -> None:
        """Fill the span's timings and tokens from what was observed.

        ``ok``: the call ended well, so even with nothing observed it consumed its prompt.
        """
        span = self.span
        span.latency_ns = ended_ns - self._t0
        span.ended_at = span.started_at + timedelta(microseconds=span.latency_ns // 1000)
        if span.stream and self._first_ns is not None:
            span.ttft_ns = self._first_ns - self._t0
        final = self.final
        if final is not None:
            span.response_model = final.model or None
            span.done_reason = getattr(final, "done_reason", None)
            span.total_duration_ns = final.total_duration
            span.load_duration_ns = final.load_duration
            span.prompt_eval_duration_ns = getattr(final, "prompt_eval_duration", None)
            span.eval_duration_ns = getattr(final, "eval_duration", None)
        if final is None and self._first_ns is None and not ok:
            return  # Ollama never answered: nothing was consumed
        if span.prompt_eval_duration_ns is None and span.eval_duration_ns is None:
            # Ollama did not say how long it was busy (its /v1 routes never do; an aborted
            # stream has no final chunk): the meter's own clock stands in, and says so.
            first = span.ttft_ns or 0
            span.prompt_eval_duration_ns = first
            span.eval_duration_ns = span.latency_ns - first
            span.duration_source = DurationSource.MEASURED
        else:
            span.duration_source = DurationSource.REPORTED
        # Ollama omits counts that are zero, and a broken stream has no final chunk:
        # then the count is estimated from the text, and the span says so.
        reported_in = final.prompt_eval_count if final is not None else None
        reported_out = getattr(final, "eval_count", None) if final is not None else None
        if isinstance(final, ollama.EmbedResponse):
            reported_out = 0  # embeddings produce no tokens
        span.input_tokens = (
            reported_in if reported_in is not None else estimate_tokens(self.prompt_text)
        )
        if reported_out is not None:
            span.output_tokens = reported_out
        else:
            span.output_tokens = self.content_chunks if span.stream else estimate_tokens(self.reply)
        if reported_in is None or reported_out is None:
            span.token_source = TokenSource.ESTIMATED


def sync_pricing_file(ledger: Ledger, path: Path, *, default_currency: str) -> bool:
    """Load ``OMETER_PRICING_FILE`` into the ledger when its content changed; True if it did."""
    content = path.read_bytes()
    try:
        rules = parse_pricing_toml(
            content.decode("utf-8"), default_currency=default_currency, source=f"file:{path}"
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise PricingError(f"OMETER_PRICING_FILE {path}: {exc}") from None
    return ledger.sync_price_rules(f"file:{path}", rules, content)


def telemetry_observers(settings: Settings) -> list[SpanObserver]:
    """The exporter observer when one is configured; none otherwise (and no OTel import)."""
    from ollama_meter.telemetry import telemetry_for

    telemetry = telemetry_for(settings)
    return [telemetry.observer] if telemetry is not None else []


def sync_env_budgets(ledger: Ledger, settings: Settings) -> None:
    """Bring ``DEPARTMENT_BUDGETS`` into the ledger when it is set (source ``env``)."""
    from ollama_meter.budgets import parse_department_budgets

    if settings.department_budgets:
        ledger.sync_budgets(
            "env", parse_department_budgets(settings.department_budgets, currency=settings.currency)
        )


def ledger_for(settings: Settings) -> Ledger:
    """The configured ledger, with ``OMETER_PRICING_FILE`` and ``DEPARTMENT_BUDGETS`` brought in.

    Every command that reads prices or budgets opens the ledger through here, so the
    file and the variable apply the same way everywhere.
    """
    from ollama_meter.ledger import open_ledger

    ledger = open_ledger(settings.ledger_url, wait=settings.ledger_wait)
    if settings.pricing_file is not None:
        sync_pricing_file(ledger, settings.pricing_file, default_currency=settings.currency)
    sync_env_budgets(ledger, settings)
    return ledger


GATEWAY_LEASE_SHARE = 0.25
"""The share of a budget's room a long-running process leases at a time."""


def budget_gate(ledger: Ledger, settings: Settings, *, lease_share: float = 0.0) -> BudgetGate:
    """Budgets from the ledger and the configured alert channels.

    ``lease_share`` 0 (a CLI run: one call, then exit) reserves each call's bound on its
    own; a long-running process leases a share of the room and admits calls in memory.
    """
    from ollama_meter.budgets import AlertDispatcher, Channel, EmailChannel, WebhookChannel

    channels: list[Channel] = []
    if settings.alert_webhook_url:
        channels.append(WebhookChannel(settings.alert_webhook_url))
    if settings.smtp_host and settings.email_recipients:
        channels.append(
            EmailChannel(
                settings.smtp_host,
                settings.smtp_port,
                sender=settings.smtp_from,
                recipients=settings.email_recipients,
                user=settings.smtp_user,
                password=settings.smtp_password.get_secret_value()
                if settings.smtp_password
                else None,
            )
        )
    gate = BudgetGate(
        ledger,
        tz=settings.tz,
        alerts=AlertDispatcher(ledger, channels),
        lease_share=lease_share,
    )
    gate.retry_undelivered()
    return gate


class PriceSource:
    """The price book in force, reloaded from the ledger at most every ``ttl`` seconds."""

    def __init__(self, ledger: Ledger, *, settings: Settings, ttl: float = 30.0) -> None:
        self._book = Reloaded(
            lambda: PriceBook(ledger.price_rules(), tz=settings.tz, currency=settings.currency),
            ttl=ttl,
            what="price rules",
        )

    def __call__(self) -> PriceBook:
        return self._book.get()


class Meter:
    """Runs the metering sequence. One per process and upstream; thread-safe."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        prices: Callable[[], PriceBook],
        upstream: Upstream,
        source: str,
        clock: Clock = utc_now,
        observers: Sequence[SpanObserver] = (),
        budgets: BudgetGate | None = None,
        capture_content: bool = False,
        reply_cap: int = DEFAULT_REPLY_CAP,
        journal: bool = True,
    ) -> None:
        self.budgets = budgets
        self.reply_cap = reply_cap
        self.journal = journal
        self._recent: dict[str, tuple[float, list[PastCall]]] = {}
        self.capture_content = capture_content
        self.ledger = ledger
        self.prices = prices
        self.upstream = upstream
        self.source = source
        self.clock = clock
        self.observers = list(observers)
        self.writer = GroupCommitWriter(ledger)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        source: str,
        clock: Clock = utc_now,
        observers: Sequence[SpanObserver] = (),
    ) -> Meter:
        """A meter wired to the configured ledger, prices, budgets, telemetry and Ollama.

        ``observers`` (user hooks) run before telemetry, so what they add is exported.
        """
        from ollama_meter.upstream import RetryPolicy, Upstream, breaker_for

        ledger = ledger_for(settings)
        meter = cls(
            ledger=ledger,
            prices=PriceSource(ledger, settings=settings),
            upstream=Upstream(
                settings.ollama_host,
                timeout=settings.upstream_timeout,
                retry=RetryPolicy(retries=settings.retries, backoff=settings.retry_backoff),
                breaker=breaker_for(
                    settings.ollama_host,
                    threshold=settings.breaker_failures,
                    reset_after=settings.breaker_reset,
                ),
            ),
            source=source,
            clock=clock,
            budgets=budget_gate(
                ledger, settings, lease_share=GATEWAY_LEASE_SHARE if source == "gateway" else 0.0
            ),
            observers=[*observers, *telemetry_observers(settings)],
            capture_content=settings.capture_content,
            reply_cap=settings.budget_reply_cap,
            journal=settings.journal,
        )
        meter.recover_interrupted()
        return meter

    # -- the sequence ------------------------------------------------------------------

    def open(
        self,
        *,
        operation: str,
        model: str,
        stream: bool,
        attribution: Attribution,
        facts: RequestFacts | None = None,
    ) -> MeteredCall:
        """Start a call: attribute it, let the budgets admit it (or refuse it), open its span.

        Raises :class:`LedgerError` while nothing can be recorded (the call is not made),
        :class:`BudgetExceeded` when a hard budget has no room for the call's bound.
        """
        if not model or not model.strip():
            raise ValidationError("no model given; pass one with -m/--model, e.g. -m llama3.1:8b")
        self.ledger.check_writable()
        facts = facts or RequestFacts(prompt_text="", prompt_bytes=0)
        span = self._new_span(operation, model, stream, attribution)
        call = MeteredCall(span, facts.prompt_text)
        if self.budgets is not None:
            self._admit(call, facts)
        if self.journal:
            self.ledger.journal.opened(make_storable(span), estimate_tokens(facts.prompt_text))
        self._notify("on_start", span)
        return call

    def reserves(self, attribution: Attribution) -> bool:
        """Whether :meth:`open` for this caller may touch the ledger (and so wait on it).

        True when a budget covers the caller, or when the budgets are due to be reloaded;
        False means opening is in-memory work that an event loop can do in place. This
        never touches the ledger itself.
        """
        if self.budgets is None:
            return False
        known = self.budgets.cached_budgets_for(attribution.tenant, attribution.department)
        return known is None or bool(known)

    def _new_span(self, operation: str, model: str, stream: bool, who: Attribution) -> SpanRecord:
        return SpanRecord(
            id=new_span_row_id(),
            trace_id=new_trace_id(),
            span_id=new_otel_span_id(),
            started_at=self.clock(),
            tenant=who.tenant,
            department=who.department,
            user=who.user,
            tags=dict(who.tags),
            source=self.source,
            operation=operation,
            upstream_host=self.upstream.host,
            request_model=model,
            stream=stream,
            currency=self.prices().currency,
        )

    def refuse(
        self,
        *,
        operation: str,
        model: str,
        attribution: Attribution,
        error_type: str,
        message: str,
        http_status: int,
        stream: bool = False,
    ) -> SpanRecord:
        """Record a call refused before metering could start (a malformed request, no key)."""
        span = self._new_span(operation, model[:255], stream, attribution)
        span.status = Status.ERROR
        span.error_type = error_type
        span.error_message = message[:2000]
        span.http_status = http_status
        span.latency_ns = 0
        span.ended_at = span.started_at
        self._record(span)
        return span

    def _admit(self, call: MeteredCall, facts: RequestFacts) -> None:
        """Reserve the call's bound in every hard budget; a refusal is a ``rejected`` span, then raised.

        A call under a hard budget that sets no reply cap gets :attr:`reply_cap`, so the
        bound it was admitted on holds.
        """
        assert self.budgets is not None
        span = call.span
        if not any(b.hard for b in self.budgets.budgets_for(span.tenant, span.department)):
            return
        limits = facts.bound(self.reply_cap)
        if facts.max_output is None and not facts.embedding:
            call.output_cap = limits.output_tokens
        try:
            bound = bound_cost(
                self.prices(),
                span.request_model,
                span.started_at,
                limits,
                self._history(span.request_model),
            )
            call.reservation = self.budgets.admit(
                call_id=span.id,
                tenant=span.tenant,
                department=span.department,
                estimate=bound,
                now=span.started_at,
            )
        except LedgerError as exc:
            # A hard budget that cannot be checked is not waved through.
            unchecked = LedgerError(
                f"the budget for {span.tenant}/{span.department} cannot be checked, so the "
                f"call was not made: {exc}. Retry when the database is back"
            )
            span.status = Status.ERROR
            span.error_type = "ledger_unavailable"
            span.error_message = str(unchecked)[:2000]
            span.http_status = 503
            span.ended_at = span.started_at
            span.latency_ns = 0
            self._record(span)  # spooled while the database is away
            raise unchecked from exc
        except BudgetExceeded as refusal:
            span.status = Status.REJECTED
            span.error_type = refusal.error_type
            span.error_message = str(refusal)[:2000]
            span.http_status = 429
            span.ended_at = span.started_at
            span.latency_ns = 0
            span.apply_cost(self.prices().cost(span.model, span.started_at, usage_of(span)))
            self._record(span)
            raise

    def _history(self, model: str) -> list[PastCall]:
        """The model's recent calls (for time-priced bounds), read at most every 30 s."""
        now = time.monotonic()
        cached = self._recent.get(model)
        if cached is None or now - cached[0] > HISTORY_TTL:
            if len(self._recent) > 1000:
                self._recent.clear()
            cached = self._recent[model] = (now, self.ledger.recent_usage(model))
        return cached[1]

    def close(self, call: MeteredCall, error: BaseException | None = None) -> SpanRecord:
        """Measure, price and write the call; the span is durable when this returns.

        Raises :class:`LedgerError` only when not even memory can keep the span.
        """
        call.measure(time.perf_counter_ns(), ok=error is None)
        span = call.span
        if error is None:
            span.status = Status.OK
            span.http_status = 200
        elif isinstance(error, UpstreamError):
            span.status = Status.ERROR
            span.error_type = error.error_type
            span.error_message = str(error)[:2000]
            span.http_status = error.status_code
        elif isinstance(
            error, GeneratorExit | KeyboardInterrupt | SystemExit | asyncio.CancelledError
        ):
            span.status = Status.CLIENT_ABORT
            span.error_type = "client_abort"
        else:
            span.status = Status.ERROR
            span.error_type = type(error).__name__
            span.error_message = str(error)[:2000]
        if self.capture_content:
            span.prompt, span.reply = call.prompt_text, call.reply
        # Counts and names came from a caller and from Ollama: bound them before pricing.
        make_storable(span)
        span.apply_cost(self.prices().cost(span.model, span.started_at, usage_of(span)))
        call.stored = self._record(span)
        if self.budgets is not None:
            self._settle(call)
        return span

    def _settle(self, call: MeteredCall) -> None:
        """Release the reservation and fire alerts; a failure here never fails the call."""
        assert self.budgets is not None
        span = call.span
        try:
            if call.reservation is not None:
                self.budgets.settle(call.reservation, recorded=call.stored == Stored.COMMITTED)
            if span.cost_total > 0:
                self.budgets.check_alerts(
                    span.tenant, span.department, span.started_at, span.cost_total
                )
        except Exception:
            log.exception(
                "settling budgets for span %s failed; its reservation will expire", span.id
            )

    # -- operations ---------------------------------------------------------------------

    def chat(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        attribution: Attribution,
        stream: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> Run:
        """A metered ``/api/chat`` call; iterate it for Ollama's chunks, then read ``.span``."""
        request = {"model": model, "messages": messages, "options": options}
        return Run(self, "chat", request, attribution, stream)

    def run(
        self, operation: str, request: Mapping[str, Any], *, attribution: Attribution, stream: bool
    ) -> Run:
        """Any metered operation (``chat``, ``generate``, ``embed``) with the client's own arguments."""
        return Run(self, operation, request, attribution, stream)

    def _record(self, span: SpanRecord) -> Stored:
        """Hand a finished span to the observers, then make it durable; says where it went.

        Hooks see it before it is written, so the tags they add are kept; what they or
        anyone else put in it is made storable last.
        """
        make_storable(span)
        self._notify("on_end", span)
        make_storable(span)
        return self.writer.write(span)

    def recover_interrupted(self) -> int:
        """Record the calls dead processes left open in the journal, as ``interrupted``.

        Ollama received each of them; how they ended is unknown. The prompt's estimated
        tokens are charged, nothing more. Returns how many there were.
        """
        spans = []
        with self.ledger.journal.orphans() as orphans:
            for orphan in orphans:
                span = orphan.span
                span.status = Status.INTERRUPTED
                span.error_type = "interrupted"
                span.error_message = INTERRUPTED_MESSAGE
                span.input_tokens = orphan.input_estimate
                span.token_source = TokenSource.ESTIMATED
                make_storable(span)
                span.apply_cost(self.prices().cost(span.model, span.started_at, usage_of(span)))
                spans.append(span)
            if spans:
                self.ledger.record(spans)
        if spans:
            log.warning(
                "recorded %d call(s) a dead process left unfinished as interrupted", len(spans)
            )
        return len(spans)

    def _notify(self, hook: str, span: SpanRecord) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(span)
            except Exception:
                log.exception("observer %r failed in %s; the call goes on", observer, hook)

    def close_upstream(self) -> None:
        self.upstream.close()


class Run:
    """An iterable metered call: Ollama's chunks (or its one answer), then ``span`` is final.

    The last chunk is handed over only after the span is written, so whoever
    receives it can read the call's cost and ids.
    """

    def __init__(
        self,
        meter: Meter,
        operation: str,
        request: Mapping[str, Any],
        attribution: Attribution,
        stream: bool,
    ) -> None:
        self._meter = meter
        self.operation = operation
        self.request = request
        self._attribution = attribution
        self.stream = stream
        self.call: MeteredCall | None = None

    @property
    def span(self) -> SpanRecord:
        if self.call is None:
            raise RuntimeError("the call has not run yet; iterate it first")
        return self.call.span

    def open(self) -> MeteredCall:
        self.call = call = self._meter.open(
            operation=self.operation,
            model=str(self.request.get("model") or ""),
            stream=self.stream,
            attribution=self._attribution,
            facts=facts_of(self.operation, self.request),
        )
        if call.output_cap is not None:
            self.request = with_output_cap(self.operation, self.request, call.output_cap)
        return call

    def __iter__(self) -> Iterator[Response]:
        meter = self._meter
        call = self.open()
        last: Response | None = None
        try:
            if self.stream:
                for part in meter.upstream.stream(self.operation, self.request):
                    call.observe(part)
                    if last is not None:
                        yield last
                    last = part
            else:
                last = meter.upstream.call(self.operation, self.request)
                call.observe(last)
        except BaseException as exc:
            meter.close(call, exc)
            raise
        meter.close(call)
        if last is not None:
            yield last

    async def __aiter__(self) -> AsyncIterator[Response]:
        meter = self._meter
        call = await asyncio.to_thread(self.open)
        last: Response | None = None
        try:
            if self.stream:
                async for part in meter.upstream.astream(self.operation, self.request):
                    call.observe(part)
                    if last is not None:
                        yield last
                    last = part
            else:
                last = await meter.upstream.acall(self.operation, self.request)
                call.observe(last)
        except BaseException as exc:
            await asyncio.to_thread(meter.close, call, exc)
            raise
        await asyncio.to_thread(meter.close, call)
        if last is not None:
            yield last
