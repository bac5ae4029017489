"""The spool's own folder, hostile or damaged: what is not a spool file of ours is set aside
unread, what cannot be set aside stays with an ERROR saying where, and every span in the
spool files around it is recorded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.records import Stored
from tests._tmpfs import small_tmpfs
from tests.factories import make_span

_KINDS = ("good", "fifo", "link to /dev/zero", "link to a spool file", "folder", "dangling link")


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # one ledger file for every example, a spool folder of its own each
@given(kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=6))
def test_what_is_not_a_spool_file_is_set_aside_unread_and_the_spans_around_it_recorded(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, kinds: list[str]
) -> None:
    """A FIFO named like a spool file blocked every ``ometer`` process at start for ever (the
    drain opened it to read), and a link to ``/dev/zero`` read until memory ran out."""
    caplog.clear()
    spool = tmp_path / uuid.uuid4().hex
    ledger = Ledger(sqlite_url, spool_dir=spool)
    before = ledger.count()
    spool.mkdir()
    outside = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    outside.write_text("")
    good, hostile = [], []
    for n, kind in enumerate(kinds):
        path = spool / f"{n}-{kind.replace(' ', '-').replace('/', '')}.jsonl"
        if kind == "good":
            spans = [make_span(), make_span()]
            ledger.spool.put(spans)
            good.extend(spans)
            continue
        hostile.append(path.name)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "link to /dev/zero":
            path.symlink_to("/dev/zero")
        elif kind == "link to a spool file":
            path.symlink_to(outside)
        elif kind == "folder":
            path.mkdir()
        else:
            path.symlink_to(tmp_path / "nowhere")
    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        assert ledger.recover() == len(good)
    assert ledger.spool.pending() == []
    assert ledger.count() == before + len(good)
    stored = {s.id for s in ledger.latest(SpanFilter(), ledger.count())}
    assert {s.id for s in good} <= stored
    aside = sorted(p.name for p in ledger.spool.quarantine_dir.iterdir()) if hostile else []
    assert aside == sorted(f"{name}.unreadable" for name in hostile)
    assert outside.exists() and Path("/dev/zero").exists()  # a link's target is left alone
    errors = _errors(caplog)
    assert len(errors) == len(hostile)
    for name in hostile:
        (said,) = [e for e in errors if f"/{name} " in e]
        assert str(ledger.spool.quarantine_dir / f"{name}.unreadable") in said
    ledger.dispose()


def test_a_quarantine_that_cannot_be_made_keeps_the_bad_in_the_spool_and_records_the_rest(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file where ``quarantine/`` should be made every ``ometer`` command fail ("unexpected
    FileExistsError ... This is a bug") and left the spool's good spans unrecorded."""
    ledger = Ledger(sqlite_url)
    spool = ledger.spool
    first = spool.put([make_span()])
    spool.directory.joinpath("1-garbage.jsonl").write_bytes(b"{not json\n")
    damaged_spans = [make_span(), make_span()]
    damaged = spool.put(damaged_spans)
    damaged.write_bytes(damaged.read_bytes() + b'{"id": "cut sh')
    last = spool.put([make_span()])
    spool.quarantine_dir.write_text("not a folder\n")
    ledger.dispose()

    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        reopened = Ledger(sqlite_url)  # opening drains the spool, and does not fail
    assert reopened.count() == 4  # every span that can be read, recorded
    # What cannot be kept aside stays where it is, whole, for the next drain or a human.
    assert reopened.spool.pending() == sorted([spool.directory / "1-garbage.jsonl", damaged])
    assert not first.exists() and not last.exists()
    assert damaged.read_bytes().endswith(b'{"id": "cut sh')
    errors = _errors(caplog)
    assert len(errors) == 2
    garbage_said, damaged_said = sorted(errors, key=lambda e: "garbage" not in e)
    assert "1-garbage.jsonl cannot be read" in garbage_said
    assert f"nor moved to {spool.quarantine_dir}" in garbage_said
    assert "it stays in the spool: move it away by hand" in garbage_said
    assert f"{damaged} : 1 line(s) cannot be read".replace(" :", ":") in damaged_said
    assert f"cannot be kept in {spool.quarantine_dir}" in damaged_said
    assert "its other 2 span(s) are recorded and the file stays in the spool" in damaged_said
    reopened.dispose()


