"""What a value in a model's template is, as far as bounding what it writes needs.

:class:`Values` reads an operand, a command or a pipeline of a parsed template
(:mod:`~ollama_meter.budgets._gotemplate`) as a *kind*: one of the request's texts (the
system prompt, a message's content, a part of a tool or call), a collection the request
counts (its messages, tools, a message's calls), a scalar (a role, a date, a number, a
comparison), a literal of known bytes, several of them written together (``printf``) or
either of them (``and``, ``or``), or a condition true for at most N items of a range (its
``cap``). :mod:`~ollama_meter.budgets._template` bounds what printing each writes. Pure; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ollama_meter.budgets._gotemplate import Pipe

ROLES = frozenset({"system", "user", "assistant", "tool", "*"})
_SCALARS = frozenset({"len", "eq", "ne", "lt", "le", "gt", "ge", "not", "currentDate"})
_SCALARS |= {"yesterdayDate", "true", "false", "nil"}
_VERB = re.compile(r"%.?")
Kind = tuple[object, ...]


@dataclass
class Scope:
    dot: Kind
    vars: dict[str, Kind]
    innermost: int | None = None
    index: dict[str, tuple[int, Kind]] = field(default_factory=dict)
    """Index variables of ranges, to their range and the collection it ranges over."""
    roles: dict[int, frozenset[str]] = field(default_factory=dict)
    """The roles a range's message may have here (narrowed by ``if eq .Role ...``)."""

    def inner(self, **changes: object) -> Scope:
        scope = Scope(self.dot, dict(self.vars), self.innermost, dict(self.index), dict(self.roles))
        for key, value in changes.items():
            setattr(scope, key, value)
        return scope


