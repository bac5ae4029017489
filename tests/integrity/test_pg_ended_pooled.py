"""A ledger read whose session the server ended (``pg_terminate_backend``), behind a real
PgBouncer in transaction pooling, and on a server that ends every session it reads on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from tests._pgbouncer import pgbouncer
from tests.integrity.test_pg_ended_sessions import WAITING, _until
from tests.integrity.test_pg_pooler import _need_pgbouncer, _through


@pytest.fixture(scope="module")
def pooled(pg_server: str | None) -> Iterator[str]:
    with pgbouncer(_need_pgbouncer(pg_server), "transaction") as url:
        yield url


def _ended(pg_url: str, times: int, read: Callable[[], Any]) -> list[Any]:
    """What ``read`` gave (or raised), while its session waiting for the locked api_keys was
    ended by the server ``times`` times."""
    got: list[Any] = []

    def reading() -> None:
        try:
            got.append(read())
        except LedgerError as exc:
            got.append(exc)

    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    waiting = {"table": "%api_keys%"}
    try:
        with engine.connect() as holder, engine.connect() as admin:
            holder.execute(text("BEGIN"))
            holder.execute(text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            reader = threading.Thread(target=reading)
            reader.start()
            for _ in range(times):
                _until(lambda: bool(admin.execute(text(WAITING), waiting).all()) or bool(got))
                ending = WAITING.replace("pid", "pg_terminate_backend(pid)", 1)
                admin.execute(text(ending), waiting)
                _until(lambda: not admin.execute(text(WAITING), waiting).all() or bool(got))
            holder.execute(text("ROLLBACK"))
            reader.join(60)
    finally:
        engine.dispose()
    return got


def test_a_read_behind_a_pooler_whose_server_session_was_ended_is_read_again(
    pooled: str, pg_url: str
) -> None:
    """Through PgBouncer the server's ending of its session reaches ometer as its own
    (57P01), and the read is made again on the session the pooler lends next."""
    setup = Ledger(pg_url)
    setup.create_key(name="ci", tenant="acme", department="sales")
    setup.dispose()
    ledger = Ledger(_through(pooled, pg_url))
    try:
        got = _ended(pg_url, 1, ledger.keys)
    finally:
        ledger.dispose()
    (keys,) = got
    assert not isinstance(keys, Exception), keys
    assert [k.name for k in keys] == ["ci"]


def test_a_read_whose_session_is_ended_each_time_fails_after_one_more(pg_url: str) -> None:
    """Ended twice, the read fails and says so: a third try would have waited for the lock
    and read the keys."""
    Ledger(pg_url).dispose()
    ledger = Ledger(pg_url)
    try:
        got = _ended(pg_url, 2, ledger.keys)
    finally:
        ledger.dispose()
    (failed,) = got
    assert isinstance(failed, LedgerError), failed
    assert "ended" in str(failed)
