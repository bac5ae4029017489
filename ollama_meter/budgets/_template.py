"""The most a model's own chat template (its ``TEMPLATE``) writes beyond the request's texts.

Ollama renders every chat and generate through the model's Go template before it counts
a token: llama3's headers, a long tool-use paragraph under ``{{ if .Tools }}``, markers
around each message in ``{{ range .Messages }}``. None of it is in the request, so a hard
budget must bound it before the first call: ``/api/show`` names the template, and this
bounds it, a token a byte as the rest of a call's bound counts:

- its literal text, each byte as often as it may be written: once, or as many times as
  each ``range`` around it may repeat (over ``.Messages`` the chat's messages and the
  model's own; over ``.Tools`` the tools; over a message's ``.ToolCalls`` the request's
  calls, all messages' together; over a part of a tool or call, a tool's properties say,
  the members of all their lists and objects); what is under ``if .Tools`` only for a
  request with tools; a block under ``if $last`` (Ollama's idiom,
  ``eq (len (slice $.Messages $i)) 1``) once per pass of its range;
- :data:`PRINT_BYTES` for each action that prints no request text (``.Role``,
  ``currentDate``, a count);
- the request's own texts written more than once (``.Content`` in two ranges, a system
  message as ``.System`` and again as a message, ``json`` escaping ``<`` six bytes a byte):
  each such repeat costs the request's bytes again.

A legacy template (one that names no ``.Messages``) Ollama executes once a turn: all of
it repeats once a message. Since the repeats depend on the request, a template's bound
is polynomials in (messages, tools, calls, parts), combined with a request's counts when it is
admitted (:meth:`TemplateBound.extra`). A template this cannot read, or one that prints
what no count bounds (``printf``, ``.Images``, a ``range`` over anything else, a named
template) has no bound (:func:`bound_template` says why). Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ollama_meter.budgets import _counts as counts, _gotemplate as go
from ollama_meter.budgets._counts import Poly
from ollama_meter.budgets._gotemplate import Action, Block, Node, Pipe, Text, Unreadable

PRINT_BYTES = 32
"""What one action that prints no request text may write (a role, a date, a number, the
punctuation Go writes around a tool or a call it prints whole)."""
JSON_ESCAPE = 6
"""``json`` of a text may write six bytes for one (``<`` is ``\\u003c``)."""
JOIN_BYTES = 2
"""Ollama joins consecutive messages of one role, and the system messages, with a blank line."""

_ROLES = frozenset({"system", "user", "assistant", "tool", "*"})
_SCALARS = frozenset({"len", "eq", "ne", "lt", "le", "gt", "ge", "not", "currentDate"})
_SCALARS |= {"yesterdayDate", "true", "false", "nil"}
_RANGED = {"messages": counts.MESSAGES, "tools": counts.TOOLS, "calls": counts.CALLS}

Cost = dict[tuple[str, int | None], Poly]
"""("lit" or a pool of the request's text, the range whose pass it is per (None: each
execution)) to its count: literal bytes, or how often each of the pool's texts is written."""
Kind = tuple[object, ...]


def _merge(a: Cost, b: Cost, most: bool = False) -> Cost:
    out = dict(a)
    for key, poly in b.items():
        out[key] = (counts.most if most else counts.add)(out.get(key, {}), poly)
    return out


@dataclass(frozen=True, slots=True)
class TemplateBound:
    """What a template may write beyond a request's texts, for any request."""

    literal: tuple[tuple[counts.Key, int], ...]
    """Bytes of its own text and printed values, as a polynomial in the request's counts."""
    repeats: tuple[tuple[str, tuple[tuple[counts.Key, int], ...]], ...]
    """For each of the request's texts (system, messages, tools, calls...), how often the
    template may write each of them."""

    def extra(self, messages: int, tools: int, calls: int, parts: int, text_bytes: int) -> int:
        """Tokens it may write beyond ``text_bytes``, the bytes of the request's own texts
        (and the model's own prompt), for a chat of ``messages`` messages (the most that
        reach the template), ``tools`` tools, ``calls`` tool calls and ``parts`` members of
        their lists and objects."""
        at = (messages, tools, calls, parts)
        written = counts.evaluate(dict(self.literal), at) + JOIN_BYTES * messages
        most = max((counts.evaluate(dict(p), at) for _, p in self.repeats), default=1)
        return written + max(most - 1, 0) * text_bytes


