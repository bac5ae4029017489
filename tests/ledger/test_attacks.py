"""The ledger's bulk paths under attack: hostile import lines, imports after a prune, a
rebuild that dies half way.

A line either becomes a span the ledger stores unchanged (what the meter's own
``make_storable`` would leave alone, times a calendar can cut, money that sums in
64 bits) or is refused with a ValueError saying why; never any other exception.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings, strategies as st

from ollama_meter.errors import LedgerError, ValidationError
from ollama_meter.ledger import (
    Ledger,
    SpanFilter,
    backup,
    export_lines,
    import_lines,
    prune,
    rebuild,
    span_from_line,
    span_to_dict,
)
from ollama_meter.ledger._meta import pruned_before, set_meta
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, MOST, ROLLUPS
from ollama_meter.ledger._spans import insert_spans
from ollama_meter.records import (
    MAX_CALL_COST,
    MAX_DURATION_NS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TOKENS,
    TEXT_LIMITS,
    Stored,
    format_micros,
    make_storable,
)
from tests.factories import make_span, opened
from tests.ledger.test_keep_attacks import _restored_beside_a_killed_gateways_wal
from tests.ledger.test_transfer import BERLIN, NOW, _monthly, _spans, _tables

BASE = span_to_dict(
    make_span(
        ended_at=datetime(2026, 11, 10, 12, 0, 2, tzinfo=UTC),
        tags={"job": "nightly"},
        cost_tokens=31_000,
        cost_total=31_000,
        http_status=200,
    )
)
DURATIONS = (
    "total_duration_ns", "load_duration_ns", "prompt_eval_duration_ns", "eval_duration_ns",
    "latency_ns", "ttft_ns", "queue_ns",
)  # fmt: skip
PATHS = [(key,) for key in BASE if key not in ("cost_parts", "durations_ns")] + [
    (group, key) for group in ("cost_parts", "durations_ns") for key in BASE[group]
]
PATHS += [("model",), ("prompt",), ("reply",), ("tags", "k")]

EPOCH, Y9999 = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
_huge = st.integers(-(2**70), 2**70)
_edges = st.sampled_from(
    [
        -1, 0, 99, 1000, 2**31, 2**63, MAX_TOKENS + 1, MAX_DURATION_NS + 1, MAX_CALL_COST + 1,
        "9999999999999.999999", format_micros(MAX_CALL_COST + 1), "0.000001", "-0.000001",
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z",
        "9999-01-01T00:00:00Z", "9998-12-31T23:59:59-00:01", "2026-11-10T11:59:59Z", "2026-11-10T12:00:00+14:00",
        "\x1b[31mred", "a\x00b", "x" * 70_000, "\ud800", "é" * 300, float("nan"),
        float("inf"), 1.5, True, None, [], {}, {"k": "v\x00"}, {"k" * 65: "v"},
        {"k": "v" * 257},
    ]
)  # fmt: skip
hostile = st.one_of(_edges, _huge, st.text(max_size=300), st.floats(), st.booleans())


def _assert_storable(span: Any) -> None:
    assert make_storable(replace(span, tags=dict(span.tags))) == span
    assert EPOCH <= span.started_at <= (span.ended_at or span.started_at) < Y9999
    parts = (span.cost_tokens, span.cost_compute, span.cost_energy, span.cost_fee)
    assert span.cost_total == sum(parts) and 0 <= max(*parts, span.cost_total) <= MAX_CALL_COST
    assert span.price_rule_id is None or 0 < span.price_rule_id < 2**31


@settings(max_examples=600, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), hostile), min_size=1, max_size=3))
def test_any_line_is_stored_as_it_is_or_refused_saying_why(
    changes: list[tuple[tuple[str, ...], object]],
) -> None:
    line = copy.deepcopy(BASE)
    for path, value in changes:
        where = line
        for key in path[:-1]:
            if not isinstance(where.get(key), dict):
                where[key] = {}
            where = where[key]
        where[path[-1]] = value
    raw = json.dumps(line, allow_nan=True).encode()
    try:
        span = span_from_line(raw)
    except ValueError as exc:
        refused = str(exc)
    else:
        _assert_storable(span)
        assert span_from_line(json.dumps(span_to_dict(span)).encode()) == span
        return
    assert refused and "\n" not in refused


def test_the_largest_values_a_line_may_hold_are_stored_summed_and_rebuilt(db_url: str) -> None:
    """Spans at every bound import (SQLite and PostgreSQL), sum in the rollups without overflow,
    and the rollups rebuilt from them are the ones kept as they arrived."""
    at = datetime(2026, 11, 10, 23, 50, tzinfo=UTC)
    widest = make_span(
        started_at=at,
        ended_at=at + timedelta(microseconds=MAX_DURATION_NS // 1000),
        user="u" * TEXT_LIMITS["user"],
        tags={"k" * MAX_TAG_KEY: "é" * MAX_TAG_VALUE},
        request_model="m" * TEXT_LIMITS["request_model"],
        response_model="ü" * TEXT_LIMITS["response_model"],
        upstream_host="h" * TEXT_LIMITS["upstream_host"],
        error_message="\x1b[31m" + "ä" * (TEXT_LIMITS["error_message"] - 5),
        http_status=999,
        input_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
        **dict.fromkeys(DURATIONS, MAX_DURATION_NS),
        cost_tokens=MAX_CALL_COST,
        cost_total=MAX_CALL_COST,
        price_rule_id=2**31 - 1,
    )
    spans = [
        replace(widest, id=make_span(started_at=at + timedelta(minutes=n)).id) for n in range(20)
    ]
    spans += [
        make_span(started_at=datetime(1970, 1, 1, tzinfo=UTC)),
        make_span(started_at=datetime(9998, 12, 31, 23, 59, tzinfo=UTC)),
    ]
    ledger = Ledger(db_url, zone="Europe/Berlin")
    lines = [json.dumps(span_to_dict(s)).encode() for s in spans]
    assert import_lines(ledger, lines).added == len(spans)
    window = SpanFilter(since=at, until=at + timedelta(days=30))
    [sums] = ledger.spend(window)
    assert sums.cost == 20 * MAX_CALL_COST and sums.input_tokens == 20 * MAX_TOKENS
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def test_a_cell_summing_past_64_bits_stops_at_the_most_and_every_span_is_kept(
    db_url: str,
) -> None:
    """Each call within bounds, but 1,001 at the most one call can cost sum past 2**63 - 1 in
    one cell: the import failed ("bigint out of range" on PostgreSQL, "Python int too large" on
    SQLite), and a span recorded into that cell went to the quarantine, out of every budget."""
    at = datetime(2026, 11, 10, 12, tzinfo=UTC)
    dear = {"cost_tokens": MAX_CALL_COST, "cost_total": MAX_CALL_COST}
    spans = [make_span(started_at=at + timedelta(seconds=n), **dear) for n in range(1005)]
    ledger = Ledger(db_url, zone="Europe/Berlin")
    lines = [json.dumps(span_to_dict(s)).encode() for s in spans]
    assert import_lines(ledger, lines).added == len(spans)  # one batch: its sums pass the most
    later = [make_span(started_at=at + timedelta(hours=1), **dear) for _ in range(2)]
    other = make_span(started_at=at, department="legal", cost_total=5, cost_tokens=5)
    stored = ledger.record([*later, other])
    assert set(stored.values()) == {Stored.COMMITTED} and not ledger.spool.quarantined()
    assert ledger.count() == 1008
    day = SpanFilter(
        since=at.replace(hour=0, tzinfo=BERLIN), until=at.replace(hour=0, tzinfo=BERLIN, day=11)
    )
    sums = {s.keys: s for s in ledger.spend(day, by=["department"])}
    # The cell stops at the cap; what is read of it is the spans' exact sum
    # (tests/reports/test_saturated_cells.py).
    assert sums[("sales",)].cost == 1007 * MAX_CALL_COST > MOST
    assert sums[("sales",)].requests == 1007
    assert sums[("legal",)].cost == 5
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def test_an_export_imported_back_after_a_prune_counts_nothing_twice(
    db_url: str, cli: Any, tmp_path: Path
) -> None:
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans())
    lines = list(export_lines(ledger))
    cutoff = prune(ledger, 30, now=NOW).cutoff
    before = sum(1 for line in lines if span_from_line(line).started_at < cutoff)
    kept, bills = _tables(ledger), [_monthly(ledger, m) for m in ("2026-10", "2026-11")]
    (tmp_path / "all.jsonl").write_bytes(b"".join(lines))
    again = cli("db", "import", str(tmp_path / "all.jsonl"), "--db", db_url)
    assert again.code == 0, again.stderr
    assert "imported 0 span(s) into" in again.stdout
    assert f"skipped {before} span(s) that started before {cutoff:%Y-%m-%d %H:%M}" in again.stderr
    assert _tables(ledger) == kept
    assert [_monthly(ledger, m) for m in ("2026-10", "2026-11")] == bills
    # another ledger's spans of the pruned days go in when asked, once
    theirs = [s for s in _spans(40, seed=1) if s.started_at < cutoff]
    other = [json.dumps(span_to_dict(s)).encode() for s in theirs]
    assert import_lines(ledger, other).pruned == len(theirs)
    assert import_lines(ledger, other, pruned_too=True).added == len(theirs)
    assert import_lines(ledger, other, pruned_too=True).present == len(theirs)
    [sums] = ledger.spend(SpanFilter(since=datetime(2026, 10, 1, tzinfo=UTC), until=cutoff))
    assert sums.requests == before + len(theirs)


class _Killed(Exception):
    pass


def test_a_zone_change_that_dies_half_way_is_finished_by_the_next_open(db_url: str) -> None:
    """``db rollup --zone`` killed after a few days left cells of two zones mixed, and reports
    said nothing for the days not yet redone; the next process to open the ledger finishes it."""
    ledger = Ledger(db_url)
    ledger.record(_spans(300))
    before = {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")}
    days = 0

    def die_after_ten(_day: int) -> None:
        nonlocal days
        days += 1
        if days == 10:
            raise _Killed

    with pytest.raises(_Killed):
        rebuild(ledger.write, ledger.read, zone="Europe/Berlin", progress=die_after_ten)
    ledger.dispose()
    reopened = Ledger(db_url)
    assert reopened.zone() == "Europe/Berlin"
    assert {month: _monthly(reopened, month) for month in ("2026-10", "2026-11")} == before


def _without_rollups(ledger: Ledger) -> None:
    """The ledger as a bulk load outside ometer leaves it: raw spans, no rollups."""
    with ledger.write() as conn:
        for table in (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
            conn.execute(table.delete())


def _dies_after(days: int) -> Any:
    done = 0

    def progress(_day: int) -> None:
        nonlocal done
        done += 1
        if done == days:
            raise _Killed

    return progress


def test_a_rollup_that_dies_half_way_is_finished_by_the_next_open(db_url: str) -> None:
    """``db rollup`` after a bulk load, killed after a few days, left those days right and the
    others and every month wrong, with nothing on record to say so; now the ledger says its
    rollups are stale until the rebuild ends, and the next process to open it finishes it."""
    ledger = Ledger(db_url)
    ledger.record(_spans(300))
    kept = _tables(ledger)
    _without_rollups(ledger)
    with pytest.raises(_Killed):
        rebuild(ledger.write, ledger.read, progress=_dies_after(10))
    ledger.dispose()
    assert _tables(Ledger(db_url)) == kept


def test_a_ledger_opened_while_a_rebuild_runs_leaves_the_work_to_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway started while another built a stale ledger's rollups (after an upgrade, or
    during ``db rollup --zone``) rebuilt every day itself, as long as the rebuild it raced; a
    rebuild still at work is waited for (budgets and answers read the rollups), and one that
    stopped (it died) is taken over. A plain rebuild's days are each whole: not waited for."""
    ledger = Ledger(db_url)
    ledger.record(_spans(60))
    kept = _tables(ledger)
    _without_rollups(ledger)
    with ledger.write() as conn:
        set_meta(conn, "rollups", "stale")  # as a migration leaves it
    opener = threading.Thread(target=lambda: Ledger(db_url).dispose())

    def open_another(day: int) -> None:
        if opener.ident is None:
            opener.start()  # as another process would, while this rebuild goes on
            deadline = time.monotonic() + 30
            while not any("waiting" in m for m in caplog.messages):
                assert time.monotonic() < deadline and opener.is_alive(), caplog.messages
                time.sleep(0.01)

    with caplog.at_level("WARNING", logger="ollama_meter"):
        rebuild(ledger.write, ledger.read, progress=open_another)
        opener.join(timeout=30)
    assert not opener.is_alive()
    assert [m for m in caplog.messages if "rollups" in m] == [
        f"waiting for another process to finish rebuilding the rollups of {ledger.display_url}"
    ]
    assert _tables(ledger) == kept
    caplog.clear()
    with ledger.write() as conn:
        set_meta(conn, "rebuilding", f"{int(time.time())} {os.getpid()} {socket.gethostname()}")
    with caplog.at_level("WARNING", logger="ollama_meter"):
        Ledger(db_url).dispose()  # a plain rebuild at work: the ledger is used meanwhile
    assert not [m for m in caplog.messages if "rollups" in m]
    # One that stopped (an exception, Ctrl-C) said so; one killed -9 here has no process;
    # one on another machine that said nothing for ten minutes has died too.
    _without_rollups(ledger)
    with pytest.raises(_Killed):
        rebuild(ledger.write, ledger.read, progress=_dies_after(3))
    assert _tables(Ledger(db_url)) == kept
    gone = subprocess.Popen(["true"])
    gone.wait()
    now, here = int(time.time()), socket.gethostname()
    for beat, at_work in [
        (f"{now} {gone.pid} {here}", False),
        (f"{now} {os.getpid()} {here}", True),
        (f"{now - 30} 1 elsewhere", True),
        (f"{now - 601} 1 elsewhere", False),
        (f"{now - 601} {os.getpid()} {here}", False),  # a number taken again since
    ]:
        _without_rollups(ledger)
        with ledger.write() as conn:
            set_meta(conn, "rollups", "stale")
            set_meta(conn, "rebuilding", beat)
        if at_work:  # waited for: a rebuild that never ends keeps it waiting
            waiter = threading.Thread(target=lambda: Ledger(db_url).dispose(), daemon=True)
            waiter.start()
            waiter.join(timeout=1)
            assert waiter.is_alive(), beat
            with ledger.write() as conn:
                set_meta(conn, "rebuilding", None)  # it died after all: taken over
            waiter.join(timeout=30)
        else:
            Ledger(db_url).dispose()
        assert _tables(ledger) == kept, beat


