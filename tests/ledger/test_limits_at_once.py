"""Limits set by several processes at once on one ledger: each scope one row, no failure.

A gateway host's start-up script (or four admins' scripts) running ``ometer limit set`` at
the same moment on one PostgreSQL: each found no row for the scope, each inserted one, and
all but the first failed on the primary key, ``unexpected IntegrityError ... This is a bug in
ometer`` (exit 70). SQLite's writers take the write lock up front, so they never raced.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from ollama_meter.ledger import open_ledger
from ollama_meter.records import Limit

PROCESSES = 4
SCOPES = 12


def _set_all(url: str, rpm: int, start: Barrier) -> None:
    ledger = open_ledger(url)
    start.wait(60)
    for at in range(SCOPES):
        ledger.set_limit(Limit("acme", f"dept{at}", rpm=rpm, concurrency=at + 1))


def test_processes_setting_the_same_new_limits_at_once_all_succeed(db_url: str) -> None:
    open_ledger(db_url)  # made and migrated before the race
    forked = multiprocessing.get_context("fork")
    start = forked.Barrier(PROCESSES)
    workers = [
        forked.Process(target=_set_all, args=(db_url, 10 + n, start)) for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    limits = open_ledger(db_url).limits()
    assert sorted((lim.department, lim.concurrency) for lim in limits) == sorted(
        (f"dept{at}", at + 1) for at in range(SCOPES)
    )
    assert {lim.rpm for lim in limits} <= {10 + n for n in range(PROCESSES)}
