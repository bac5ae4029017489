"""A dead process's journal, damaged or from another version of ometer: each call in it is
recorded as ``interrupted`` exactly as it was noted, or its line is kept aside for a human;
opening a meter never fails on it and no call noted in it goes unsaid."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._journal import _OPEN_FIELDS
from ollama_meter.ledger._spans import row_to_span, select_spans
from ollama_meter.ledger._spool import span_json
from ollama_meter.ledger.models import SPANS
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.pricing import PriceBook
from tests.factories import make_span
from tests.integrity.test_isolation import _json_value, hostile_text


def _no_prices() -> PriceBook:
    return PriceBook([], tz=ZoneInfo("UTC"), currency="USD")


def _opened(**fields: Any) -> dict[str, Any]:
    return {"o": span_json(make_span(**fields), _OPEN_FIELDS), "in": 3}


@st.composite
def _journal_entries(draw: st.DrawFn) -> dict[str, Any]:
    """A journal's "opened" line, as written or damaged: a field changed, dropped or added."""
    entry = _opened()
    row = entry["o"]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(row)) | hostile_text)
        if draw(st.booleans()) and key in row:
            del row[key]
        else:
            row[key] = draw(_json_value)
    return entry


def _dead_journal(ledger: Ledger, *entries: dict[str, Any]) -> Path:
    """A journal file no live process holds: its writer died."""
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    path = ledger.journal.directory / f"1-{uuid.uuid4().hex[:8]}.journal"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # one ledger for every example: each counts only its own spans
@given(entry=_journal_entries())
def test_a_journal_line_is_recorded_as_noted_or_kept_aside(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, entry: dict[str, Any]
) -> None:
    """``"tags": "x"`` made every process that meters calls fail at start (AttributeError,
    "This is a bug", for ever: the file stayed); ``"tenant": 5``, ``"id": ""`` or a start in
    year 1 were stored as written; a line missing a field was dropped with no word and its
    file removed."""
    caplog.clear()
    ledger = Ledger(sqlite_url)
    before = ledger.count()
    good = _opened()
    path = _dead_journal(ledger, good, entry)
    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        recovered = recover_interrupted(ledger, _no_prices)  # never raises
    assert not path.exists()
    row = entry["o"]
    # The spans of this example by their ids (the ledger holds every example's: reading them
    # all made the examples slower as they went).
    wanted = [good["o"]["id"]] + ([row["id"]] if isinstance(row.get("id"), str) else [])
    with ledger.read() as conn:
        found = conn.execute(select_spans().where(SPANS.c.id.in_(wanted)))
        stored = {s.id: s for s in map(row_to_span, found)}
    assert good["o"]["id"] in stored
    kept = ledger.spool.quarantine_dir / f"{path.name}.unreadable"
    if recovered == 2:
        assert not kept.exists() and ledger.count() == before + 2
        span = stored[row["id"]]
        assert span.status == "interrupted"
        noted = span_json(span, _OPEN_FIELDS)
        # as noted, every type its own; a key no version of a span has is left out
        assert {k: noted[k] for k in row if k in _OPEN_FIELDS} == {
            k: v for k, v in row.items() if k in _OPEN_FIELDS
        }
    else:
        assert recovered == 1 and ledger.count() == before + 1
        assert kept.read_text().rstrip("\n") == json.dumps(entry)
        (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert str(path) in said and str(kept) in said
        kept.unlink()
    ledger.dispose()


def test_a_journal_from_a_newer_version_is_recorded(sqlite_url: str) -> None:
    """A field a later version notes when a call opens cost the call: the line was dropped."""
    ledger = Ledger(sqlite_url)
    newer = _opened(tenant="acme", department="ops")
    newer["o"]["project"] = "apollo"  # noted by a later version
    newer["more"] = 1
    path = _dead_journal(ledger, newer)
    assert recover_interrupted(ledger, _no_prices) == 1
    (span,) = ledger.latest(SpanFilter(), 5)
    assert (span.id, span.tenant, span.department, span.status, span.input_tokens) == (
        newer["o"]["id"],
        "acme",
        "ops",
        "interrupted",
        3,
    )
    assert not path.exists() and ledger.spool.quarantined() == []
    assert not ledger.spool.quarantine_dir.exists()


def test_a_damaged_journal_line_is_kept_byte_for_byte(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    good = _opened()
    damaged = json.dumps(_opened()).encode()[:-9].replace(b'"', b'\xff"', 1)  # cut, a flipped byte
    path = _dead_journal(ledger, good)
    path.write_bytes(path.read_bytes() + damaged)
    assert recover_interrupted(ledger, _no_prices) == 1
    assert [s.id for s in ledger.latest(SpanFilter(), 5)] == [good["o"]["id"]]
    kept = ledger.spool.quarantine_dir / f"{path.name}.unreadable"
    assert kept.read_bytes() == damaged + b"\n" and not path.exists()


@pytest.mark.parametrize("kind", ["named pipe", "link to /dev/zero", "folder"])
def test_what_is_not_a_journal_is_left_alone_unread(sqlite_url: str, kind: str) -> None:
    """A named pipe or a link to /dev/zero named like a journal held every process that
    meters calls at start, for ever: recovery opened it and read."""
    ledger = Ledger(sqlite_url)
    good = _opened()
    _dead_journal(ledger, good)
    odd = ledger.journal.directory / "0-odd.journal"
    if kind == "named pipe":
        os.mkfifo(odd)
    elif kind == "link to /dev/zero":
        odd.symlink_to("/dev/zero")
    else:
        odd.mkdir()
    assert recover_interrupted(ledger, _no_prices) == 1
    assert [s.id for s in ledger.latest(SpanFilter(), 5)] == [good["o"]["id"]]
    assert os.path.lexists(odd) and Path("/dev/zero").exists()


@settings(max_examples=60, deadline=None)
@given(text=hostile_text)
@example(text="lone \ud800 surrogate, NUL \x00, été 🌙")
def test_a_calls_own_lines_are_read_back_as_written_whatever_its_texts(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    """The journal's lines say the call as it was, read back as a dead process's; a text
    UTF-8 cannot encode (a lone surrogate, which a storable span never holds) is still
    written, escaped."""
    from ollama_meter.ledger._journal import Journal, _open_calls
    from ollama_meter.records._span import make_storable

    journal = Journal(tmp_path_factory.mktemp("journal"))
    opened = make_span(tags={"job": "nuit 🌙"})
    journal.opened(opened, 11, ("lease-1",))
    raw = make_span(tags={"job": "nuit 🌙"}, error_message=text, reply=text)
    raw.id = opened.id
    assert journal.finished(raw)
    assert journal._path is not None
    *_, line = journal._path.read_bytes().splitlines()
    assert json.loads(line)["f"]["reply"] == text
    ended = make_storable(raw)
    assert journal.finished(ended)
    fd = os.open(journal._path, os.O_RDONLY)
    try:
        calls, _ = _open_calls(fd)
    finally:
        os.close(fd)
    (orphan,) = calls.values()
    assert orphan.final and orphan.leases == ("lease-1",)
    assert orphan.span == ended
