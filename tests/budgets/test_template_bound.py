"""A model's own TEMPLATE is in a hard budget's bound from the first call.

What it writes beyond the request's texts (llama3's headers, a tool-use paragraph, the
markers around each message) was learned only from calls past their bound: every
``ometer chat`` was charged past its bound by it. ``/api/show`` names the template; the
meter bounds what it may write, a token a byte, for the request's counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets import MESSAGE_TOKENS, TEMPLATE_TOKENS, ShownPrompts, _counts as counts
from ollama_meter.budgets._shown import SHOW_LIMIT, SPECIAL_TOKENS, PromptShape, Shown
from ollama_meter.budgets._template import JOIN_BYTES, PRINT_BYTES, TemplateBound, bound_template
from ollama_meter.meter._request import facts_of
from ollama_meter.records import MAX_TOKENS
from ollama_meter.testing import DEFAULT_MODELS
from ollama_meter.testing._emulator import model_template
from ollama_meter.testing._models import count_tokens, expected_counts
from tests._raw_http import RawServer
from tests.budgets import _goexec as goexec, _gorender as go

SYSTEM_HEAD = "<|start_header_id|>system<|end_header_id|>\n\nKnowledge cut off: 2023-12\n\n"
TOOLS_NOTE = "Answer from a tool's result when one comes.\n\nYou can call tools."
TOOLS_ASK = (
    "\n\nTo call one of these functions, answer with JSON only: "
    '{"name": its name, "parameters": its arguments by name}.\n\n'
)
LLAMA = (
    SYSTEM_HEAD
    + "{{ if .System }}{{ .System }}\n{{- end }}\n{{- if .Tools }}"
    + TOOLS_NOTE
    + """
{{- end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}"""
    + TOOLS_ASK
    + """{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""
)
"""A template in the shape of Ollama's llama3.1 and 3.2 ones (their words put otherwise): a
system header, a tool-use note, the tools and a request to call one under the last user
message, each message's header, each call's JSON."""

TEXT = st.text(alphabet="ab <>&\n\u2028é😀", max_size=60) | st.integers(1, 40).map(
    lambda n: "<&" * n
)
ARGUMENTS = st.dictionaries(st.sampled_from(["city", "days", "q"]), TEXT, max_size=2)
CALLS = st.lists(
    st.fixed_dictionaries(
        {"function": st.fixed_dictionaries({"name": TEXT, "arguments": ARGUMENTS})}
    ),
    max_size=2,
)
MESSAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "tool"]), "content": TEXT}
        ),
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": TEXT},
            optional={"thinking": TEXT, "tool_calls": CALLS},
        ),
    ),
    max_size=5,
)
TOOLS = st.lists(
    st.builds(
        lambda name, text, props: {
            "type": "function",
            "function": {
                "name": name,
                "description": text,
                "parameters": {"type": "object", "properties": props},
            },
        },
        TEXT,
        TEXT,
        st.dictionaries(st.sampled_from(["city", "q"]), st.just({"type": "string"}), max_size=2),
    ),
    max_size=3,
)


def admitted_on(template: str, body: dict[str, Any]) -> int:
    """The prompt tokens a chat is admitted on when its model has ``template``."""
    bound = bound_template(template)
    assert isinstance(bound, TemplateBound), bound
    facts = facts_of("chat", body)
    return facts.bound(100).input_tokens + Shown(0, 0, (bound,)).tokens(facts.shape)


TURNS = [{"role": r, "content": "hi"} for r in ("user", "assistant") * 3]
ESCAPED = [{"role": "user", "content": "<&" * 40}]
SYSTEM = [{"role": "system", "content": "s" * 50}, {"role": "user", "content": "hi"}]
A_TOOL = {"type": "function", "function": {"name": "f", "description": "", "parameters": {}}}
LAST = [("last", 1)]
BIG_SYSTEM = [
    {"role": "system", "content": "s" * 1000},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "ok"},
]
OR_LAST_TWO = "or (eq (len (slice $.Messages $i1)) 1) (eq (len (slice $.Messages $i1)) 2)"
SIX = {
    "type": "function",
    "function": {
        "name": "f",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {f"p{n}": {"type": "string"} for n in range(6)},
        },
    },
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=go.TEMPLATES, messages=MESSAGES, tools=TOOLS)
@example(tree=[("text", "<|turn|>" * 8), ("print", ".Prompt")], messages=TURNS, tools=[])
@example(
    tree=[("range", "messages", None, [("print", "json .Content")])], messages=ESCAPED, tools=[]
)
@example(  # the system message twice: as .System, and as a message
    tree=[("print", ".System"), ("range", "messages", None, [*LAST, ("print", ".Content")])],
    messages=SYSTEM,
    tools=[],
)
@example(  # under $last, but once a tool
    tree=[
        (
            "range",
            "messages",
            None,
            [*LAST, ("range", "tools", None, [("if", "$last1", [("text", "y" * 50)], [])])],
        )
    ],
    messages=TURNS,
    tools=[A_TOOL] * 3,
)
@example(  # a role of any length, written twice
    tree=[("range", "messages", None, [*LAST, ("print", ".Role"), ("print", ".Role")])],
    messages=[{"role": "r" * 1000, "content": "hi"}],
    tools=[],
)
@example(  # not only with tools
    tree=[("if", ".System", [("text", "z" * 100)], [("text", "y")])], messages=SYSTEM, tools=[]
)
@example(  # once a property of each tool
    tree=[
        ("range", "messages", None, LAST),
        (
            "range",
            "tools",
            None,
            [("range", "props", None, [("text", "y" * 100), ("print", "$k")])],
        ),
    ],
    messages=ESCAPED,
    tools=[SIX],
)
@example(  # a system message gathered in a variable, printed once and emptied; and .System
    tree=[
        ("acc_decl",),
        ("print", ".System"),
        ("range", "messages", None, [*LAST, ("acc_add",), ("acc_flush",)]),
    ],
    messages=BIG_SYSTEM,
    tools=[],
)
@example(  # not printed emptied: all it gathered, each time
    tree=[("acc_decl",), ("range", "messages", None, [*LAST, ("acc_add",), ("acc_print",)])],
    messages=BIG_SYSTEM * 2,
    tools=[],
)
@example(  # after a system message's continue, only the others' contents
    tree=[
        (
            "range",
            "messages",
            None,
            [
                *LAST,
                ("jump", "continue", 'eq .Role "system"'),
                ("if", 'eq .Role "user"', [("print", ".Content")] * 2, []),
            ],
        )
    ],
    messages=[{"role": "user", "content": "x" * 1000}],
    tools=[],
)
@example(  # the second message's pass only
    tree=[
        ("print", ".System"),
        ("range", "messages", None, [*LAST, ("if", "eq $i1 1", [("print", "$.System")], [])]),
    ],
    messages=BIG_SYSTEM,
    tools=[],
)
@example(  # the last two messages' passes
    tree=[("range", "messages", None, [*LAST, ("if", OR_LAST_TWO, [("print", "$.System")], [])])],
    messages=BIG_SYSTEM,
    tools=[],
)
@example(  # once a pass under $last, and in other passes its else part: both, not the larger
    tree=[
        (
            "range",
            "messages",
            None,
            [*LAST, ("if", "$last1", [("print", "$.System")], [("print", ".Content")])],
        )
    ],
    messages=BIG_SYSTEM,
    tools=[],
)
@example(  # three messages of one role joined by blank lines, written twice, blank lines too
    tree=[("print", ".Response"), ("print", ".Response")],
    messages=[{"role": "assistant", "content": ""}] * 3,
    tools=[],
)
@example(  # json of either text, escaped
    tree=[("range", "messages", None, [*LAST, ("print", 'json (or .Content "-")')])],
    messages=ESCAPED,
    tools=[],
)
@example(  # a role spelled with an escape is the role
    tree=[
        ("print", ".System"),
        (
            "range",
            "messages",
            None,
            [*LAST, ("if", 'eq .Role "syst\\x65m"', [("print", ".Content")], [])],
        ),
    ],
    messages=BIG_SYSTEM,
    tools=[],
)
def test_what_a_template_writes_is_within_the_bound(
    tree: list[go.Node], messages: list[dict[str, Any]], tools: list[Any]
) -> None:
    """Generated templates (text, if/else, ranges over messages with ``$last``, tools and
    tool calls, nested; legacy ones, which Ollama executes once a turn) and chats: what
    Ollama writes is within the bound, a token a byte."""
    text = go.go_text(tree)
    written = go.render(tree, messages, tools).encode("utf-8", "surrogatepass")
    body = {"model": "m", "messages": messages, "tools": tools}
    assert len(written) <= admitted_on(text, body), text
    # and with no allowance to spare: the request's texts, and what the template adds
    bound = bound_template(text)
    shape = facts_of("chat", body).shape
    assert isinstance(bound, TemplateBound) and shape is not None
    extra = bound.extra(shape.messages, shape.tools, shape.calls, shape.parts, shape.text_bytes)
    assert len(written) <= shape.text_bytes + extra, text


def test_a_template_that_repeats_the_chat_bounds_the_chat_as_often() -> None:
    """``.Content`` in two ranges writes every message twice: the bound counts it twice."""
    twice = (
        "{{ range .Messages }}{{ .Content }}{{ end }}{{ range .Messages }}{{ .Content }}{{ end }}"
    )
    messages = [{"role": "user", "content": "x" * 1000}]
    assert admitted_on(twice, {"messages": messages}) >= 2000
    once = "{{ range .Messages }}{{ .Content }}{{ end }}"
    assert admitted_on(once, {"messages": messages}) < 1100


def test_a_llama3_style_template_with_tools_is_bounded_exactly() -> None:
    """Its text once (its system header, the tool-use note, the request to call a tool under
    the last user message and the assistant header after it), its headers once a message,
    the tools' lines once each, a call's wrapper once a call."""
    eot, answer = "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"
    once = len(SYSTEM_HEAD + eot + answer)
    tooled = len(TOOLS_NOTE + TOOLS_ASK + "\n" + eot)  # only when there are tools
    # the largest message: an assistant's header, a blank line, its end of turn
    a_message = len("<|start_header_id|>assistant<|end_header_id|>" + "\n\n" + eot)
    a_tool = len("\n") + PRINT_BYTES  # {{- . }}: the tool, printed whole
    a_call = len('\n{"name": "' + '", "parameters": ' + "}") + 2 * PRINT_BYTES
    bound = bound_template(LLAMA)
    assert isinstance(bound, TemplateBound)
    assert (once, tooled, a_message, a_tool, a_call) == (129, 190, 57, 33, 93)
    assert dict(bound.literal) == {
        (0, 0, 0, 0, 0): once,
        (0, 0, 0, 0, 1): tooled,
        (1, 0, 0, 0, 0): a_message,
        (0, 1, 0, 0, 1): a_tool,
        (0, 0, 1, 0, 0): a_call,
    }
    assert bound.extra(3, 0, 0, 0, 10_000) == 129 + 57 * 3 + JOIN_BYTES * 3 == 306  # no tools
    # A chat of a system message, a user question, a call and its result, two tools: four
    # messages (and the model's SYSTEM, a fifth), written once each.
    assert (
        bound.extra(5, 2, 1, 0, 10_000) == 129 + 190 + 57 * 5 + 33 * 2 + 93 + JOIN_BYTES * 5 == 773
    )
    shape = PromptShape(messages=4, tools=2, calls=1, parts=9, text_bytes=9_000)
    shown = Shown(hidden=1_000, messages=1, templates=(bound,))
    allowed = TEMPLATE_TOKENS + MESSAGE_TOKENS * 4
    assert shown.tokens(shape) == 1_000 + 773 + SPECIAL_TOKENS - allowed == 1_717


def test_the_emulators_template_writes_what_it_counts() -> None:
    """The emulator's /api/show template, rendered as Ollama would, has the words the
    emulator counts in the prompt (its template_tokens and the chat's texts)."""
    model = dataclasses.replace(DEFAULT_MODELS[0], template_tokens=7)
    template = model_template(model)
    bound = bound_template(template)
    assert isinstance(bound, TemplateBound)
    assert dict(bound.literal) == {(0, 0, 0, 0, 0): 2 * 7 - 1 + 1, (1, 0, 0, 0, 0): 1}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "and now"},
    ]
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    rendered = system + " " + " ".join(m["content"] for m in messages[1:]) + " x" * 7
    assert count_tokens(rendered) == expected_counts(model, messages)[0] == 7 + 7
    assert model_template(DEFAULT_MODELS[0]) == "{{ .Prompt }}"  # Ollama's default