def test_spans_spooled_under_a_wrong_user_are_recorded_once_the_url_is_right(
    pg_server: str | None,
) -> None:
    """The spool of a server ledger belongs to the database, not to the credentials in its URL:
    spans spooled while the URL had a wrong user or password (the outage) are recorded by the
    process started with the right one (the recovery)."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from sqlalchemy.engine import make_url

    from tests.conftest import _fresh_pg_database

    right = _fresh_pg_database(pg_server)
    Ledger(right).dispose()  # the schema exists; the wrong URL only fails to log in
    wrong = make_url(right).set(username="nobody", password="wrong").render_as_string(False)
    spans = [make_span(), make_span()]
    broken = Ledger(wrong, migrate=False, wait=0.2)
    assert set(broken.record(spans).values()) == {Stored.SPOOLED}
    broken.dispose()
    fixed = Ledger(right)
    assert {s.id for s in fixed.latest(SpanFilter(), 10)} == {s.id for s in spans}


def test_a_spool_named_after_the_whole_url_moves_to_its_database_folder() -> None:
    import hashlib

    from ollama_meter._paths import default_data_dir
    from ollama_meter.ledger._durable import default_spool_dir
    from ollama_meter.ledger._spool import Spool

    url = "postgresql+psycopg://meter:s3cret@127.0.0.1:1/ometer?sslmode=require"
    legacy = default_data_dir() / "spool" / hashlib.sha256(url.encode()).hexdigest()[:16]
    Spool(legacy).put([make_span()])
    folder = default_spool_dir(url)
    assert not legacy.exists() and len(Spool(folder).pending()) == 1
    assert default_spool_dir("postgresql://other:pw@127.0.0.1:1/ometer") == folder
    assert default_spool_dir("postgresql+psycopg://meter:s3cret@127.0.0.1:1/other") != folder


def test_keeping_more_days_than_there_have_been_prunes_nothing(cli: Any, tmp_path: Path) -> None:
    """``--keep-days`` (or ``OMETER_KEEP_DAYS``) reaching back before 1970 keeps everything; a
    million days was an 'unexpected OverflowError'."""
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(db, zone="Europe/Berlin")
    ledger.record(_spans(20))
    for days in (20_000 * 365, 10**6, 10**12):
        done = cli("db", "prune", "--keep-days", str(days), "--db", db)
        assert done.code == 0 and "removed 0 span(s) started before 1970-01-01" in done.stdout
    assert ledger.count() == 20 and prune(ledger, 10**30, now=NOW).removed == 0
    with ledger.read() as conn:
        assert pruned_before(conn) is None


def test_a_prune_that_removes_nothing_leaves_no_horizon(db_url: str) -> None:
    """A first ``db prune --keep-days 400`` on a young ledger removed nothing but recorded a
    horizon all the same: from then on every export warned that days before it "were
    pruned", ``db rollup --zone`` was refused for good ("raw spans ... were pruned"), and an
    import of older spans was skipped as if their days were kept as rollups."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans(20))
    assert prune(ledger, 400, now=NOW).removed == 0
    with ledger.read() as conn:
        assert pruned_before(conn) is None
    assert rebuild(ledger.write, ledger.read, zone="UTC") == 20
    older = make_span(started_at=datetime(2025, 1, 15, 10, tzinfo=UTC))
    assert import_lines(ledger, [json.dumps(span_to_dict(older)).encode()]).added == 1
    # and once it does remove spans, the horizon is there, as before
    assert prune(ledger, 400, now=NOW).removed == 1
    with ledger.read() as conn:
        assert pruned_before(conn) is not None


