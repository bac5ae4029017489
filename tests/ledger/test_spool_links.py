"""One SQLite ledger opened through a link and through the file it names keeps one spool and
one journal: a killed gateway's calls and spooled spans are recorded by whichever process
opens the ledger next, by whichever path."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.ledger._spool import Spool
from ollama_meter.meter._recovery import recover_interrupted
from ollama_meter.pricing import PriceBook
from tests._tmpfs import small_tmpfs
from tests.factories import make_span

ROOT = Path(__file__).resolve().parents[2]


def _paths(tmp_path: Path, data: Path | None = None) -> tuple[Path, Path]:
    """``/var/lib/ometer/ledger.db -> /data/ledger.db``: the link, and the file it names."""
    (tmp_path / "var").mkdir()
    target = (data or tmp_path / "data") / "ledger.db"
    target.parent.mkdir(exist_ok=True)
    link = tmp_path / "var" / "ledger.db"
    link.symlink_to(target)
    Ledger(f"sqlite:///{target}").dispose()
    return link, target


def _ids(url: str) -> set[str]:
    ledger = Ledger(url)
    try:
        return {span.id for span in ledger.latest(SpanFilter(), 100)}
    finally:
        ledger.dispose()


@pytest.mark.parametrize("first", ["link", "target"])
def test_a_span_spooled_through_one_path_is_recorded_through_the_other(
    tmp_path: Path, first: str
) -> None:
    """The spool was named after the path given: spooled through the link, the span waited in
    ``var/ledger.db.spool``, which a process opening ``data/ledger.db`` never looked in."""
    link, target = _paths(tmp_path)
    one, other = (link, target) if first == "link" else (target, link)
    writer = Ledger(f"sqlite:///{one}")
    span = make_span()
    writer.spool.put([span])  # the database was away for this write
    writer.dispose()
    assert span.id in _ids(f"sqlite:///{other}")
    assert Ledger(f"sqlite:///{link}").spool.directory == target.with_name("ledger.db.spool")


_KILLED = (
    "import os, sys\n"
    "from ollama_meter.ledger import Ledger\n"
    "from tests.factories import make_span\n"
    "ledger = Ledger(f'sqlite:///{sys.argv[1]}')\n"
    "cut, answered = make_span(), make_span()\n"
    "ledger.journal.opened(cut, 3); ledger.journal.opened(answered, 4)\n"
    "assert ledger.journal.finished(answered)\n"
    "print(cut.id, answered.id, flush=True)\n"
    "os.kill(os.getpid(), 9)\n"
)


@pytest.mark.parametrize("first", ["link", "target"])
def test_a_gateway_killed_through_one_path_is_recovered_through_the_other(
    tmp_path: Path, first: str
) -> None:
    """``kill -9`` a process that opened the ledger through one path: its journal (one call cut
    off, one answered before its commit) is recovered by the next process, through the other."""
    link, target = _paths(tmp_path)
    one, other = (link, target) if first == "link" else (target, link)
    dead = subprocess.run(
        [sys.executable, "-c", _KILLED, str(one)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    cut, answered = dead.stdout.split()
    ledger = Ledger(f"sqlite:///{other}")  # records the answered call's whole span
    prices = PriceBook([], tz=ZoneInfo("UTC"), currency="USD")
    assert recover_interrupted(ledger, lambda: prices) == 1
    ledger.dispose()
    assert _ids(f"sqlite:///{target}") == {cut, answered}


def test_a_spool_named_after_the_link_is_brought_along_once(tmp_path: Path) -> None:
    """Spans spooled by an ometer from before, through the link, in the folder named after it:
    the folder moves to its new name, and a process opening the file records them."""
    link, target = _paths(tmp_path)
    old = link.with_name("ledger.db.spool")
    span = make_span()
    Spool(old).put([span])
    assert span.id in _ids(f"sqlite:///{link}")
    assert not old.exists() and target.with_name("ledger.db.spool").is_dir()
    later = make_span()
    Spool(old).put([later])  # an ometer from before, still running, spools there again
    (old / "journal").mkdir()
    (old / "journal" / "1-dead.journal").write_text("")
    assert later.id in _ids(f"sqlite:///{link}")  # its files join the new folder
    assert not old.exists()


def test_the_files_of_a_spool_named_after_the_link_join_the_one_named_after_the_file(
    tmp_path: Path,
) -> None:
    """Both folders there (a process opening the file spooled too): the old one's files are
    moved into the new one, one by one, and every span in either is recorded."""
    link, target = _paths(tmp_path)
    old, new = link.with_name("ledger.db.spool"), target.with_name("ledger.db.spool")
    spans = [make_span() for _ in range(3)]
    Spool(old).put(spans[:2])
    Spool(old).quarantine(spans[2], "refused")
    Spool(new).put(spans[2:])
    assert _ids(f"sqlite:///{link}") == {span.id for span in spans}
    assert not old.exists() and [p.name for p in Spool(new).quarantined()] == [
        f"{spans[2].id}.json"
    ]


def test_a_spool_named_after_a_link_on_another_file_system_is_used_through_both(
    tmp_path: Path,
) -> None:
    """The link and its file on two file systems: the old folder cannot be renamed across, so
    the new name is made a link to it, and neither path's process loses what is spooled."""
    with small_tmpfs(tmp_path, "8m") as disk:
        link, target = _paths(tmp_path, disk)
        old = link.with_name("ledger.db.spool")
        before, later = make_span(), make_span()
        Spool(old).put([before])
        by_target = Ledger(f"sqlite:///{target}")  # knows nothing of the link yet
        by_target.dispose()
        writer = Ledger(f"sqlite:///{link}")
        assert before.id in _ids(f"sqlite:///{target}")
        writer.spool.put([later])
        writer.dispose()
        assert later.id in _ids(f"sqlite:///{target}")
        assert target.with_name("ledger.db.spool").resolve() == old.resolve()


def test_files_that_cannot_join_across_file_systems_stay_and_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both folders there and on two file systems: a file cannot be renamed across, so it
    stays where it is, whole, and a warning says where it is and what to do."""
    with small_tmpfs(tmp_path, "8m") as disk:
        link, target = _paths(tmp_path, disk)
        old = link.with_name("ledger.db.spool")
        first, stranded = make_span(), make_span()
        Spool(target.with_name("ledger.db.spool")).put([first])
        left = Spool(old).put([stranded])
        assert _ids(f"sqlite:///{link}") == {first.id}
        assert left.is_file()
        said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        assert f"1 file(s) in {old}" in said and "move them there by hand" in said
