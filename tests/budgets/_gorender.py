"""A small reference for what Ollama writes with a model's template: templates built as
trees (for hypothesis), their Go text, and their rendering as Ollama executes them
(``template.Execute``: messages collated, once with ``.Messages`` or once a turn for a
legacy template). Independent of the meter's reading of Go templates, which it checks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

Node = tuple[Any, ...]
"""("text", s) | ("print", expr) | ("if", cond, then, orelse) | ("range", what, n, body)."""


def go_json(value: object) -> str:
    """``json.Marshal``: compact, map keys sorted, ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@dataclass
class Data:
    root: dict[str, Any]
    dot: Any
    vars: dict[str, Any]


def _function(data: Data) -> Mapping[str, Any]:
    function = data.dot.get("function") if isinstance(data.dot, Mapping) else None
    return function if isinstance(function, Mapping) else {}


# Expressions a generated template prints, by the scope they are printed in.
PRINTS: dict[str, dict[str, Callable[[Data], object]]] = {
    "root": {
        ".System": lambda d: d.root.get("System", "<no value>"),
        ".Prompt": lambda d: d.root.get("Prompt", "<no value>"),
        ".Response": lambda d: d.root.get("Response", "<no value>"),
        "currentDate": lambda d: "2026-12-04",
        '"<|x|>\\n"': lambda d: "<|x|>\n",
    },
    "msg": {
        ".Content": lambda d: d.dot["content"],
        ".Role": lambda d: d.dot["role"],
        ".Thinking": lambda d: d.dot.get("thinking", ""),
        "json .Content": lambda d: go_json(d.dot["content"]),
        'json (or .Content "-")': lambda d: go_json(d.dot["content"] or "-"),
        'printf "%s: %s" .Role .Content': lambda d: f"{d.dot['role']}: {d.dot['content']}",
        "$.System": lambda d: d.root.get("System", "<no value>"),
    },
    "tool": {
        "json .": lambda d: go_json(d.dot),
        ".Function.Name": lambda d: _function(d).get("name", ""),
        ".Function.Description": lambda d: _function(d).get("description", ""),
    },
    "prop": {
        "$k": lambda d: d.vars["$k"],
        "$p.Type": lambda d: d.vars["$p"].get("type", ""),
        ".Type": lambda d: d.dot.get("type", ""),
    },
    "call": {
        ".Function.Name": lambda d: _function(d).get("name", ""),
        ".Function.Arguments": lambda d: go_json(_function(d).get("arguments") or {}),
        "json .Function.Arguments": lambda d: go_json(_function(d).get("arguments") or {}),
    },
}


def _last(n: int) -> Callable[[Data], bool]:
    return lambda d: bool(d.vars.get(f"$last{n}"))


CONDITIONS: dict[str, dict[str, Callable[[Data], object]]] = {
    "root": {
        ".System": lambda d: d.root.get("System"),
        "$.Tools": lambda d: d.root.get("Tools"),
        ".Prompt": lambda d: d.root.get("Prompt"),
    },
    "msg": {
        ".Content": lambda d: d.dot["content"],
        'eq .Role "user"': lambda d: d.dot["role"] == "user",
        'eq .Role "system"': lambda d: d.dot["role"] == "system",
        'ne .Role "system"': lambda d: d.dot["role"] != "system",
        'eq .Role "assistant" "tool"': lambda d: d.dot["role"] in ("assistant", "tool"),
        'not (eq .Role "user")': lambda d: d.dot["role"] != "user",
        'or (eq .Role "user") (eq .Role "tool")': lambda d: d.dot["role"] in ("user", "tool"),
        'eq .Role "syst\\x65m"': lambda d: d.dot["role"] == "system",
        ".ToolCalls": lambda d: d.dot.get("tool_calls"),
    },
    "tool": {".Function.Name": lambda d: _function(d).get("name")},
    "prop": {".Type": lambda d: d.dot.get("type")},
    "call": {".Function.Name": lambda d: _function(d).get("name")},
}

_SCOPE = {"messages": "msg", "tools": "tool", "calls": "call", "props": "prop"}


