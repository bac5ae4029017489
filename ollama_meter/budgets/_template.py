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
  ``eq (len (slice $.Messages $i)) 1``, or ``eq $i 0``; ``or`` of two, twice) once per
  pass of its range; after ``{{ if eq .Role "system" }}...{{ continue }}{{ end }}``, the
  rest of the pass for the other roles only;
- :data:`PRINT_BYTES` for each action that prints no request text (``.Role``,
  ``currentDate``, a count);
- the request's own texts written more than once (``.Content`` in two ranges, a system
  message as ``.System`` and again as a message, ``json`` escaping ``<`` six bytes a byte):
  each such repeat costs the request's bytes again;
- a variable set again (``$system = printf "%s\\n\\n%s" $system .Content``, as Ollama's
  gemma, llama2 and alpaca templates gather the system messages): all it may gather, once
  if each print of it is emptied at once (``{{ $system }}{{ $system = "" }}``), else at
  each print; one set to a copy of what a variable holds (which could double) is refused.

A legacy template (one that names no ``.Messages``) Ollama executes once a turn: all of
it repeats once a message. Since the repeats depend on the request, a template's bound
is polynomials in (messages, tools, calls, parts), combined with a request's counts when it is
admitted (:meth:`TemplateBound.extra`). A template this cannot read, or one that prints
what no count bounds (``printf`` but of ``%s``, ``.Images``, a ``range`` over anything
else, a named template) has no bound (:func:`bound_template` says why). Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ollama_meter.budgets import _counts as counts, _gotemplate as go
from ollama_meter.budgets._counts import Poly
from ollama_meter.budgets._estimate import PRINT_BYTES
from ollama_meter.budgets._gotemplate import Action, Block, Jump, Node, Pipe, Text, Unreadable
from ollama_meter.budgets._values import ROLES, Kind, Scope, Values

JSON_ESCAPE = 6
"""``json`` of a text may write six bytes for one (``<`` is ``\\u003c``)."""
JOIN_BYTES = 2
"""Ollama joins consecutive messages of one role, and the system messages, with a blank line."""

_ACC = "\x00acc:"
"""What is added to an accumulator is counted apart, under its name, until it is printed."""
_RANGED = {"messages": counts.MESSAGES, "tools": counts.TOOLS, "calls": counts.CALLS}

Cost = dict[tuple[str, int | None], Poly]
"""("lit" or a pool of the request's text, the range whose pass it is per (None: each
execution)) to its count: literal bytes, or how often each of the pool's texts is written."""


def _merge(a: Cost, b: Cost, most: bool = False) -> Cost:
    """What both write, or either (``most``: an ``if`` and its else part, in one item)."""
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
        # a text written again is written with the blank lines Ollama joined it with
        return written + max(most - 1, 0) * (text_bytes + JOIN_BYTES * messages)


