"""The prompt a model adds to every call on its own, as Ollama's ``/api/show`` tells it.

A Modelfile's ``SYSTEM`` and ``MESSAGE`` lines are sent to the model with every
request and counted in its ``prompt_eval_count``, though no request carries them. A
hard budget admits a call on the most its prompt can count, so it must know them
before the first call: learned from calls past their bound, every ``ometer chat`` (one
call a process) and a gateway's first concurrent calls were each charged past their
bound by the whole hidden prompt. ``/api/show`` names them (``system``, ``messages``);
like the request's own text they count at most a token a byte. It names the model's
``template`` too, whose own text is bounded for each request's shape
(:mod:`~ollama_meter.budgets._template`).

Asked only for calls a hard budget covers, once per model and process for a minute,
of every server the call may go to (the most of them counts). A server that cannot
say (down, slow, an old Ollama, a proxy without the route) says nothing: the bound
then adds what earlier calls showed (:class:`~ollama_meter.budgets.HiddenPrompts`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ollama_meter._forks import ChildLock
from ollama_meter._names import model_cache_key
from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets._estimate import IMAGE_TOKENS, MESSAGE_TOKENS, TEMPLATE_TOKENS
from ollama_meter.records import MAX_TOKENS, model_key

if TYPE_CHECKING:
    from ollama_meter.budgets._template import TemplateBound

log = logging.getLogger("ollama_meter.meter")

SHOW_TIMEOUT = 2.0
"""Seconds a server has to answer ``/api/show`` before the call goes ahead without it."""
SHOW_TTL = 60.0
"""Seconds a model's answer is kept (a model re-created with another ``SYSTEM`` is seen then)."""
UNKNOWN_TTL = 5.0
"""Seconds a model no server could describe is not asked about again."""
SHOW_LIMIT = 4 * 2**20
"""The most of an ``/api/show`` answer read: a longer one is a server that cannot be believed,
and the call is bounded as the longest prompt a span can count."""
MODELS_KEPT = 1000
SPECIAL_TOKENS = 8
"""Tokens a tokenizer adds around a rendered prompt (a BOS token) that no template writes."""


@dataclass(frozen=True, slots=True)
class PromptShape:
    """What of a request the model's template writes: its messages, tools, tool calls and
    their parts, and the bytes of all its texts."""

    messages: int
    tools: int
    calls: int
    parts: int
    """Members of the lists and objects within its tools and messages (a tool's properties)."""
    text_bytes: int


@dataclass(frozen=True, slots=True)
class Shown:
    """What a model adds to every prompt on its own, as its servers said."""

    hidden: int
    """Its ``SYSTEM`` and ``MESSAGE`` lines (:func:`hidden_tokens`); the most, of all servers."""
    messages: int = 0
    """The messages they add to a chat (Ollama sends the ``SYSTEM`` as one)."""
    templates: tuple[TemplateBound, ...] = ()
    """What each server's ``TEMPLATE`` may write beyond a request's texts."""
    thinks: bool = True
    """The model may think: a server names ``thinking`` among its ``capabilities``, or names
    none (an Ollama before 0.6.4). Ollama runs such a model's chat with a ``format`` twice."""

    def tokens(self, shape: PromptShape | None) -> int:
        """The most tokens the model adds to a request of ``shape`` (None: one its template
        does not render) beyond what the request's own bound allows for its template
        (:data:`TEMPLATE_TOKENS`, :data:`MESSAGE_TOKENS` a message)."""
        if shape is None or not self.templates:
            return self.hidden
        messages = max(shape.messages, 2) + self.messages  # a generate: a system, a prompt
        written = SPECIAL_TOKENS + max(
            t.extra(messages, shape.tools, shape.calls, shape.parts, shape.text_bytes + self.hidden)
            for t in self.templates
        )
        allowed = TEMPLATE_TOKENS + MESSAGE_TOKENS * shape.messages
        return min(self.hidden + max(written - allowed, 0), MAX_TOKENS)

    def most(self, other: Shown) -> Shown:
        return Shown(
            max(self.hidden, other.hidden),
            max(self.messages, other.messages),
            self.templates + other.templates,
            self.thinks or other.thinks,
        )


def hidden_tokens(shown: Any) -> int:
    """The most tokens what ``/api/show`` answered (``shown``, decoded) adds to a prompt."""
    if not isinstance(shown, dict):
        return 0
    tokens = 0
    system = shown.get("system")
    if isinstance(system, str) and system:
        tokens += len(system.encode("utf-8", "surrogatepass")) + MESSAGE_TOKENS
    messages = shown.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            tokens += len(content.encode("utf-8", "surrogatepass"))
        images = message.get("images")
        tokens += MESSAGE_TOKENS + IMAGE_TOKENS * (len(images) if isinstance(images, list) else 0)
    return min(tokens, MAX_TOKENS)


