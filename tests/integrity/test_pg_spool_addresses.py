"""One PostgreSQL ledger reached at two addresses: spans one spooled are recorded by the other.

A server's spool folder is named after the URL's host, port and database. A standby's address
(which refuses writes: ometer says to point OMETER_DB_URL at the primary), the new primary's
after a failover, a pooler's port, ``localhost`` for ``127.0.0.1``: each is another folder,
and spans spooled under one were recorded only by a process opening the ledger at that very
address again. Pointed at the primary as told, the spooled calls stayed out of the ledger."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from ollama_meter.ledger import Ledger
from ollama_meter.ledger._aggregate import raw_spans
from ollama_meter.periods import parse_period
from ollama_meter.records import Stored
from ollama_meter.reports import spend_report
from tests.factories import make_span


def _elsewhere(url: str, host: str, options: str = "") -> str:
    """``url`` with another host name for the same server (and ``options``)."""
    other = make_url(url).set(host=host).render_as_string(False)
    return f"{other}?options={options}" if options else other


def test_spans_spooled_at_a_standbys_address_are_recorded_at_the_primarys(
    pg_url: str,
) -> None:
    """The read-only address stands for a hot standby: ``default_transaction_read_only``
    refuses writes as a standby does, and ``localhost`` names the server as another host."""
    primary = Ledger(pg_url, zone="UTC")
    standby = Ledger(_elsewhere(pg_url, "localhost", "-cdefault_transaction_read_only%3Don"))
    assert standby.spool.directory != primary.spool.directory  # two addresses, two folders
    spooled = [make_span(), make_span()]
    assert standby.record(spooled) == dict.fromkeys((s.id for s in spooled), Stored.SPOOLED)
    standby.dispose()
    primary.dispose()
    reopened = Ledger(pg_url)  # OMETER_DB_URL pointed at the primary, as the error said
    assert reopened.count() == 2
    assert list(Path(standby.spool.directory).glob("*.jsonl")) == []
    reopened.dispose()


def test_a_process_that_cannot_write_leaves_anothers_spool_where_it_is(pg_url: str) -> None:
    """A report run at the standby's address while the primary's gateway spools: reading the
    other folder's files in place (not moving them to its own), it takes none from the
    process that will record them."""
    primary = Ledger(pg_url, zone="UTC")
    standby_url = _elsewhere(pg_url, "localhost", "-cdefault_transaction_read_only%3Don")
    Ledger(standby_url).dispose()  # marks its folder
    away = make_span()
    assert primary.keep([away], _cannot_write()) == {away.id: Stored.SPOOLED}
    standby = Ledger(standby_url)
    assert len(primary.spool.pending()) == 1  # still where its process looks for it
    assert standby.count() == 0
    standby.dispose()
    assert primary.bring_in() == 1 and primary.count() == 1
    primary.dispose()


def _cannot_write() -> Exception:
    from ollama_meter.errors import LedgerError

    return LedgerError("the database did not answer")


def _open(url: str) -> None:
    Ledger(url).dispose()


@pytest.mark.slow
def test_four_processes_opening_the_primary_record_a_standbys_spool_once(pg_url: str) -> None:
    """Four processes (gateways restarted together after a failover) open the ledger at once,
    each finding the same folder of another address: each span once, rollups as raw spans."""
    Ledger(pg_url, zone="UTC").dispose()
    standby = Ledger(_elsewhere(pg_url, "localhost", "-cdefault_transaction_read_only%3Don"))
    spooled = [make_span(department=f"d{n % 3}") for n in range(40)]
    for start in range(0, 40, 5):
        assert set(standby.record(spooled[start : start + 5]).values()) == {Stored.SPOOLED}
    standby.dispose()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_open, args=(pg_url,)) for _ in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    ledger = Ledger(pg_url)
    assert ledger.count() == 40 and list(standby.spool.directory.glob("*.jsonl")) == []
    window = parse_period("2026-11", tz=UTC, now=datetime(2026, 12, 7, tzinfo=UTC))
    report = spend_report(ledger, window, ["department"], tz=UTC).rows
    with raw_spans():
        assert report == spend_report(ledger, window, ["department"], tz=UTC).rows
    ledger.dispose()