class _Walk(Values):
    def __init__(self, legacy: bool, accumulated: set[str]) -> None:
        super().__init__(legacy, accumulated)
        self.ranges = 0
        self.drained: set[str] = set()
        """Accumulators printed and emptied (``{{ $v }}...{{ $v = "" }}``): what they
        accumulate is written at most once in all."""
        self.totals: Cost = {}
        """What each accumulator may hold, once known (the first walk)."""
        self.adding: str | None = None
        self.passes: dict[tuple[int, str], int] = {}
        """A test true in at most N items of a range's pass, by (range, test): the negative
        of its number tags what is written under it, once a pass. Two parts of an ``if`` under
        the same test write either's (it holds for the same items); under two, both's."""
        self.ranged_by: dict[int, int] = {}

    # -- what it writes -------------------------------------------------------------------

    def printed(self, kind: Kind, scope: Scope) -> Cost:
        head = kind[0]
        if head == "role":  # a longer role counts in the request's bytes (written again)
            return {("lit", None): counts.const(PRINT_BYTES), ("field:Role", kind[1]): counts.ONE}  # type: ignore[dict-item]
        if head in ("scalar", "cap"):
            return {("lit", None): counts.const(PRINT_BYTES)}
        if head == "literal":
            return {("lit", None): counts.const(int(str(kind[1])))}
        if head == "empty":
            return {}
        if head in ("either", "concat"):  # either of them, or all of them: at most all
            cost: Cost = {}
            for each in kind[1]:  # type: ignore[attr-defined]
                cost = _merge(cost, self.printed(each, scope))
            return cost
        if head == "acc":  # whatever it accumulated, all of it (unless this is adding to it)
            prefix = f"{_ACC}{kind[1]}:"
            return {
                (what.removeprefix(prefix), tag): poly
                for (what, tag), poly in self.totals.items()
                if what.startswith(prefix) and kind[1] != self.adding
            }
        if head == "json":  # a text escaped, six bytes a byte (tools and calls count so)
            inner = kind[1]
            assert isinstance(inner, tuple)
            cost = self.printed(inner, scope)
            if not (
                inner[0] in ("tool", "call", "coll")
                or (inner[0] == "text" and ":" in str(inner[1]))
            ):
                cost = {
                    (what, tag): poly if ":" in what else counts.scale(poly, JSON_ESCAPE)
                    for (what, tag), poly in cost.items()
                }
            return _merge(cost, {("lit", None): counts.const(PRINT_BYTES)})
        if head == "content":
            may = scope.roles.get(int(str(kind[1])), ROLES)
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

    def nodes(self, items: list[Node], scope: Scope) -> Cost:
        cost: Cost = {}
        for at, node in enumerate(items):
            if isinstance(node, Jump):  # break, continue: the rest is not run
                break
            if isinstance(node, Text):
                cost = _merge(cost, {("lit", None): counts.const(node.size)})
            elif isinstance(node, Action):
                if node.pipe.decl:
                    cost = _merge(cost, self.declare(node.pipe, scope))
                elif (drained := _drains(items, at, self.accumulated)) is not None:
                    self.drained.add(drained)
                else:
                    cost = _merge(cost, self.printed(self.value(node.pipe, scope), scope))
            elif node.kind == "range":
                cost = _merge(cost, self.range(node, scope))
            else:
                cost = _merge(cost, self.branch(node, scope))
                narrowed = self.narrow(node.pipe, scope) if node.kind == "if" else None
                if narrowed is not None:  # one part ends in break or continue: the rest is
                    yes, no = _split(scope, narrowed)  # run only after the other part
                    jumps = [any(isinstance(n, Jump) for n in p) for p in (node.body, node.orelse)]
                    if jumps[0] != jumps[1]:
                        scope.roles[narrowed[0]] = no if jumps[0] else yes
        return cost

    def declare(self, pipe: Pipe, scope: Scope) -> Cost:
        """Sets a variable; one set again anywhere (an accumulator) adds what it is set to
        to what it may hold (``$s = printf "%s%s" $s .Content`` adds a content)."""
        value = self.value(Pipe(pipe.cmds), scope)
        added: Cost = {}
        for name in pipe.decl:
            scope.index.pop(name, None)
            if name in self.accumulated:
                held = _accumulators(value)
                if set(held) - {name} or len(held) > 1 or (held and not pipe.assign):
                    raise Unreadable(f"it sets {name} to a copy of what a variable holds")
                if held and not (value[0] in ("concat", "either") or value == ("acc", name)):
                    raise Unreadable(f"it sets {name} to a changed copy of itself")
                self.adding = name
                printed = self.printed(value, scope)
                self.adding = None
                added = _merge(
                    added, {(f"{_ACC}{name}:{w}", t): p for (w, t), p in printed.items()}
                )
                value = ("acc", name)
            scope.vars[name] = value
        return added

    def branch(self, block: Block, scope: Scope) -> Cost:
        """An ``if`` or ``with``: the larger of its parts; a body under ``$last`` once a pass."""
        condition = self.value(Pipe(block.pipe.cmds), scope)
        then, orelse = scope.inner(), scope.inner()
        declared = self.declare(block.pipe, then) if block.pipe.decl else {}
        if block.kind == "with":
            then.dot = condition
        narrowed = self.narrow(block.pipe, scope)
        if narrowed is not None:
            then.roles[narrowed[0]], orelse.roles[narrowed[0]] = _split(scope, narrowed)
        body = _merge(declared, self.nodes(block.body, then))
        if self.tooled(block.pipe, scope):  # no tools: not written at all
            body = {key: counts.mul(poly, counts.TOOLED) for key, poly in body.items()}
        if condition[0] == "cap":  # per pass of its range (a negative tag): inner repeats
            ranged, most = int(str(condition[1])), int(str(condition[2]))  # multiply it
            test = -self.passes.setdefault((ranged, str(condition[3])), len(self.passes) + 1)
            self.ranged_by[test] = ranged
            capped: Cost = {}
            for (what, tag), poly in body.items():
                key = (what, test if tag is None else tag)
                capped = _merge(capped, {key: counts.scale(poly, most) if tag is None else poly})
            body = capped
        return _merge(body, self.nodes(block.orelse, orelse), most=True)

    def tooled(self, pipe: Pipe, scope: Scope) -> bool:
        """``if .Tools`` (or ``and`` of it): true only for a request with tools."""
        if len(pipe.cmds) != 1 or pipe.decl:
            return False
        cmd = pipe.cmds[0]
        args = cmd[1:] if cmd[0] == ("ident", "and") else cmd if len(cmd) == 1 else ()
        return any(self.arg(a, scope) == ("coll", "tools", None) for a in args)

    def narrow(self, pipe: Pipe, scope: Scope) -> tuple[int, frozenset[str], bool] | None:
        """``eq .Role "user" ...`` (or ``ne``, or ``not`` of one): the range whose message's
        role it tests, the roles, and whether the body runs for them or for the others."""
        if len(pipe.cmds) != 1:
            return None
        cmd = pipe.cmds[0]
        if len(cmd) == 2 and cmd[0] == ("ident", "not") and isinstance(cmd[1], Pipe):
            inner = self.narrow(cmd[1], scope)
            return None if inner is None else (inner[0], inner[1], not inner[2])
        if cmd[0] == ("ident", "or") and len(cmd) > 1:  # or (eq .Role "user") (eq .Role "tool")
            each = [self.narrow(a, scope) if isinstance(a, Pipe) else None for a in cmd[1:]]
            if any(e is None or not e[2] or e[0] != each[0][0] for e in each):  # type: ignore[index]
                return None
            return each[0][0], frozenset().union(*(e[1] for e in each if e)), True  # type: ignore[index]
        if len(cmd) < 3 or cmd[0] not in (("ident", "eq"), ("ident", "ne")):
            return None
        role = self.arg(cmd[1], scope)
        said = [  # a role spelled with escapes ("us\\x65r") is not read
            a[1][1:-1]
            for a in cmd[2:]
            if isinstance(a, tuple) and a[0] == "str" and "\\" not in a[1]
        ]
        if role[0] != "role" or len(said) != len(cmd) - 2 or (cmd[0][1] == "ne" and len(said) > 1):
            return None
        names = frozenset(s if s in ROLES - {"*"} else "*" for s in said)
        return int(str(role[1])), names, cmd[0][1] == "eq"

    def range(self, block: Block, scope: Scope) -> Cost:
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
        for name in names:
            if name in self.accumulated:  # it would be read as what it is set to, not this
                raise Unreadable(f"it ranges into {name}, which it sets again")
            inner.index.pop(name, None)
        if names:
            inner.vars[names[-1]] = element
            if len(names) == 2:
                inner.vars[names[0]] = key
                inner.index[names[0]] = (ranged, collection)
        body = self.nodes(block.body, inner)
        passes = {tag for tag, of in self.ranged_by.items() if of == ranged}
        cost = _repeat(body, ranged, count, owner if isinstance(owner, int) else None, passes)
        return _merge(cost, self.nodes(block.orelse, scope.inner()), most=True)