def templates(legacy: bool) -> st.SearchStrategy[list[Node]]:
    """Template trees: literal text, if/else, ranges over messages (with ``$last``), tools
    and a message's tool calls, nested; ``legacy``: no ``.Messages`` (executed once a turn)."""
    texts = st.text(alphabet="ab <>|\n\té", min_size=1, max_size=40).map(lambda s: ("text", s))
    counter = iter(range(1, 10**9))

    def nodes(scope: str, lasts: tuple[int, ...], depth: int) -> st.SearchStrategy[list[Node]]:
        prints = st.sampled_from(sorted(PRINTS[scope])).map(lambda e: ("print", e))
        conds = sorted(CONDITIONS[scope]) + [f"$last{n}" for n in lasts]
        conds += [f"and $.Tools $last{n}" for n in lasts] + [f"not $last{n}" for n in lasts]
        conds += [f"{op} $i{n} {k}" for n in lasts for op, k in (("eq", 0), ("eq", 1), ("lt", 2))]
        conds += [
            f"or (eq (len (slice $.Messages $i{n})) 1) (eq (len (slice $.Messages $i{n})) 2)"
            for n in lasts
        ]
        accumulator = st.sampled_from([("acc_flush",), ("acc_print",)])
        options = [texts, prints, accumulator]
        if scope == "msg":
            options.append(st.just(("acc_add",)))
        if scope != "root":  # in a range: the rest of its pass skipped, or all of it
            jumps = st.sampled_from(["continue", "break"])
            options.append(st.tuples(st.just("jump"), jumps, st.sampled_from(conds)))
        if depth < 3:
            inner = st.deferred(lambda: nodes(scope, lasts, depth + 1))
            options.append(st.tuples(st.just("if"), st.sampled_from(conds), inner, inner))
            ranges = ["tools"] + ([] if legacy else ["messages"])
            ranges += {"msg": ["calls"], "tool": ["props"]}.get(scope, [])
            for what in ranges:
                options.append(
                    st.builds(
                        lambda body, what=what, n=None: ("range", what, n, body),
                        st.deferred(lambda what=what: _body(what, scope, lasts, depth)),
                    )
                )
        return st.lists(st.one_of(options), max_size=5)

    def _body(what: str, scope: str, lasts: tuple[int, ...], depth: int) -> Any:
        if what != "messages":
            return nodes(_SCOPE[what], lasts, depth + 1)
        n = next(counter)
        return nodes("msg", (*lasts, n), depth + 1).map(lambda body: [("last", n), *body])

    return nodes("root", (), 0).map(lambda tree: [("acc_decl",), *tree])


TEMPLATES = st.one_of(templates(False), templates(True))
"""Both kinds of template, built once: a strategy built anew for each example (``flatmap``)
is validated anew, which took most of the test's time (83 s for 400 examples)."""


def _number_ranges(tree: list[Node]) -> list[Node]:
    out: list[Node] = []
    for node in tree:
        if node[0] == "if":
            out.append(("if", node[1], _number_ranges(node[2]), _number_ranges(node[3])))
        elif node[0] == "range":
            body = _number_ranges(node[3])
            n = body[0][1] if body and body[0][0] == "last" else None
            out.append(("range", node[1], n, body))
        else:
            out.append(node)
    return out


ACCUMULATOR = {
    "acc_decl": '{{- $acc := "" }}',
    "acc_add": "{{ if not $acc }}{{ $acc = .Content }}"
    '{{ else }}{{ $acc = printf "%s\\n\\n%s" $acc .Content }}{{ end }}',
    "acc_flush": '{{ if $acc }}{{ $acc }}\n{{ $acc = "" }}{{ end }}',
    "acc_print": "{{ $acc }}",
}
"""A variable that gathers the system messages' contents, as Ollama's gemma and llama2
templates do, printed and emptied (``acc_flush``) or only printed (``acc_print``)."""


class _Jump(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


def go_text(tree: list[Node], trim: bool = False) -> str:
    """The Go template a tree is (``trim``: ``{{-`` markers where text is only spaces)."""
    out = []
    for node in _number_ranges(tree):
        if node[0] == "text":
            out.append(node[1].replace("{", "(").replace("}", ")"))
        elif node[0] == "print":
            out.append(f"{{{{ {node[1]} }}}}")
        elif node[0] == "last":
            n = node[1]
            out.append(f"{{{{- $last{n} := eq (len (slice $.Messages $i{n})) 1 }}}}")
        elif node[0] in ACCUMULATOR:
            out.append(ACCUMULATOR[node[0]])
        elif node[0] == "jump":
            out.append(f"{{{{ if {node[2]} }}}}{{{{ {node[1]} }}}}{{{{ end }}}}")
        elif node[0] == "if":
            out.append(f"{{{{ if {node[1]} }}}}{go_text(node[2])}")
            out.append(f"{{{{ else }}}}{go_text(node[3])}{{{{ end }}}}")
        else:
            what, n, body = node[1], node[2], node[3]
            head = {
                "messages": f"$i{n}, $_ := $.Messages",
                "tools": "$.Tools",
                "props": "$k, $p := .Function.Parameters.Properties",
            }.get(what)
            out.append(f"{{{{ range {head or '.ToolCalls'} }}}}{go_text(body)}{{{{ end }}}}")
    return "".join(out)


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict[str, Any]] = []
    for message in messages:
        if collated and collated[-1]["role"] == message["role"] and message["role"] != "tool":
            collated[-1]["content"] += "\n\n" + message["content"]
        else:
            collated.append(dict(message))
    return "\n\n".join(system), collated


