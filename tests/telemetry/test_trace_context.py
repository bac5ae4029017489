"""W3C trace context from a caller to the gateway, and on from the gateway.

An ometer client (the Python API, telemetry on) calling through ``ometer serve`` exported its
span of the call and the gateway its own, each in a trace of its own: a backend showed two
unrelated traces of one call, and an application instrumented with OpenTelemetry lost the
gateway's span from its trace. The client now sends its span as ``traceparent`` (and the
trace's ``tracestate``), and the gateway's span of the call is its child; a header that is
not W3C's (any version but ``ff`` read as 00's fields, ids not lower-case hex or all zeros,
sent twice, a control character, kilobytes of it) is ignored: a new trace, the call as ever.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter import MeteredClient, load_settings
from ollama_meter.ledger import SpanFilter
from ollama_meter.records import TraceParent, trace_parent
from ollama_meter.telemetry import telemetry_for
from ollama_meter.testing import OllamaEmulator
from tests._otlp import OtlpHttpReceiver, SpanView, spans, wait_for
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]")


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=size, max_size=size).filter(
        lambda text: set(text) != {"0"}
    )


@settings(max_examples=300, deadline=None)
@given(
    version=st.integers(0, 254), trace=_hex(32), parent=_hex(16), flags=st.integers(0, 255),
    more=st.sampled_from(["", "-", "-what-comes-next"]),
)  # fmt: skip
def test_a_w3c_traceparent_is_read_as_the_spec_reads_it(
    version: int, trace: str, parent: str, flags: int, more: str
) -> None:
    """Version 00 exactly its four fields; a later version (not ``ff``) read as 00's fields,
    whatever follows them after a dash; the sampled bit kept, others of a later version not."""
    header = f"{version:02x}-{trace}-{parent}-{flags:02x}{more if version else ''}"
    read = trace_parent([header], [])
    assert read == TraceParent(trace, parent, flags if version == 0 else flags & 1)
    assert read.headers() == {"traceparent": f"00-{trace}-{parent}-{read.flags:02x}"}


MALFORMED = [
    "",
    "ff-" + TRACE + "-" + PARENT + "-01",  # version ff is forbidden
    "00-" + "0" * 32 + "-" + PARENT + "-01",  # all-zero trace id
    "00-" + TRACE + "-" + "0" * 16 + "-01",  # all-zero parent id
    "00-" + TRACE.upper() + "-" + PARENT + "-01",  # upper case
    "00-" + TRACE[:-1] + "-" + PARENT + "-01",  # a short trace id
    "00-" + TRACE + "-" + PARENT + "0-01",  # a long parent id
    "00-" + TRACE + "-" + PARENT + "-1",
    "00-" + TRACE + "-" + PARENT + "-01-extra",  # version 00 has four fields
    "01-" + TRACE + "-" + PARENT + "-01extra",  # a later version: a dash after the flags
    "0-" + TRACE + "-" + PARENT + "-01",
    "00_" + TRACE + "_" + PARENT + "_01",
    "00-" + TRACE + "-" + PARENT + "-0\x01",
    "00-" + TRACE + "-" + PARENT + "-01\n",
    "00-" + TRACE + "-" + PARENT + "-01\x00",
    "00-" + TRACE + "-" + PARENT + "-01" + " " * 100_000,
    "00-" + TRACE + "-" + PARENT + "-01-" + "x" * 100_000,
    "00-" + TRACE + "-" + "٠" * 16 + "-01",  # Arabic-Indic digits: not hex to W3C
    "00-" + TRACE + "-" + PARENT + "-0１",  # a full-width digit
]


@pytest.mark.parametrize("header", MALFORMED)
def test_a_traceparent_not_w3c_s_is_none(header: str) -> None:
    assert trace_parent([header], ["rojo=00f067aa0ba902b7"]) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
@example(f"00-{TRACE}-{PARENT}-01", "")
def test_any_text_is_a_parent_or_none_never_an_error(header: str, state: str) -> None:
    read = trace_parent([header], [state])
    if read is not None:
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", header.strip())
        assert read.headers()["traceparent"] == header.strip()


def test_a_traceparent_sent_twice_is_none() -> None:
    """W3C's test suite: two ``traceparent`` headers are no parent, even two alike."""
    header = f"00-{TRACE}-{PARENT}-01"
    assert trace_parent([header, header], []) is None
    assert trace_parent([header], []) == TraceParent(TRACE, PARENT, 1)


