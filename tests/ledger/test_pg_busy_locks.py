"""Concurrent writers of a PostgreSQL ledger lock busy minutes in key order: two calls that
started in the same minute on two servers each lock their own server's row of that minute,
and no other, so neither waits on the other (before, a deadlock: one
writer's transaction ended after a second, and its write tried again)."""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from ollama_meter.ledger import Ledger
from ollama_meter.records import SpanRecord, Stored
from tests.factories import make_span

AT = datetime(2026, 11, 10, 12, 0, 10, tzinfo=UTC)
HOSTS = ("http://gpu-1:11434", "http://gpu-2:11434")


def _call(host: str, tenant: str, second: int) -> SpanRecord:
    """A call to ``host`` with busy time, no histogram bins (no timings), and of ``tenant``
    alone: it shares no rollup row but its minute's with another tenant's call."""
    started = AT + timedelta(seconds=second)
    return make_span(
        started_at=started,
        ended_at=started + timedelta(seconds=1),
        tenant=tenant,
        request_model=f"{tenant}-model",
        upstream_host=host,
        duration_source="measured",
    )


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_servers_calls_in_one_minute_wait_for_no_one(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Ledger(db_url), Ledger(db_url)
    try:
        # Each server's row of the minute is there already, committed.
        first.record([_call(HOSTS[0], "acme", 0), _call(HOSTS[1], "beta", 1)])
        # Both writers reach the busy minutes' step with their own row locked, then go on
        # together; where one waits on the other's row, it holds none the other wants.
        together = threading.Barrier(2, timeout=3)

        def meet(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.startswith("UPDATE rollup_busy ") or "FOR UPDATE" in statement:
                # (a broken barrier: the other waits on this one's lock, and meets no one)
                with contextlib.suppress(threading.BrokenBarrierError):
                    together.wait()

        stored: dict[int, dict[str, Stored]] = {}

        def write(at: int, ledger: Ledger, span: SpanRecord) -> None:
            event.listen(ledger.engine, "before_cursor_execute", meet)
            stored[at] = ledger.record([span])

        caplog.set_level(logging.DEBUG, logger="ollama_meter")
        threads = [
            threading.Thread(target=write, args=(0, first, _call(HOSTS[0], "acme", 20))),
            threading.Thread(target=write, args=(1, second, _call(HOSTS[1], "beta", 21))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [set(stored[at].values()) for at in (0, 1)] == [{Stored.COMMITTED}] * 2
        assert first.count() == 4
        # A deadlock is no lock error to wait out: the server ends one writer's transaction
        # after deadlock_timeout (1 s), and it was written again.
        assert not [r.getMessage() for r in caplog.records if "locked" in r.getMessage()]
    finally:
        first.dispose()
        second.dispose()
