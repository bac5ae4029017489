"""A small executor of Go's text/template, as Ollama runs a model's template, for tests: it
shares nothing with the meter's reading of templates (``_gotemplate``), which it checks.

It takes what Ollama's own templates use: text with ``{{-``/``-}}`` trims, comments,
``if``/``else if``/``else``/``range``/``with``, ``break``/``continue``, variables declared
and set, fields, parentheses and pipes, and the functions ``eq ne lt le gt ge and or not
len slice index printf json currentDate``. Tools, functions and arguments print as Ollama's
``String()`` methods do (their JSON). Anything else raises :class:`GoError`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tests.budgets._gorender import _collate, go_json


class GoError(Exception):
    pass


class Shown:
    """A value Go prints by its ``String()`` method (a tool, a function, arguments): its JSON,
    the request's; its fields by Go's names."""

    def __init__(self, fields: Any, sent: Any) -> None:
        self.fields, self.sent = fields, sent

    def __str__(self) -> str:
        return go_json(self.sent)


class ShownList(list[Any]):
    """The request's tools: printed whole (``{{ .Tools }}``) as their JSON."""

    def __init__(self, items: list[Any], sent: Any) -> None:
        super().__init__(items)
        self.sent = sent

    def __str__(self) -> str:
        return go_json(self.sent)