class ShownPrompts:
    """What each model adds to a prompt on its own, read from its servers' ``/api/show``."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        timeout: float = SHOW_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = list(dict.fromkeys(hosts))
        self.timeout = timeout
        self.clock = clock
        self._known: dict[str | bytes, tuple[Shown | None, float]] = {}
        self._lock = ChildLock()
        self._unbounded: set[tuple[str, str | bytes]] = set()
        """(server, model) whose template was said to be unbounded (said once a model, not a
        spelling of its name; at most :data:`MODELS_KEPT`, then said again)."""

    def cached(self, model: str) -> tuple[bool, Shown | None]:
        """(known, what) from memory: what None when no server could say."""
        with self._lock:
            entry = self._known.get(model_cache_key(model))
        if entry is None or entry[1] <= self.clock():
            return False, None
        return True, entry[0]

    def tokens(self, model: str, shape: PromptShape | None, *, blocking: bool) -> int | None:
        """The most tokens ``model`` adds to a request of ``shape`` (:meth:`Shown.tokens`),
        from memory only unless ``blocking`` (:class:`WouldBlock` when servers must be
        asked); None: no server could say."""
        shown = self._asked(model, blocking=blocking)
        return None if shown is None else shown.tokens(shape)

    def thinks(self, model: str, *, blocking: bool) -> bool:
        """Whether ``model`` may think on any server (as :meth:`tokens` asks); True when no
        server could say."""
        shown = self._asked(model, blocking=blocking)
        return shown is None or shown.thinks

    def _asked(self, model: str, *, blocking: bool) -> Shown | None:
        known, shown = self.cached(model)
        if not known:
            if not blocking:
                raise WouldBlock(f"what {model} adds to a prompt must be asked of Ollama")
            shown = self.shown(model)
        return shown

    def read(self, model: str) -> int | None:
        """The most tokens ``model``'s own prompt (``SYSTEM``, ``MESSAGE``) counts on any server;
        None: no server said."""
        shown = self.shown(model)
        return None if shown is None else shown.hidden

    def shown(self, model: str) -> Shown | None:
        """What ``model`` adds on any server (the most), asked now if not known; None: no server said."""
        known, shown = self.cached(model)
        if known:
            return shown
        if len(self.hosts) == 1:
            answers = [self._ask(self.hosts[0], model)]
        else:  # at once: a hung server costs the call one timeout, not one a server
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(self.hosts), thread_name_prefix="ometer-show") as pool:
                answers = list(pool.map(lambda host: self._ask(host, model), self.hosts))
        said = [answer for answer in answers if answer is not None]
        shown = None
        for answer in said:
            shown = answer if shown is None else shown.most(answer)
        with self._lock:
            if len(self._known) >= MODELS_KEPT:
                self._known.clear()
            expires = self.clock() + (SHOW_TTL if said else UNKNOWN_TTL)
            self._known[model_cache_key(model)] = (shown, expires)
        return shown

    def _ask(self, host: str, model: str) -> Shown | None:
        import httpx

        try:
            with (
                httpx.Client(timeout=self.timeout) as client,
                client.stream("POST", f"{host}/api/show", json={"model": model}) as answer,
            ):
                if answer.status_code not in (200, 404):
                    return None
                body, began = bytearray(), self.clock()
                for chunk in answer.iter_bytes():
                    body += chunk
                    if self.clock() - began > self.timeout:
                        return None  # a server dripping its answer says nothing in time
                    if len(body) > SHOW_LIMIT:
                        log.warning(
                            "%s/api/show answered more than %d bytes for %s: calls to it under "
                            "a hard budget are bounded as the longest prompt",
                            host,
                            SHOW_LIMIT,
                            model,
                        )
                        return Shown(MAX_TOKENS)
                missing = answer.status_code == 404
            shown = json.loads(body)
            if missing:  # {"error": "model ... not found"}: the call is not sent there
                lacks = isinstance(shown, dict) and "error" in shown  # nothing to add, or think
                return Shown(0, thinks=False) if lacks else None
            return self._described(host, model, shown)
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            log.debug("%s/api/show for %s: %s", host, model, exc)
            return None

    def _described(self, host: str, model: str, shown: Any) -> Shown:
        """What an ``/api/show`` answer (decoded) says ``model`` adds: its own prompt, and
        what its template may write (one that nothing bounds: the longest prompt)."""
        hidden = hidden_tokens(shown)
        if not isinstance(shown, dict):
            return Shown(hidden)
        said = shown.get("messages")
        messages = (len(said) if isinstance(said, list) else 0) + (1 if shown.get("system") else 0)
        named = shown.get("capabilities")
        thinks = not isinstance(named, list) or "thinking" in named
        template = shown.get("template")
        if not isinstance(template, str) or not template:
            return Shown(hidden, messages, thinks=thinks)  # Ollama's default: {{ .Prompt }}
        # Read here, not on import: only a call under a hard budget asks for a template.
        from ollama_meter.budgets._template import TemplateBound, bound_template

        bound = bound_template(template)
        if isinstance(bound, TemplateBound):
            return Shown(hidden, messages, (bound,), thinks)
        if (host, key := model_cache_key(model_key(model))) not in self._unbounded:
            if len(self._unbounded) >= MODELS_KEPT:  # a server that says so of every name
                self._unbounded.clear()
            self._unbounded.add((host, key))
            log.warning(
                "%s/api/show: %s's template cannot be bounded (%s): calls to it under a hard "
                "budget are bounded as the longest prompt",
                host,
                model,
                bound,
            )
        return Shown(MAX_TOKENS, messages)
