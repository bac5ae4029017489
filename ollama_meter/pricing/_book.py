"""A price book: the rules in force, asked "what does this call cost?" many times a second."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from ollama_meter._names import model_cache_key
from ollama_meter.errors import UnreadableRow
from ollama_meter.periods import Days
from ollama_meter.pricing._calc import compute_cost
from ollama_meter.pricing._rules import select_rule
from ollama_meter.records import Cost, PriceRule, SpanRecord, Status, UnreadableRule, Usage


class PriceBook:
    """Rules plus the zone that effective dates are read in; caches rule choice per model and day.

    ``unreadable``: rule rows edited by hand in SQL that cannot be read. A call to a model
    one of them may price is refused (:meth:`check`); every other model is priced as usual
    (one broken row refused every call, of every model, with a 503 or a traceback)."""

    def __init__(
        self,
        rules: Sequence[PriceRule],
        *,
        tz: ZoneInfo,
        currency: str,
        unreadable: Sequence[UnreadableRule] = (),
    ) -> None:
        self.rules = tuple(rules)
        self.unreadable = tuple(unreadable)
        self.tz = tz
        self.days = Days(tz)
        self.currency = currency
        self._choice: dict[tuple[str | bytes, object], PriceRule | None] = {}
        self._timed: dict[int, tuple[bool, bool]] = {}  # by id(): the book holds its rules

    def check(self, model: str) -> None:
        """Raise LedgerError, with the row's own words, when a broken row may price ``model``."""
        for broken in self.unreadable:
            if broken.covers(model):
                raise UnreadableRow(broken.problem)

    def rule_for(self, model: str, when: datetime) -> PriceRule | None:
        # The day reports and `reprice --since` cut, not the clock's date: where a clock went
        # back across midnight, the hour after it read as the day before, and was priced so.
        day = self.days.of(when)
        key = (model_cache_key(model), day)
        if key not in self._choice:
            if len(self._choice) > 10_000:
                self._choice.clear()
            self._choice[key] = select_rule(self.rules, model, day)
        return self._choice[key]

    def cost(self, model: str, when: datetime, usage: Usage) -> Cost:
        return compute_cost(self.rule_for(model, when), usage, currency=self.currency)

    def timed(self, rule: PriceRule | None) -> tuple[bool, bool]:
        """Whether an hour of Ollama's busy time changes what a call costs under ``rule`` (one of
        this book's, or None): an hour of generation, an hour of loading. Rounded as every
        cost is: a price too small for an hour to cost a micro-unit prices no time. Neither
        depends on the call's tokens, so each rule is asked once (a budget's bound asked
        four costs a call for them)."""
        known = self._timed.get(id(rule))
        if known is None:
            untimed = compute_cost(rule, _UNTIMED, currency=self.currency)
            known = self._timed[id(rule)] = (
                compute_cost(rule, _AN_HOUR_EVAL, currency=self.currency) != untimed,
                compute_cost(rule, _AN_HOUR_LOAD, currency=self.currency) != untimed,
            )
        return known

    def cost_of(self, span: SpanRecord) -> Cost:
        """What ``span`` costs: priced by the model Ollama answered with, or, when no rule
        prices that one, by the model the caller asked for, so a server that names a model
        no rule knows (an alias, or a lie) cannot make a priced call free.

        Unpriced when a rule row that cannot be read may price either model (a call that got
        past :meth:`check`: one recovered, an answer naming another model): not charged by
        a rule less specific than its own, but flagged, and priced by a reprice once the row
        is fixed."""
        if any(b.covers(m) for b in self.unreadable for m in {span.model, span.request_model}):
            return compute_cost(None, usage_of(span), currency=self.currency)
        rule = self.rule_for(span.model, span.started_at)
        if rule is None and span.request_model != span.model:
            rule = self.rule_for(span.request_model, span.started_at)
        return compute_cost(rule, usage_of(span), currency=self.currency)

    def check_all(self) -> None:
        """Raise LedgerError, with its words, when any rule row cannot be read (a reprice)."""
        if self.unreadable:
            raise UnreadableRow(self.unreadable[0].problem)


_HOUR_NS = 3_600 * 10**9
_UNTIMED = Usage()
_AN_HOUR_EVAL = Usage(eval_ns=_HOUR_NS)
_AN_HOUR_LOAD = Usage(load_ns=_HOUR_NS)


def usage_of(span: SpanRecord) -> Usage:
    """The facts of a recorded span that its price depends on."""
    return Usage(
        input_tokens=span.input_tokens,
        output_tokens=span.output_tokens,
        prompt_eval_ns=span.prompt_eval_duration_ns or 0,
        eval_ns=span.eval_duration_ns or 0,
        load_ns=span.load_duration_ns or 0,
        answered=served(span),
    )


def served(span: SpanRecord) -> bool:
    """Whether Ollama served the call, so that its request fees apply: it answered, or its
    caller stopped it once Ollama worked on it (then its time is on the span, timed by Ollama
    or the meter, or counts of it). A caller gone while its call waited for a gateway's slot,
    or before Ollama had the request, was served by no one: by its status (``client_abort``)
    alone it was charged the per-request fee of a call no server saw. A call whose process
    died once Ollama had it (``interrupted``) is charged its prompt, estimated, and no fee;
    but one a hard budget bounded is charged the bound, reply and time (``_recovery.py``),
    fee too: with none, a caller who killed its own process once it had a stream's reply
    spent nothing of the fee the budget held for it (test_killed_mid_reply.py)."""
    if span.status == Status.OK:
        return True
    if span.status == Status.INTERRUPTED:
        return bool(span.output_tokens or span.prompt_eval_duration_ns or span.eval_duration_ns)
    return span.status == Status.CLIENT_ABORT and bool(
        span.duration_source or span.prompt_eval_duration_ns or span.eval_duration_ns
        or span.input_tokens or span.output_tokens
    )  # fmt: skip