_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\\n]|\\.)*"|`[^`]*`)|(?P<op>:=|=|\(|\)|\||,)
    |(?P<var>\$\w*(?:\.\w+)*)|(?P<field>\.(?:\w+(?:\.\w+)*)?)|(?P<num>-?\d+)|(?P<ident>\w+))""",
    re.VERBOSE,
)


_ACTION = re.compile(
    r"""\{\{(-\s)?(/\*.*?\*/|(?:"(?:[^"\\]|\\.)*"|`[^`]*`|[^"`}]|\}(?!\}))*?)(\s-)?\}\}""", re.S
)


def _split(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at, trim = 0, False
    for match in _ACTION.finditer(source):
        text = source[at : match.start()]
        text = text.lstrip(" \t\r\n") if trim else text
        out.append(("text", text.rstrip(" \t\r\n") if match[1] else text))
        if not match[2].strip().startswith("/*"):
            out.append(("action", match[2]))
        trim, at = bool(match[3]), match.end()
    tail = source[at:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim else tail))
    return out


def _tokens(action: str) -> list[tuple[str, str]]:
    found, at = [], 0
    while action[at:].strip():
        match = _TOKEN.match(action, at)
        if match is None:
            raise GoError(f"cannot read {action[at:]!r}")
        kind = match.lastgroup or ""
        found.append((kind, match[kind]))
        at = match.end()
    return found


def parse(source: str) -> list[Any]:
    """A tree: ("text", s), ("pipe", pipe), (kind, pipe, body, orelse), ("jump", word)."""
    root: list[Any] = []
    stack: list[tuple[list[Any], Any, bool]] = []  # (list being filled, block, chained)
    current = root
    for kind, piece in _split(source):
        if kind == "text":
            current.append(("text", piece))
            continue
        tokens = _tokens(piece)
        word = tokens[0][1] if tokens and tokens[0][0] == "ident" else ""
        if word in ("if", "range", "with"):
            block = [word, _pipe(tokens[1:]), [], []]
            current.append(block)
            stack.append((current, block, False))
            current = block[2]
        elif word == "else":
            _, block, chained = stack[-1]
            current = block[3]
            if len(tokens) > 1:
                inner = [tokens[1][1], _pipe(tokens[2:]), [], []]
                current.append(inner)
                stack.append((current, inner, True))
                current = inner[2]
        elif word == "end":
            while True:
                current, _, chained = stack.pop()
                if not chained:
                    break
        elif word in ("break", "continue"):
            current.append(("jump", word))
        else:
            current.append(("pipe", _pipe(tokens)))
    if stack:
        raise GoError("unclosed block")
    return root


def _pipe(tokens: list[tuple[str, str]]) -> tuple[list[str], str, list[list[Any]]]:
    decl: list[str] = []
    how = ""
    for at, (kind, text) in enumerate(tokens):
        if kind == "op" and text in (":=", "="):
            decl = [t for k, t in tokens[:at] if k == "var"]
            how, tokens = text, tokens[at + 1 :]
            break
    cmds: list[list[Any]] = [[]]
    at = 0
    while at < len(tokens):
        kind, text = tokens[at]
        if (kind, text) == ("op", "("):
            depth, end = 0, at
            for end in range(at, len(tokens)):
                depth += {"(": 1, ")": -1}.get(tokens[end][1], 0) if tokens[end][0] == "op" else 0
                if depth == 0:
                    break
            cmds[-1].append(("sub", _pipe(tokens[at + 1 : end])))
            at = end
        elif (kind, text) == ("op", "|"):
            cmds.append([])
        else:
            cmds[-1].append((kind, text))
        at += 1
    return decl, how, cmds


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _true(value: Any) -> bool:
    return value not in (None, "", 0, False) and not (
        isinstance(value, Sequence | Mapping) and len(value) == 0
    )


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Shown):
        value = value.fields
    if isinstance(value, Mapping) and (name in value or value.get("__root__")):
        return value.get(name)  # the root is a map: a missing key is no value
    raise GoError(f"can't evaluate field {name} in {type(value).__name__}")


def _printf(form: str, *args: Any) -> str:
    if re.search(r"%[^s%]", form):
        raise GoError(f"verb in {form!r}")
    parts = iter(str(a) for a in args)
    return re.sub(r"%[s%]", lambda m: "%" if m[0] == "%%" else next(parts), form)


_FUNCS: dict[str, Any] = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "not": lambda a: not _true(a),
    "len": len,
    "slice": lambda a, i=0, j=None: a[i:j],
    "index": lambda a, i: a[i],
    "printf": _printf,
    "json": lambda a: go_json(a.sent if isinstance(a, Shown | ShownList) else a),
    "currentDate": lambda: "2026-12-04",
}


class _Run:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.out: list[str] = []

    def value(self, pipe: Any, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        decl, how, cmds = pipe
        result: Any = None
        for at, cmd in enumerate(cmds):
            result = self.command(cmd, dot, scopes, result if at else _NONE)
        for name in decl[-1:] if decl else []:
            if how == ":=":
                scopes[-1][name] = result
            else:
                next(s for s in reversed(scopes) if name in s)[name] = result
        return result

    def command(self, cmd: list[Any], dot: Any, scopes: list[dict[str, Any]], piped: Any) -> Any:
        kind, text = cmd[0]
        args = [self.operand(a, dot, scopes) for a in cmd[1:]]
        args += [] if piped is _NONE else [piped]
        if kind == "ident" and text in ("and", "or"):
            for arg in args:
                if _true(arg) == (text == "or"):
                    return arg
            return args[-1]
        if kind == "ident" and text in _FUNCS:
            return _FUNCS[text](*args)
        if args:
            raise GoError(f"{text} called with arguments")
        return self.operand(cmd[0], dot, scopes)

    def operand(self, arg: Any, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        kind, text = arg
        if kind == "sub":
            return self.value(text, dot, scopes)
        if kind == "str":
            return text[1:-1] if text[0] == "`" else ast.literal_eval(text)
        if kind == "num":
            return int(text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text in _FUNCS:
                return _FUNCS[text]()
            raise GoError(f"function {text} not defined")
        head, *chain = text.split(".")
        if kind == "field":
            value = dot
        elif head == "$":
            value = self.root
        else:
            value = next(s[head] for s in reversed(scopes) if head in s)
        for name in (c for c in chain if c):
            value = _field(value, name)
        return value

    def run(self, nodes: list[Any], dot: Any, scopes: list[dict[str, Any]]) -> None:
        for node in nodes:
            if node[0] == "text":
                self.out.append(node[1])
            elif node[0] == "jump":
                raise _Break() if node[1] == "break" else _Continue()
            elif node[0] == "pipe":
                value = self.value(node[1], dot, scopes)
                if not node[1][0]:
                    self.out.append(_printed(value))
            elif node[0] == "range":
                self.range(node, dot, scopes)
            else:
                inner = [*scopes, {}]
                value = self.value(node[1], dot, inner)
                if _true(value):
                    self.run(node[2], value if node[0] == "with" else dot, inner)
                else:
                    self.run(node[3], dot, [*scopes, {}])

    def range(self, node: Any, dot: Any, scopes: list[dict[str, Any]]) -> None:
        decl, _, cmds = node[1]
        items = self.value(([], "", cmds), dot, scopes)
        items = items.fields if isinstance(items, Shown) else items
        pairs = sorted(items.items()) if isinstance(items, Mapping) else list(enumerate(items))
        if not pairs:
            self.run(node[3], dot, [*scopes, {}])
        for key, item in pairs:
            inner = {decl[-1]: item} if decl else {}
            if len(decl) == 2:
                inner[decl[0]] = key
            try:
                self.run(node[2], item, [*scopes, inner])
            except _Continue:
                continue
            except _Break:
                break


_NONE = object()


def _printed(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    calls = [
        {"Function": {"Name": c["function"]["name"], "Arguments": _arguments(c)}}
        for c in message.get("tool_calls") or []
    ]
    return {
        "Role": message["role"],
        "Content": message.get("content", ""),
        "Thinking": message.get("thinking", ""),
        "ToolCalls": calls,
        "ToolName": "",
        "Images": [],
    }


def _arguments(call: Mapping[str, Any]) -> Shown:
    arguments = call["function"].get("arguments") or {}
    return Shown(arguments, arguments)


def _tool(tool: Mapping[str, Any]) -> Shown:
    function = tool.get("function") or {}
    parameters = function.get("parameters") or {}
    properties = {
        name: {"Type": p.get("type", ""), "Description": p.get("description", "")}
        for name, p in (parameters.get("properties") or {}).items()
    }
    fields = {
        "Name": function.get("name", ""),
        "Description": function.get("description", ""),
        "Parameters": {"Type": parameters.get("type", ""), "Properties": properties},
    }
    return Shown({"Type": tool.get("type", ""), "Function": Shown(fields, function)}, tool)


def execute(template: str, messages: Sequence[Mapping[str, Any]], tools: list[Any]) -> str:
    """What Ollama writes for a chat of ``messages`` and ``tools`` with ``template``."""
    tree = parse(template)
    system, collated = _collate(messages)
    names = {n.lower() for n in re.findall(r"[.$](\w+)", template)}
    if "messages" in names:
        root = {
            "__root__": True,
            "System": system,
            "Messages": [_message(m) for m in collated],
            "Tools": ShownList([_tool(t) for t in tools], tools),
            "Response": "",
            "IsThinkSet": False,
            "Think": False,
        }
        run = _Run(root)
        run.run(tree, root, [{"$": root}])
        return "".join(run.out)
    raise GoError("a legacy template (the tree renderer runs those)")