class Values:
    def __init__(self, legacy: bool, accumulated: set[str]) -> None:
        self.legacy = legacy
        self.accumulated = accumulated
        """Variables set again (``$x = ...``) somewhere: each is read as what it accumulates
        (``("acc", name)``), whatever it holds when read."""

    # -- what a value is ------------------------------------------------------------------

    def field(self, kind: Kind, name: str) -> Kind:
        head = kind[0]
        if head == "root":
            tag = kind[1]
            if name == "System":
                return ("text", "sys", tag)
            if name == "Prompt" and self.legacy:
                return ("text", "prompt", tag)
            if name in ("Prompt", "Suffix"):  # or <no value>, when Ollama does not set it
                return ("either", (("text", name.lower(), tag), ("scalar",)))
            if name == "Response":
                return ("text", "response", tag) if self.legacy else ("empty",)
            if name in ("Messages", "Tools"):
                return ("coll", name.lower(), None)
            return ("scalar",)  # Think, ThinkLevel, IsThinkSet; a missing key: <no value>
        if head == "msg":
            if name == "Role":
                return ("role", kind[1])
            if name == "Content":
                return ("content", kind[1])
            if name in ("Thinking", "ToolName", "ToolCallID"):
                return ("text", f"field:{name}", kind[1])
            if name == "ToolCalls":
                return ("coll", "calls", kind[1])
            return ("unknown", f".{name} of a message")
        if head in ("tool", "call"):
            return ("scalar",) if name == "Type" else ("text", f"{head}s:{name}", kind[1])
        if head == "text" and str(kind[1]).startswith(("tools:", "calls:")):
            return ("text", f"{kind[1]}.{name}", kind[2])  # a part of a tool or call
        return ("unknown", f".{name}")

    def operand(self, arg: tuple[str, str], scope: Scope) -> Kind:
        kind, text = arg
        if kind in ("field", "var"):
            head, *chain = text.split(".")
            if kind == "field":
                value = scope.dot
            elif head == "$":
                value = ("root", 0 if self.legacy else None)
            elif head in self.accumulated:
                value = ("acc", head) if head in scope.vars else ("unknown", f"{head} undeclared")
            else:
                value = scope.vars.get(head, ("unknown", f"{head} undeclared"))
            for name in (c for c in chain if c):
                value = self.field(value, name)
            return value
        if kind == "str":
            return ("literal", len(text.encode("utf-8", "surrogatepass")))
        if kind == "num":
            return ("scalar",)
        return ("scalar",) if text in _SCALARS else ("unknown", text)

    def value(self, pipe: Pipe, scope: Scope) -> Kind:
        value: Kind | None = None
        for cmd in pipe.cmds:
            value = self.command(cmd, scope, value)
        assert value is not None
        return value

    def command(self, cmd: tuple[object, ...], scope: Scope, piped: Kind | None) -> Kind:
        first = cmd[0]
        args = [self.arg(a, scope) for a in cmd[1:]] + ([piped] if piped else [])
        if isinstance(first, tuple) and first[0] == "ident" and first[1] not in ("true", "false"):
            name = first[1]
            cap = self.cap(name, cmd, scope)
            if cap is not None:
                return cap
            if name == "json" and len(args) == 1:
                return ("json", args[0])
            if name == "toTypeScriptType" and len(args) == 1:
                inner = args[0]
                tools = inner[0] == "text" and str(inner[1]).startswith("tools:")
                return inner if tools else ("scalar",)
            if name == "and" and any(a[0] == "cap" for a in args):
                return next(a for a in args if a[0] == "cap")
            if name == "or" and args and all(a[0] == "cap" and a[1] == args[0][1] for a in args):
                said = tuple(sorted(str(a[3]) for a in args))
                return ("cap", args[0][1], sum(int(str(a[2])) for a in args), f"or {said}")
            if name in ("and", "or"):
                return ("either", tuple(args))
            if name == "printf" and cmd[1:2] and isinstance(cmd[1], tuple) and cmd[1][0] == "str":
                return self.printf(cmd[1][1], args[1:])
            if name in _SCALARS:
                return ("scalar",)
            return ("unknown", f"{name} (a function that may write any length)")
        if len(cmd) > 1 or piped is not None:
            return ("unknown", "a value called with arguments")
        return self.arg(first, scope)

    def printf(self, form: str, args: list[Kind]) -> Kind:
        """``printf "%s: %s" .A .B`` of texts: its own bytes, and each argument's as it is.
        Any other verb (a width, a number's) may write any length."""
        verbs = [v for v in _VERB.findall(form) if v != "%%"]
        if any(v != "%s" for v in verbs) or len(verbs) != len(args):
            return ("unknown", f"printf {form[:20]} (a format that may write any length)")
        if not all(_formatted(a) for a in args):
            return ("unknown", "printf of a tool, a call or a message whole")
        return ("concat", (("literal", len(form.encode("utf-8", "surrogatepass"))), *args))

    def arg(self, arg: object, scope: Scope) -> Kind:
        if isinstance(arg, Pipe):
            return self.value(arg, scope)
        assert isinstance(arg, tuple)
        return self.operand(arg, scope)

    def cap(self, name: str, cmd: tuple[object, ...], scope: Scope) -> Kind | None:
        """``eq|le|lt (len (slice $.Messages $i)) N`` (``$last``, as Ollama's templates spell
        it) or ``eq|le|lt $i N``: true for at most N iterations of the range whose index ``$i``
        is, per pass (its collection is the one sliced: shorter, it could hold once more)."""
        if name not in ("eq", "le", "lt") or len(cmd) != 3:
            return None
        of, number = cmd[1], cmd[2]
        if not (isinstance(number, tuple) and number[0] == "num" and number[1].isdigit()):
            return None
        bound = int(number[1])
        if isinstance(of, tuple) and of[0] == "var" and of[1] in scope.index:  # $i itself
            most = {"eq": 1, "le": bound + 1, "lt": bound}[name]
            return ("cap", scope.index[of[1]][0], most, f"index {name} {bound}")
        if not (isinstance(of, Pipe) and len(of.cmds) == 1 and not of.decl):
            return None
        inner = of.cmds[0]
        if len(inner) != 2 or inner[0] != ("ident", "len") or not isinstance(inner[1], Pipe):
            return None
        sliced = inner[1].cmds[0] if len(inner[1].cmds) == 1 else ()
        if len(sliced) != 3 or sliced[0] != ("ident", "slice") or inner[1].decl:
            return None
        index = sliced[2]
        ranged = scope.index.get(index[1]) if isinstance(index, tuple) else None
        if ranged is None or self.arg(sliced[1], scope) != ranged[1]:
            return None
        most = {"eq": 1, "le": bound, "lt": bound - 1}[name]
        return ("cap", ranged[0], max(most, 0), f"left {name} {bound}")


def _formatted(kind: Kind) -> bool:
    """Whether ``%s`` writes ``kind`` as printing it does: a text, a number (``%!s(int=1)``
    is within a print's bytes), not a tool's or call's structs (Go's own spelling of them)."""
    if kind[0] == "text":
        return not str(kind[1]).startswith(("tools:", "calls:"))
    if kind[0] in ("either", "concat"):
        return all(_formatted(k) for k in kind[1])  # type: ignore[attr-defined]
    return kind[0] in ("content", "role", "literal", "acc", "scalar", "cap", "empty")