def test_a_backup_is_never_written_over_the_ledger_or_its_wal(cli: Any, tmp_path: Path) -> None:
    """The copy is renamed into place: over ``ledger.db-wal`` it replaced the live WAL."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(5))
    (tmp_path / "link.db").symlink_to(path)
    for target in ("ledger.db", "link.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal"):
        done = cli("db", "backup", str(tmp_path / target), "--db", f"sqlite:///{path}")
        assert done.code == 2 and "is the ledger itself or one of its files" in done.stderr
    wal = tmp_path / "ledger.db-wal"
    assert not wal.exists() or not wal.read_bytes().startswith(b"SQLite format 3")
    assert not list(tmp_path.glob(".*.partial")) and ledger.count() == 5


def test_a_backup_copied_over_a_ledger_whose_wal_a_killed_process_left_is_not_mixed_with_it(
    tmp_path: Path,
) -> None:
    """Going back to a backup (``cp backup.db ledger.db``) after a gateway was killed left the
    gateway's ``ledger.db-wal`` beside it: SQLite replays any WAL it finds, so the restored
    ledger silently took back the spans it was restored to be rid of (or, from a copy whose
    pages lay otherwise, was corrupted). A WAL beside a file that says it has none is from
    another file: refused, and every file left as it was."""
    path, before = _restored_beside_a_killed_gateways_wal(tmp_path)
    url, wal = f"sqlite:///{path}", tmp_path / "ledger.db-wal"
    with pytest.raises(LedgerError) as refused:
        Ledger(url)
    said = str(refused.value)
    assert f"{wal} is left from another file" in said and f"move {wal} and" in said, said
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    wal.rename(tmp_path / "old-wal")  # as the message says: now it is the backup, as it was
    assert Ledger(url).count() == 3


def test_two_backups_to_one_file_at_once_each_write_a_whole_copy(tmp_path: Path) -> None:
    """Both wrote one temp name (``.copy.db.partial``): the second copied into the first's
    file and renamed it into place under it, and the first then failed with 'No such file
    or directory: .copy.db.partial -> copy.db' (cron and a manual run overlapping)."""
    import sqlite3

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(30))
    target = tmp_path / "copy.db"
    sizes: list[int] = []

    def another_backup_meanwhile(_done: int, _total: int) -> None:
        if not sizes:
            sizes.append(backup(ledger, target))

    sizes.append(backup(ledger, target, progress=another_backup_meanwhile))
    assert len(sizes) == 2 and sizes[1] == target.stat().st_size
    with contextlib.closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*) FROM spans").fetchone() == (30,)
    assert not list(tmp_path.glob(".*partial"))