def _repeat(
    body: Cost, ranged: int, count: Poly, owner: int | None, passes: set[int] | None = None
) -> Cost:
    """A range's body repeated ``count`` times: what was per one of its items is per a pass
    of the range its collection belongs to (``owner``: a message's tool calls, all of them
    ``count`` in one pass over the messages), or once; the rest repeats."""
    out: Cost = {}
    for (what, tag), poly in body.items():
        if tag == ranged or tag in (passes or ()):  # per item or per pass: per owner's pass
            out = _merge(out, {(what, owner): poly})
        elif owner is None:
            out = _merge(out, {(what, tag): counts.mul(poly, count)})
        else:
            out = _merge(out, {(what, owner if tag is None else tag): counts.mul(poly, count)})
    return out


def _split(scope: Scope, narrowed: tuple[int, frozenset[str], bool]) -> tuple[frozenset[str], ...]:
    """The roles a message may have where a role test holds, and where it does not."""
    ranged, names, positive = narrowed
    had = scope.roles.get(ranged, ROLES)
    yes, no = had & names, had - (names - {"*"})
    return (yes, no) if positive else (no, yes)


def _drains(items: list[Node], at: int, accumulated: set[str]) -> str | None:
    """The accumulator ``items[at]`` prints whole and the next action empties (``{{ $s }}
    {{ $s = "" }}``): what it accumulates is printed at most once in all, by such actions."""
    node = items[at]
    if not isinstance(node, Action) or len(node.pipe.cmds) != 1:
        return None
    (cmd,) = node.pipe.cmds
    first = cmd[0]
    name = first[1] if len(cmd) == 1 and isinstance(first, tuple) and first[0] == "var" else None
    if name is None or name not in accumulated:
        return None
    after = next((n for n in items[at + 1 :] if not isinstance(n, Text)), None)
    if not (isinstance(after, Action) and after.pipe.assign and after.pipe.decl == (name,)):
        return None
    emptied = after.pipe.cmds == (((after.pipe.cmds[0][0]),),)  # to a literal, no more
    literal = isinstance(after.pipe.cmds[0][0], tuple) and after.pipe.cmds[0][0][0] == "str"
    return name if emptied and literal else None


