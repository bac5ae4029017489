"""Export and import, rebuilding rollups, pruning, backup: nothing lost, nothing counted twice."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import make_url, select, text

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import (
    MAX_LINE_BYTES,
    Ledger,
    SpanFilter,
    export_lines,
    import_lines,
    prune,
    rebuild,
    span_from_line,
    span_to_dict,
)
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.ledger._jsonl import GC_YOUNG
from ollama_meter.ledger._rollup import BUSY, BUSY_CELLS, HISTOGRAMS, ROLLUPS
from ollama_meter.ledger._types import to_us
from ollama_meter.meter import SpanRecord, new_span_row_id, reprice
from ollama_meter.periods import parse_period
from ollama_meter.pricing import PriceBook
from ollama_meter.records import (
    MAX_CALL_COST,
    MAX_DURATION_NS,
    DurationSource,
    Status,
    Stored,
    TokenSource,
)
from ollama_meter.reports import chargeback, perf_report, spend_report, to_csv
from tests._templates import LedgerTemplates
from tests.factories import make_span, token_prices

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 20, 12, tzinfo=UTC)


def _spans(count: int = 120, *, seed: int = 0) -> list[SpanRecord]:
    """Calls spread over October to December, several tenants, hosts and models."""
    start = datetime(2026, 10, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        at = start + timedelta(minutes=(n * 977 + seed * 13) % (80 * 24 * 60), microseconds=n)
        out.append(
            make_span(
                # the same id every time it is made: processes that make it share it
                id=new_span_row_id(to_us(at) * 1000)[:10] + f"{seed:04d}{n:012d}",
                started_at=at,
                ended_at=at + timedelta(seconds=n % 7 + 1),
                tenant=("acme", "globex")[n % 2],
                department=("sales", "support", "ops")[n % 3],
                user=(None, "alice", "bob")[n % 3],
                request_model=("llama3.1:8b", "qwen2.5:7b")[n % 2],
                response_model=("llama3.1:8b", None)[n % 2],
                upstream_host=("http://gpu1:11434", "http://gpu2:11434")[n % 2],
                status=("ok", "ok", "ok", "error")[n % 4],
                latency_ns=(n % 50 + 1) * 10_000_000,
                ttft_ns=None if n % 5 == 0 else (n % 9 + 1) * 1_000_000,
                total_duration_ns=(n % 40 + 2) * 10_000_000,
                load_duration_ns=(2_000_000, 150_000_000)[n % 7 == 0],
                eval_duration_ns=(n % 30 + 1) * 5_000_000,
                output_tokens=n % 200,
                cost_tokens=0 if n % 11 == 0 else n * 17,  # an unpriced call costs nothing
                cost_total=0 if n % 11 == 0 else n * 17,
                unpriced=n % 11 == 0,
                tags={"job": f"j{n % 4}"} if n % 6 == 0 else {},
            )
        )
    return out


def _tables(ledger: Ledger) -> dict[str, list[tuple[object, ...]]]:
    with ledger.read() as conn:
        return {
            table.name: sorted(tuple(row) for row in conn.execute(select(table)))
            for table in (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS)
        }


def _monthly(ledger: Ledger, month: str) -> list[str]:
    """What finance sees of a month: the department report and chargeback, as CSV bytes."""
    window = parse_period(month, tz=BERLIN, now=NOW)
    spend = spend_report(ledger, window, ["tenant", "department", "model", "day"], tz=BERLIN)
    bill = chargeback(
        ledger, month, tz=BERLIN, now=NOW, currency="USD", fixed_cost=Decimal(2400), idle="separate"
    )
    return [
        to_csv(spend.columns, spend.rows),
        to_csv(list(bill.rows[0]) if bill.rows else [], bill.rows),
    ]


def test_export_then_import_gives_the_same_ledger(db_url: str, tmp_path: Path) -> None:
    source = Ledger(f"sqlite:///{tmp_path / 'source.db'}")
    spans = _spans()
    spans[3] = replace(spans[3], prompt="hi ünïcode", reply="there", done_reason="stop")
    source.record(spans)
    lines = list(export_lines(source))
    assert [json.loads(line) for line in lines] == [
        span_to_dict(s) for s in sorted(spans, key=lambda s: s.id)
    ]
    target = Ledger(db_url)
    summary = import_lines(target, lines, batch=50)
    assert (summary.read, summary.added, summary.present) == (120, 120, 0)
    back = {s.id: replace(s, attributes={}) for s in target.latest(SpanFilter(), 1000)}
    assert back == {s.id: s for s in spans}
    assert _tables(target) == _tables(source)
    assert _monthly(target, "2026-11") == _monthly(source, "2026-11")
    # again, and with lines given twice: nothing new, nothing counted twice
    again = import_lines(target, [*lines[:10], *lines], batch=7)
    assert (again.read, again.added, again.present) == (130, 0, 130)
    assert _tables(target) == _tables(source)


@pytest.mark.parametrize("text", ["prompt", "reply"])
def test_an_import_keeps_prompts_and_replies_only_where_content_capture_is_on(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """The ledger holds prompt and reply text only with OMETER_CAPTURE_CONTENT=true (README,
    What is stored): an export from a ledger that captured them, imported where capture is
    off (its default), put every prompt and reply into the target, where no call of its own
    would have left them. Such a line is refused, saying how to keep the text or leave it
    out; the spans before it are recorded, and the same import with capture on adds the rest."""
    source = Ledger(f"sqlite:///{tmp_path / 'captured.db'}")
    spans = _spans(5)
    spans[3] = replace(spans[3], **{text: "my salary is 100k"})
    source.record(spans)
    exported = b"".join(export_lines(source)).decode()
    db = f"sqlite:///{tmp_path / 'target.db'}"
    monkeypatch.delenv("OMETER_CAPTURE_CONTENT", raising=False)
    done = cli("db", "import", "-", "--db", db, stdin=exported)
    line = sorted(s.id for s in spans).index(spans[3].id) + 1
    assert done.code == 2, done.stdout
    assert done.stderr == (
        f"error: line {line}: holds a call's prompt or reply text, which this ledger keeps only "
        "with content capture on (OMETER_CAPTURE_CONTENT=true), and it is off here; the "
        f"{line - 1} span(s) before it are recorded. To keep the text, import again with OMETER_CAPTURE_CONTENT=true; "
        "to leave it out, import jq -c 'del(.prompt, .reply)' FILE | ometer db import - (spans "
        "already there are skipped)\n"
    )
    target = Ledger(db)
    assert target.count() == line - 1
    assert all(s.prompt is None and s.reply is None for s in target.latest(SpanFilter(), 10))
    monkeypatch.setenv("OMETER_CAPTURE_CONTENT", "true")
    again = cli("db", "import", "-", "--db", db, stdin=exported)
    assert again.code == 0, again.stderr
    assert f"imported {6 - line} span(s)" in again.stdout
    kept = {s.id: replace(s, attributes={}) for s in target.latest(SpanFilter(), 10)}
    assert kept == {s.id: s for s in spans}


def test_export_by_local_dates(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(db).record(_spans())
    done = cli("db", "export", "--since", "2026-11-01", "--until", "2026-11-30", "--db", db)
    assert done.code == 0, done.stderr
    starts = [json.loads(line)["started_at"] for line in done.stdout.splitlines()]
    assert starts == sorted(starts) and len(starts) == 44
    assert min(starts) >= "2026-10-31T23:00" and max(starts) < "2026-11-30T23:00"
    assert "exported 44 span(s)" in done.stderr


def test_cli_import_from_stdin_and_a_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = Ledger(f"sqlite:///{tmp_path / 's.db'}")
    source.record(_spans(30))
    exported = b"".join(export_lines(source)).decode()
    db = f"sqlite:///{tmp_path / 't.db'}"
    done = cli("db", "import", "-", "--db", db, stdin=exported)
    assert done.code == 0, done.stderr
    assert "imported 30 span(s)" in done.stdout and "(0 already there)" in done.stdout
    (tmp_path / "spans.jsonl").write_text(exported)
    again = cli("db", "import", str(tmp_path / "spans.jsonl"), "--db", db)
    assert "imported 0 span(s)" in again.stdout and "(30 already there)" in again.stdout
    missing = cli("db", "import", str(tmp_path / "nope.jsonl"), "--db", db)
    assert missing.code == 1 and "cannot read" in missing.stderr


def _waits_on_a_pipe(pid: int) -> bool:
    """Whether the process's main thread is blocked reading a pipe (Linux names the kernel
    function it sleeps in: pipe_read, anon_pipe_read, pipe_wait before 5.x)."""
    try:
        where = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return where.endswith("pipe_read") or where == "pipe_wait"


def interrupted_import(
    command: list[str], env: dict[str, str], lines: bytes, signum: int
) -> tuple[int, bytes, bytes]:
    """Run an import of ``lines`` from stdin, send ``signum`` once it waits for the next
    line (the lines before are read), and give its exit code, stdout and stderr."""
    with subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not _waits_on_a_pipe(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the import never waited for its next line"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_an_import_stopped_by_ctrl_c_says_what_it_recorded(tmp_path: Path) -> None:
    """Ctrl-C during `db import` (typer turns it into exit 130, silently): the command says
    how many spans are recorded and that running it again is safe."""
    source = Ledger(f"sqlite:///{tmp_path / 's.db'}")
    source.record(_spans(30))
    path = tmp_path / "t.db"
    env = {**os.environ, "OMETER_DB_URL": f"sqlite:///{path}"}
    # As a foreground job has it: Ctrl-C raises (a shell's background job, and so a test run
    # started as one, hands SIGINT on ignored, and the import read on to its end, exit 0).
    foreground = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from ollama_meter.cli import main; sys.argv[0] = 'ometer'; main()"
    )
    command = [sys.executable, "-c", foreground, "db", "import", "-"]
    # The command has read the ten lines and waits for the next. (A wait for the ledger
    # file and half a second more lost on a loaded machine: the Ctrl-C came while the
    # ledger was still being opened, before the import began, and said only "interrupted".)
    returncode, out, err = interrupted_import(
        command, env, b"".join(list(export_lines(source))[:10]), signal.SIGINT
    )
    assert returncode == 130, err
    assert err.decode().splitlines()[-2:] == [
        "the first 0 span(s) are recorded, the batch in progress is not; run the same import "
        "again for the rest (spans already there are skipped)",
        "interrupted",
    ]
    assert Ledger(f"sqlite:///{path}").count() == 0 and out == b""


def test_an_import_has_the_collector_look_less_often_and_gives_its_setting_back(
    sqlite_url: str,
) -> None:
    """An import makes hundreds of thousands of objects a batch: the collector's looks at
    them every 700 took a tenth of its time. During it the young threshold is GC_YOUNG; after
    it (done, or stopped by a bad line) it is what it was."""
    before = gc.get_threshold()
    lines = [json.dumps(span_to_dict(s)).encode() for s in _spans(6)]
    seen: list[int] = []
    summary = import_lines(
        Ledger(sqlite_url), lines, batch=2, progress=lambda _: seen.append(gc.get_threshold()[0])
    )
    assert summary.added == 6
    assert seen == [max(before[0], GC_YOUNG)] * 3
    assert gc.get_threshold() == before
    with pytest.raises(ValidationError, match="line 2"):
        import_lines(Ledger(sqlite_url), [lines[0], b"{nope"])
    assert gc.get_threshold() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(started_at="yesterday"), "started_at 'yesterday' is not an ISO 8601"),
        (lambda d: d.update(started_at="2026-11-01T10:00:00"), "has no time zone"),
        # kept to the microsecond, this would come back as another time
        (
            lambda d: d.update(ended_at="2026-11-10T12:00:01.1234567Z"),
            "ended_at '2026-11-10T12:00:01.1234567Z' is finer than a microsecond",
        ),
        (lambda d: d.update(cost="1.5"), "cost '1.5' is not an amount with six decimals"),
        (lambda d: d.update(cost=1.5), "Expected `str`, got `float`"),
        (lambda d: d.update(cost="²2.000000"), "cost '²2.000000' is not an amount with six"),
        (lambda d: d.update(cost="١.٠٠٠٠٠٠"), "cost '١.٠٠٠٠٠٠' is not an amount with six"),
        (lambda d: d.update(department="sa les"), "department 'sa les' has characters"),
        (lambda d: d.update(id="x"), "id 'x' is not a span id"),
        (lambda d: d.update(currency="US"), "currency 'US' is not a 3-letter ISO 4217 code"),
        (lambda d: d.update(input_tokens=-1), "input_tokens -1 is not a count from 0 to"),
        (lambda d: d.update(upstream_host="h\x1b[31m"), "upstream_host 'h\\x1b[31m'"),
        (lambda d: d.pop("tenant"), "missing required field `tenant`"),
        # a status no ometer writes: counted as no error by every report, and no `log
        # --status` found it (it took "ERROR" for an error type no span has)
        (lambda d: d.update(status="ERROR"), "status 'ERROR' is not one of ok, error,"),
        # no `~` beside tokens no server counted; timings the meter's clock took, as exact
        (
            lambda d: d.update(token_source="Estimated"),
            "token_source 'Estimated' is not one of reported, estimated (a newer ometer's?)",
        ),
        (
            lambda d: d.update(duration_source="measured "),
            "duration_source 'measured ' is not one of reported, measured (a newer ometer's?)",
        ),
    ],
)
def test_a_bad_line_is_refused_with_its_number(
    sqlite_url: str, change: object, message: str
) -> None:
    ledger = Ledger(sqlite_url)
    good = [json.dumps(span_to_dict(s)).encode() for s in _spans(3)]
    bad = span_to_dict(make_span())
    change(bad)  # type: ignore[operator]
    with pytest.raises(ValidationError) as caught:
        import_lines(ledger, [*good[:2], b"", json.dumps(bad).encode(), good[2]])
    assert str(caught.value).startswith(f"line 4: {message}") or message in str(caught.value)
    assert "the 2 span(s) before it are recorded" in str(caught.value)
    assert ledger.count() == 2
    with pytest.raises(ValueError, match="not JSON"):
        span_from_line(b"{nope")


def test_a_line_longer_than_any_export_is_refused_without_reading_it_whole(
    cli, sqlite_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A file that is no export (a disk image, a 2 GB line): cut at the limit, refused by number."""
    good = [json.dumps(span_to_dict(s)).encode() + b"\n" for s in _spans(3)]
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as file:
        file.writelines(good[:2])
        file.write(b"x" * (MAX_LINE_BYTES + 10))  # and no newline
        file.write(b"\n" + good[2])
    done = cli("db", "import", str(path), "--db", sqlite_url)
    assert done.code == 2
    assert done.stderr.startswith("error: line 3: longer than 64 MiB, which no export line is")
    assert done.stderr.count("\n") == 1  # one line: no bar (nor what a bar leaves) off a terminal
    assert Ledger(sqlite_url).count() == 2


