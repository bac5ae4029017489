"""Go's text/template, read as far as bounding what a template writes needs: no execution.

:func:`parse` turns a template (a model's ``TEMPLATE``, as ``/api/show`` names it) into a
tree of text, actions, ``if``/``range``/``with`` blocks; each action's pipeline into
commands of operands. It follows Go's lexer where a bound depends on it: ``{{-`` and
``-}}`` trim the text beside them, strings and comments may hold ``}}``, ``else if``
chains close with one ``end``. What it does not take (``define``, ``template``,
``block``, a malformed action) raises :class:`Unreadable`: such a template is bounded
by nothing here. Pure functions; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_DEPTH = 32
"""Blocks, or parentheses, nested deeper than this are not read (a template no model ships)."""
MAX_ACTIONS = 5_000
"""Actions past this are not read: the largest template Ollama ships has about 100, and a
server's 4 MB answer of ``{{ .System }}`` took 5 s to bound, 19,000 actions 0.4 s."""
MAX_TOKENS = 1_000
"""Words in one action past this are not read (a real one has a dozen)."""
MAX_WORDS = 20_000
"""Words in all actions past this are not read (4 MB of ``{{ and .A .A ... }}`` took 2 s)."""


class Unreadable(ValueError):
    """A template this reading cannot bound; the message says why."""


@dataclass(frozen=True, slots=True)
class Pipe:
    """An action's pipeline: ``$a, $b :=`` (``decl``), commands joined by ``|``."""

    cmds: tuple[tuple[Arg, ...], ...]
    decl: tuple[str, ...] = ()
    assign: bool = False
    """``$x = ...``: sets a variable declared before; prints nothing, as a declaration."""


Arg = tuple[str, str] | Pipe
"""An operand: ("str", text), ("num", text), ("field", ".A.B"), ("var", "$x.A"),
("ident", name), or a parenthesized pipeline."""


@dataclass(slots=True)
class Text:
    size: int
    """UTF-8 bytes."""


@dataclass(slots=True)
class Action:
    pipe: Pipe


@dataclass(slots=True)
class Block:
    kind: str  # "if", "range" or "with"
    pipe: Pipe
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Jump:
    """``break`` or ``continue``: the rest of the range's pass is not run."""

    kind: str


Node = Text | Action | Block | Jump

_SPACE = " \t\r\n"
_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<str>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|`[^`]*`|'(?:[^'\\\n]|\\.)+')
    |(?P<op>:=|=|\(|\)|\||,)
    |(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<field>\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?)
    |(?P<num>[-+]?[0-9][0-9A-Za-z_.+-]*)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE | re.DOTALL,
)
_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "break", "continue"})
_UNTAKEN = frozenset({"define", "template", "block"})


def _actions(source: str) -> list[tuple[str, str]]:
    """("text", text) and ("action", inside) pieces, trim markers applied."""
    pieces: list[tuple[str, str]] = []
    at, trim_next = 0, False
    while True:
        start = source.find("{{", at)
        text = source[at:] if start < 0 else source[at:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            pieces.append(("text", text))
            return pieces
        if len(pieces) >= 2 * MAX_ACTIONS:
            raise Unreadable(f"more than {MAX_ACTIONS:,} actions (no model's template has 1,000)")
        inner = start + 2
        if source.startswith("-", inner) and source[inner + 1 : inner + 2] in tuple(_SPACE):
            text, inner = text.rstrip(_SPACE), inner + 2
        pieces.append(("text", text))
        end = _action_end(source, inner)
        body = source[inner:end]
        trim_next = len(body) >= 2 and body[-1] == "-" and body[-2] in _SPACE
        pieces.append(("action", body[:-1] if trim_next else body))
        at = end + 2


_INSIDE = re.compile(
    r"""(?:[^"'`}]+|}(?!})|"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*'|`[^`]*`)*""",
    re.DOTALL,
)
"""An action's inside up to its ``}}``: strings (which may hold ``}}``) read whole, by the
regular-expression engine (a 4 MB action read a character at a time in Python took seconds)."""


def _action_end(source: str, at: int) -> int:
    """Where the action opened before ``at`` closes (its ``}}``), past strings and comments."""
    if source.startswith("/*", at):
        close = source.find("*/", at + 2)
        if close < 0:
            raise Unreadable("unclosed comment")
        for after in ("}}", " -}}", "\t-}}", "\n-}}", "\r-}}"):
            if source.startswith(after, close + 2):  # not a copy of the rest: once an action
                return close + 2 + len(after) - 2
        raise Unreadable("comment ends before closing delimiter")
    end = _INSIDE.match(source, at).end()  # type: ignore[union-attr]
    if not source.startswith("}}", end):
        raise Unreadable("unclosed action" if end == len(source) else "unterminated quoted string")
    return end


