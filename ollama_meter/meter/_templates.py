"""Whether a generate's own Go template can write a prompt longer than the request's texts.

Ollama renders ``/api/generate``'s ``template`` (unless ``raw``) with Go's text/template
before it counts a token. Most templates only place the prompt and system among fixed
text, but ``{{ .Prompt }}`` written forty times sends the prompt forty times, and
``{{ printf "%0999999d" 0 }}`` or ``{{ range 100000 }}`` write a million bytes from twenty:
bounded only by the context size the caller sets. Counted by its bytes, such a template
passed a hard budget as a few tokens. So a template is bounded only when every action in
it prints one of the request's texts at most once (``.Prompt``, ``.System``, ``.Suffix``,
``.Response``), steers on a field (``if``, ``else``, ``end``) or is a comment: then the
prompt is at most its texts, the template's own bytes, and ``<no value>`` (what Go prints
for a field Ollama does not set) per printed field. Pure functions; no I/O.
"""

from __future__ import annotations

import json
import re

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
"""An action as far as its first ``}}``: one that holds a string or a comment with ``}}`` in
it is cut there, and what is left of it is no action taken here (so it is refused)."""
_PRINTS = frozenset({".Prompt", ".System", ".Suffix", ".Response"})
_STEERS = re.compile(r"(?:(?:else )?if \.[A-Za-z_][A-Za-z0-9_]*|else|end|/\*.*\*/)", re.DOTALL)
NO_VALUE_BYTES = 10
"""What Go's template prints for a field its data does not hold: ``<no value>``."""


def _inner(action: str) -> str:
    """An action's words, without Go's trim markers (``{{- `` and `` -}}``)."""
    if re.match(r"-\s", action):
        action = action[1:]
    if re.search(r"\s-\Z", action):
        action = action[:-1]
    return " ".join(action.split()) if not action.strip().startswith("/*") else action.strip()


def template_bound(template: str) -> tuple[int, str | None]:
    """What ``template`` may write beyond its own bytes and the request's texts (``<no value>``
    for each field it prints), and why no bound holds it (None: one does).

    Bounded when every action prints one of the request's texts at most once, steers or is
    a comment; anything else (an action that repeats, formats, loops, calls a template)
    may write any length."""
    printed: set[str] = set()
    for match in _ACTION.finditer(template):
        words = _inner(match.group(1))
        if words in _PRINTS and words not in printed:
            printed.add(words)
        elif not _STEERS.fullmatch(words):
            return 0, (
                f"its template writes {json.dumps(match.group(0)[:60])}, which may make a "
                "prompt of any length (a template is bounded when it prints {{ .Prompt }}, "
                "{{ .System }}, {{ .Suffix }} and {{ .Response }} at most once each, and "
                "steers only with if/else/end)"
            )
    return NO_VALUE_BYTES * len(printed), None
