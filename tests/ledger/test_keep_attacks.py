"""`db backup`, `db prune` and `db export` attacked again: what a ledger's upkeep may not do to
it, to its copy or to its reports, whatever state the files beside it are in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger, backup
from tests.ledger.test_transfer import _spans

ENDS = ["-wal", "-shm", "-journal"]


def _restored_beside_a_killed_gateways_wal(folder: Path) -> tuple[Path, dict[str, bytes]]:
    """A ledger restored from its backup (``cp backup.db ledger.db``) while the WAL of a
    killed gateway, holding five spans more, stayed beside it; the files there, as bytes."""
    path, copy, wal = folder / "ledger.db", folder / "backup.db", folder / "ledger.db-wal"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(3))
    backup(ledger, copy)
    ledger.record(_spans(8)[3:])  # in the WAL: the ledger stays open, as a gateway's does
    left = wal.read_bytes()
    assert len(left) > 32  # frames, not only the header
    ledger.dispose()  # the last connection checkpoints the WAL: as killed, it would not have
    copy.replace(path)
    wal.write_bytes(left)
    (folder / "ledger.db-shm").unlink(missing_ok=True)
    return path, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_backup_of_a_ledger_with_another_files_wal_beside_it_changes_nothing(
    cli: Any, tmp_path: Path
) -> None:
    """Every command refuses a ledger with a WAL beside it that is not its own, and changes
    nothing; `db backup` opened the ledger with a connection of its own, past that check:
    SQLite replayed the killed gateway's WAL into the restored ledger (taking back the spans
    it was restored to be rid of) and into the copy, and removed the WAL, so the next
    command had nothing left to refuse. Now it is refused as everywhere else."""
    folder = tmp_path / "srv"
    folder.mkdir()
    path, before = _restored_beside_a_killed_gateways_wal(folder)
    done = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}")
    assert done.code == 1 and "ledger.db-wal is left from another file" in done.stderr
    assert not (tmp_path / "copy.db").exists() and not list(tmp_path.glob(".*partial*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    (folder / "ledger.db-wal").rename(tmp_path / "old-wal")  # as the message says
    assert cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}").code == 0
    assert Ledger(f"sqlite:///{tmp_path / 'copy.db'}").count() == 3


def test_a_backup_onto_a_ledger_in_use_is_refused_and_the_ledger_keeps_its_spans(
    cli: Any, tmp_path: Path
) -> None:
    """`ometer db backup /var/lib/ometer/ledger.db --db dev.db` (the arguments the wrong way
    round, or the wrong path) renamed the copy over the production ledger while a gateway
    had it open: exit 0 and 'backed up', the gateway's spans since went to the spool (the
    new file had its old WAL beside it), and the ledger's own file, with every span it held,
    was gone once the gateway stopped."""
    prod, dev = tmp_path / "prod.db", tmp_path / "dev.db"
    gateway = Ledger(f"sqlite:///{prod}")
    gateway.record(_spans(20))
    Ledger(f"sqlite:///{dev}").record(_spans(3, seed=5))
    before = prod.stat().st_ino
    for target in (prod, tmp_path / "link.db"):
        if target.name == "link.db":
            target.symlink_to(prod)
        done = cli("db", "backup", str(target), "--db", f"sqlite:///{dev}")
        assert done.code == 2, done.stdout
        assert f"error: {prod}-wal is beside {prod}: that is a database some process" in (
            done.stderr
        )
    assert prod.stat().st_ino == before and not list(tmp_path.glob(".*partial*"))
    gateway.record(_spans(23)[20:])
    assert gateway.count() == 23 and not (tmp_path / "prod.db.spool").exists()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(left=st.sets(st.sampled_from(["-wal", "-shm", "-journal"]), min_size=1))
def test_a_backup_never_lands_beside_another_files_wal_or_journal(
    tmp_path_factory: pytest.TempPathFactory, left: set[str]
) -> None:
    """A killed process's WAL, shared memory or hot journal beside the target belongs to the
    file that was there: SQLite replays it into whatever file has that name next, so a copy
    put there was mixed with it (or refused by every ometer command that opened it)."""
    folder = tmp_path_factory.mktemp("beside")
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}")
    ledger.record(_spans(3))
    target = folder / "copy.db"
    target.write_bytes(b"an older copy")
    for end in left:
        Path(f"{target}{end}").write_bytes(b"x" * 100)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(
        ValidationError, match=f"copy.db{sorted(left, key=ENDS.index)[0]} is beside"
    ):
        backup(ledger, target)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == files
    ledger.dispose()


@pytest.mark.parametrize("loop", [["self"], ["a", "b"], ["a", "b", "c"]])
@pytest.mark.parametrize(
    "command",
    [
        ["db", "backup"],
        ["chargeback", "--month", "2026-11", "--out"],
        ["report", "-f", "csv", "--out"],
    ],
)
def test_a_file_to_write_that_is_links_in_a_loop_is_one_line_and_left_as_it_is(
    cli: Any, tmp_path: Path, command: list[str], loop: list[str]
) -> None:
    """`ometer db backup a` or `--out a`, where a links to b and b back to a (or a to
    itself): Python's resolve() raised RuntimeError on the loop, said as 'unexpected
    RuntimeError ... This is a bug in ometer' (exit 70). The links stay as they are."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(db).record(_spans(3))
    folder = tmp_path / "out"
    folder.mkdir()
    for name, to in zip(loop, [*loop[1:], loop[0]], strict=True):
        (folder / name).symlink_to(to)
    done = cli(*command, str(folder / loop[0]), "--db", db)
    assert done.code == 1, done.stderr
    assert done.stderr.endswith(f"{folder / loop[0]}: Too many levels of symbolic links\n")
    assert "unexpected" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(loop)
    assert all((folder / name).is_symlink() for name in loop)