_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,15}", fullmatch=True)
_printable = st.characters(
    min_codepoint=32,
    max_codepoint=0x2FF,
    exclude_categories=("Cc", "Cf", "Zs"),
    include_characters=" ",
)
_text = st.text(_printable, max_size=12)
_nanos = st.none() | st.integers(0, MAX_DURATION_NS)
_money = st.integers(0, MAX_CALL_COST // 4)
_content = st.none() | st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20
)
_DURATION_FIELDS = [f"{name}_ns" for name in ("total_duration", "load_duration",
    "prompt_eval_duration", "eval_duration", "latency", "ttft", "queue")]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {
            "started_at": st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2100, 1, 1),
                timezones=st.just(UTC),
            ),
            "tenant": _name,
            "department": _name,
            "user": st.none() | _name,
            "tags": st.dictionaries(_text, _text, max_size=2),
            "source": _text,
            "operation": _text,
            "upstream_host": _text,
            "request_model": _text,
            "response_model": st.none() | _text,
            "stream": st.booleans(),
            "status": st.sampled_from(list(Status)),
            "error_type": st.none() | _text,
            "error_message": _content,
            "http_status": st.none() | st.integers(100, 599),
            "done_reason": st.none() | _text,
            "input_tokens": st.integers(0, 2**31 - 1),
            "output_tokens": st.integers(0, 2**31 - 1),
            "token_source": st.sampled_from(list(TokenSource)),
            "duration_source": st.none() | st.sampled_from(list(DurationSource)),
            **dict.fromkeys(_DURATION_FIELDS, _nanos),
            **{f"cost_{part}": _money for part in ("tokens", "compute", "energy", "fee")},
            "currency": st.from_regex(r"[A-Z]{3}", fullmatch=True),
            "price_rule_id": st.none() | st.integers(1, 2**31 - 1),
            "unpriced": st.booleans(),
            "prompt": _content,
            "reply": _content,
        }
    ),
    ended=st.none() | st.integers(0, 10**12),
)
def test_every_field_comes_back_from_its_line(fields: dict[str, object], ended: int | None) -> None:
    """Import reads each field into its own place, whatever values the lines repeat or not."""
    started = fields["started_at"]
    assert isinstance(started, datetime)
    fields["ended_at"] = None if ended is None else started + timedelta(microseconds=ended)
    if fields["response_model"] == fields["request_model"]:
        fields["response_model"] = None  # what an export from before response_model reads as
    parts = ("tokens", "compute", "energy", "fee")
    if fields["unpriced"]:  # no price rule priced it: it costs nothing (an import refuses more)
        fields.update({f"cost_{part}": 0 for part in parts}, price_rule_id=None)
    fields["cost_total"] = sum(int(fields[f"cost_{part}"]) for part in parts)  # type: ignore[call-overload]
    span = make_span(**fields)
    assert span_from_line(json.dumps(span_to_dict(span)).encode()) == span
    assert span_from_line(json.dumps(span_to_dict(span)).encode()) == span  # read from the caches


