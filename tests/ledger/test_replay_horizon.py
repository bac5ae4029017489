"""Spans that reach a ledger again after a prune, from a spool file, a dead process's journal, a
second write or an import: every path that records spans follows one rule at the prune
horizon, so no pruned span is counted twice in the rollups that kept it, and none is lost."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter._logging import Throttled
from ollama_meter.ledger import Ledger, SpanFilter, import_lines, prune, rebuild, span_to_dict
from ollama_meter.ledger._journal import _OPEN_FIELDS
from ollama_meter.ledger._spool import span_json
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.pricing import PriceBook
from ollama_meter.records import SpanRecord, Stored
from tests.ledger.test_transfer import NOW, _monthly, _spans, _tables

MONTHS = ("2026-10", "2026-11", "2026-12")


def _dead_journal(ledger: Ledger, entries: list[dict[str, Any]]) -> Path:
    """A journal file no live process holds: its writer was killed (``kill -9``)."""
    ledger.journal.directory.mkdir(parents=True, exist_ok=True)
    path = ledger.journal.directory / f"1-{uuid.uuid4().hex[:8]}.journal"
    path.write_text("".join(json.dumps(e, default=str) + "\n" for e in entries))
    return path


def _no_prices() -> PriceBook:
    return PriceBook([], tz=ZoneInfo("UTC"), currency="USD")


def _again_by_record(url: str, spans: list[SpanRecord]) -> None:
    """The same spans written again (a batch whose commit the server took as it froze)."""
    ledger = Ledger(url)
    ledger.record(spans)
    ledger.dispose()


def _again_by_spool(url: str, spans: list[SpanRecord]) -> None:
    """A spool file drained after its commit, its removal lost with the killed process: the
    next process to open the ledger drains it again."""
    first = Ledger(url)
    first.spool.put(spans)
    first.dispose()
    Ledger(url).dispose()


def _again_by_final(url: str, spans: list[SpanRecord]) -> None:
    """A gateway killed after its commit, before its journal said so: its journal holds each
    span whole, which the next process to open the ledger records."""
    first = Ledger(url)
    _dead_journal(first, [{"f": span_json(span)} for span in spans])
    first.dispose()
    Ledger(url).dispose()


def _again_by_opened(url: str, spans: list[SpanRecord]) -> None:
    """A process killed after its commit, before its journal closed the calls: the next meter
    records each as interrupted (its prompt charged), under the same id."""
    ledger = Ledger(url)
    _dead_journal(ledger, [{"o": span_json(span, _OPEN_FIELDS), "in": 3} for span in spans])
    assert recover_interrupted(ledger, _no_prices) == len(spans)
    ledger.dispose()


def _again_by_import(url: str, spans: list[SpanRecord]) -> None:
    ledger = Ledger(url)
    import_lines(ledger, [json.dumps(span_to_dict(span)).encode() for span in spans])
    ledger.dispose()


AGAIN: dict[str, Callable[[str, list[SpanRecord]], None]] = {
    "record": _again_by_record,
    "spool": _again_by_spool,
    "journal final": _again_by_final,
    "journal opened": _again_by_opened,
    "import": _again_by_import,
}


def _set_aside(ledger: Ledger) -> list[Path]:
    return sorted(ledger.spool.quarantine_dir.glob("*.before-horizon.jsonl"))


@pytest.mark.parametrize("path", sorted(AGAIN))
def test_a_span_recorded_again_after_its_prune_is_not_counted_twice(db_url: str, path: str) -> None:
    """Recorded, pruned (raw row gone, rollups kept), then recorded again from a spool file or
    a journal a killed process left: the insert found no row with its id and took it for new,
    and the pruned months' rollups counted it twice (reports, budgets, chargeback moved)."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    spans = _spans()
    ledger.record(spans)
    result = prune(ledger, 30, now=NOW)
    assert result.removed > 0
    bills, kept, count = [_monthly(ledger, m) for m in MONTHS], _tables(ledger), ledger.count()
    AGAIN[path](db_url, _spans())
    assert [_monthly(ledger, m) for m in MONTHS] == bills
    assert _tables(ledger) == kept and ledger.count() == count
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    # Not lost either: a replayed span the ledger no longer holds is kept for a human, as a
    # line `ometer db import --pruned-too` takes (only the import, asked, leaves them out).
    aside = [json.loads(line) for f in _set_aside(ledger) for line in f.read_text().splitlines()]
    early = sorted(s.id for s in spans if s.started_at < result.cutoff)
    assert sorted(a["id"] for a in aside) == ([] if path == "import" else early)
    ledger.dispose()


