"""Export, import, prune and backup, third round: paths with a URI's characters in them,
windows at the edges of time, spans the clock put after today."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from ollama_meter.ledger import Ledger
from tests.ledger.test_transfer import _spans, _tables


@pytest.mark.parametrize("folder", ["a#b", "a?mode=rwc", "100%", "50%41", "x y"])
def test_a_backup_of_a_ledger_whose_path_holds_a_uri_s_characters_copies_that_ledger(
    cli: Any, tmp_path: Path, folder: str
) -> None:
    """The ledger was opened for the copy as ``file:PATH?mode=ro``: in a folder named ``a#b``
    the ``#`` began the URI's fragment, so SQLite made an empty ``a`` beside it, copied that,
    and the backup said it had succeeded (0.0 MB)."""
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "ledger.db"
    url = "sqlite:///" + quote(str(path))
    ledger = Ledger(url)
    assert ledger.path == path
    ledger.record(_spans(40))
    target = tmp_path / folder / "copy.db"
    beside = sorted(tmp_path.iterdir())
    result = cli("db", "backup", str(target), "--db", url)
    assert result.code == 0, result.stderr
    copy = Ledger("sqlite:///" + quote(str(target)))
    assert copy.count() == 40 and _tables(copy) == _tables(ledger)
    with copy.read() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    assert sorted(tmp_path.iterdir()) == beside  # nothing made beside the folder
