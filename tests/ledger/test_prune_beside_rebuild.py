"""A prune while ``ometer db rollup`` is under way, or after one stopped half way.

``db rollup`` is run because the rollups lack spans (a bulk load outside ometer, rows
lost): it puts them right day by day, oldest first. A prune that removed the raw spans of
days it had yet to reach (a cron job's, a gateway's daily ``OMETER_KEEP_DAYS``) left those
days' rollups as they were, without the spans, for good: days before the horizon cannot be
rebuilt. Reports of those months then never counted the spans the rebuild was run for.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, prune, rebuild
from tests.ledger.test_rebuild_pieces import _without_rollups
from tests.ledger.test_transfer import NOW, _monthly, _spans

MONTHS = ("2026-10", "2026-11", "2026-12")


def _reference(tmp_path: Path, name: str) -> list[list[str]]:
    """What finance sees of each month from the same spans, written as ometer writes them."""
    ledger = Ledger(f"sqlite:///{tmp_path / name}", zone="Europe/Berlin")
    ledger.record(_spans())
    bills = [_monthly(ledger, m) for m in MONTHS]
    ledger.dispose()
    return bills


def test_a_prune_while_the_rollups_are_rebuilt_waits_for_the_rebuild(
    db_url: str, tmp_path: Path
) -> None:
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans())
    _without_rollups(ledger)  # the spans a bulk load put in, no rollup counting them yet
    gateway = Ledger(db_url, zone="Europe/Berlin")  # opened before, prunes once a day
    refused: list[str] = []

    def daily_prune_lands(_day: int) -> None:
        if not refused:
            with pytest.raises(LedgerError) as caught:
                prune(gateway, 30, now=NOW)
            refused.append(str(caught.value))

    rebuild(ledger.write, ledger.read, progress=daily_prune_lands)
    assert refused == [
        "the rollups are being rebuilt from the raw spans (ometer db rollup): prune once that "
        "is done, since the days it would prune could not be rebuilt after it (ometer db "
        "rollup finishes a rebuild that stopped half way)"
    ]
    assert ledger.pruned_before() is None and ledger.count() == 120
    assert prune(gateway, 30, now=NOW).removed > 0  # the next day's
    assert [_monthly(ledger, m) for m in MONTHS] == _reference(tmp_path, "reference.db")
    gateway.dispose()


def test_a_rebuild_stopped_half_way_is_finished_before_anything_is_pruned(
    cli: object, sqlite_url: str, tmp_path: Path
) -> None:
    ledger = Ledger(sqlite_url, zone="Europe/Berlin")
    ledger.record(_spans())
    _without_rollups(ledger)
    gateway = Ledger(sqlite_url, zone="Europe/Berlin")

    def stopped(_day: int) -> None:  # Ctrl-C, SIGTERM, the session's hangup
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(ledger.write, ledger.read, progress=stopped)
    with pytest.raises(LedgerError, match="ometer db rollup finishes a rebuild that stopped"):
        prune(gateway, 30, now=NOW)  # a gateway's: it opened the ledger before
    assert gateway.count() == 120
    # `ometer db prune` opens the ledger, which finishes the rebuild first
    done = cli("db", "prune", "--keep-days", "30", "--db", sqlite_url)  # type: ignore[operator]
    assert done.code == 0, done.stderr
    assert gateway.count() < 120
    assert [_monthly(ledger, m) for m in MONTHS] == _reference(tmp_path, "reference.db")
    gateway.dispose()


def _rebuild_killed_after_its_first_day(url: str) -> None:
    ledger = Ledger(url, zone="Europe/Berlin")
    rebuild(ledger.write, ledger.read, progress=lambda _day: os.kill(os.getpid(), signal.SIGKILL))


def test_a_rebuild_killed_dead_half_way_is_finished_before_anything_is_pruned(
    db_url: str, tmp_path: Path
) -> None:
    """kill -9 (the OOM killer, a host lost) leaves no word that it stopped, only its beat."""
    ledger = Ledger(db_url, zone="Europe/Berlin")
    ledger.record(_spans())
    _without_rollups(ledger)
    gateway = Ledger(db_url, zone="Europe/Berlin")
    killed = multiprocessing.get_context("spawn").Process(
        target=_rebuild_killed_after_its_first_day, args=(db_url,)
    )
    killed.start()
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    with pytest.raises(LedgerError, match="being rebuilt"):
        prune(gateway, 30, now=NOW)
    assert gateway.count() == 120
    Ledger(db_url, zone="Europe/Berlin").dispose()  # the next process to open it finishes it
    assert prune(gateway, 30, now=NOW).removed > 0
    assert [_monthly(ledger, m) for m in MONTHS] == _reference(tmp_path, "reference.db")
    gateway.dispose()
    ledger.dispose()