def test_a_span_spooled_before_a_prune_and_drained_after_it_is_kept_and_can_be_added(
    db_url: str, tmp_path: Path
) -> None:
    """A gateway cut off from a shared ledger for days spools its calls; meanwhile another
    host prunes. Its spans, never counted, older than the horizon: the drain put them into
    the pruned days, whose rollups a month's bill may have been read from already, and it
    could not tell them from spans counted before (the case above). They are kept aside,
    whole, and `import --pruned-too` adds them: then each is counted exactly once."""
    spans = _spans()
    late, recorded = spans[::5], [s for i, s in enumerate(spans) if i % 5]
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(recorded)
    cutoff = prune(ledger, 30, now=NOW).cutoff
    bills, kept = [_monthly(ledger, m) for m in MONTHS], _tables(ledger)
    _again_by_spool(db_url, late)
    early = [s for s in late if s.started_at < cutoff]
    assert early and ledger.spool.pending() == []
    assert ledger.count(SpanFilter(since=cutoff)) == sum(s.started_at >= cutoff for s in spans)
    assert [_monthly(ledger, m) for m in MONTHS[:1]] == bills[:1]  # wholly before the horizon
    lines = [line for f in _set_aside(ledger) for line in f.read_bytes().splitlines()]
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(s.id for s in early)
    assert _tables(ledger) != kept  # the late spans after the horizon went in
    summary = import_lines(ledger, lines, pruned_too=True)
    assert summary.added == len(early)
    whole = Ledger(f"sqlite:///{tmp_path / 'whole.db'}", zone="Europe/Berlin")
    whole.record(spans)
    prune(whole, 30, now=NOW)
    assert [_monthly(ledger, m) for m in MONTHS] == [_monthly(whole, m) for m in MONTHS]
    whole.dispose()
    ledger.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shifts=st.lists(st.integers(-3 * 24 * 60, 3 * 24 * 60), min_size=1, max_size=12),
    again=st.sampled_from(sorted(AGAIN)),
    keep=st.integers(1, 3),
)
def test_whatever_is_recorded_again_after_a_prune_the_rollups_do_not_move(
    tmp_path_factory: pytest.TempPathFactory, shifts: list[int], again: str, keep: int
) -> None:
    """Calls around the horizon (minutes either side), recorded, pruned, recorded again by any
    path: the rollups are as they were, and a span the ledger does not hold is kept aside."""
    url = f"sqlite:///{tmp_path_factory.mktemp('replay') / 'ledger.db'}"
    base = NOW.replace(hour=0) - timedelta(days=keep)
    spans = [
        replace(
            s,
            started_at=base + timedelta(minutes=m),
            ended_at=base + timedelta(minutes=m, seconds=5),
        )
        for s, m in zip(_spans(len(shifts)), shifts, strict=True)
    ]
    ledger = Ledger(url)
    ledger.record(spans)
    prune(ledger, keep, now=NOW)
    kept, held = _tables(ledger), {s.id for s in ledger.latest(SpanFilter(), 100)}
    AGAIN[again](url, spans)
    assert _tables(ledger) == kept
    assert {s.id for s in ledger.latest(SpanFilter(), 100)} == held
    aside = {
        json.loads(line)["id"] for f in _set_aside(ledger) for line in f.read_text().splitlines()
    }
    assert aside == (set() if again == "import" else {s.id for s in spans} - held)
    ledger.dispose()