def render(tree: list[Node], messages: Sequence[Mapping[str, Any]], tools: list[Any]) -> str:
    """What Ollama writes for a chat of ``messages`` and ``tools`` with the template."""
    tree = _number_ranges(tree)
    system, collated = _collate(messages)
    if "Messages" in go_text(tree):
        root = {"System": system, "Messages": collated, "Tools": tools, "Response": ""}
        return _run(tree, Data(root, root, {}), "root")
    if "Response" not in go_text(tree):
        tree = [*tree, ("print", ".Response")]
    out, fields = [], {"System": "", "Prompt": "", "Response": ""}

    def execute() -> None:
        root = dict(fields)
        out.append(_run(tree, Data(root, root, {}), "root"))
        fields.update(System="", Prompt="", Response="")

    for message in collated:
        role = message["role"]
        if role == "system":
            if fields["Prompt"] or fields["Response"]:
                execute()
            fields["System"] = message["content"]
        elif role == "user":
            if fields["Response"]:
                execute()
            fields["Prompt"] = message["content"]
        elif role == "assistant":
            fields["Response"] = message["content"]
    execute()
    return "".join(out)


def _run(tree: list[Node], data: Data, scope: str, out: list[str] | None = None) -> str:
    """What ``tree`` writes, into ``out`` as it goes (a break or continue raised out of it
    keeps what was written before)."""
    out = [] if out is None else out
    for node in tree:
        if node[0] == "text":
            out.append(node[1].replace("{", "(").replace("}", ")"))
        elif node[0] == "print":
            out.append(str(PRINTS[scope][node[1]](data)))
        elif node[0] == "last":
            n = node[1]
            data.vars[f"$last{n}"] = data.vars[f"$i{n}"] == len(data.root["Messages"]) - 1
        elif node[0] == "acc_decl":
            data.vars["$acc"] = [""]  # a cell: set in a range, it holds after it too
        elif node[0] == "acc_add":
            cell = data.vars["$acc"]
            cell[0] = f"{cell[0]}\n\n{data.dot['content']}" if cell[0] else data.dot["content"]
        elif node[0] in ("acc_flush", "acc_print"):
            out.append(data.vars["$acc"][0])
            if node[0] == "acc_flush" and data.vars["$acc"][0]:
                out.append("\n")
                data.vars["$acc"][0] = ""
        elif node[0] == "jump":
            if _holds(node[2], data, scope):
                raise _Jump(node[1]) from None
        elif node[0] == "if":
            _run(node[2] if _holds(node[1], data, scope) else node[3], data, scope, out)
        else:
            what, n, body = node[1], node[2], node[3]
            if what == "calls":
                items = data.dot.get("tool_calls") or []
            elif what == "props":  # a map: its keys in order
                props = _function(data).get("parameters", {}).get("properties") or {}
                for key, prop in sorted(props.items()):
                    inner = Data(data.root, prop, {**data.vars, "$k": key, "$p": prop})
                    kept = []
                    try:
                        _run(body, inner, "prop", kept)
                    except _Jump as jump:
                        if jump.kind == "break":
                            out.extend(kept)
                            break
                    out.extend(kept)
                continue
            else:
                items = data.root.get({"messages": "Messages", "tools": "Tools"}[what]) or []
            for at, item in enumerate(items):
                inner = Data(data.root, item, dict(data.vars))
                if n is not None:
                    inner.vars[f"$i{n}"] = at
                kept: list[str] = []
                try:
                    _run(body, inner, _SCOPE[what], kept)
                except _Jump as jump:
                    if jump.kind == "break":
                        out.extend(kept)
                        break
                out.extend(kept)
    return "".join(out)


def _holds(condition: str, data: Data, scope: str) -> bool:
    if match := re.fullmatch(r"(eq|lt) \$i(\d+) (\d+)", condition):
        at, than = data.vars[f"$i{match[2]}"], int(match[3])
        return at == than if match[1] == "eq" else at < than
    if match := re.fullmatch(r"or \(eq \(len \(slice \$\.Messages \$i(\d+)\)\) 1\) .*", condition):
        return len(data.root["Messages"]) - data.vars[f"$i{match[1]}"] in (1, 2)
    if condition.startswith("$last"):
        return _last(int(condition[5:]))(data)
    if condition.startswith("not $last"):
        return not _last(int(condition[9:]))(data)
    if condition.startswith("and $.Tools $last"):
        return bool(data.root.get("Tools")) and _last(int(condition[17:]))(data)
    return bool(CONDITIONS[scope][condition](data))