def test_a_spooled_span_the_database_refuses_stays_in_the_spool_when_the_quarantine_fails(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain moved such a span from its spool file into memory and removed the file: the
    ``ometer`` command that opened the ledger ended, and the span was gone."""
    ledger = Ledger(sqlite_url)
    with ledger.write() as conn:  # a DBA's rule the spans cannot know of
        conn.exec_driver_sql(
            "CREATE TRIGGER no_banned BEFORE INSERT ON spans WHEN NEW.request_model = 'banned' "
            "BEGIN SELECT RAISE(ABORT, 'banned model'); END"
        )
    refused, fine = make_span(request_model="banned"), make_span()
    path = ledger.spool.put([refused, fine])
    written = path.read_bytes()
    ledger.spool.quarantine_dir.write_text("not a folder\n")
    ledger.dispose()
    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        reopened = Ledger(sqlite_url)
    assert reopened.held == 0  # nothing only in memory
    assert [s.id for s in reopened.latest(SpanFilter(), 5)] == [fine.id]
    assert reopened.spool.pending() == [path] and path.read_bytes() == written
    (said,) = _errors(caplog)
    assert refused.id in said and "banned model" in said
    assert f"cannot be kept in {reopened.spool.quarantine_dir}" in said
    assert f"it stays in the spool file {path}" in said
    reopened.dispose()
    # Once the quarantine can be made, the next drain sets the span aside and the file goes.
    Path(reopened.spool.quarantine_dir).unlink()
    again = Ledger(sqlite_url)
    assert again.spool.pending() == []
    (kept,) = again.spool.quarantined()
    assert refused.id in kept.read_text()
    again.dispose()


@pytest.mark.parametrize("column", ["gpu_id", "cost_carbon"])
def test_a_spool_file_a_newer_ometer_wrote_stays_in_the_spool_for_it(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str
) -> None:
    """A newer ometer on this machine spooled spans with a column this one does not know (the
    ledger was away); this one then drained the spool and moved the file to the quarantine
    as unreadable, where no ometer ever drains it again: the calls were out of the ledger
    for good unless someone found them. It stays in the spool, said once, for the newer one."""
    import json

    from ollama_meter.ledger._spool import encode_span

    spool = tmp_path / "spool"
    ledger = Ledger(sqlite_url, spool_dir=spool)
    newer = [make_span(), make_span()]
    spool.mkdir()
    path = spool / f"1-1-{newer[0].id}.jsonl"
    text = "".join(json.dumps({**json.loads(encode_span(s)), column: 1}) + "\n" for s in newer)
    path.write_text(text)
    ours = [make_span()]
    ledger.spool.put(ours)
    with caplog.at_level(logging.WARNING, logger="ollama_meter.ledger"):
        assert ledger.recover() == 1
        assert ledger.recover() == 0  # said once
    assert {s.id for s in ledger.latest(SpanFilter(), 10)} == {ours[0].id}
    assert [p.name for p in spool.iterdir()] == [path.name] and path.read_text() == text
    said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(said) == 1 and "newer ometer" in said[0] and repr(column) in said[0], said
    # The newer ometer recorded it; a file of the same name written since is this one's to
    # read (it was skipped for as long as the process ran).
    path.unlink()
    replaced = [make_span()]
    path.write_text(encode_span(replaced[0]) + "\n")
    assert ledger.recover() == 1 and not path.exists()
    assert replaced[0].id in {s.id for s in ledger.latest(SpanFilter(), 10)}


@pytest.fixture
def read_only_later(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of its own (CI runs as root), to be remounted read-only mid-test."""
    with small_tmpfs(tmp_path, "8m") as mount:
        yield mount


def test_a_spool_file_recorded_but_not_removable_is_not_recorded_again_by_every_write(
    sqlite_url: str, read_only_later: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spool's disk went read-only after an outage: every later write of the gateway
    drained the whole spool again (up to its 0.2 s slice, a write held for it) and logged an
    ERROR per file, for as long as the process ran. Said once; the next process removes them."""
    spool = read_only_later / "spool"
    ledger = Ledger(sqlite_url, spool_dir=spool)
    waited = [make_span() for _ in range(3)]
    for span in waited:
        ledger.keep([span], LedgerError("the database is away"))
    files = ledger.spool.pending()
    assert len(files) == 3
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_later)], check=True)
    caplog.clear()
    later = [make_span() for _ in range(4)]
    with caplog.at_level(logging.ERROR, logger="ollama_meter.ledger"):
        for span in later:
            assert ledger.record([span]) == {span.id: Stored.COMMITTED}
    assert ledger.count() == len(waited) + len(later)
    errors = _errors(caplog)
    assert sorted(e.split(" but ")[0] for e in errors) == [
        f"recorded the spans of spool file {path}" for path in files
    ]
    assert ledger.spool.pending() == []
    ledger.dispose()
    subprocess.run(["mount", "-o", "remount,rw", str(read_only_later)], check=True)
    again = Ledger(sqlite_url, spool_dir=spool)  # a file of its own again: recorded, removed
    assert again.spool.pending() == [] and list(spool.glob("*.jsonl")) == []
    assert again.count() == len(waited) + len(later)
    again.dispose()


_DRAIN = """
import sys
from pathlib import Path
from ollama_meter.ledger import Ledger
Ledger(sys.argv[1], spool_dir=Path(sys.argv[2])).recover()  # opening drains, then again
"""


def test_a_spool_file_another_user_owns_is_left_in_the_spool_for_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two users share a ledger (a team folder); one, with umask 077, spooled spans in a file
    only it can read. The other's drain moved that file to ``quarantine/`` as unreadable,
    where no drain ever looks again: its owner's calls were out of the ledger for good
    unless a human found them. It stays in the spool, said once, for its owner to record.
    (Root without CAP_DAC_OVERRIDE is held to the file modes as any other user is.)"""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    spool = tmp_path / "spool"
    ledger = Ledger(sqlite_url, spool_dir=spool)
    theirs_spans, ours = [make_span(), make_span()], make_span()
    theirs = ledger.spool.put(theirs_spans)
    os.chown(theirs, 65534, 65534)  # nobody
    theirs.chmod(0o600)
    ledger.spool.put([ours])
    limited = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    done = subprocess.run(
        [*limited, sys.executable, "-c", _DRAIN, sqlite_url, str(spool)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ledger.spool.pending() == [theirs] and ledger.spool.quarantined() == []
    assert not ledger.spool.quarantine_dir.exists()
    assert [s.id for s in ledger.latest(SpanFilter(), 5)] == [ours.id]
    (said,) = [line for line in done.stderr.splitlines() if str(theirs) in line]
    assert "cannot be read by this user" in said and "uid 65534" in said
    ledger.dispose()
    owner = Ledger(sqlite_url, spool_dir=spool)  # its owner (here: root, all powers back)
    assert owner.spool.pending() == [] and owner.count() == 3
    owner.dispose()


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # one ledger file for every example, a spool folder of its own each
@given(umask=st.sampled_from([0o000, 0o002, 0o022, 0o027, 0o077]))
def test_what_the_spool_keeps_only_its_owner_may_read_whatever_the_umask(
    sqlite_url: str, tmp_path: Path, umask: int
) -> None:
    """Spool files hold whole spans (with content capture on, prompts and replies) for as long
    as the ledger is away, but were made 0644 under the usual umask while the journal beside
    them is 0600: any user of the machine could read them. Every file the spool keeps is now
    its owner's alone: spooled spans, quarantined spans, lines set aside as unreadable."""
    from ollama_meter.ledger._spool import encode_span

    spool = tmp_path / uuid.uuid4().hex
    previous = os.umask(umask)
    try:
        ledger = Ledger(sqlite_url, spool_dir=spool)
        ledger.spool.put([make_span()])
        ledger.spool.quarantine(make_span(), "refused")
        mixed = spool / f"1-1-{uuid.uuid4()}.jsonl"
        mixed.write_text(encode_span(make_span()) + "\n{not json\n")
        assert ledger.recover() == 2
        ledger.spool.put([make_span()])
    finally:
        os.umask(previous)
    kept = [p for p in spool.rglob("*") if p.is_file()]
    assert sorted(p.suffix for p in kept) == [".json", ".jsonl", ".unreadable"], kept
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in kept} == {
        p.name: oct(0o600) for p in kept
    }
    ledger.dispose()