@pytest.mark.parametrize(
    ("states", "kept"),
    [
        (["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ([" rojo=1 ,  , congo=2 "], "rojo=1,congo=2"),
        (["", " "], ""),
        (["tenant@vendor=x", "7abc=y"], "tenant@vendor=x,7abc=y"),
        (["rojo=1,rojo=2"], ""),  # one entry a key
        (["Rojo=1"], ""),  # keys are lower case
        (["rojo=a,b"], ""),  # no "=": not a member
        (["rojo=\x01"], ""),
        ([",".join(f"k{n}=v" for n in range(33))], ""),  # 32 members at most
        (["rojo=" + "v" * 257], ""),
    ],
)
def test_tracestate_is_kept_whole_or_not_at_all(states: list[str], kept: str) -> None:
    """Several headers are one list (RFC 7230); a list the spec does not allow is left out
    whole (as OpenTelemetry's propagator does), never the parent with it."""
    read = trace_parent([f"00-{TRACE}-{PARENT}-01"], states)
    assert read is not None and read.state == kept
    assert read.headers().get("tracestate") == (kept or None)


# -- through a gateway ---------------------------------------------------------------------


def _exported(rx: OtlpHttpReceiver, count: int) -> list[SpanView]:
    telemetry = telemetry_for(load_settings())
    assert telemetry is not None and telemetry.flush()
    views: list[SpanView] = wait_for(
        lambda: s if len(s := spans(rx)) >= count else None, what=f"{count} spans"
    )
    assert len(views) == count
    return views


@pytest.fixture
def traced(
    monkeypatch: pytest.MonkeyPatch, serve_on: Callable[..., Gateway], tmp_path: Path
) -> Callable[[str, str], Gateway]:
    def start(collector: str, upstream: str) -> Gateway:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        return serve_on(upstream, f"sqlite:///{tmp_path / 'gateway.db'}")

    return start


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_s_span_is_the_parent_of_the_gateway_s(
    traced: Callable[[str, str], Gateway],
    emulator: OllamaEmulator,
    tmp_path: Path,
    stream: bool,
) -> None:
    """The Python API through ``ometer serve``, each with its own ledger: one trace, the
    gateway's span the child of the client's, and Ollama told the gateway's span."""
    with OtlpHttpReceiver() as rx:
        gw = traced(rx.url, emulator.url)
        client = MeteredClient(host=gw.url, db_url=f"sqlite:///{tmp_path / 'client.db'}")
        list(client.chat(model="llama3.1:8b", messages=HI, stream=True)) if stream else (
            client.chat(model="llama3.1:8b", messages=HI)
        )
        views = _exported(rx, 2)
    (gateway,) = [v for v in views if v.parent_span_id]
    (own,) = [v for v in views if not v.parent_span_id]
    assert (gateway.trace_id, gateway.parent_span_id) == (own.trace_id, own.span_id)
    assert gateway.name == own.name == "chat llama3.1:8b"
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.headers["traceparent"] == f"00-{own.trace_id}-{gateway.span_id}-01"
    assert "tracestate" not in sent.headers
    (row,) = gw.ledger.latest(SpanFilter(), 5)
    assert (row.trace_id, row.span_id) == (gateway.trace_id, gateway.span_id)


def test_an_instrumented_app_s_trace_goes_on_through_the_gateway(
    traced: Callable[[str, str], Gateway], emulator: OllamaEmulator
) -> None:
    """Any caller's ``traceparent``, its ``tracestate`` kept as it came (ometer adds no
    entry); an unsampled caller's trace is not sampled by the default
    ``parentbased_always_on`` sampler either: no span, Ollama told so."""
    with OtlpHttpReceiver() as rx:
        gw = traced(rx.url, emulator.url)
        body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
        state = "congo=t61rcWkgMzE"
        heard = gw.client.post(
            "/api/chat", json=body, headers={"TraceParent": f"00-{TRACE}-{PARENT}-01",
                                             "tracestate": state},
        )  # fmt: skip
        assert heard.status_code == 200
        unsampled = f"00-{TRACE}-{'1' * 16}-00"
        assert gw.client.post("/api/chat", json=body, headers={"traceparent": unsampled}).is_success
        (view,) = _exported(rx, 1)
    assert (view.trace_id, view.parent_span_id) == (TRACE, PARENT)
    first, second = emulator.requests_to("/api/chat")
    assert first.headers["traceparent"] == f"00-{TRACE}-{view.span_id}-01"
    assert first.headers["tracestate"] == state
    told = _TRACEPARENT.fullmatch(second.headers["traceparent"])
    assert told is not None and told[1] == TRACE and told[2] not in (view.span_id, "1" * 16)
    assert second.headers["traceparent"].endswith("-00")


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", h)] for h in MALFORMED if h.isascii() and "\n" not in h and "\x00" not in h
    ] + [
        [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{TRACE}-{PARENT}-01")],
    ],
)  # fmt: skip
def test_a_hostile_traceparent_is_a_new_trace_and_the_call_as_ever(
    app_on: Callable[..., Gateway],
    emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    headers: list[tuple[str, str]],
) -> None:
    with OtlpHttpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
        gw = app_on(emulator.url, f"sqlite:///{tmp_path / 'gateway.db'}")
        body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
        heard = gw.client.post("/api/chat", json=body, headers=headers)
        assert heard.status_code == 200, heard.text
        (view,) = _exported(rx, 1)
    assert view.parent_span_id == "" and view.trace_id != TRACE
    (sent,) = emulator.requests_to("/api/chat")
    assert sent.headers["traceparent"] == f"00-{view.trace_id}-{view.span_id}-01"


def test_without_telemetry_a_gateway_passes_a_valid_parent_on_and_drops_a_bad_one(
    app_on: Callable[..., Gateway], emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """A gateway exporting nothing forwards the trace context (W3C's forwarding mode): the
    caller's trace reaches whatever is behind it; one it cannot read is not sent on. The
    ledger's row is in the caller's trace."""
    gw = app_on(emulator.url, f"sqlite:///{tmp_path / 'gateway.db'}")
    body = {"model": "llama3.1:8b", "messages": HI, "stream": False}
    given = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "congo=1"}
    assert gw.client.post("/api/chat", json=body, headers=given).is_success
    bad = {"traceparent": f"00-{TRACE}-{'0' * 16}-01", "tracestate": "congo=1"}
    assert gw.client.post("/api/chat", json=body, headers=bad).is_success
    first, second = emulator.requests_to("/api/chat")
    assert (first.headers["traceparent"], first.headers["tracestate"]) == (
        given["traceparent"],
        "congo=1",
    )
    assert "traceparent" not in second.headers and "tracestate" not in second.headers
    rows = sorted(gw.ledger.latest(SpanFilter(), 5), key=lambda row: row.id)
    assert rows[0].trace_id == TRACE and rows[1].trace_id != TRACE
