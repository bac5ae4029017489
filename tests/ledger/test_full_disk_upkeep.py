"""Upkeep on a ledger whose disk filled up since it was made: SQLite says "disk I/O error"
(the shared-memory file beside the ledger cannot grow), which reads as a failing disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger, close_ledgers
from tests._tmpfs import small_tmpfs
from tests.integrity.test_disk_full import fill
from tests.ledger.test_transfer import _spans


@pytest.mark.parametrize(
    "args",
    [
        ["db", "prune", "--keep-days", "5"],
        ["db", "rollup"],
        ["db", "export"],
        ["db", "upgrade"],
        ["report", "--since", "2026-10-01"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_command_on_a_ledger_whose_disk_is_full_says_the_disk_is_full(
    cli: Any, tmp_path: Path, args: list[str]
) -> None:
    with small_tmpfs(tmp_path, "4m") as disk:
        try:
            ledger = Ledger(f"sqlite:///{disk / 'ledger.db'}")
            ledger.record(_spans(20))
            ledger.dispose()
            close_ledgers()
            filler = fill(disk)
            full = f"disk I/O error: the disk that holds {disk} is full: free some disk space\n"
            done = cli(*args, "--db", f"sqlite:///{disk / 'ledger.db'}")
            assert done.code == 1, done.stdout
            said = done.stderr.removeprefix("error: ")
            assert said in (  # `db upgrade` opens it unmigrated first
                f"cannot open the ledger at {disk / 'ledger.db'}: {full}",
                f"the ledger at {disk / 'ledger.db'} failed: {full}",
            )
            filler.unlink()
            close_ledgers()
            assert Ledger(f"sqlite:///{disk / 'ledger.db'}").count() == 20
        finally:
            close_ledgers()