def test_rebuilding_gives_what_was_kept_as_spans_arrived(db_url: str) -> None:
    ledger = Ledger(db_url)
    spans = _spans()
    for start in range(0, len(spans), 17):  # several batches, late ones included
        ledger.record(list(reversed(spans[start : start + 17])))
    kept = _tables(ledger)
    assert all(kept.values())  # busy cells too: the spans kept hosts busy
    with ledger.write() as conn:
        for table in (ROLLUPS, HISTOGRAMS, BUSY, BUSY_CELLS):
            conn.execute(table.delete())
    assert rebuild(ledger.write, ledger.read) == len(spans)
    assert _tables(ledger) == kept


def test_rollup_command(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(db).record(_spans(40))
    done = cli("db", "rollup", "--db", db)
    assert done.code == 0 and "rolled up 40 span(s)" in done.stdout
    assert "days begin at UTC midnight" in done.stdout


def test_a_ledger_moved_to_another_zone_answers_the_same_from_one_cell_a_day(
    db_url: str, cli
) -> None:  # type: ignore[no-untyped-def]
    """``db rollup --zone`` cuts days and months at that zone's midnight: every report is
    what it was (and what raw spans say), now from whole cells; a bad zone and a pruned
    ledger are refused with what to do, and change nothing."""
    ledger = Ledger(db_url)
    ledger.record(_spans(300))
    assert ledger.zone() == "UTC"
    before = {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")}
    bad = cli("db", "rollup", "--zone", "Mars/Olympus", "--db", db_url)
    assert bad.code != 0 and "'Mars/Olympus' is not a known time zone" in bad.stderr
    assert "Traceback" not in bad.stderr and ledger.zone() == "UTC"
    moved = cli("db", "rollup", "--zone", "Europe/Berlin", "--db", db_url)
    assert moved.code == 0, moved.stderr
    assert "days begin at Europe/Berlin midnight" in moved.stdout
    assert ledger.zone() == "Europe/Berlin"
    assert {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")} == before
    with ledger.read() as conn:  # a Berlin day is one cell: it starts at 23:00 UTC in November
        starts = conn.execute(select(ROLLUPS.c.start).where(ROLLUPS.c.grain == 1)).scalars()
        assert {datetime.fromtimestamp(s, UTC).hour for s in starts} <= {22, 23}
    prune(ledger, 25, now=NOW)
    refused = cli("db", "rollup", "--zone", "UTC", "--db", db_url)
    assert refused.code != 0 and "were pruned" in refused.stderr
    assert ledger.zone() == "Europe/Berlin"
    assert {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")} == before


def test_a_new_ledger_takes_the_configured_zone_and_keeps_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(db, zone="Asia/Kolkata")
    assert ledger.zone() == "Asia/Kolkata"
    ledger.record(_spans(5))
    assert not ledger.adopt_zone("Europe/Berlin")  # rollups exist: only a rebuild moves it
    assert Ledger(db, zone="UTC").zone() == "Asia/Kolkata"


def test_pruned_months_report_and_bill_the_same_bytes(db_url: str, cli) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(db_url)
    ledger.record(_spans(300))
    before = {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")}
    assert all(len(csv.splitlines()) > 5 for csv in before["2026-10"])
    result = prune(ledger, 25, now=NOW)  # keeps 25 November .. on
    assert result.cutoff == datetime(2026, 11, 25, tzinfo=UTC)
    assert result.removed > 100
    assert ledger.count(SpanFilter(until=result.cutoff)) == 0
    assert ledger.count() == 300 - result.removed
    after = {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")}
    assert after == before
    # the raw edge of a pruned month is gone: perf says its percentiles leave it out
    window = parse_period("2026-11", tz=BERLIN, now=NOW)
    assert perf_report(ledger, window, ["model"]).warnings
    assert perf_report(ledger, window, ["user"]).warnings
    assert not perf_report(ledger, parse_period("2026-12", tz=BERLIN, now=NOW), ["model"]).warnings
    shown = cli("perf", "--by", "user", "--period", "2026-11", "--db", db_url)
    assert shown.code == 0 and "warning: percentiles leave out calls before" in shown.stderr
    # rebuilding keeps the pruned days' rollups and recomputes the rest
    rebuild(ledger.write, ledger.read)
    assert {month: _monthly(ledger, month) for month in ("2026-10", "2026-11")} == before
    with raw_spans():  # and raw spans alone could no longer say it
        assert _monthly(ledger, "2026-10") != before["2026-10"]


def test_prune_gives_the_space_back_a_few_pages_a_transaction_and_all_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gigabytes freed at once held the write lock for as long (the gateways' spans went to
    the spool meanwhile): pages go back a step at a time, and every one of them does."""
    from ollama_meter.ledger import _upkeep

    monkeypatch.setattr(_upkeep, "VACUUM_STEP_PAGES", 3)
    path = tmp_path / "steps.db"
    Ledger(f"sqlite:///{path}").record(_spans(2000))
    result = prune(Ledger(f"sqlite:///{path}"), 30, now=NOW)
    # Far more than 3 pages were freed: all went back, 3 at a time.
    assert result.removed > 1000 and result.reclaimed > 3 * 4096 and result.free_bytes == 0


def test_prune_gives_space_back_and_converts_an_old_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    new = tmp_path / "new.db"
    Ledger(f"sqlite:///{new}").record(_spans(2000))
    result = prune(Ledger(f"sqlite:///{new}"), 30, now=NOW)
    assert result.removed > 1000 and result.reclaimed > 0 and result.free_bytes == 0
    old = tmp_path / "old.db"
    plain = sqlite3.connect(old)
    plain.execute("PRAGMA auto_vacuum = NONE")
    # A file made before ledgers chose incremental vacuum: a table written once fixes the
    # file's vacuum mode; dropped, so the file is an empty database, not another app's.
    plain.execute("CREATE TABLE t (x)")
    plain.execute("DROP TABLE t")
    plain.close()
    db = f"sqlite:///{old}"
    Ledger(db).record(_spans(2000))
    done = cli("db", "prune", "--keep-days", "30", "--db", db)
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("removed ") and "is free inside the file" in done.stderr
    Ledger(db).record(_spans(2000, seed=1))
    vacuumed = cli("db", "prune", "--keep-days", "30", "--vacuum", "--db", db)
    assert "is free inside" not in vacuumed.stderr
    assert sqlite3.connect(old).execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert cli("db", "prune", "--keep-days", "0", "--db", db).code == 2


def test_backup_while_another_thread_writes(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'live.db'}"
    ledger = Ledger(db)
    ledger.record(_spans(500))
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            ledger.record([make_span(started_at=NOW - timedelta(seconds=n))])
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        done = cli("db", "backup", str(tmp_path / "copy.db"), "--db", db)
    finally:
        stop.set()
        writer.join()
    assert done.code == 0, done.stderr
    assert "backed up" in done.stdout
    copy = Ledger(f"sqlite:///{tmp_path / 'copy.db'}")
    with copy.read() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    assert copy.count() >= 500
    with raw_spans():
        raw = spend_report(copy, parse_period("2026-11", tz=BERLIN, now=NOW), ["model"], tz=BERLIN)
    assert (
        raw.rows
        == spend_report(
            copy, parse_period("2026-11", tz=BERLIN, now=NOW), ["model"], tz=BERLIN
        ).rows
    )
    assert cli("db", "backup", str(tmp_path / "live.db"), "--db", db).code == 2


def test_backup_of_postgresql_prints_pg_dump(cli, db_url: str) -> None:  # type: ignore[no-untyped-def]
    if not db_url.startswith("postgresql"):
        pytest.skip("pg_dump is PostgreSQL's")
    Ledger(db_url).record(_spans(3))
    url = make_url(db_url).set(password="s3cret")  # the test server trusts any password
    plain = make_url(db_url).set(drivername="postgresql").render_as_string(False)
    done = cli("db", "backup", "/srv/x.dump", "--db", url.render_as_string(False))
    assert done.code == 2
    assert done.stdout == f"pg_dump --format=custom --file /srv/x.dump {plain}\n"
    assert "PGPASSWORD" in done.stderr and "s3cret" not in done.stdout + done.stderr
    # it is meant to be pasted: a file name or a URL with a shell's characters stays one word
    hostile = "/srv/my x.dump; touch pwned '$(id)'"
    url = url.update_query_dict({"sslmode": "disable", "application_name": "a'b"})
    pasted = shlex.split(cli("db", "backup", hostile, "--db", url.render_as_string(False)).stdout)
    assert pasted[:4] == ["pg_dump", "--format=custom", "--file", hostile] and len(pasted) == 5
    assert pasted[4].startswith(f"{plain}?")


def test_reprice_moves_the_rollups_with_the_spans(db_url: str) -> None:
    ledger = Ledger(db_url)
    ledger.record(_spans())
    # llama in EUR now, qwen unpriced: costs, currencies and unpriced flags all move
    rule = replace(token_prices("llama3.1:*"), currency="EUR", id=1)
    book = PriceBook([rule], tz=BERLIN, currency="EUR")
    summary = reprice(ledger, book, since=datetime(2026, 10, 1, tzinfo=UTC))
    assert summary.changed > 100
    window = parse_period("2026-11", tz=BERLIN, now=NOW)
    report = spend_report(ledger, window, ["department", "model", "day"], tz=BERLIN)
    with raw_spans():
        raw = spend_report(ledger, window, ["department", "model", "day"], tz=BERLIN)
    assert report.rows == raw.rows
    assert report.unpriced_requests == raw.unpriced_requests > 0
    assert {row["currency"] for row in report.rows} == {"EUR"}
    kept = _tables(ledger)  # no rows of zeros left where the USD calls were
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def _write_overlapping(url: str, worker: int) -> None:
    ledger = Ledger(url)
    spans = _spans(200)
    mine = spans[worker * 40 : worker * 40 + 80]  # each overlaps its neighbour by 40
    for start in range(0, len(mine), 5):
        ledger.record(mine[start : start + 5])
    ledger.dispose()


@pytest.mark.slow
def test_four_processes_writing_at_once_count_each_span_once(db_url: str) -> None:
    Ledger(db_url).dispose()  # migrated before the race: this test is about the rollups
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_overlapping, args=(db_url, n)) for n in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    ledger = Ledger(db_url)
    assert ledger.count() == 200
    for month in ("2026-10", "2026-11", "2026-12"):
        window = parse_period(month, tz=BERLIN, now=NOW)
        detail, overview = ["tenant", "department", "user", "model"], ["department", "model"]
        reports = [spend_report(ledger, window, by, tz=BERLIN).rows for by in (detail, overview)]
        bill = chargeback(ledger, month, tz=BERLIN, now=NOW, currency="USD", fixed_cost=Decimal(9))
        with raw_spans():
            assert reports == [
                spend_report(ledger, window, by, tz=BERLIN).rows for by in (detail, overview)
            ]
            raw_bill = chargeback(
                ledger, month, tz=BERLIN, now=NOW, currency="USD", fixed_cost=Decimal(9)
            )
        assert (bill.rows, bill.busy_ns, bill.capacity_ns) == (
            raw_bill.rows,
            raw_bill.busy_ns,
            raw_bill.capacity_ns,
        )


def _write_new_keys(url: str, worker: int) -> None:
    ledger = Ledger(url)
    at = datetime(2026, 11, 10, 12, tzinfo=UTC)
    for batch in range(20):  # every batch adds rows no cell had: new users
        spans = [
            make_span(started_at=at + timedelta(hours=7 * n), user=f"u{worker}-{batch}-{n}")
            for n in range(3)
        ]
        assert set(ledger.record(spans).values()) == {Stored.COMMITTED}
    ledger.dispose()


def _rebuild_until(url: str, done: Any) -> None:
    ledger = Ledger(url)
    rebuilt = 0
    while not done.is_set() or not rebuilt:
        rebuild(ledger.write, ledger.read)
        rebuilt += 1
    ledger.dispose()


@pytest.mark.slow
def test_db_rollup_while_three_processes_write_ends_exact(db_url: str) -> None:
    """On PostgreSQL every rebuild failed ("duplicate key value violates unique constraint
    pk_rollups": a writer added a month row between the rebuild's delete and its insert)."""
    Ledger(db_url).record([make_span()])
    context = multiprocessing.get_context("spawn")
    done = context.Event()
    rebuilder = context.Process(target=_rebuild_until, args=(db_url, done))
    writers = [context.Process(target=_write_new_keys, args=(db_url, n)) for n in range(3)]
    for process in [rebuilder, *writers]:
        process.start()
    for process in writers:
        process.join(120)
    done.set()
    rebuilder.join(120)
    assert [p.exitcode for p in [rebuilder, *writers]] == [0, 0, 0, 0]
    ledger = Ledger(db_url)
    assert ledger.count() == 1 + 3 * 20 * 3
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


def test_a_file_saved_with_a_byte_order_mark_imports_or_says_what_it_is(sqlite_url: str) -> None:
    """Editors and PowerShell put a BOM first: UTF-8's was 'line 1: not JSON: invalid
    character (byte 0)', and a UTF-16 file the same, with no word of what was wrong."""
    ledger = Ledger(sqlite_url)
    lines = [json.dumps(span_to_dict(s)).encode() + b"\n" for s in _spans(3)]
    assert import_lines(ledger, [b"\xef\xbb\xbf" + lines[0], *lines[1:]]).added == 3
    utf16 = b"".join(lines).decode().encode("utf-16")
    with pytest.raises(ValidationError, match="line 1: .*UTF-16.*UTF-8"):
        import_lines(ledger, utf16.splitlines(keepends=True))


def test_repricing_from_before_the_prune_horizon_says_what_it_cannot_change(
    cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Pruned days keep only their rollups, at the prices they were recorded with: `reprice
    --since` a date before the horizon changed the later days alone and said only 'examined
    48 span(s) since 2026-10-01', so the month's report mixed old prices and new unseen."""
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(db, zone="Europe/Berlin")
    ledger.record(_spans())
    cutoff = prune(ledger, 30, now=NOW).cutoff
    assert cli("pricing", "set", "*", "--input-per-1m", "7", "--db", db).code == 0
    done = cli("reprice", "--since", "2026-10-01", "--db", db)
    assert done.code == 0, done.stderr
    assert f"spans that started before {cutoff:%Y-%m-%d %H:%M} UTC were pruned" in done.stderr
    after = cli("reprice", "--since", f"{cutoff + timedelta(days=2):%Y-%m-%d}", "--db", db)
    assert after.code == 0 and "pruned" not in after.stderr


_REPRICE_RULES = st.lists(
    st.builds(
        lambda pattern, currency, price, start, until: replace(
            token_prices(pattern),
            currency=currency,
            input_per_1m=Decimal(price),
            effective_from=start,
            effective_until=until,
        ),
        st.sampled_from(["llama3.1:*", "qwen2.5:7b", "*", "llama3.1:8b-q4"]),
        st.sampled_from(["USD", "EUR"]),
        st.sampled_from(["0", "0.5", "3", "1000"]),
        st.sampled_from([None, datetime(2026, 11, 10).date()]),
        st.sampled_from([None, datetime(2026, 11, 20).date()]),
    ),
    max_size=4,
)


def _ninety_spans(url: str) -> Ledger:
    ledger = Ledger(url, zone="Europe/Berlin")
    ledger.record(_spans(90))
    return ledger


@settings(max_examples=25, deadline=None)
@given(
    books=st.lists(_REPRICE_RULES, min_size=1, max_size=2),
    since=st.sampled_from([datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)]),
    keep_days=st.sampled_from([None, 40]),
)
def test_repricing_leaves_the_rollups_a_rebuild_from_raw_spans_gives(
    tmp_path_factory: pytest.TempPathFactory,
    templates: LedgerTemplates,
    books: list[list[Any]],
    since: datetime,
    keep_days: int | None,
) -> None:
    """Whatever the rules (currencies changing, calls becoming unpriced and priced again),
    run once or twice, on a pruned ledger or not: every rollup is what a rebuild from the
    raw spans gives, and the month's bill is byte for byte the one read from raw spans.

    Each example starts from a copy of one recorded ledger (tests/_templates.py): migrating
    and recording the same 90 spans again was a seventh of the test's CPU."""
    url = f"sqlite:///{tmp_path_factory.mktemp('rp') / 'l.db'}"
    templates.copy(url, "test_transfer's 90 spans, Berlin", _ninety_spans)
    ledger = Ledger(url, zone="Europe/Berlin")
    if keep_days is not None:
        prune(ledger, keep_days, now=NOW)
    for rules in books:
        book = PriceBook(
            [replace(r, id=n) for n, r in enumerate(rules, 1)], tz=BERLIN, currency="USD"
        )
        reprice(ledger, book, since=since, batch=7)
    kept = _tables(ledger)
    bills = [_monthly(ledger, month) for month in ("2026-11", "2026-12")]
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
    if keep_days is None:
        with raw_spans():
            assert [_monthly(ledger, month) for month in ("2026-11", "2026-12")] == bills
    ledger.dispose()


def test_a_reprice_while_a_gateway_writes_leaves_the_rollups_a_rebuild_gives(
    db_url: str,
) -> None:
    """Two reprices and a writer at once (spans of the window arriving while its pages are
    re-priced): every rollup is what a rebuild from the raw spans gives."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    spans = _spans(240)
    ledger.record(spans[::2])
    books = [
        PriceBook([replace(token_prices("*"), currency=c, id=n)], tz=BERLIN, currency="USD")
        for n, c in ((1, "EUR"), (2, "USD"))
    ]
    failures: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as exc:
            failures.append(exc)

    def write() -> None:
        for at in range(1, len(spans), 10):
            ledger.record(spans[at : at + 10 : 2])

    since = datetime(2026, 10, 1, tzinfo=UTC)
    threads = [threading.Thread(target=run, args=(write,))] + [
        threading.Thread(target=run, args=(lambda b=b: reprice(ledger, b, since=since, batch=5),))
        for b in books
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and ledger.count() == len(spans)
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept
