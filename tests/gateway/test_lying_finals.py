"""An upstream whose final chunk lies, beside honest calls of other callers at the same moment.

Each hostile answer (counts and durations out of range or of the wrong JSON type, NaN and
Infinity tokens, model names with NUL, escapes, 10 kB or bytes that are not UTF-8, a second
final chunk, chunks after the end) is sent while honest calls of other departments run on
the same gateway, so their spans share the write-behind's batches. Every honest call keeps
its exact span; the hostile one is an error (an answer its client could not read) or an ok
span whose counts and durations are the upstream's cut to what the ledger holds, and its
durations to the call's latency (a figure of the wrong type counts as absent: estimated, or
the meter's clock); reports still add up.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.budgets._estimate import MAX_HIDDEN_PROMPT, MESSAGE_TOKENS, TEMPLATE_TOKENS
from ollama_meter.ledger import SpanFilter, rebuild
from ollama_meter.meter._honest import MAX_HIDDEN_REPLY
from ollama_meter.records import MAX_CALL_COST, MAX_DURATION_NS, MAX_TOKENS
from tests._raw_http import RawServer
from tests.factories import token_prices
from tests.gateway.conftest import Gateway
from tests.ledger.test_transfer import _tables

examples = itertools.count()
PATHS = ("/api/chat", "/api/generate", "/api/embed")
COUNTS = ("prompt_eval_count", "eval_count")
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
NUMBERS = [
    b"2147483648",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"1" + b"0" * 30,
    b"315360000000000000000",
    b"-1",
    b"-9223372036854775809",
    b"1.5",
    b"1e308",
    b"-0.0",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'"12"',
    b"true",
    b"false",
    b"null",
    b'{"n": 1}',
    b"[3]",
]
"""JSON texts for a count or a duration: out of 32 and 64 bits, negative, fractions, the
non-numbers Python's decoder takes (and no client does), other types; 10^20 ns is ten years."""
MODELS = [
    b'"m\\u0000x"',
    b'"m\\u001b[31mred\\r\\n"',
    b'"' + b"x" * 10_000 + b'"',
    b'"m\xff\xfe"',
    b'"\\udc80"',
    b"null",
    b"42",
    b'{"a": 1}',
    b'""',
    b'"ok-model"',
]
CREATED = [b'"yesterday"', b'"9999-99-99T99:99:99Z"', b"-1", b"null", b"{}", b'"\\u0000"']
REASONS = [
    b'"stop"',
    b'"error"',
    b'"load"',
    b'"unload"',
    b'"' + b"r" * 5000 + b'"',
    b'"\\u0007"',
    b"7",
    b"null",
    b'["stop"]',
]
ERRORS = [
    None,
    b"null",
    b'{"message": "\\u0000boom\\u001b[2J"}',
    b'{"nested": {"a": [1]}}',
    b"12",
    b'"' + b"e" * 100_000 + b'"',
    b"[" * 900 + b"]" * 900,
    b"false",
]
"""What a final chunk may say in ``error`` (None: no such field)."""
SHAPES = ("utf-16", "once", "done twice", "final twice", "chunks after done", "trailing garbage")
GPU_HOUR = Decimal(3600)
"""Per GPU-hour: a micro-unit per 1,000 ns of busy time, so honest costs are exact."""


def _strict(line: bytes) -> dict[str, Any] | None:
    """A line as a strict JSON reader (Go's, JavaScript's) reads it: UTF-8, no NaN/Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=refuse)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class Hostile:
    path: str
    stream: bool
    figures: dict[str, bytes]
    model: bytes
    created: bytes
    reason: bytes
    shape: str
    error: bytes | None = None

    def final(self, **figures: bytes) -> bytes:
        fields = {"model": self.model, "created_at": self.created, **figures}
        if self.error is not None:
            fields["error"] = self.error
        if self.path == "/api/embed":
            fields["embeddings"] = b"[[0.5, 0.5]]"
        else:
            said = b'{"role": "assistant", "content": ""}'
            fields["message" if self.path == "/api/chat" else "response"] = (
                said if self.path == "/api/chat" else b'""'
            )
            fields |= {"done": b"true", "done_reason": self.reason}
        return b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in fields.items()) + b"}"

    def body(self) -> bytes:
        last = self.final(**self.figures)
        if not self.stream:
            whole = last + (b"\n" + last if self.shape == "done twice" else b"")
            if self.shape == "utf-16":  # JSON in another encoding than UTF-8: no client's
                return whole.decode("utf-8", "replace").encode("utf-16")
            return whole
        first = _piece(self.path, "hi")
        lines = [first, last]
        if self.shape == "done twice":
            lines.append(last)
        elif self.shape == "final twice":
            lines.append(self.final(prompt_eval_count=b"1", eval_count=b"1"))
        elif self.shape == "chunks after done":
            lines += [_piece(self.path, "more"), _piece(self.path, "and more")]
        elif self.shape == "trailing garbage":
            lines.append(b"\xff not json {")
        return b"\n".join(lines) + b"\n"

    def read(self) -> dict[str, Any] | None:
        """The final object as the gateway reads it; None: the answer is not one (an error)."""
        if not self.stream:
            obj = _strict(self.body())  # as strictly as a stream's line
            if obj is None:
                return None
            return obj if self.path == "/api/embed" or obj.get("done") is True else None
        return _strict(self.final(**self.figures))  # nothing after it is read


def _piece(path: str, text: str) -> bytes:
    if path == "/api/chat":
        return json.dumps(
            {"model": "m", "message": {"role": "assistant", "content": text}, "done": False}
        ).encode()
    return json.dumps({"model": "m", "response": text, "done": False}).encode()


def honest(path: str, stream: bool, n: int) -> tuple[bytes, dict[str, int]]:
    """Ollama's answer for honest call ``n``, and its figures."""
    figures = {
        "prompt_eval_count": 3 + n,
        "eval_count": 0 if path == "/api/embed" else 5 + 2 * n,
        "load_duration": 7_000 * n,
        "prompt_eval_duration": 11_000 + 1_000 * n,
        "eval_duration": 0 if path == "/api/embed" else 13_000,
    }
    figures["total_duration"] = sum(figures[k] for k in DURATIONS[1:]) + 5_000
    if path == "/api/embed":
        del figures["eval_count"], figures["eval_duration"]
        obj = {"model": f"good-{n}", "embeddings": [[0.5, 0.5]], **figures}
        return json.dumps(obj).encode(), figures
    end = {"model": f"good-{n}", "done": True, "done_reason": "stop", **figures}
    if path == "/api/chat":
        end["message"] = {"role": "assistant", "content": "" if stream else "hello"}
    else:
        end["response"] = "" if stream else "hello"
    if not stream:
        return json.dumps(end).encode(), figures
    return _piece(path, "hel") + b"\n" + _piece(path, "lo") + b"\n" + json.dumps(
        end
    ).encode() + b"\n", figures


class ScriptedUpstream(RawServer):
    """A loopback server that answers each request by its body's model: ``script[model]``'s bytes
    (as a 200 with that length), or an honest answer for ``good-N``. One thread a connection."""

    def __init__(self) -> None:
        self.script: dict[str, bytes] = {}
        self.cut: set[str] = set()
        """Models whose answer is cut short: its length says 100 bytes more than come."""
        super().__init__(lambda: b"", threaded=True)

    def reply(self, head: bytes, body: bytes) -> bytes:
        path = head.split(b" ")[1].decode()
        asked = json.loads(body)
        model = asked["model"]
        if model in self.script:
            content = self.script[model]
        else:
            n = int(model.removeprefix("good-").split("-")[0])
            content, figures = honest(path, asked.get("stream", True), n)
            time.sleep(figures["total_duration"] / 1e9)  # honest: it spends the time it says
        answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
        length = len(content) + (100 if model in self.cut else 0)
        return answer + b"connection: close\r\ncontent-length: %d\r\n\r\n" % length + content