_anything = st.text(alphabet=st.characters(codec=None, categories=None), max_size=300)
_TEXTS = (
    "request_model", "response_model", "operation", "source", "error_type",
    "done_reason", "upstream_host", "trace_id", "span_id", "error_message", "prompt", "reply",
)  # fmt: skip
"""What a call brings into its span. Not its status: the meter writes one of ``Status``, and
an import refuses any other (reports count errors by it)."""


@settings(max_examples=300, deadline=None)
@given(
    texts=st.fixed_dictionaries(dict.fromkeys(_TEXTS, _anything)),
    tags=st.dictionaries(_anything, _anything, max_size=3),
    counts=st.tuples(_huge, _huge, st.none() | _huge, _huge),
)
def test_whatever_the_meter_stores_exports_and_imports_back_the_same(
    texts: dict[str, str], tags: dict[str, str], counts: tuple[int, int, int | None, int]
) -> None:
    """A hostile client's model name, Ollama's error text, tags from headers: whatever a call
    brings, the span the meter stores is one that export and import carry over unchanged (a
    span import refused stopped every `db export | db import` at its line)."""
    span = make_span(
        **texts,
        tags=tags,
        input_tokens=counts[0],
        output_tokens=counts[1],
        eval_duration_ns=counts[2],
        http_status=counts[3],
    )
    make_storable(span)
    assert span_from_line(json.dumps(span_to_dict(span)).encode()) == span


