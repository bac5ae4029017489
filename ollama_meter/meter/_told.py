"""What a prompt's messages said beside their texts, as content capture exports it.

Reading a request (:mod:`._compat`) notes, for the message each is in, the call each tool
result answers and each tool call an earlier reply made, as references into the body: a
note for each is all a call pays without content capture. With it, :func:`told_apart`
reads them into :attr:`~ollama_meter.records.SpanRecord.said` and ``told``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ollama_meter.records import Called, Said, Told, exported_json
from ollama_meter.upstream import block_call, item_call, tool_calls

Mark = tuple[int, str, object]
"""A note of what a message said beside its texts: the message's place among the request's
turns, and what: ``answer`` (the id of the call a tool's result answers), ``chat`` (a chat
message's ``tool_calls``), ``block`` (an Anthropic ``tool_use`` block), ``item`` (a Responses
``function_call`` item)."""
KEPT_CALLS = 1024
"""The most of a request's earlier tool calls kept to export, the newest (as of a reply's)."""
KEPT_CALL_CHARS = 1_000_000
"""The most characters of their arguments kept (as of a reply's), the newest."""


def told_apart(
    turns: Sequence[tuple[str | None, list[str]]], marks: Sequence[Mark]
) -> tuple[Said, tuple[Told, ...]]:
    """Each message that said something (a text, or a tool call): its role and its texts'
    lengths; and what each said beside its texts (none said anything: empty)."""
    answers: dict[int, str | None] = {}
    calls: dict[int, list[Called]] = {}
    kept = chars = 0
    for at, kind, said in reversed(marks):  # the newest calls first, to the bound
        if kind == "answer":
            answers[at] = said if isinstance(said, str) else None
            continue
        if kept >= KEPT_CALLS or chars >= KEPT_CALL_CHARS:
            continue
        made = _calls(kind, said)[: KEPT_CALLS - kept]
        for _, _, arguments in made:
            chars += len(arguments if isinstance(arguments, str) else exported_json(arguments))
        kept += len(made)
        calls.setdefault(at, [])[:0] = made
    said_by: list[tuple[str | None, tuple[int, ...]]] = []
    told: list[Told] = []
    for at, (role, texts) in enumerate(turns):
        if texts or at in calls:
            said_by.append((role, tuple(map(len, texts))))
            told.append((answers.get(at), tuple(calls.get(at, ()))))
    return tuple(said_by), tuple(told) if answers or calls else ()


def _calls(kind: str, said: object) -> list[Called]:
    if kind == "chat":
        return list(tool_calls([said]))
    get = getattr(said, "get", None)
    if not callable(get):
        return []
    return [block_call(said) if kind == "block" else item_call(said)]


def told_chars(told: Sequence[Told]) -> int:
    """Characters of what ``told`` keeps: ids, names and arguments (an object's as JSON)."""
    total = 0
    for answer, calls in told:
        total += len(answer or "")
        for ident, name, arguments in calls:
            written = arguments if isinstance(arguments, str) else exported_json(arguments)
            total += len(ident or "") + len(name) + len(written)
    return total