@pytest.fixture
def lying(
    serve: Callable[..., Gateway],
) -> Iterator[tuple[Gateway, ScriptedUpstream]]:
    """A real gateway (uvicorn, loopback) on SQLite and PostgreSQL before a scripted upstream;
    calls priced by the token, the GPU-hour and the load."""
    upstream = ScriptedUpstream()
    try:
        gw = serve(upstream.url, config={"retries": 0})
        gw.ledger.add_price_rule(token_prices(gpu_hour=GPU_HOUR, charge_load=True))
        yield gw, upstream
    finally:
        upstream.close()


def _request(path: str, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": "hello there"}]
    elif path == "/api/generate":
        body["prompt"] = "hello there"
    else:
        body["input"] = "hello there"
    if path != "/api/embed":
        body["stream"] = stream
    return body


PROMPT_MOST = {
    path: len("hello there") + markers + TEMPLATE_TOKENS + MAX_HIDDEN_PROMPT
    for path, markers in [
        ("/api/chat", MESSAGE_TOKENS),
        ("/api/generate", 0),
        ("/api/embed", MESSAGE_TOKENS),
    ]
}
"""The most prompt tokens an honest Ollama counts of :func:`_request`'s body: its bytes, a
message's (an input's) markers, the template's text, what a model adds on its own."""


def _call(gw: Gateway, path: str, model: str, stream: bool, department: str) -> int:
    reply = gw.client.post(
        path, json=_request(path, model, stream), headers={"X-Ometer-Department": department}
    )
    return reply.status_code


HONEST = [
    (path, stream)
    for path in PATHS
    for stream in (True, False)
    if path != "/api/embed" or not stream
]


def run_round(gw: Gateway, upstream: ScriptedUpstream, hostile: list[Hostile]) -> str:
    """The hostile calls and one honest call of each kind, all at once; checks every span."""
    ex = next(examples)
    calls: list[tuple[str, str, bool, str]] = []
    for i, bad in enumerate(hostile):
        model = f"bad-{ex}-{i}"
        upstream.script[model] = bad.body()
        calls.append((bad.path, model, bad.stream, f"x{ex}-bad{i}"))
    for i, (path, stream) in enumerate(HONEST):
        n = ex * 10 + i
        calls.append((path, f"good-{n}", stream, f"x{ex}-ok{i}"))
    with ThreadPoolExecutor(len(calls)) as pool:
        statuses = list(pool.map(lambda c: _call(gw, *c), calls))
    gw.settle()
    for i, (path, stream) in enumerate(HONEST):
        n = ex * 10 + i
        assert statuses[len(hostile) + i] == 200
        check_honest(gw, path, stream, n, f"x{ex}-ok{i}")
    for i, bad in enumerate(hostile):
        check_hostile(gw, bad, f"x{ex}-bad{i}")
    return f"x{ex}-"


def check_honest(gw: Gateway, path: str, stream: bool, n: int, department: str) -> None:
    (span,) = gw.ledger.latest(SpanFilter(department=department), 5)
    figures = honest(path, stream, n)[1]
    out = figures.get("eval_count", 0)
    assert (span.status, span.response_model, span.token_source) == ("ok", f"good-{n}", "reported")
    assert (span.input_tokens, span.output_tokens) == (figures["prompt_eval_count"], out)
    assert span.total_duration_ns == figures["total_duration"]
    assert span.load_duration_ns == figures["load_duration"]
    assert span.prompt_eval_duration_ns == figures["prompt_eval_duration"]
    assert span.eval_duration_ns == figures.get("eval_duration")
    busy = (
        figures["load_duration"] + figures["prompt_eval_duration"] + figures.get("eval_duration", 0)
    )
    assert busy % 1000 == 0
    assert (span.cost_tokens, span.cost_compute) == (
        figures["prompt_eval_count"] * 1000 + out * 2000,
        busy // 1000,
    )
    assert span.cost_total == span.cost_tokens + span.cost_compute
    assert not span.unpriced


def _figure(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    return value if type(value) is int and value >= 0 else None


def check_hostile(gw: Gateway, bad: Hostile, department: str) -> None:
    (span,) = gw.ledger.latest(SpanFilter(department=department), 5)
    read = bad.read()
    assert span.cost_total == sum(
        (span.cost_tokens, span.cost_compute, span.cost_energy, span.cost_fee)
    )
    assert 0 <= span.cost_total <= MAX_CALL_COST
    assert 0 <= span.input_tokens <= MAX_TOKENS and 0 <= span.output_tokens <= MAX_TOKENS
    assert span.cost_tokens == span.input_tokens * 1000 + span.output_tokens * 2000
    for figure in span.durations().values():
        assert figure is None or 0 <= figure <= MAX_DURATION_NS
    for name in ("response_model", "done_reason", "error_type"):
        text = getattr(span, name)
        assert text is None or (text.isprintable() and len(text) <= 255), (name, text)
    if read is None or read.get("error") is not None or read.get("done_reason") == "error":
        assert span.status == "error", (span.status, bad)
        return
    assert span.status == "ok", (span.error_type, span.error_message, bad)
    model = read.get("model")
    if isinstance(model, str) and model and model.isprintable() and len(model) <= 255:
        assert span.response_model == model
    reason = read.get("done_reason")
    nothing_ran = bad.path != "/api/embed" and reason in ("load", "unload")
    said_in = None if nothing_ran else _figure(read, "prompt_eval_count")
    said_out = 0 if bad.path == "/api/embed" else _figure(read, "eval_count")
    said_out = None if nothing_ran else said_out
    cut = said_in is not None and said_in > PROMPT_MOST[bad.path]  # no honest count is more
    if said_in is not None:
        assert span.input_tokens == min(said_in, PROMPT_MOST[bad.path])
    reply_most = (len("hi") if bad.stream else 0) + MAX_HIDDEN_REPLY  # what the answer shows
    cut = cut or (said_out is not None and said_out > reply_most)
    said_out = None if said_out is None else min(said_out, reply_most)
    raised = False
    if said_out is not None and bad.stream:  # its one piece ("hi") is a token at least
        raised, said_out = said_out < 1, max(said_out, 1)
    if said_out is not None:
        assert span.output_tokens == min(said_out, MAX_TOKENS)
    reported = said_in is not None and said_out is not None and not raised and not cut
    assert span.token_source == ("reported" if reported else "estimated")
    # What the ledger holds of each figure ("nothing ran": no figures), then no more than the
    # call's latency: Ollama times its work inside the call, load, prompt, then reply.
    said = {k: None if nothing_ran else _figure(read, k) for k in DURATIONS}
    kept = {k: None if v is None else min(v, MAX_DURATION_NS) for k, v in said.items()}
    latency = left = span.latency_ns or 0
    for name in DURATIONS[1:]:
        kept[name] = None if kept[name] is None else min(kept[name], left)
        left -= kept[name] or 0
    total = kept["total_duration"]
    assert span.total_duration_ns == (None if total is None else min(total, latency))
    assert span.load_duration_ns == kept["load_duration"]
    if said["prompt_eval_duration"] is None and said["eval_duration"] is None:
        assert span.duration_source == "measured"
        assert (span.load_duration_ns or 0) + (span.prompt_eval_duration_ns or 0) + (
            span.eval_duration_ns or 0
        ) <= latency
    else:
        assert span.duration_source == "reported"
        busy = [span.prompt_eval_duration_ns, span.eval_duration_ns]
        assert busy == [kept["prompt_eval_duration"], kept["eval_duration"]]


figure = st.one_of(st.integers(0, 10**6).map(lambda n: str(n).encode()), st.sampled_from(NUMBERS))
hostile = st.builds(
    Hostile,
    path=st.sampled_from(PATHS),
    stream=st.booleans(),
    figures=st.dictionaries(st.sampled_from(COUNTS + DURATIONS), figure, min_size=1),
    model=st.sampled_from(MODELS),
    created=st.sampled_from(CREATED),
    reason=st.sampled_from(REASONS),
    shape=st.sampled_from(SHAPES),
    error=st.sampled_from(ERRORS),
).map(lambda h: h if h.path != "/api/embed" else Hostile(**{**h.__dict__, "stream": False}))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=st.lists(hostile, min_size=1, max_size=3))
@example(
    bad=[
        Hostile(
            "/api/chat",
            True,
            dict.fromkeys(COUNTS + DURATIONS, b"18446744073709551616"),
            b'"m\\u0000x"',
            b"-1",
            b'"stop"',
            "final twice",
        )
    ]
)
@example(
    bad=[
        Hostile(
            "/api/generate",
            False,
            dict.fromkeys(COUNTS + DURATIONS, b"NaN"),
            b'"\\udc80"',
            b"{}",
            b"7",
            "once",
        )
    ]
)
@example(
    bad=[
        Hostile(
            "/api/embed",
            False,
            dict.fromkeys(COUNTS + DURATIONS, b"1" + b"0" * 30),
            b'"' + b"x" * 10_000 + b'"',
            b"null",
            b"null",
            "once",
        )
    ]
)
@example(
    bad=[
        Hostile(
            "/api/chat",
            True,
            {"eval_count": b"Infinity"},
            b'"m"',
            b"{}",
            b'"stop"',
            "chunks after done",
            b"[" * 900 + b"]" * 900,
        ),
        Hostile(
            "/api/generate",
            True,
            {"eval_count": b"1"},
            b'"m"',
            b"{}",
            b'"error"',
            "done twice",
            b'"' + b"e" * 100_000 + b'"',
        ),
    ]
)
@example(
    bad=[
        Hostile(
            "/api/embed",
            False,
            {"prompt_eval_count": b"Infinity"},
            b'"m"',
            b"{}",
            b'"stop"',
            "once",
        ),
        Hostile("/api/chat", False, {"eval_count": b"5"}, b'"m"', b"{}", b'"stop"', "utf-16"),
    ]
)
def test_a_lying_final_chunk_costs_no_other_caller_its_span(
    lying: tuple[Gateway, ScriptedUpstream], bad: list[Hostile]
) -> None:
    """A whole answer carrying NaN or Infinity, or sent in UTF-16, was an ok call (its counts
    estimated) relayed to a client that could not read it (Go's and JavaScript's JSON take
    neither), while the same object streamed broke the stream: now both are errors, read
    by one strict reading. Everything else already held: honest spans exact beside them."""
    gw, upstream = lying
    run_round(gw, upstream, bad)


def test_reports_add_up_after_lying_answers(
    lying: tuple[Gateway, ScriptedUpstream], cli: Any, db_url: str
) -> None:
    """The worst figures at once, beside honest calls: the report and chargeback read the
    spans as the rollups keep them, and the rollups are what a rebuild from the spans gives."""
    gw, upstream = lying
    worst = [
        Hostile(
            path, stream, dict.fromkeys(COUNTS + DURATIONS, value), model, b"-1", b'"stop"', "once"
        )
        for path, stream in HONEST
        for value, model in [
            (b"9223372036854775808", b'"m\\u0000x"'),
            (b"1" + b"0" * 30, b'"' + b"x" * 10_000 + b'"'),
            (b"315360000000000000000", b'"m\\u001b[31m"'),
        ]
    ]
    prefix = run_round(gw, upstream, worst)
    spans = [s for s in gw.ledger.latest(SpanFilter(), 1000) if s.department.startswith(prefix)]
    assert len(spans) == len(worst) + len(HONEST)
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    report = cli(
        "report", "--since", today, "--by", "department", "--format", "json", "--db", db_url
    )
    assert report.code == 0, report.stderr
    rows = json.loads(report.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    by_dept = {r["department"]: (r["requests"], Decimal(r["cost"]) * 10**6) for r in rows}
    assert by_dept == {s.department: (1, s.cost_total) for s in spans}
    bill = cli(
        "chargeback",
        "--month",
        f"{datetime.now(UTC):%Y-%m}",
        "--fixed-cost",
        "1000",
        "--db",
        db_url,
    )
    assert bill.code == 0, bill.stderr
    assert "Traceback" not in bill.stderr
    kept = _tables(gw.ledger)
    rebuild(gw.ledger.write, gw.ledger.read)
    assert _tables(gw.ledger) == kept
