"""The prompt a model adds to every call on its own, as Ollama's ``/api/show`` tells it.

A Modelfile's ``SYSTEM`` and ``MESSAGE`` lines are sent to the model with every
request and counted in its ``prompt_eval_count``, though no request carries them. A
hard budget admits a call on the most its prompt can count, so it must know them
before the first call: learned from calls past their bound, every ``ometer chat`` (one
call a process) and a gateway's first concurrent calls were each charged past their
bound by the whole hidden prompt. ``/api/show`` names them (``system``, ``messages``);
like the request's own text they count at most a token a byte.

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
from typing import Any

from ollama_meter._forks import ChildLock
from ollama_meter._reloaded import WouldBlock
from ollama_meter.budgets._estimate import IMAGE_TOKENS, MESSAGE_TOKENS
from ollama_meter.records import MAX_TOKENS

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
        self._known: dict[str, tuple[int | None, float]] = {}
        self._lock = ChildLock()

    def cached(self, model: str) -> tuple[bool, int | None]:
        """(known, tokens) from memory: tokens None when no server could say."""
        with self._lock:
            entry = self._known.get(model)
        if entry is None or entry[1] <= self.clock():
            return False, None
        return True, entry[0]

    def of(self, model: str, *, blocking: bool) -> int | None:
        """:meth:`read`, or from memory only (:class:`WouldBlock` when servers must be asked)."""
        known, tokens = self.cached(model)
        if known:
            return tokens
        if not blocking:
            raise WouldBlock(f"what {model} adds to a prompt must be asked of Ollama")
        return self.read(model)

    def read(self, model: str) -> int | None:
        """The most tokens ``model`` adds on any server, asked now if not known; None: no server said."""
        known, tokens = self.cached(model)
        if known:
            return tokens
        if len(self.hosts) == 1:
            answers = [self._ask(self.hosts[0], model)]
        else:  # at once: a hung server costs the call one timeout, not one a server
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(self.hosts), thread_name_prefix="ometer-show") as pool:
                answers = list(pool.map(lambda host: self._ask(host, model), self.hosts))
        said = [tokens for tokens in answers if tokens is not None]
        tokens = max(said) if said else None
        with self._lock:
            if len(self._known) >= MODELS_KEPT:
                self._known.clear()
            self._known[model] = (tokens, self.clock() + (SHOW_TTL if said else UNKNOWN_TTL))
        return tokens

    def _ask(self, host: str, model: str) -> int | None:
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
                        return MAX_TOKENS
                missing = answer.status_code == 404
            shown = json.loads(body)
            if missing:  # {"error": "model ... not found"}: the call is not sent there
                return 0 if isinstance(shown, dict) and "error" in shown else None
            return hidden_tokens(shown)
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            log.debug("%s/api/show for %s: %s", host, model, exc)
            return None
