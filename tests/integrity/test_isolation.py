"""Nothing lost: a span no backend can store is made storable, and one that still fails is set aside
without taking the others with it, in a batch and in the spool."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._spans import row_to_span, select_spans
from ollama_meter.ledger._spool import encode_span
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter import GroupCommitWriter, Stored
from ollama_meter.records import TEXT_LIMITS, make_storable
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, opened
from tests.gateway.conftest import Gateway

hostile_text = st.text(
    alphabet=st.characters(codec=None, categories=None), min_size=0, max_size=400
)


@settings(max_examples=200, deadline=None)
@given(
    model=hostile_text,
    message=hostile_text,
    tag=hostile_text,
    tokens=st.integers(-(2**70), 2**70),
    nanos=st.one_of(st.none(), st.integers(-(2**70), 2**70)),
)
def test_any_span_becomes_storable(
    model: str, message: str, tag: str, tokens: int, nanos: int | None
) -> None:
    span = make_span(
        request_model=model,
        response_model=model,
        error_message=message,
        tags={tag[:80] or "k": tag},
        input_tokens=tokens,
        output_tokens=-tokens,
        eval_duration_ns=nanos,
        http_status=tokens,
    )
    make_storable(span)
    for name, limit in TEXT_LIMITS.items():
        value = getattr(span, name)
        if isinstance(value, str):
            assert len(value) <= limit and "\x00" not in value
            value.encode("utf-8")  # no lone surrogate left
    for key, value in span.tags.items():
        (key + value).encode("utf-8")
    assert 0 <= span.input_tokens < 2**31 and 0 <= span.output_tokens < 2**31
    assert span.eval_duration_ns is None or 0 <= span.eval_duration_ns <= 10**15
    assert span.http_status is None or 100 <= span.http_status <= 999
    assert make_storable(span) == span  # idempotent


def test_the_text_limits_are_the_columns(db_url: str) -> None:
    from ollama_meter.ledger.models import SPANS

    columns = SPANS.c
    for name, limit in TEXT_LIMITS.items():
        length = getattr(columns[name].type, "length", None)
        assert length in (limit, None), name  # Text columns have no length: ours is a cap


def test_one_bad_span_in_a_batch_costs_the_others_nothing(db_url: str) -> None:
    ledger = Ledger(db_url)
    good = [make_span() for _ in range(5)]
    # Past make_storable, as a hook or a bug could leave it: text the database refuses.
    bad = make_span(request_model="\ud800 bad" + "x" * 300, tags={"k": "nul\x00"})
    stored = ledger.record([*good[:2], bad, *good[2:]])
    assert stored[bad.id] == Stored.QUARANTINED
    assert all(stored[s.id] == Stored.COMMITTED for s in good)
    assert {s.id for s in ledger.latest(SpanFilter(), 10)} == {s.id for s in good}
    (kept,) = ledger.spool.quarantined()
    record = json.loads(kept.read_text())
    assert record["span"]["id"] == bad.id and record["reason"]


def test_concurrent_writers_keep_their_spans_when_one_is_bad(db_url: str) -> None:
    ledger = Ledger(db_url)
    writer = GroupCommitWriter(ledger)
    results: dict[str, Stored] = {}
    spans = [make_span() for _ in range(40)]
    spans[7].request_model = "\udcff"  # unencodable
    spans[23].error_message = "\x00"
    start = threading.Barrier(len(spans))

    def one(span: Any) -> None:
        start.wait()
        results[span.id] = writer.write(span)

    threads = [threading.Thread(target=one, args=(s,)) for s in spans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    committed = {i for i, where in results.items() if where == Stored.COMMITTED}
    assert len(committed) >= 38 and ledger.count() == len(committed)


def test_a_jammed_spool_file_is_set_aside_and_the_drain_goes_on(db_url: str) -> None:
    ledger = Ledger(db_url)
    first = ledger.spool.put([make_span()])
    # A file from an older version, written before its model name was cut to the column.
    jam = make_span(request_model="m" * 300)
    ledger.spool.put([jam, make_span()])
    (ledger.spool.directory / "0-garbage.jsonl").write_text("{not json\n")
    later = ledger.spool.put([make_span(), make_span()])
    # The overlong name is checked as ``ometer db import`` checks it, on every backend (SQLite
    # stored it as is, PostgreSQL refused it): its line is kept for a human, its file's other
    # span recorded.
    assert ledger.recover() == 4
    assert ledger.spool.pending() == [] and not first.exists() and not later.exists()
    assert ledger.count() == 4
    aside = {p.name for p in ledger.spool.quarantine_dir.iterdir()}
    assert "0-garbage.jsonl.unreadable" in aside
    (kept,) = (
        ledger.spool.quarantine_dir / name for name in aside if name != "0-garbage.jsonl.unreadable"
    )
    assert jam.id in kept.read_text()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # one ledger for every example: each counts only its own spans
@given(
    count=st.integers(1, 5),
    damaged=st.data(),
    damage=st.sampled_from(["cut", "not utf-8", "not json", "not a span"]),
)
def test_a_damaged_line_in_a_spool_file_costs_only_that_span(
    sqlite_url: str, count: int, damaged: st.DataObject, damage: str
) -> None:
    """One damaged line (a cut end, a flipped byte) set the whole file aside: spans in its
    other lines, completed calls, never reached the ledger."""
    with opened(sqlite_url) as ledger:
        before = ledger.count()
        spans = [make_span() for _ in range(count + 1)]
        path = ledger.spool.put(spans)
        lines = path.read_bytes().splitlines(keepends=True)
        at = damaged.draw(st.integers(0, count), label="damaged line")
        lines[at] = {
            "cut": lines[at][: len(lines[at]) // 2] + (b"" if at == count else b"\n"),  # cut end
            "not utf-8": lines[at].replace(b'"', b'\xff"', 1),
            "not json": b"{" + lines[at],
            "not a span": b'{"id": "x", "what": 1}\n',
        }[damage]
        path.write_bytes(b"".join(lines))
        assert ledger.recover() == count
        assert ledger.count() == before + count and ledger.spool.pending() == []
        kept = ledger.spool.quarantine_dir / f"{path.name}.unreadable"
        assert kept.read_bytes().rstrip(b"\n") == lines[at].rstrip(b"\n")  # for a human
        recorded = {s.id for s in ledger.latest(SpanFilter(), before + count + 1)}
        assert recorded >= {s.id for i, s in enumerate(spans) if i != at}


def test_hostile_model_names_through_the_gateway_cost_no_one_a_span(
    gateway: Gateway, emulator: OllamaEmulator
) -> None:
    """Twenty-four calls at once, one asking for a model name UTF-8 cannot encode: every
    caller gets its answer and the ledger has every span."""
    names = ["llama3.1:8b"] * 23 + ["\ud800evil"]
    bodies = [
        '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
        % ("\\ud800evil" if n.startswith("\ud800") else n)
        for n in names
    ]
    statuses: list[int] = []
    start = threading.Barrier(len(bodies))

    def one(body: str) -> None:
        start.wait()
        reply = httpx.post(f"{gateway.url}/api/chat", content=body, timeout=30)
        statuses.append(reply.status_code)

    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(200) == 23 and all(s < 500 for s in statuses)
    spans = gateway.ledger.latest(SpanFilter(), 100)
    assert len(spans) == 24
    (odd,) = [s for s in spans if s.request_model != "llama3.1:8b"]
    assert odd.request_model == "\ufffdevil" and odd.status == "error"


@pytest.mark.postgres
def test_an_overlong_model_name_is_cut_to_its_column_on_postgresql(
    serve_on: Any, emulator: OllamaEmulator, pg_server: str | None
) -> None:
    if pg_server is None:
        pytest.skip("no PostgreSQL server")
    from tests.conftest import _fresh_pg_database

    gw = serve_on(emulator.url, _fresh_pg_database(pg_server))
    long_name = "x" * 400
    reply = httpx.post(
        f"{gw.url}/api/generate", json={"model": long_name, "prompt": "hi"}, timeout=30
    )
    assert reply.status_code == 404  # Ollama has no such model, and says so
    (span,) = gw.ledger.latest(SpanFilter(), 5)
    assert len(span.request_model) == 255 and span.request_model.endswith("…")
    assert span.error_type == "model_not_found"


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=5,
)


@st.composite
def _spool_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A spool line's object, as written or hand-damaged: a field changed, dropped or added."""
    row: dict[str, Any] = json.loads(encode_span(make_span(status="ok", http_status=200)))
    for _ in range(draw(st.integers(1, 3))):
        # a name as ometer names columns reads as a newer ometer's column, not damage
        column_like = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
        key = draw(st.sampled_from(sorted(row)) | hostile_text | column_like)
        if draw(st.booleans()) and key in row:
            del row[key]
        else:
            row[key] = draw(_json_value)
    return row


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # one ledger for every example: each counts only its own spans
@given(row=_spool_objects())
def test_a_spool_line_is_stored_as_written_or_set_aside(
    sqlite_url: str, row: dict[str, Any]
) -> None:
    """A hand-damaged line (``cost_total: 1.5``, a number for a status, a text for the tags)
    was stored as written, unchecked: a float amount of money in the ledger."""
    with opened(sqlite_url) as ledger:
        before = ledger.count()
        good = [make_span(), make_span()]
        line = json.dumps(row).encode()
        path = ledger.spool.directory / "1-damaged.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            b"\n".join([encode_span(good[0]).encode(), line, encode_span(good[1]).encode()])
        )
        recorded = ledger.recover()  # never raises: a line that is no span is set aside
        assert ledger.spool.pending() == []
        if path.exists():  # a whole span with a column this ometer lacks: a newer ometer's file
            known = json.loads(encode_span(good[0])).keys()
            assert recorded == 0 and ledger.count() == before and row.keys() - known
            path.unlink()
            return
        # The spans of this example by their ids (the ledger holds every example's: reading them
        # all made the examples slower as they went).
        wanted = [s.id for s in good] + ([row["id"]] if isinstance(row.get("id"), str) else [])
        with ledger.read() as conn:
            found = conn.execute(select_spans().where(SPANS.c.id.in_(wanted)))
            stored = {s.id: s for s in map(row_to_span, found)}
        assert {s.id for s in good} <= stored.keys()
        kept = ledger.spool.quarantine_dir / f"{path.name}.unreadable"
        if recorded == 3:
            assert not kept.exists()
            written = json.loads(encode_span(stored[row["id"]]))
            assert {key: written[key] for key in row} == row  # as written, every type its own
            assert ledger.count() == before + 3
        else:
            assert recorded == 2 and ledger.count() == before + 2
            assert kept.read_bytes().rstrip(b"\n") == line
            kept.unlink()
