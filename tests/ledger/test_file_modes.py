"""Who may read a SQLite ledger ometer makes, and its backups: never every user of the machine.

The ledger holds everyone's spend and, with content capture on, every prompt and reply; the
spool and journal beside it were already 0600 whatever the umask (``test_spool_files.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, backup
from tests.factories import make_span

UMASKS = st.sampled_from([0o000, 0o002, 0o007, 0o022, 0o027, 0o077])


@contextmanager
def umask_of(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(*paths: Path) -> dict[str, str]:
    return {p.name: oct(p.stat().st_mode & 0o777) for p in paths if p.exists()}


def expected(mask: int) -> str:
    """Its owner's; its group's as far as the umask lets it (to write, a team folder's 002; to
    read, 027: it was made 0600 there, and an admin of the group could not read the gateway's
    ledger until someone ran chmod g+r); never anyone else's, whatever the umask."""
    return oct(0o660 & ~mask)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mask=UMASKS)
def test_a_new_ledger_and_its_wal_are_never_readable_by_every_user(
    tmp_path: Path, mask: int
) -> None:
    """Made 0644 under the usual umask 022: any user of the machine read every department's
    spend and, with OMETER_CAPTURE_CONTENT, every prompt and reply, while the spool and
    journal beside it were 0600."""
    path = tmp_path / uuid.uuid4().hex / "ledger.db"
    with umask_of(mask):
        ledger = Ledger(f"sqlite:///{path}")
        ledger.record([make_span()])
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    try:
        assert modes(*files) == {p.name: expected(mask) for p in files if p.exists()}
        assert path.name in modes(*files)
    finally:
        ledger.dispose()


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mask=UMASKS)
def test_a_backup_is_as_private_as_the_ledger_it_copies(tmp_path: Path, mask: int) -> None:
    """The copy was made 0644 under umask 022 whatever the ledger's own mode (0600 kept
    from other users, the copy beside it readable by all)."""
    folder = tmp_path / uuid.uuid4().hex
    path = folder / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record([make_span()])
    path.chmod(0o600)
    with umask_of(mask):
        backup(ledger, folder / "copy.db")
    ledger.dispose()
    assert modes(folder / "copy.db") == {"copy.db": oct(0o600)}


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mask=UMASKS, hops=st.integers(1, 3))
def test_a_new_ledger_made_through_a_link_is_as_private_and_alone_beside_its_file(
    tmp_path: Path, mask: int, hops: int
) -> None:
    """``/var/lib/ometer/ledger.db -> /data/ometer/ledger.db`` set up before the first call:
    the file was made through the link by SQLite, 0644 under umask 022 (the making refused to
    follow the link), and empty ``ledger.db-wal`` and ``-shm`` were left beside the link,
    where SQLite keeps neither."""
    base = tmp_path / uuid.uuid4().hex
    (base / "var").mkdir(parents=True)
    (base / "data").mkdir()
    target = base / "data" / "ledger.db"
    link = target
    for hop in range(hops):  # a link to a link ... to a file not there yet
        named, link = link, base / "var" / f"ledger{hop}.db"
        link.symlink_to(named)
    with umask_of(mask):
        ledger = Ledger(f"sqlite:///{link}")
        ledger.record([make_span()])
    try:
        files = [target, Path(f"{target}-wal"), Path(f"{target}-shm")]
        assert modes(*files) == {p.name: expected(mask) for p in files if p.exists()}
        assert sorted(p.name for p in (base / "var").iterdir()) == [
            f"ledger{hop}.db" for hop in range(hops)
        ]
        assert all((base / "var" / f"ledger{hop}.db").is_symlink() for hop in range(hops))
    finally:
        ledger.dispose()
