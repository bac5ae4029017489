"""The Python API's lifecycle hooks (``on_start``, ``on_end``) as a meter observer.

Owns what a hook is handed and what of its work is kept; never the call itself: a hook
that raises is logged here, by its name, and the call goes on (Ctrl-C and ``sys.exit()``
are raised once the call is recorded, ``meter._observers``). The time an ``on_start`` hook
takes is the caller's: the call waits for it before it is sent, so it is queue time.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ollama_meter.meter import SpanRecord
from ollama_meter.meter._attribution import MAX_TAGS, tag_problem

Hook = Callable[[SpanRecord], object]
"""What it returns is not used (an awaitable or a generator is closed unrun, and said so)."""

log = logging.getLogger("ollama_meter.client")


def check_hook(when: str, hook: object) -> None:
    """Refuse, as the client is made, a hook that would fail or do nothing at every call."""
    if hook is None:
        return
    if not callable(hook):
        raise TypeError(
            f"{when} is not callable, but {type(hook).__name__}: give a function that takes "
            f"the span, e.g. {when}=lambda span: span.tags.update(job='nightly')"
        )
    # An object whose __call__ is async is one too.
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(type(hook).__call__):
        raise TypeError(
            f"{when} is an async function: hooks are called with the span in the thread "
            "that ends the call, where nothing would await it; make it a plain function "
            "(hand slow work to a queue or a task of your own)"
        )
    # One with a ``yield`` only makes a generator when called: its body never runs.
    for made, what in (
        (inspect.isgeneratorfunction, "a generator function"),
        (inspect.isasyncgenfunction, "an async generator function"),
    ):
        if made(hook) or made(type(hook).__call__):
            raise TypeError(
                f"{when} is {what} (it has a yield): calling it only makes a generator, so "
                "its body would never run; make it a plain function without yield"
            )


class Hooks:
    """User callbacks as a meter observer; their failures are logged, never raised.

    A hook is handed a copy of the span: what it adds to ``tags`` (stored) and
    ``attributes`` (exported) is taken back, even when it then raises; nothing else
    it writes reaches the call, the ledger or the other observers.
    """

    may_wait = True  # a user's code: the meter notes a finished span before telling it

    def __init__(self, on_start: Hook | None, on_end: Hook | None) -> None:
        self._on_start, self._on_end = on_start, on_end

    def on_start(self, span: SpanRecord) -> None:
        if self._on_start is None:
            return
        began = time.perf_counter_ns()
        try:
            _shown("on_start", self._on_start, span)
        finally:
            # The call waits for the hook before it is sent, as a gateway's call waits for a
            # slot: queue time, in its latency, never in the busy time the meter's clock stands
            # in for when Ollama reports none (priced as GPU time; busy and queue time still
            # make the latency), nor against a hard budget's time cap (``MeteredCall``).
            span.queue_ns = (span.queue_ns or 0) + time.perf_counter_ns() - began

    def on_end(self, span: SpanRecord) -> None:
        if self._on_end is not None:
            _shown("on_end", self._on_end, span)

    def on_recorded_elsewhere(self, span: SpanRecord) -> None:
        """A call a gateway on this ledger recorded ends as any other: ``span.id`` names the
        gateway's span, the call's record (what the hook adds is not stored: no span is)."""
        self.on_end(span)


def _shown(when: str, hook: Hook, span: SpanRecord) -> None:
    copy = replace(span, tags=dict(span.tags), attributes=dict(span.attributes))
    answer: object = None
    try:
        answer = hook(copy)
    except (Exception, GeneratorExit, asyncio.CancelledError):
        # A hook's own: it runs in no generator and no task a cancellation reaches (the
        # async client's in a worker thread). Raised on, GeneratorExit cut an async stream
        # mid-close ("already running" on stderr) and CancelledError ended the caller's
        # task, which nobody cancelled. Ctrl-C and sys.exit() are the caller's: raised
        # once the call is recorded (``meter._observers``).
        log.exception(
            "%s hook %s raised; the call goes on, recorded as it ended", when, _named(hook)
        )
    finally:
        if isinstance(copy.tags, Mapping):
            span.tags = _kept_tags(when, copy.tags)
        if isinstance(copy.attributes, Mapping):
            span.attributes = dict(copy.attributes)
    if inspect.isawaitable(answer):
        if inspect.iscoroutine(answer):
            answer.close()  # never run: not left to warn when collected
        log.warning(
            "%s returned %s, which nothing awaits (hooks are called in the thread that ends "
            "the call): it did not run; make the hook a plain function",
            when,
            "a coroutine" if inspect.iscoroutine(answer) else "an awaitable",
        )
    elif inspect.isgenerator(answer) or inspect.isasyncgen(answer):
        if inspect.isgenerator(answer):
            answer.close()
        log.warning(
            "%s returned a generator, which nothing iterates: the code in it did not run; "
            "make the hook a plain function without yield",
            when,
        )


def _named(hook: Hook) -> str:
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return name if isinstance(name, str) else type(hook).__qualname__


def _kept_tags(when: str, tags: Mapping[Any, Any]) -> dict[str, str]:
    """The tags a hook left on the span that a call could carry: each follows the call's tag
    rules (text, a key by the name rules, a value of at most 256 printable characters), at
    most :data:`MAX_TAGS` of them (the call's own first); each is stored on the span's row and
    exported with it. What a call could not carry is left out, said in one log line: a hook's
    object whose ``str()`` raised cost the call its row, a control character reached the
    ledger and every report that prints it."""
    kept: dict[str, str] = {}
    refused: list[str] = []
    for given in tags.items():
        # Plain text: a subclass's own __str__, isprintable() and the like are not asked.
        key, value = (str.__str__(v) if isinstance(v, str) else v for v in given)
        problem = tag_problem(key, value)
        if problem is None:
            kept[key] = value
        else:
            refused.append(problem)
    if refused:
        log.warning(
            "%s set %s a call could not carry, left out (e.g. %s); set text tags, as a call's",
            when,
            "1 tag" if len(refused) == 1 else f"{len(refused):,} tags",
            refused[0],
        )
    if len(kept) <= MAX_TAGS:
        return kept
    log.warning(
        "%s left %s tags on the span; a span keeps %d (the call's own first), the other %s "
        "are left out",
        when,
        f"{len(kept):,}",
        MAX_TAGS,
        f"{len(kept) - MAX_TAGS:,}",
    )
    return dict(itertools.islice(kept.items(), MAX_TAGS))
