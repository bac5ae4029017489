"""The meter end to end against the Ollama emulator: tokens, timings, prices, failures."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.config import load_settings
from ollama_meter.errors import (
    ModelNotFound,
    PricingError,
    StreamError,
    UpstreamConnectionError,
    UpstreamServerError,
    ValidationError,
)
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.meter import Attribution, Meter, MeteredCall, PriceSource, SpanRecord, reprice
from ollama_meter.pricing import PriceRule, to_micros
from ollama_meter.testing import Fault, OllamaEmulator, unreachable_url
from tests.factories import token_prices

WHO = Attribution(tenant="acme", department="sales", user="alice", tags={"job": "test"})
HELLO = [{"role": "user", "content": "hello there friend"}]


def make_meter(db_url: str, **overrides: object) -> Meter:
    return Meter.from_settings(load_settings(db_url=db_url, **overrides), source="sdk")


def run_chat(
    meter: Meter, *, stream: bool = True, model: str = "llama3.1:8b", messages=HELLO, options=None
):  # type: ignore[no-untyped-def]
    run = meter.chat(
        model=model, messages=messages, attribution=WHO, stream=stream, options=options
    )
    parts = list(run)
    return run.span, parts


def stored(meter: Meter) -> list[SpanRecord]:
    return meter.ledger.latest(SpanFilter(), 1000)


def test_streamed_chat_is_measured_priced_and_written(
    db_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(db_url)
    meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    span, parts = run_chat(meter)
    final = parts[-1]
    assert final.done and len(parts) > 2
    assert span.input_tokens == final.prompt_eval_count == 3
    assert span.output_tokens == final.eval_count == len(parts) - 1
    assert span.token_source == "reported"
    assert span.cost_tokens == 3 * 1000 + span.output_tokens * 2000
    assert span.cost_total == span.cost_tokens and not span.unpriced
    assert (span.total_duration_ns, span.load_duration_ns) == (
        final.total_duration,
        final.load_duration,
    )
    assert (span.prompt_eval_duration_ns, span.eval_duration_ns) == (
        final.prompt_eval_duration,
        final.eval_duration,
    )
    assert (
        span.ttft_ns is not None
        and span.latency_ns is not None
        and 0 < span.ttft_ns <= span.latency_ns
    )
    assert span.status == "ok" and span.http_status == 200 and span.done_reason == "stop"
    assert (span.tenant, span.department, span.user, span.tags) == (
        "acme",
        "sales",
        "alice",
        {"job": "test"},
    )
    assert span.source == "sdk" and span.operation == "chat" and span.stream
    assert span.upstream_host == emulator.url
    assert stored(meter) == [span]


def test_non_streamed_chat(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    span, parts = run_chat(meter, stream=False)
    assert len(parts) == 1 and parts[0].done
    assert span.output_tokens == parts[0].eval_count
    assert span.ttft_ns is None and not span.stream
    assert span.unpriced and span.cost_total == 0
    assert stored(meter) == [span]


def test_gpu_hour_charges_exactly_the_busy_time(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    meter.ledger.add_price_rule(
        PriceRule(pattern="qwen2.5:*", currency="USD", gpu_hour=Decimal("3.60"))
    )
    span, _ = run_chat(meter, model="qwen2.5:7b")
    busy_ns = span.prompt_eval_duration_ns + span.eval_duration_ns  # type: ignore[operator]
    assert span.load_duration_ns and span.load_duration_ns > 0  # load is not charged
    assert span.cost_compute == to_micros(
        Decimal(busy_ns) / Decimal(3_600_000_000_000) * Decimal("3.60")
    )
    assert span.cost_total == span.cost_compute


def test_unknown_model_is_a_clear_error_span(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    with pytest.raises(ModelNotFound, match="'nope:1b' is not available .*ollama pull nope:1b"):
        run_chat(meter, model="nope:1b")
    (span,) = stored(meter)
    assert (span.status, span.error_type, span.http_status) == ("error", "model_not_found", 404)
    assert (span.input_tokens, span.output_tokens) == (0, 0)
    assert span.request_model == "nope:1b"


def test_unreachable_ollama_is_a_connection_error_span(db_url: str) -> None:
    meter = make_meter(db_url, ollama_host=unreachable_url())
    with pytest.raises(UpstreamConnectionError, match="cannot reach Ollama at .*OLLAMA_HOST"):
        run_chat(meter)
    (span,) = stored(meter)
    assert (span.status, span.error_type) == ("error", "connection")


def test_server_error_after_the_retries(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    emulator.inject(Fault.HTTP_500, times=3)  # the first try and both retries
    with pytest.raises(UpstreamServerError, match="HTTP 500"):
        run_chat(meter, stream=False)
    (span,) = stored(meter)
    assert (span.error_type, span.http_status) == ("upstream_5xx", 500)
    assert len(emulator.requests_to("/api/chat")) == 3


@pytest.mark.parametrize("fault", [Fault.MIDSTREAM_ERROR, Fault.DROP])
def test_broken_stream_keeps_what_was_consumed(
    db_url: str, emulator: OllamaEmulator, fault: Fault
) -> None:
    meter = make_meter(db_url)
    meter.ledger.add_price_rule(
        PriceRule(pattern="*", currency="USD", output_per_1m=Decimal(100_000))
    )
    emulator.inject(fault, after_tokens=4)
    run = meter.chat(model="llama3.1:8b", messages=HELLO, attribution=WHO, stream=True)
    received: list[object] = []
    with pytest.raises(StreamError):
        received.extend(run)
    assert len(received) == 4  # every piece charged was handed over before the failure
    (span,) = stored(meter)
    assert (span.status, span.error_type) == ("error", "stream_error")
    assert span.output_tokens == 4 and span.input_tokens == 5  # "hello there friend" ≈ 18 chars / 4
    assert span.token_source == "estimated"
    # the tokens Ollama produced are charged; request fees are not
    assert span.cost_tokens == span.cost_total == 400_000


def test_omitted_counts_are_estimated(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    emulator.inject(Fault.OMIT_COUNTS)
    span, parts = run_chat(meter)
    assert span.status == "ok" and span.token_source == "estimated"
    assert span.output_tokens == len(parts) - 1
    assert span.input_tokens == 5


def test_abandoned_stream_is_a_client_abort(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    run = meter.chat(model="llama3.1:8b", messages=HELLO, attribution=WHO)
    iterator = iter(run)
    next(iterator)
    next(iterator)
    iterator.close()  # type: ignore[attr-defined]
    (span,) = stored(meter)
    assert (span.status, span.error_type, span.token_source) == (
        "client_abort",
        "client_abort",
        "estimated",
    )
    # what Ollama produced: the two chunks handed over and the one read ahead
    assert span.output_tokens == 3


def test_bad_names_and_missing_model_are_refused_before_any_call(
    db_url: str, emulator: OllamaEmulator
) -> None:
    with pytest.raises(ValidationError, match="department name 'a b' has characters"):
        Attribution(tenant="acme", department="a b")
    with pytest.raises(ValidationError, match="tenant name is longer than 64"):
        Attribution(tenant="x" * 65, department="d")
    with pytest.raises(ValidationError, match="tag"):
        Attribution(tenant="t", department="d", tags={"bad key": "v"})
    meter = make_meter(db_url)
    with pytest.raises(ValidationError, match="no model given"):
        run_chat(meter, model=" ")
    assert emulator.requests == []


@given(
    field=st.sampled_from(["tenant", "department", "user"]),
    value=st.integers() | st.floats() | st.binary() | st.lists(st.text(max_size=3)) | st.booleans(),
)
def test_a_name_that_is_not_text_is_a_clear_error(field: str, value: object) -> None:
    """``MeteredClient(department=123)`` was a TypeError from deep inside; it names the field."""
    names: dict[str, object] = {"tenant": "t", "department": "d", field: value}
    with pytest.raises(ValidationError, match=f"^{field} name must be text, not "):
        Attribution(**names)  # type: ignore[arg-type]


@given(
    tags=st.dictionaries(
        st.sampled_from(["job", "team", "ticket"]) | st.integers() | st.none(),
        st.text(max_size=300) | st.integers() | st.none() | st.lists(st.text(max_size=3)),
        max_size=3,
    )
)
def test_tags_are_text_with_printable_values_or_a_clear_error(tags: dict[object, object]) -> None:
    """A tag is stored as given or refused at once: never ``"None"`` or ``"['x']"`` in the ledger."""
    good = all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= 256 and v.isprintable()
        for k, v in tags.items()
    )
    if good:
        assert Attribution(tenant="t", department="d", tags=tags).tags == tags  # type: ignore[arg-type]
    else:
        with pytest.raises(ValidationError, match=r"^tag [^\n]*$"):
            Attribution(tenant="t", department="d", tags=tags)  # type: ignore[arg-type]


@given(count=st.integers(0, 200))
def test_a_call_carries_at_most_64_tags(count: int) -> None:
    """Tags were bounded in size but not in number: a call could carry any count, each
    stored on its span and exported (OTel keeps 128 attributes, ometer's own among them)."""
    tags = {f"k{n}": "v" for n in range(count)}
    if count <= 64:
        assert Attribution(tenant="t", department="d", tags=tags).tags == tags
    else:
        with pytest.raises(ValidationError, match=rf"^{count} tags: a call takes at most 64 "):
            Attribution(tenant="t", department="d", tags=tags)


def test_observers_see_start_and_end_and_cannot_break_the_call(
    db_url: str, emulator: OllamaEmulator
) -> None:
    seen: list[tuple[str, str]] = []

    class Watcher:
        def on_start(self, span: SpanRecord) -> None:
            seen.append(("start", span.id))

        def on_end(self, span: SpanRecord) -> None:
            seen.append(("end", span.status))
            raise RuntimeError("observer bug")

    meter = make_meter(db_url)
    meter.observers.append(Watcher())
    span, _ = run_chat(meter)
    assert seen == [("start", span.id), ("end", "ok")]
    assert len(stored(meter)) == 1


def test_pricing_file_is_loaded_and_kept_in_sync(
    db_url: str, emulator: OllamaEmulator, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 1000\noutput_per_1m = 2000\n')
    meter = make_meter(db_url, pricing_file=str(prices))
    span, _ = run_chat(meter)
    assert span.cost_tokens == 3000 + span.output_tokens * 2000
    (rule,) = meter.ledger.price_rules()
    assert rule.source == f"file:{prices.resolve()}"
    prices.write_text("[[rule]]\nmodel = 'broken\n")
    with pytest.raises(PricingError, match="OMETER_PRICING_FILE"):
        make_meter(db_url, pricing_file=str(prices))


@pytest.mark.parametrize(
    ("change", "why"), [("deleted", "No such file or directory"), ("directory", "Is a directory")]
)
def test_a_pricing_file_gone_after_the_settings_were_read_is_one_line_and_the_rules_stay(
    db_url: str, emulator: OllamaEmulator, tmp_path: Path, change: str, why: str
) -> None:
    """The settings check the file once; a gateway waiting for its database, or a Python
    program making a client later, read it again: a file deleted or replaced by a directory
    in between ended in Python's IsADirectoryError (a traceback), not a line naming it."""
    prices = tmp_path / "prices.toml"
    prices.write_text('[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 1000\n')
    make_meter(db_url, pricing_file=str(prices))
    cfg = load_settings(db_url=db_url, pricing_file=str(prices))
    prices.unlink()
    if change == "directory":
        prices.mkdir()
    with pytest.raises(PricingError) as caught:
        Meter.from_settings(cfg, source="sdk")
    assert str(caught.value) == f"OMETER_PRICING_FILE {prices.resolve()}: cannot be read: {why}"
    (rule,) = Ledger(db_url).price_rules()  # the rules synced before stay in force
    assert (rule.pattern, rule.input_per_1m) == ("llama3.1:*", Decimal(1000))


def test_reprice_moves_costs_and_says_by_how_much(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    spans = [run_chat(meter)[0] for _ in range(3)]
    outputs = sum(s.output_tokens for s in spans)
    meter.ledger.add_price_rule(
        PriceRule(pattern="llama3.1:*", currency="USD", output_per_1m=Decimal(1000))
    )
    book = PriceSource(meter.ledger, settings=load_settings(db_url=db_url))()
    seen: list[int] = []
    summary = reprice(meter.ledger, book, since=spans[0].started_at, batch=2, progress=seen.append)
    assert (summary.examined, summary.changed, summary.newly_priced) == (3, 3, 3)
    assert summary.delta() == {"USD": outputs * 1000}
    assert seen == [2, 1]
    assert sum(s.cost_total for s in stored(meter)) == outputs * 1000
    again = reprice(meter.ledger, book, since=spans[0].started_at)
    assert (again.examined, again.changed) == (3, 0)


def test_a_silent_ollama_times_out(db_url: str, emulator: OllamaEmulator) -> None:
    from ollama_meter.errors import UpstreamTimeout

    meter = make_meter(db_url, upstream_timeout=0.3, retries=0)
    emulator.inject(Fault.HANG)
    with pytest.raises(
        UpstreamTimeout, match="did not answer in time; raise OMETER_UPSTREAM_TIMEOUT"
    ):
        run_chat(meter, stream=False)
    (span,) = stored(meter)
    assert (span.status, span.error_type) == ("error", "timeout")


def test_bad_request_is_classified(db_url: str, emulator: OllamaEmulator) -> None:
    from ollama_meter.errors import UpstreamBadRequest

    meter = make_meter(db_url)
    with pytest.raises(UpstreamBadRequest, match="HTTP 400"):
        run_chat(meter, model="nomic-embed-text")  # an embedding model cannot chat
    (span,) = stored(meter)
    assert (span.error_type, span.http_status) == ("bad_request", 400)


def test_a_flaky_upstream_is_retried_and_metered_once(
    db_url: str, emulator: OllamaEmulator
) -> None:
    meter = make_meter(db_url)
    emulator.inject(Fault.HTTP_503, times=2)
    span, parts = run_chat(meter, stream=False)
    assert span.status == "ok" and parts[0].done
    assert len(emulator.requests_to("/api/chat")) == 3
    assert len(stored(meter)) == 1


def test_4xx_is_never_retried(db_url: str, emulator: OllamaEmulator) -> None:
    meter = make_meter(db_url)
    with pytest.raises(ModelNotFound):
        run_chat(meter, model="nope:1b", stream=False)
    assert len(emulator.requests_to("/api/chat")) == 1


def test_a_dead_upstream_opens_the_breaker_after_three_failures(db_url: str) -> None:
    from ollama_meter.errors import CircuitOpen

    meter = make_meter(db_url, ollama_host=unreachable_url(), retries=0, breaker_reset=30)
    for _ in range(3):
        with pytest.raises(UpstreamConnectionError):
            run_chat(meter)
    with pytest.raises(
        CircuitOpen, match=r"failed 3 calls in a row; not calling it until .* \(in 30 s\)"
    ):
        run_chat(meter)
    spans = stored(meter)
    assert [s.error_type for s in spans] == [
        "circuit_open",
        "connection",
        "connection",
        "connection",
    ]
    assert spans[0].http_status == 503


def test_a_call_is_priced_by_the_rules_it_was_admitted_under(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """A rule added while a call is in flight does not price it (its budget bound came from
    the rules before); the next call is priced by it. `ometer reprice` applies it to both."""
    meter = make_meter(db_url)
    before = meter.ledger.add_price_rule(token_prices("llama3.1:*"))
    run = meter.chat(model="llama3.1:8b", messages=HELLO, attribution=WHO, stream=True)
    chunks = iter(run)
    next(chunks)  # the call is in flight
    after = meter.ledger.add_price_rule(
        PriceRule(pattern="llama3.1:8b", currency="USD", output_per_1m=Decimal(2000))
    )
    meter.prices.cache.expire()  # as if the reload came right now
    assert meter.prices().rule_for("llama3.1:8b", run.span.started_at) == after
    list(chunks)
    span = run.span
    assert span.price_rule_id == before.id
    assert span.cost_total == 3 * 1000 + span.output_tokens * 2000
    following, _ = run_chat(meter)
    assert following.price_rule_id == after.id
    assert following.cost_total == following.output_tokens * 2000


@pytest.mark.parametrize("journal", [True, False])
def test_observers_see_a_storable_span_from_its_start_journal_or_not(
    sqlite_url: str, emulator: OllamaEmulator, journal: bool
) -> None:
    """Without the journal, on_start saw the raw name (telemetry exported it): 300 characters, a bell."""
    seen: list[str] = []

    class Watcher:
        def on_start(self, span: SpanRecord) -> None:
            seen.append(span.request_model)

        def on_end(self, span: SpanRecord) -> None:
            seen.append(span.request_model)

    meter = make_meter(sqlite_url, journal=journal)
    meter.observers.append(Watcher())
    model = "m\x07" + "x" * 300
    with pytest.raises(ModelNotFound):
        run_chat(meter, model=model)
    clean = "m\ufffd" + "x" * 252 + "…"
    assert seen == [clean, clean]


@given(
    queued=st.integers(0, 10**11),
    idle=st.integers(0, 10**11),
    ran=st.integers(0, 10**11),
    first=st.one_of(st.none(), st.integers(0, 10**11)),
    paid=st.one_of(st.none(), st.integers(0, 10**11)),
)
def test_time_in_the_gateways_queue_is_never_charged_as_busy_time(
    queued: int, idle: int, ran: int, first: int | None, paid: int | None
) -> None:
    """A call Ollama reports no durations for (its /v1 routes, a stream cut short) is charged
    the meter's own clock: from when it was sent, not from when it began to wait for a slot
    (a call that queued a minute was charged a minute of GPU time), nor the waits between
    its attempts (a call retried after a 503 was charged its backoff)."""
    waited = queued + idle
    from zoneinfo import ZoneInfo

    from ollama_meter.meter import MeteredCall
    from ollama_meter.pricing import PriceBook
    from tests.factories import make_span

    span = make_span(
        stream=first is not None,
        total_duration_ns=None,
        load_duration_ns=None,
        prompt_eval_duration_ns=None,
        eval_duration_ns=None,
        queue_ns=queued,
    )
    call = MeteredCall(span, "hi", PriceBook([], tz=ZoneInfo("UTC"), currency="USD"))
    call.idle_ns = idle
    started = call._t0
    if first is not None:
        call._first_ns = started + waited + min(first, ran)
    if paid is not None:  # cut on time: charged at most the busy time its bound paid for
        call.time_cap_ns, call.paid_ns = paid, paid
        call.out_of_time()
    call.measure(started + waited + ran, ok=True)
    assert span.latency_ns == waited + ran
    charged = span.prompt_eval_duration_ns + span.eval_duration_ns  # type: ignore[operator]
    assert charged == (ran if paid is None else min(ran, paid))
    if paid is None:
        assert span.prompt_eval_duration_ns == (0 if first is None else min(first, ran))
    assert span.duration_source == "measured"


def _timed_call(paid: int, cap: int) -> MeteredCall:
    from zoneinfo import ZoneInfo

    from ollama_meter.pricing import PriceBook
    from tests.factories import make_span

    span = make_span(
        stream=True,
        total_duration_ns=None,
        load_duration_ns=None,
        prompt_eval_duration_ns=None,
        eval_duration_ns=None,
    )
    call = MeteredCall(span, "hi", PriceBook([], tz=ZoneInfo("UTC"), currency="USD"))
    call.time_cap_ns, call.paid_ns = cap, paid
    return call


@given(
    prompt=st.integers(0, 10**11),
    generation=st.integers(0, 10**11),
    load=st.integers(0, 10**11),
    paid=st.integers(0, 10**11),
    allowed=st.integers(0, 10**11),
    cut=st.booleans(),
)
def test_a_call_a_hard_budget_timed_is_charged_at_most_the_busy_time_its_bound_paid_for(
    prompt: int, generation: int, load: int, paid: int, allowed: int, cut: bool
) -> None:
    """The cut waits a model load past the paid time: a warm server that generated through
    it reported more busy time than the bound paid for (or the time ran out as the final
    chunk came), and was charged all of it, past the hard budget. Ollama's own figures are
    charged up to the paid time, prompt evaluation first; within it, as reported."""
    from ollama_meter.upstream import Final

    call = _timed_call(paid, paid + allowed)
    final = Final(
        input_tokens=3, output_tokens=2, load_ns=load, prompt_eval_ns=prompt, eval_ns=generation
    )
    assert call.take([final]) is None
    if cut:
        call.out_of_time()
    # The call took as long as Ollama says it worked: no figure is past its latency.
    call.measure(call._t0 + max(load + prompt + generation, 10**9), ok=True)
    span = call.span
    assert span.duration_source == "reported" and span.load_duration_ns == load
    assert span.prompt_eval_duration_ns == min(prompt, paid)
    assert span.eval_duration_ns == min(generation, paid - min(prompt, paid))


figure = st.none() | st.integers(0, 10**15)


@given(
    latency=st.integers(0, 10**12),
    total=figure,
    load=figure,
    prompt=figure,
    generation=figure,
)
def test_no_reported_time_is_longer_than_the_call_the_meter_timed(
    latency: int, total: int | None, load: int | None, prompt: int | None, generation: int | None
) -> None:
    """Ollama times its work inside the request, so no honest figure, nor load, prompt and
    reply together, is longer than the call: time runs out in the order Ollama works (load,
    prompt, reply), a figure within what is left is kept as reported, and a WARNING says so."""
    from ollama_meter.upstream import Final

    call = _timed_call(10**16, 10**16)
    call.paid_ns = call.time_cap_ns = None
    final = Final(
        input_tokens=3,
        output_tokens=2,
        total_ns=total,
        load_ns=load,
        prompt_eval_ns=prompt,
        eval_ns=generation,
    )
    assert call.take([final]) is None
    call.measure(call._t0 + latency, ok=True)
    span = call.span
    left = latency
    for said, kept in zip(
        (load, prompt, generation),
        (span.load_duration_ns, span.prompt_eval_duration_ns, span.eval_duration_ns),
        strict=True,
    ):
        if said is not None or span.duration_source == "reported":
            assert kept == (None if said is None else min(said, left)), (said, kept, left)
        left -= kept or 0
    assert left >= 0  # load, prompt and reply together: at most the latency
    assert span.total_duration_ns == (None if total is None else min(total, latency))


def test_a_call_out_of_time_is_never_cut_at_its_final_chunk() -> None:
    """The answer is whole once the final chunk has come: cutting it there saves no time,
    and only threw the finished answer away (the client got an error for it)."""
    from ollama_meter.errors import OverCap
    from ollama_meter.upstream import Delta, Final

    call = _timed_call(0, 0)  # no time left at all
    assert call.take([Final(input_tokens=3, output_tokens=2)]) is None
    assert isinstance(_timed_call(0, 0).take([Delta("a")]), OverCap)


def test_reprice_under_the_rules_the_meter_had_changes_nothing(
    db_url: str, emulator: OllamaEmulator
) -> None:
    """Every span the meter writes is priced as ``ometer reprice`` would price it: a call
    refused before metering (a rate limit, a malformed request) was stored unpriced in the
    default currency, so a reprice with no rule changed said '1 changed, 1 newly priced'
    and moved it to the rule's currency."""
    from dataclasses import replace

    meter = make_meter(db_url)
    meter.ledger.add_price_rule(replace(token_prices("*"), currency="EUR"))
    run_chat(meter)
    with pytest.raises(ModelNotFound):
        run_chat(meter, model="nope:1b")
    meter.refuse(
        operation="chat",
        model="llama3.1:8b",
        attribution=WHO,
        error_type="rate_limited",
        message="over the limit",
        http_status=429,
    )
    spans = stored(meter)
    assert len(spans) == 3 and {s.currency for s in spans} == {"EUR"}
    assert not any(s.unpriced for s in spans)
    book = PriceSource(meter.ledger, settings=load_settings(db_url=db_url))()
    summary = reprice(meter.ledger, book, since=min(s.started_at for s in spans))
    assert (summary.examined, summary.changed, summary.newly_priced) == (3, 0, 0)
    assert summary.delta() == {"EUR": 0}


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.integers(0, 700_000), min_size=1, max_size=8),
    stream=st.booleans(),
)
def test_a_reply_of_any_length_keeps_at_most_a_million_characters_and_counts_them_all(
    pieces: list[int], stream: bool
) -> None:
    """A server that streams for ever (or lies) fills no memory and no ledger row: the reply
    keeps its first characters up to the cap, says how many more there were, and a whole
    reply Ollama did not count is still estimated from all of it."""
    from zoneinfo import ZoneInfo

    from ollama_meter.meter._call import KEPT_REPLY_CHARS
    from ollama_meter.pricing import PriceBook
    from ollama_meter.upstream import Delta
    from tests.factories import make_span

    span = make_span(stream=stream, input_tokens=0, output_tokens=0)
    call = MeteredCall(span, "hi", PriceBook([], tz=ZoneInfo("UTC"), currency="USD"))
    texts = [chr(ord("a") + i % 26) * size for i, size in enumerate(pieces)]
    for text in texts:
        call.observe(Delta(text))
    whole = "".join(texts)
    if len(whole) <= KEPT_REPLY_CHARS:
        assert call.reply == whole
    else:
        more = len(whole) - KEPT_REPLY_CHARS
        assert call.reply == f"{whole[:KEPT_REPLY_CHARS]} [... {more:,} characters more, not kept]"
    call.measure(time.perf_counter_ns(), ok=True)
    chunks = sum(1 for text in texts if text)
    assert span.output_tokens == (chunks if stream else -(-len(whole) // 4))