def _accumulators(kind: Kind) -> list[str]:
    """The accumulators a value holds (``("acc", name)`` anywhere in it)."""
    if kind[0] == "acc":
        return [str(kind[1])]
    found: list[str] = []
    for part in kind[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], tuple):
            for each in part:
                found += _accumulators(each)
        elif isinstance(part, tuple) and part and isinstance(part[0], str):
            found += _accumulators(part)
    return found


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
        cost = walk.nodes(nodes, Scope(("root", 0 if legacy else None), {}))
        if walk.accumulated:  # again, each print of one costing all it may hold
            walk.totals = {key: poly for key, poly in cost.items() if key[0].startswith(_ACC)}
            walk.ranges, walk.drained = 0, set()
            cost = walk.nodes(nodes, Scope(("root", 0 if legacy else None), {}))
            cost = {key: poly for key, poly in cost.items() if not key[0].startswith(_ACC)}
            for name in walk.drained:  # emptied as printed: all it held, once in all
                cost = _merge(cost, walk.printed(("acc", name), Scope(("root", None), {})))
        if legacy:  # executed once a turn: every message and one more
            cost = _repeat(cost, 0, counts.add(counts.MESSAGES, counts.ONE), None)
    except (Unreadable, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    literal = cost.pop(("lit", None), {})
    printed: dict[str, Poly] = {}
    for (what, _), poly in cost.items():
        printed[what] = counts.add(printed.get(what, {}), poly)
    repeats = {what: _overlapping(what, printed) for what in printed}
    return TemplateBound(
        tuple(sorted(literal.items())),
        tuple(sorted((what, tuple(sorted(p.items()))) for what, p in repeats.items())),
    )