@dataclass
class _Scope:
    dot: Kind
    vars: dict[str, Kind]
    innermost: int | None = None
    index: dict[str, int] = field(default_factory=dict)
    """Index variables of message ranges, to their range."""
    roles: dict[int, frozenset[str]] = field(default_factory=dict)
    """The roles a range's message may have here (narrowed by ``if eq .Role ...``)."""

    def inner(self, **changes: object) -> _Scope:
        scope = _Scope(
            self.dot,
            dict(self.vars),
            self.innermost,
            dict(self.index or {}),
            dict(self.roles or {}),
        )
        for key, value in changes.items():
            setattr(scope, key, value)
        return scope


class _Walk:
    def __init__(self, legacy: bool, reassigned: set[str]) -> None:
        self.legacy = legacy
        self.ranges = 0
        self.reassigned = reassigned
        """Variables set again (``$x = ...``) somewhere: each is read as whatever it may hold."""

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

    def operand(self, arg: tuple[str, str], scope: _Scope) -> Kind:
        kind, text = arg
        if kind in ("field", "var"):
            head, *chain = text.split(".")
            if kind == "field":
                value = scope.dot
            elif head == "$":
                value = ("root", 0 if self.legacy else None)
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

    def value(self, pipe: Pipe, scope: _Scope) -> Kind:
        value: Kind | None = None
        for cmd in pipe.cmds:
            value = self.command(cmd, scope, value)
        assert value is not None
        return value

    def command(self, cmd: tuple[object, ...], scope: _Scope, piped: Kind | None) -> Kind:
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
            if name in ("and", "or"):
                return ("either", tuple(args))
            if name in _SCALARS:
                return ("scalar",)
            return ("unknown", f"{name} (a function that may write any length)")
        if len(cmd) > 1 or piped is not None:
            return ("unknown", "a value called with arguments")
        return self.arg(first, scope)

    def arg(self, arg: object, scope: _Scope) -> Kind:
        if isinstance(arg, Pipe):
            return self.value(arg, scope)
        assert isinstance(arg, tuple)
        return self.operand(arg, scope)

    def cap(self, name: str, cmd: tuple[object, ...], scope: _Scope) -> Kind | None:
        """``eq|le|lt (len (slice $.Messages $i)) N``: true for at most N iterations of the
        range whose index ``$i`` is, per pass (``$last``, as Ollama's templates spell it)."""
        if name not in ("eq", "le", "lt") or len(cmd) != 3:
            return None
        length, number = cmd[1], cmd[2]
        if not (isinstance(number, tuple) and number[0] == "num" and number[1].isdigit()):
            return None
        if not (isinstance(length, Pipe) and len(length.cmds) == 1 and not length.decl):
            return None
        inner = length.cmds[0]
        if len(inner) != 2 or inner[0] != ("ident", "len") or not isinstance(inner[1], Pipe):
            return None
        sliced = inner[1].cmds[0] if len(inner[1].cmds) == 1 else ()
        if len(sliced) != 3 or sliced[0] != ("ident", "slice"):
            return None
        index = sliced[2]
        ranged = scope.index.get(index[1]) if isinstance(index, tuple) else None
        if ranged is None or self.arg(sliced[1], scope) != ("coll", "messages", None):
            return None
        most = {"eq": 1, "le": int(number[1]), "lt": int(number[1]) - 1}[name]
        return ("cap", ranged, max(most, 0))

    # -- what it writes -------------------------------------------------------------------

    def printed(self, kind: Kind, scope: _Scope) -> Cost:
        head = kind[0]
        if head == "role":  # a longer role counts in the request's bytes (written again)
            return {("lit", None): counts.const(PRINT_BYTES), ("field:Role", kind[1]): counts.ONE}  # type: ignore[dict-item]
        if head in ("scalar", "cap"):
            return {("lit", None): counts.const(PRINT_BYTES)}
        if head == "literal":
            return {("lit", None): counts.const(int(str(kind[1])))}
        if head == "empty":
            return {}
        if head == "either":
            cost: Cost = {}
            for each in kind[1]:  # type: ignore[attr-defined]
                cost = _merge(cost, self.printed(each, scope))
            return cost
        if head == "json":
            inner = kind[1]
            assert isinstance(inner, tuple)
            cost = self.printed(inner, scope)
            if inner[0] == "content" or (inner[0] == "text" and ":" not in str(inner[1])):
                cost = {k: counts.scale(p, JSON_ESCAPE) for k, p in cost.items()}
            return _merge(cost, {("lit", None): counts.const(PRINT_BYTES)})
        if head == "content":
            may = scope.roles.get(int(str(kind[1])), _ROLES)
            pools = (["sys"] if "system" in may else []) + (["msg"] if may - {"system"} else [])
            return {(pool, kind[1]): counts.ONE for pool in pools}  # type: ignore[misc]
        whole = {"tool": "tools:", "call": "calls:", "coll": None}
        if head == "text" or (head in whole and kind[1] != "messages"):
            pool = kind[1] if head == "text" else whole[str(head)] or f"{kind[1]}:"
            tag = kind[2] if head in ("text", "coll") else kind[1]
            cost = {(str(pool), tag): counts.ONE}  # type: ignore[dict-item]
            if ":" in str(pool):  # Go's punctuation around a tool or call, or part of one
                cost[("lit", None)] = counts.const(PRINT_BYTES)
            return cost
        why = kind[1] if head == "unknown" else "a whole message (its images too)"
        raise Unreadable(f"it prints {why}")

    def nodes(self, items: list[Node], scope: _Scope) -> Cost:
        cost: Cost = {}
        for node in items:
            if isinstance(node, Text):
                cost = _merge(cost, {("lit", None): counts.const(node.size)})
            elif isinstance(node, Action):
                if node.pipe.decl:
                    self.declare(node.pipe, scope)
                else:
                    cost = _merge(cost, self.printed(self.value(node.pipe, scope), scope))
            elif node.kind == "range":
                cost = _merge(cost, self.range(node, scope))
            else:
                cost = _merge(cost, self.branch(node, scope))
        return cost

    def declare(self, pipe: Pipe, scope: _Scope) -> None:
        value = self.value(Pipe(pipe.cmds), scope)
        for name in pipe.decl:
            if name in self.reassigned:  # set in a block, it holds that after the block too
                if value[0] not in ("scalar", "cap"):
                    raise Unreadable(f"it sets {name} again, to text")
                value = ("scalar",)
            scope.vars[name] = value

    def branch(self, block: Block, scope: _Scope) -> Cost:
        """An ``if`` or ``with``: the larger of its parts; a body under ``$last`` once a pass."""
        condition = self.value(Pipe(block.pipe.cmds), scope)
        then, orelse = scope.inner(), scope.inner()
        if block.pipe.decl:
            self.declare(block.pipe, then)
        if block.kind == "with":
            then.dot = condition
        narrowed = self.narrow(block.pipe, scope)
        if narrowed is not None:
            ranged, names, positive = narrowed
            had = scope.roles.get(ranged, _ROLES)
            yes = had & names if positive else had - (names - {"*"})
            no = had - (names - {"*"}) if positive else had & names
            then.roles[ranged], orelse.roles[ranged] = yes, no
        body = self.nodes(block.body, then)
        if self.tooled(block.pipe, scope):  # no tools: not written at all
            body = {key: counts.mul(poly, counts.TOOLED) for key, poly in body.items()}
        if condition[0] == "cap":  # per pass of its range: repeats inside it multiply it
            ranged, most = int(str(condition[1])), int(str(condition[2]))
            capped: Cost = {}
            for (what, tag), poly in body.items():
                key = (what, ranged if tag is None else tag)
                scaled = counts.scale(poly, most) if tag is None else poly
                capped = _merge(capped, {key: scaled})
            body = capped
        return _merge(body, self.nodes(block.orelse, orelse), most=True)

    def tooled(self, pipe: Pipe, scope: _Scope) -> bool:
        """``if .Tools`` (or ``and`` of it): true only for a request with tools."""
        if len(pipe.cmds) != 1 or pipe.decl:
            return False
        cmd = pipe.cmds[0]
        args = cmd[1:] if cmd[0] == ("ident", "and") else cmd if len(cmd) == 1 else ()
        return any(self.arg(a, scope) == ("coll", "tools", None) for a in args)

    def narrow(self, pipe: Pipe, scope: _Scope) -> tuple[int, frozenset[str], bool] | None:
        """``eq .Role "user" ...`` (or ``ne``, or ``not`` of one): the range whose message's
        role it tests, the roles, and whether the body runs for them or for the others."""
        if len(pipe.cmds) != 1:
            return None
        cmd = pipe.cmds[0]
        if len(cmd) == 2 and cmd[0] == ("ident", "not") and isinstance(cmd[1], Pipe):
            inner = self.narrow(cmd[1], scope)
            return None if inner is None else (inner[0], inner[1], not inner[2])
        if len(cmd) < 3 or cmd[0] not in (("ident", "eq"), ("ident", "ne")):
            return None
        role = self.arg(cmd[1], scope)
        said = [a[1][1:-1] for a in cmd[2:] if isinstance(a, tuple) and a[0] == "str"]
        if role[0] != "role" or len(said) != len(cmd) - 2 or (cmd[0][1] == "ne" and len(said) > 1):
            return None
        names = frozenset(s if s in _ROLES - {"*"} else "*" for s in said)
        return int(str(role[1])), names, cmd[0][1] == "eq"

    def range(self, block: Block, scope: _Scope) -> Cost:
        """A ``range``: its body as often as the collection may repeat it, its else part when
        the collection is empty."""
        collection = self.value(Pipe(block.pipe.cmds), scope)
        self.ranges += 1
        ranged, owner = self.ranges, collection[-1]
        key: Kind = ("scalar",)
        if collection[0] == "coll" and collection[1] in _RANGED:
            what = str(collection[1])
            element: Kind = ("msg" if what == "messages" else what[:-1], ranged)
            count = _RANGED[what]
        elif collection[0] == "text" and ":" in str(collection[1]):  # a tool's properties...
            element = ("text", collection[1], ranged)
            keys = ("text", f"{collection[1]}.#key", ranged)  # a map's keys, or a list's indexes
            key, count = ("either", (keys, key)), counts.PARTS
        else:
            raise Unreadable("it ranges over what no count of the request bounds")
        inner = scope.inner(dot=element, innermost=ranged)
        names = block.pipe.decl
        if names:
            inner.vars[names[-1]] = element
            if len(names) == 2:
                inner.vars[names[0]] = key
                if element[0] == "msg":
                    inner.index[names[0]] = ranged
        body = self.nodes(block.body, inner)
        cost = _repeat(body, ranged, count, owner if isinstance(owner, int) else None)
        return _merge(cost, self.nodes(block.orelse, scope.inner()), most=True)