def _tokens(inside: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(inside):
        match = _TOKEN.match(inside, at)
        if match is None:
            raise Unreadable(f"cannot read {inside[at : at + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
            if len(found) > MAX_TOKENS:
                raise Unreadable(f"an action of more than {MAX_TOKENS:,} words")
        at = match.end()
    return found


def _pipe(tokens: list[tuple[str, str]], depth: int = 0) -> Pipe:
    """A pipeline from its tokens (declarations first, then commands split on ``|``)."""
    if depth > MAX_DEPTH:
        raise Unreadable("parentheses nested too deep")
    decl: list[str] = []
    assign = False
    for at, (kind, text) in enumerate(tokens):
        if kind == "op" and text in (":=", "="):
            names = [t for k, t in tokens[:at] if k != "op" or t != ","]
            if not names or not all(n.startswith("$") and "." not in n for n in names):
                raise Unreadable("a declaration of something not a variable")
            decl, assign, tokens = names, text == "=", tokens[at + 1 :]
            break
    cmds: list[tuple[Arg, ...]] = []
    args: list[Arg] = []
    at = 0
    while at < len(tokens):
        kind, text = tokens[at]
        if kind == "op" and text == "(":
            opened, close = 0, at
            for close in range(at, len(tokens)):
                if tokens[close] == ("op", "("):
                    opened += 1
                elif tokens[close] == ("op", ")"):
                    opened -= 1
                    if opened == 0:
                        break
            if opened:
                raise Unreadable("unclosed parenthesis")
            args.append(_pipe(tokens[at + 1 : close], depth + 1))
            at = close + 1
            continue
        if kind == "op" and text == "|":
            if not args:
                raise Unreadable("missing command")
            cmds.append(tuple(args))
            args = []
        elif kind == "op":
            raise Unreadable(f"unexpected {text!r}")
        else:
            args.append((kind, text))
        at += 1
    if not args:
        raise Unreadable("missing value")
    cmds.append(tuple(args))
    return Pipe(tuple(cmds), tuple(decl), assign)


def parse(source: str) -> list[Node]:
    """The template's tree; :class:`Unreadable` when it is none this reading takes."""
    root: list[Node] = []
    # Each open block: the block, whether its else part is being filled, whether an
    # ``else if`` chained it (its ``end`` is its parent's).
    stack: list[tuple[Block, bool, bool]] = []

    def into() -> list[Node]:
        if not stack:
            return root
        block, orelse, _ = stack[-1]
        return block.orelse if orelse else block.body

    words = 0
    for kind, piece in _actions(source):
        if kind == "text":
            if piece:
                into().append(Text(len(piece.encode("utf-8", "surrogatepass"))))
            continue
        if piece.strip().startswith("/*"):
            continue
        tokens = _tokens(piece)
        words += len(tokens)
        if words > MAX_WORDS:
            raise Unreadable(f"more than {MAX_WORDS:,} words in its actions")
        word = tokens[0][1] if tokens and tokens[0][0] == "ident" else ""
        if word in _UNTAKEN:
            raise Unreadable(f"{{{{ {word} }}}} (a template defined or called by name)")
        if word in ("if", "range", "with"):
            if len(stack) >= MAX_DEPTH:
                raise Unreadable("blocks nested too deep")
            block = Block(word, _pipe(tokens[1:]))
            into().append(block)
            stack.append((block, False, False))
        elif word == "else":
            if not stack or stack[-1][1]:
                raise Unreadable("unexpected {{ else }}")
            block, _, chained = stack.pop()
            stack.append((block, True, chained))
            if len(tokens) > 1:  # else if / else with: a block in the else part, one end
                inner = tokens[1][1]
                if inner not in ("if", "with") or len(stack) >= MAX_DEPTH:
                    raise Unreadable(f"unexpected else {inner}")
                nested = Block(inner, _pipe(tokens[2:]))
                block.orelse.append(nested)
                stack.append((nested, False, True))
        elif word == "end":
            if not stack or len(tokens) > 1:
                raise Unreadable("unexpected {{ end }}")
            while stack and stack.pop()[2]:
                pass
        elif word in ("break", "continue"):
            into().append(Jump(word))
        elif word in _KEYWORDS:
            raise Unreadable(f"unexpected {word}")
        else:
            into().append(Action(_pipe(tokens)))
    if stack:
        raise Unreadable("unexpected EOF: a block has no {{ end }}")
    return root


def identifiers(nodes: list[Node]) -> set[str]:
    """Every field and variable name the template names, in lower case (as Ollama's
    ``Vars``): whether it names ``messages`` decides how Ollama executes it."""
    names: set[str] = set()

    def of_pipe(pipe: Pipe) -> None:
        for cmd in pipe.cmds:
            for arg in cmd:
                if isinstance(arg, Pipe):
                    of_pipe(arg)
                elif arg[0] in ("field", "var"):
                    names.update(p.lower() for p in arg[1].split(".") if p)

    def walk(items: list[Node]) -> None:
        for node in items:
            if isinstance(node, Action):
                of_pipe(node.pipe)
            elif isinstance(node, Block):
                of_pipe(node.pipe)
                walk(node.body)
                walk(node.orelse)

    walk(nodes)
    return names