def test_a_span_an_older_ometer_kept_with_an_escape_still_moves(
    db_url: str, tmp_path: Path
) -> None:
    """Before labels were stored printable, a model name could keep its escape: the export
    gives it as the meter stores it now, so the import takes it."""
    old = make_span(request_model="llama\x1b[2J", upstream_host="h\x07")
    source = Ledger(f"sqlite:///{tmp_path / 'old.db'}")
    with source.write() as conn:  # as an older meter wrote it: not made storable first
        insert_spans(conn, [old])
    target = Ledger(db_url)
    assert import_lines(target, export_lines(source)).added == 1
    [moved] = target.latest(SpanFilter())
    assert (moved.request_model, moved.upstream_host) == ("llama\ufffd[2J", "h\ufffd")


def test_an_import_the_database_stops_half_way_says_to_run_it_again(tmp_path: Path) -> None:
    """Another process takes the write lock after the first batch: the error says how far it
    got and that running it again is safe; run again, every span is there once."""
    import sqlite3

    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", wait=0.1, retry_delay=0.01)
    lines = [json.dumps(span_to_dict(s)).encode() for s in _spans(10)]
    blocker = sqlite3.connect(path, isolation_level=None)

    def lock(_count: int) -> None:
        if not blocker.in_transaction:
            blocker.execute("BEGIN EXCLUSIVE")

    with pytest.raises(LedgerError) as stopped:
        import_lines(ledger, lines, batch=4, progress=lock)
    assert "database is locked" in str(stopped.value)
    assert "the 4 span(s) before this batch are recorded: run the same import again" in str(
        stopped.value
    )
    blocker.execute("ROLLBACK")
    blocker.close()
    again = import_lines(ledger, lines, batch=4)
    assert (again.added, again.present) == (6, 4) and ledger.count() == 10
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def test_a_price_rule_an_older_ometer_kept_with_a_final_newline_still_reads(db_url: str) -> None:
    """Its pattern check let 'llama3\\n' in (a rule that matched no model); the check now
    refuses it, and reading it back must not make every price lookup fail."""
    from sqlalchemy import update

    from ollama_meter.ledger.models import PRICE_RULES
    from tests.factories import token_prices

    ledger = Ledger(db_url)
    rule = ledger.add_price_rule(token_prices("llama3"))
    with ledger.write() as conn:  # as the older meter stored it
        conn.execute(update(PRICE_RULES).values(pattern="llama3\n"))
    [read] = ledger.price_rules()
    assert read.pattern == "llama3" and read.id == rule.id


