"""`db backup`, `db prune` and `db export` attacked again: what a ledger's upkeep may not do to
it, to its copy or to its reports, whatever state the files beside it are in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ollama_meter.ledger import Ledger, backup
from tests.ledger.test_transfer import _spans


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