def _repeat(body: Cost, ranged: int, count: Poly, owner: int | None) -> Cost:
    """A range's body repeated ``count`` times: what was per one of its items is per a pass
    of the range its collection belongs to (``owner``: a message's tool calls, all of them
    ``count`` in one pass over the messages), or once; the rest repeats."""
    out: Cost = {}
    for (what, tag), poly in body.items():
        if tag == ranged:
            out = _merge(out, {(what, owner): poly})
        elif owner is None:
            out = _merge(out, {(what, tag): counts.mul(poly, count)})
        else:
            out = _merge(out, {(what, owner if tag is None else tag): counts.mul(poly, count)})
    return out


def _reassigned(nodes: list[Node]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, Action) and node.pipe.assign:
            names.update(node.pipe.decl)
        elif isinstance(node, Block):
            names |= _reassigned(node.body) | _reassigned(node.orelse)
    return names


def _overlapping(path: str, printed: dict[str, Poly]) -> Poly:
    """How often the bytes of the tool or call part ``path`` (``tools:Function.Name``) may be
    written: as themselves, within what holds them (a whole tool), and in their parts."""
    if ":" not in path:
        return printed[path]
    family, _, part = path.partition(":")
    total: Poly = {}
    for other, poly in printed.items():
        kin, _, inner = other.partition(":")
        within = not part or not inner or f"{part}.".startswith(f"{inner}.")
        if kin == family and ":" in other and (within or f"{inner}.".startswith(f"{part}.")):
            total = counts.add(total, poly)
    return total