def test_a_rollup_rebuilt_in_a_zone_with_a_27_hour_day_ends_and_agrees(db_url: str) -> None:
    """Antarctica/Casey went from +11 to +8 on 9 March 2023: a day of 27 hours. Cut 26 hours
    on, that day ended where it began and `db rollup --zone` never finished."""
    from zoneinfo import ZoneInfo

    from ollama_meter.ledger._aggregate import raw_spans
    from ollama_meter.periods import parse_period
    from ollama_meter.reports import spend_report

    casey = ZoneInfo("Antarctica/Casey")
    ledger = Ledger(db_url)
    starts = [datetime(2023, 3, 8, 12, tzinfo=UTC) + timedelta(hours=h) for h in range(0, 60, 5)]
    ledger.record([make_span(started_at=at, cost_total=1_000) for at in starts])
    assert rebuild(ledger.write, ledger.read, zone="Antarctica/Casey") == len(starts)
    window = parse_period("2023-03", tz=casey, now=datetime(2024, 1, 1, tzinfo=UTC))
    report = spend_report(ledger, window, ["day"], tz=casey)
    with raw_spans():
        assert spend_report(ledger, window, ["day"], tz=casey).rows == report.rows
    days = [at.astimezone(casey).date().isoformat() for at in starts]
    assert {row.label("day"): row.requests for row in report.rows} == {
        day: days.count(day) for day in days
    }
    assert days.count("2023-03-09") == 5  # 27 hours: 13:00 UTC on the 8th to 16:00 on the 9th