def answer(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ .Prompt",  # unclosed
        "{{ if .System }}no end",
        '{{ printf "%0999999d" 0 }}',  # writes a million bytes from twenty
        "{{ range 100000 }}x{{ end }}",
        '{{ define "t" }}x{{ end }}{{ template "t" }}',
        "{{ range .Messages }}{{ .Images }}{{ end }}",
        "{{ range .Messages }}{{ range .Content }}x{{ end }}{{ end }}",  # a string
        "{{ if .System }}" * 40 + "x" + "{{ end }}" * 40,  # nested past any model's
        "\x00{{ \x00 }}",
    ],
    ids=[
        "unclosed",
        "no-end",
        "printf",
        "range-int",
        "named",
        "images",
        "range-text",
        "deep",
        "garbage",
    ],
)
def test_a_template_nothing_bounds_bounds_calls_as_the_longest_prompt_said_once(
    template: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RawServer(lambda: answer({"template": template, "system": "hi"}))
    now = [0.0]
    try:
        shown = ShownPrompts([server.url], clock=lambda: now[0])
        with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
            assert shown.read("m") == MAX_TOKENS
            shape = PromptShape(messages=1, tools=0, calls=0, parts=0, text_bytes=5)
            now[0] += 3600  # asked again once its answer is old
            assert shown.tokens("m", shape, blocking=True) == MAX_TOKENS
        assert server.calls == 2
    finally:
        server.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1, said
    assert "m's template cannot be bounded" in said[0]
    assert "bounded as the longest prompt" in said[0] and "\n" not in said[0]


def test_a_template_larger_than_any_answer_is_believed_bounds_calls_as_the_longest_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RawServer(lambda: answer({"template": "x" * (SHOW_LIMIT + 10)}))
    try:
        with caplog.at_level(logging.WARNING, logger="ollama_meter.meter"):
            shape = PromptShape(messages=1, tools=0, calls=0, parts=0, text_bytes=5)
            assert ShownPrompts([server.url]).tokens("m", shape, blocking=True) == MAX_TOKENS
    finally:
        server.close()
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"answered more than {SHOW_LIMIT} bytes for m" in said and "\n" not in said


def test_a_server_whose_answer_has_no_template_adds_only_the_models_prompt() -> None:
    """An old Ollama (or a proxy) that names no template: what the bound allows already."""
    server = RawServer(lambda: answer({"system": "abc", "template": 7}))
    try:
        shape = PromptShape(messages=1, tools=0, calls=0, parts=0, text_bytes=5)
        assert ShownPrompts([server.url]).tokens("m", shape, blocking=True) == 3 + MESSAGE_TOKENS
    finally:
        server.close()


def test_the_most_of_every_servers_template_counts() -> None:
    short = RawServer(lambda: answer({"template": "{{ .Prompt }}"}))
    long = RawServer(lambda: answer({"template": "y" * 500 + "{{ .Prompt }}"}))
    try:
        shape = PromptShape(messages=1, tools=0, calls=0, parts=0, text_bytes=5)
        tokens = ShownPrompts([short.url, long.url]).tokens("m", shape, blocking=True)
        # a legacy template, once a turn: the chat's message, and the model's SYSTEM
        runs = 2 + 1
        assert tokens == 500 * runs + JOIN_BYTES * 2 + SPECIAL_TOKENS - TEMPLATE_TOKENS - 8
    finally:
        short.close()
        long.close()


MB = 2**20


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("x" * (4 * MB), None),
        ("{{ .System }}" * (4 * MB // 13), "more than 5,000 actions"),
        ("{{ if .System }}" * 100_000 + "x" + "{{ end }}" * 100_000, "more than 5,000 actions"),
        ("{{ if .System }}" * 33 + "x" + "{{ end }}" * 33, "nested too deep"),
        ("{{ " + "(" * 100_000 + ".System" + ")" * 100_000 + " }}", "more than 1,000 words"),
        ("{{ " + "(" * 40 + ".System" + ")" * 40 + " }}", "parentheses nested too deep"),
        ("{{ range .Tools }}x{{ end }}" * 100_000, "more than 5,000 actions"),
        ("{{- /* c */ -}}   " * 300_000, "more than 5,000 actions"),
        ("{{- .System -}}" + " \n\t" * MB + "{{- .System -}}", None),
        ("{{" + " " * (4 * MB) + ".System }}", None),
        ('{{ "' + "a" * (4 * MB) + '" }}', None),
        ('{{ "' + "a" * (4 * MB), "unterminated quoted string"),
        ("{{" * (2 * MB), "unclosed action"),
        ("{{/*" + "x" * (4 * MB) + "*/}}", None),
        (("{{ and" + " .System" * 990 + " }}") * 500, "more than 20,000 words"),
        ("{{ .System" + " | len" * 100_000 + " }}", "more than 1,000 words"),
    ],
    ids=[
        "4MB-text",
        "4MB-actions",
        "nested-100k",
        "nested-33",
        "parens-100k",
        "parens-40",
        "ranges-100k",
        "trims-300k",
        "whitespace",
        "spaces-in-action",
        "4MB-string",
        "4MB-unclosed-string",
        "2M-opens",
        "4MB-comment",
        "500k-words",
        "100k-pipes",
    ],
)
def test_a_hostile_template_is_refused_or_bounded_and_read_once(
    template: str, said: str | None
) -> None:
    """What a lying server's ``/api/show`` may answer (up to its 4 MB): read in a moment
    (bench/template_bound.py times it), neither crashing nor recursing, and read once: the
    same template asked again is the same bound."""
    bound = bound_template(template)
    if said is None:
        assert isinstance(bound, TemplateBound), bound
    else:
        assert isinstance(bound, str) and said in bound, bound
    assert bound_template(template) is bound


GATHERED = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- if not $system }}{{ $system = .Content }}
{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- end }}
{{- continue }}
{{- else if eq .Role "user" }}<turn>user
{{- if $system }}
{{ $system }}
{{- $system = "" }}
{{- end }}
{{- else if eq .Role "assistant" }}<turn>model
{{- end }}
{{ .Content }}<end>
{{ end }}<turn>model
"""
"""The system messages gathered in a variable and written with the next user message (the
shape of Ollama's gemma, llama2 and alpaca templates, in other words)."""
FIRST_ONLY = """{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}[Q] {{ if eq $index 0 }}<<S>>{{ if $.System }}{{ $.System }}{{ end }}<</S>>{{ end }}{{ .Content }}
{{- else }} [A] {{ .Content }}</s>
{{- end }}{{ end }}"""
LAST_TWO = """{{- range $i, $m := .Messages }}
{{- $last := or (eq (len (slice $.Messages $i)) 1) (eq (len (slice $.Messages $i)) 2) }}
{{- if and $.Tools $last }}[TOOLS] {{ $.Tools }}[/TOOLS]{{ end }}{{ .Content }}
{{- end }}"""
SKIPPED = """{{- range .Messages }}
{{- if eq .Role "system" }}{{ continue }}{{ end }}<{{ .Role }}>{{ .Content }}
{{- if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}{{ end }}
{{- end }}
{{- range .Tools }}def {{ .Function.Name }}({{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}: {{ $p.Type }}, {{ end }})
{{ end }}"""
REASONING = """{{- $tools := false }}{{ if $.Tools }}{{ $tools = true }}{{ end }}
{{- with .System }}<sys>{{ . }}</sys>{{ end }}date: {{ currentDate }}
{{- if $tools }}{{ range $.Tools }}{{ json . }}
{{ end }}{{ end }}
{{- range $i, $msg := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if and (eq $msg.Role "assistant") $last (ne $msg.Thinking "") }}<think>{{ $msg.Thinking }}</think>{{ end }}
{{- if or (eq .Role "user") (eq .Role "tool") }}<{{ .Role }}>{{ .Content }}{{ "\\n" }}
{{- else if eq .Role "assistant" }}{{ .Content }}{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}{{ if gt $j 8 }}{{ break }}{{ end }}{{ $c.Function.Name }}{{ json $c.Function.Arguments }}{{ end }}{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<assistant>{{ if and $.IsThinkSet $.Think }}<think>{{ end }}{{ end }}
{{- end }}"""
"""A reasoning model's shape (gpt-oss, qwen3, deepseek): a flag set in a block, ``with``,
``currentDate``, ``json`` of tools and arguments, ``$msg.Thinking`` under ``$last``, a
``break`` in a range of calls."""


@pytest.mark.parametrize(
    ("template", "most"),
    [(GATHERED, 1), (FIRST_ONLY, 2), (LAST_TWO, 2), (SKIPPED, 1), (REASONING, 1)],
    ids=["gathered", "first-only", "last-two", "skipped", "reasoning"],
)
def test_templates_in_the_shapes_ollama_ships_are_bounded_each_text_written_as_often(
    template: str, most: int
) -> None:
    """Every template Ollama ships (its template/*.gotmpl and its tool-use test templates)
    is bounded; these have their constructs, and each request text is counted as often as
    they may write it: a system message gathered and written once; ``.System`` under ``eq
    $index 0`` once, and again as a system message in the else part (Ollama's llama2 shape:
    it was counted once); the tools under the last two messages twice."""
    bound = bound_template(template)
    assert isinstance(bound, TemplateBound), bound
    at = (12, 3, 4, 20)
    assert max(counts.evaluate(dict(p), at) for _, p in bound.repeats) == most, bound.repeats


SHAPES = [LLAMA, GATHERED, FIRST_ONLY, LAST_TWO, SKIPPED, REASONING]


@settings(max_examples=150, deadline=None)
@given(template=st.sampled_from(SHAPES), messages=MESSAGES, tools=TOOLS)
@example(  # .System in the first pass, the system message in the else part of another
    template=FIRST_ONLY,
    messages=[{"role": "user", "content": "hi"}, {"role": "system", "content": "s" * 1000}],
    tools=[],
)
def test_what_the_shapes_ollama_ships_write_is_within_the_bound(
    template: str, messages: list[dict[str, Any]], tools: list[Any]
) -> None:
    """Those templates, executed as Go executes them (``_goexec``, a reading apart from the
    meter's) for generated chats: within the bound, a token a byte. (Ollama's own 48, read
    from its repository and run so with typical chats, write at most 0.96 of theirs.)"""
    written = goexec.execute(template, messages, tools).encode("utf-8", "surrogatepass")
    body = {"model": "m", "messages": messages, "tools": tools}
    assert len(written) <= admitted_on(template, body)
    bound = bound_template(template)
    shape = facts_of("chat", body).shape
    assert isinstance(bound, TemplateBound) and shape is not None
    extra = bound.extra(shape.messages, shape.tools, shape.calls, shape.parts, shape.text_bytes)
    assert len(written) <= shape.text_bytes + extra


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ('{{ $s := "" }}{{ range .Messages }}{{ $s = printf "%s%s" $s $s }}{{ end }}', "copy"),
        ('{{ $s := "" }}{{ range .Messages }}{{ $s = json $s }}{{ end }}', "changed copy"),
        ('{{ $a := "" }}{{ $b := "" }}{{ $a = $b }}{{ $b = "x" }}{{ .Messages }}', "copy"),
        ('{{ $s := "" }}{{ $s = .System }}{{ $t := $s }}{{ $t = "" }}{{ .Messages }}', "copy"),
        ('{{ printf "%9999s" .System }}{{ .Messages }}', "format"),
        ('{{ range .Tools }}{{ printf "%s" .Function.Parameters }}{{ end }}', "printf"),
        ('{{ printf "%s" .System .System }}{{ .Messages }}', "format"),
        ('{{ range $s := .Tools }}{{ $s }}{{ $s = "" }}{{ end }}{{ .Messages }}', "ranges into"),
    ],
    ids=["doubled", "escaped", "other", "copied", "width", "struct", "extra-argument", "ranged"],
)
def test_a_gathering_that_could_grow_past_its_texts_is_refused(template: str, said: str) -> None:
    bound = bound_template(template)
    assert isinstance(bound, str) and said in bound, bound


def test_an_index_set_anew_is_no_longer_its_ranges() -> None:
    """``$i := 1`` in a range over two messages: ``eq (len (slice $.Messages $i)) 1`` holds
    in both passes (it counted once: 10 bytes of the 20 written)."""
    template = (
        "{{ range $i, $_ := .Messages }}{{ $i := 1 }}"
        "{{ if eq (len (slice $.Messages $i)) 1 }}XXXXXXXXXX{{ end }}{{ end }}"
    )
    bound = bound_template(template)
    assert isinstance(bound, TemplateBound)
    assert dict(bound.literal) == {(1, 0, 0, 0, 0): 10}  # 20 for two messages