def test_a_fresh_call_dated_before_the_horizon_is_kept_aside_and_said(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A host whose clock is days behind dates its calls into days already pruned: they go
    nowhere near those days' rollups, and are kept with an ERROR line saying how to add them."""
    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    ledger.record(_spans())
    cutoff = prune(ledger, 30, now=NOW).cutoff
    kept = _tables(ledger)
    skewed = replace(_spans(1, seed=7)[0], started_at=cutoff - timedelta(days=2))
    assert ledger.record([skewed]) == {skewed.id: Stored.QUARANTINED}
    assert _tables(ledger) == kept
    (aside,) = _set_aside(ledger)
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert str(aside) in said and "ometer db import --pruned-too" in said
    ledger.dispose()


def test_late_spans_by_the_hundred_are_each_kept_once_and_said_in_a_few_lines(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two gateways with clocks days behind after a prune: every write's spans were set aside
    with an ERROR line of their own (147 in a second). Now a line per process every 10 s at
    most, saying how many since; every span is still kept, once, a write's set aside again
    (a repeated drain) going to the same file, and the import adds each exactly once."""
    caplog.set_level(logging.DEBUG, logger="ollama_meter.ledger")
    now = [0.0]
    ledger, other = Ledger(sqlite_url, zone="Europe/Berlin"), Ledger(sqlite_url)
    for writer in (ledger, other):
        writer._early = Throttled(logging.getLogger("ollama_meter.ledger"), clock=lambda: now[0])
    ledger.record(_spans())
    cutoff = prune(ledger, 30, now=NOW).cutoff
    kept = _tables(ledger)
    behind = cutoff - timedelta(days=3)
    late = [
        replace(s, started_at=behind + timedelta(minutes=i), ended_at=behind + timedelta(hours=3))
        for i, s in enumerate(_spans(150, seed=11))
    ]
    batches: list[list[SpanRecord]] = []
    while len(done := [s for b in batches for s in b]) < len(late):
        batches.append(late[len(done) : len(done) + 1 + len(batches) % 3])  # 1, 2, 3 spans
    for index, batch in enumerate(batches):
        stored = (ledger, other)[index % 2].record(batch)
        assert set(stored.values()) == {Stored.QUARANTINED}
    assert ledger.record(batches[0]) == dict.fromkeys(
        (s.id for s in batches[0]), Stored.QUARANTINED
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # one a writer
    now[0] += 11
    ledger.record(batches[1])
    (*_, said) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    since = sum(map(len, batches[2::2])) + len(batches[0])  # this writer's, the repeat too
    assert f"(and {since} more span(s) set aside" in said
    assert _tables(ledger) == kept
    files = _set_aside(ledger)
    assert len(files) == len(batches)  # the same spans again: the same file
    lines = [line for f in files for line in f.read_bytes().splitlines()]
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(s.id for s in late)
    assert import_lines(ledger, lines, pruned_too=True).added == len(late)
    assert import_lines(ledger, lines, pruned_too=True).added == 0
    assert ledger.count(SpanFilter(until=cutoff)) == len(late)
    ledger.dispose()
    other.dispose()


def test_spans_before_the_horizon_that_cannot_be_kept_aside_wait_in_the_spool(
    sqlite_url: str,
) -> None:
    """Where they cannot be kept aside (the quarantine folder cannot be made), spans before
    the horizon are not dropped: a drain leaves them in their spool file, a call's write
    spools them, and once the folder can be made they are kept there."""
    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    spans = _spans()
    ledger.record([s for i, s in enumerate(spans) if i % 2])
    cutoff = prune(ledger, 30, now=NOW).cutoff
    kept = _tables(ledger)
    early = [s for s in spans[::2] if s.started_at < cutoff]
    ledger.spool.directory.mkdir(parents=True, exist_ok=True)
    ledger.spool.quarantine_dir.write_text("in the way")
    (spooled,) = [ledger.spool.put(early[:3])]
    assert ledger.recover() == 3 and ledger.spool.pending() == [spooled]
    assert set(ledger.record(early[3:]).values()) == {Stored.SPOOLED}
    assert len(ledger.spool.pending()) == 2 and _tables(ledger) == kept
    ledger.spool.quarantine_dir.unlink()
    assert ledger.recover() == len(early) and ledger.spool.pending() == []
    aside = [
        json.loads(line)["id"] for f in _set_aside(ledger) for line in f.read_text().splitlines()
    ]
    assert sorted(aside) == sorted(s.id for s in early) and _tables(ledger) == kept
    ledger.dispose()


def test_a_prune_landing_in_a_replay_leaves_no_pruned_span_counted_twice(
    pg_server: str | None,
) -> None:
    """On PostgreSQL another process's prune lands as a spool's spans are written again, just
    before the write takes the rollups' lock: the write reads the horizon the prune recorded,
    and the spans the prune removed meanwhile are kept aside, not counted again."""
    from sqlalchemy import event

    from tests.conftest import _fresh_pg_database

    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    url = _fresh_pg_database(pg_server)
    ledger, pruner = Ledger(url, zone="Europe/Berlin"), Ledger(url, zone="Europe/Berlin")
    ledger.record(_spans())
    pruned: list[Any] = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def prune_now(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_advisory_xact_lock_shared" in statement and not pruned:
            pruned.append(prune(pruner, 30, now=NOW))  # another process's, to the end

    bills = [_monthly(ledger, m) for m in MONTHS]
    kept = _tables(ledger)
    stored = ledger.record(_spans())
    assert pruned and pruned[0].removed > 0
    assert list(stored.values()).count(Stored.QUARANTINED) == pruned[0].removed
    assert _tables(ledger) == kept and [_monthly(ledger, m) for m in MONTHS] == bills
    ledger.dispose()
    pruner.dispose()