def test_a_prune_that_lands_while_the_rollups_are_rebuilt_loses_no_pruned_day(
    db_url: str,
) -> None:
    """`ometer db rollup` read the prune horizon once, at its start; a `db prune` run from
    cron meanwhile removed the raw spans of days it had yet to redo, and it redid them from
    nothing: the rollups, all the ledger still has of those days, were emptied. Now the
    prune waits for the rebuild (test_prune_beside_rebuild: days it had yet to redo kept
    rollups without the spans it was run for)."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans())
    kept, bills = _tables(ledger), [_monthly(ledger, m) for m in ("2026-10", "2026-11")]
    refused: list[LedgerError] = []

    def prune_after_the_first_day(_day: int) -> None:
        if not refused:
            with pytest.raises(LedgerError, match="being rebuilt") as caught:
                prune(ledger, 30, now=NOW)
            refused.append(caught.value)

    rebuild(ledger.write, ledger.read, progress=prune_after_the_first_day)
    assert refused and ledger.pruned_before() is None
    assert prune(ledger, 30, now=NOW).cutoff > datetime(2026, 11, 1, tzinfo=UTC)
    assert [_monthly(ledger, m) for m in ("2026-10", "2026-11")] == bills
    assert _tables(ledger) == kept


def test_prune_says_when_its_cutoff_is_to_the_minute(cli: Any, tmp_path: Path) -> None:
    """The cutoff is midnight in the ledger's zone: in Berlin 23:00 UTC the day before. It was
    shown as the UTC date alone ("started before 2026-11-10 UTC"), 23 hours from the truth."""
    db = f"sqlite:///{tmp_path / 'l.db'}"
    # and a call now: with none in 30 days the clock's horizon would take every span
    Ledger(db, zone="Europe/Berlin").record([*_spans(20), make_span(started_at=datetime.now(UTC))])
    done = cli("db", "prune", "--keep-days", "30", "--db", db)
    assert done.code == 0, done.stderr
    with Ledger(db).read() as conn:
        horizon = pruned_before(conn)
    assert horizon is not None
    cutoff = datetime.fromtimestamp(horizon / 1e6, UTC)
    assert cutoff.hour in (22, 23) and f"started before {cutoff:%Y-%m-%d %H:%M} UTC;" in done.stdout


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_a_line_nested_deeper_than_python_recurses_is_refused_with_its_number(
    sqlite_url: str, depth: int
) -> None:
    """Valid JSON nested 10,000 deep under a key export lines do not have (which a newer
    export's still import past) was an 'unexpected RecursionError', and the line before it
    was not recorded."""
    ledger = Ledger(sqlite_url)
    good = json.dumps(BASE).encode()
    deep = good[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ValidationError, match="line 2: .*nested"):
        import_lines(ledger, [good, deep])
    assert ledger.count() == 1


def _dead_pid() -> int:
    """The pid of a process that ran and ended."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def _left_an_hour_ago(folder: Path, names: dict[str, str]) -> None:
    """Each of ``names``' files in ``folder``, last written an hour ago but ``recent``'s."""
    hour_ago = time.time() - 3700
    for key, name in names.items():
        (folder / name).write_bytes(b"x")
        if key != "recent":
            os.utime(folder / name, (hour_ago, hour_ago))


def test_a_backup_sweeps_the_temp_copies_killed_backups_left(tmp_path: Path) -> None:
    """A ``kill -9``ed backup left its hidden temp copy (the ledger's size) for ever; the
    next backup to the same file removes those whose process is gone and that nobody
    wrote for an hour, and no other file."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(3))
    dead = _dead_pid()
    names = {
        "killed": f".copy.db.{dead}.0a1b2c3d.partial",
        "killed_journal": f".copy.db.{dead}.0a1b2c3d.partial-journal",
        "recent": f".copy.db.{dead}.ffffffff.partial",  # written a moment ago
        "alive": f".copy.db.{os.getpid()}.00000000.partial",  # a backup still running
        "other_target": f".other.db.{dead}.0a1b2c3d.partial",
        "not_a_copy": ".copy.db.notes.partial",
    }
    _left_an_hour_ago(tmp_path, names)
    backup(ledger, tmp_path / "copy.db")
    assert sorted(p.name for p in tmp_path.glob(".*")) == sorted(
        names[k] for k in ("recent", "alive", "other_target", "not_a_copy")
    )


def test_opening_a_ledger_sweeps_the_spool_files_killed_writes_left(tmp_path: Path) -> None:
    """A spool file is written to a hidden temp name, then renamed: a ``kill -9`` between
    the two left the temp file for ever (its spans are in the journal, recorded from there),
    named for no later write. The next process to open the ledger removes those whose
    process is gone and that nobody wrote for an hour, and no other file."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).dispose()
    dead = _dead_pid()
    names = {
        "killed": f".1765000000000000000-{dead}-01KBZ8A0000000000000000000.jsonl.tmp",
        "recent": f".1765000000000000001-{dead}-01KBZ8A0000000000000000001.jsonl.tmp",
        "alive": f".1765000000000000002-{os.getpid()}-01KBZ8A0000000000000000002.jsonl.tmp",
        "not_a_put": ".notes.jsonl.tmp",
        "no_pid": ".1765000000000000003-x-01KBZ8A0000000000000000003.jsonl.tmp",
    }
    folder = tmp_path / "ledger.db.spool"
    folder.mkdir(exist_ok=True)
    _left_an_hour_ago(folder, names)
    Ledger(url).dispose()
    assert sorted(p.name for p in folder.glob(".*")) == sorted(
        names[k] for k in ("recent", "alive", "not_a_put", "no_pid")
    )


PRUNE_ZONES = ("UTC", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu")


@settings(max_examples=60, deadline=None)
@example(zone="America/St_Johns", now=datetime(2009, 11, 1, 2, 45, tzinfo=UTC), keep_days=1)
@given(
    zone=st.sampled_from(PRUNE_ZONES),
    now=st.datetimes(datetime(2024, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    keep_days=st.integers(1, 400),
)
def test_the_prune_horizon_is_local_midnight_keep_days_calendar_days_ago(
    tmp_path_factory: pytest.TempPathFactory, zone: str, now: datetime, keep_days: int
) -> None:
    """The horizon is the ledger's midnight ``keep_days`` days before today, by the calendar.
    It was ``now - keep_days * 24 h`` floored to a midnight: across a DST change that is a day
    off, so in Berlin at 23:30 on 25 October 2026 ``--keep-days 1`` pruned all of 24 October
    (yesterday, which it keeps), and at 00:30 on 30 March it kept a day too many. Today is
    the last day whose midnight has come: in St John's the clock went back from 00:01 on a
    Sunday to 23:01 until 2011, and in the hour that read Saturday the prune kept a day too
    many (as every other period there already had it)."""
    db = tmp_path_factory.getbasetemp() / f"prune-{zone.replace('/', '-')}.db"
    with opened(f"sqlite:///{db}", zone=zone) as ledger:
        tz = ZoneInfo(zone)

        def midnight(day: date) -> datetime:
            return datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)

        near = now.astimezone(tz).date()
        today = max(
            d for d in (near - timedelta(1), near, near + timedelta(1)) if midnight(d) <= now
        )
        expected = midnight(today - timedelta(days=keep_days))
        assert prune(ledger, keep_days, now=now).cutoff == expected


def test_a_prune_across_the_autumn_change_keeps_yesterday(tmp_path: Path) -> None:
    """Berlin, 23:30 on Sunday 25 October 2026 (the day was 25 hours): ``--keep-days 1`` keeps
    24 October's calls; it removed them."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", zone="Europe/Berlin")
    yesterday = make_span(started_at=datetime(2026, 10, 24, 10, tzinfo=UTC))
    before = make_span(started_at=datetime(2026, 10, 23, 10, tzinfo=UTC))
    ledger.record([yesterday, before])
    result = prune(ledger, 1, now=datetime(2026, 10, 25, 22, 30, tzinfo=UTC))
    assert result.cutoff == datetime(2026, 10, 23, 22, tzinfo=UTC)
    assert result.removed == 1 and ledger.count() == 1