BOUNDS_KEPT = 256
_bounds: dict[bytes, TemplateBound | str] = {}
"""Bounds already read, by their template's SHA-256: a model's answer is asked again each
minute, and a large template takes a moment to read (its digest, a millisecond a megabyte)."""


def bound_template(template: str) -> TemplateBound | str:
    """What ``template`` may write beyond a request's texts, or why nothing bounds it."""
    key = hashlib.sha256(template.encode("utf-8", "surrogatepass")).digest()
    bound = _bounds.get(key)
    if bound is None:
        bound = _bound(template)
        if len(_bounds) >= BOUNDS_KEPT:
            _bounds.clear()
        _bounds[key] = bound
    return bound


def _bound(template: str) -> TemplateBound | str:
    try:
        nodes = go.parse(template)
        names = go.identifiers(nodes)
        legacy = "messages" not in names
        if legacy and "response" not in names:  # Ollama appends {{ .Response }}
            nodes.append(Action(Pipe(((("field", ".Response"),),))))
        walk = _Walk(legacy, _reassigned(nodes))
        cost = walk.nodes(nodes, _Scope(("root", 0 if legacy else None), {}))
        if legacy:  # executed once a turn: every message and one more
            cost = _repeat(cost, 0, counts.add(counts.MESSAGES, counts.ONE), None)
    except (Unreadable, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    literal = cost.pop(("lit", None), {})
    printed = {what: poly for (what, _), poly in cost.items()}
    repeats = {what: _overlapping(what, printed) for what in printed}
    return TemplateBound(
        tuple(sorted(literal.items())),
        tuple(sorted((what, tuple(sorted(p.items()))) for what, p in repeats.items())),
    )
