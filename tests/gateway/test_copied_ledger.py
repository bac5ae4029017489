"""A ledger copied with ``cp`` keeps the original's id in ``ledger_meta``: an ometer client on
the copy, calling through a gateway on the original, took the gateway's answer (naming that
id) for its own ledger's and wrote no span of the call: the copy, its ledger, lacked the call.
The id now belongs to the file it was made in, or the PostgreSQL database (``pg_dump`` and
``pg_restore`` copy it as well): a copy is named anew when a process first reads it, and the
original keeps its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ollama_meter import MeteredClient
from ollama_meter.ledger import Ledger, SpanFilter
from ollama_meter.testing import OllamaEmulator
from tests.gateway.conftest import Gateway

HI = [{"role": "user", "content": "hi"}]


def _named(url: str) -> str:
    """The id of a new ledger at ``url``, whole in the file (closed: its WAL written back)."""
    ledger = Ledger(url)
    named = ledger.identity()
    assert named is not None
    ledger.dispose()
    return named


def test_a_client_on_a_copy_of_the_gateways_ledger_records_its_own_span(
    emulator: OllamaEmulator, tmp_path: Path, serve_on: Callable[..., Gateway]
) -> None:
    original, copy = tmp_path / "ledger.db", tmp_path / "copy.db"
    named = _named(f"sqlite:///{original}")
    shutil.copyfile(original, copy)
    gw = serve_on(emulator.url, f"sqlite:///{original}")
    with MeteredClient(gw.url, department="sales", db_url=f"sqlite:///{copy}") as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (theirs,) = gw.ledger.latest(SpanFilter(), 10)
    (mine,) = Ledger(f"sqlite:///{copy}").latest(SpanFilter(), 10)
    assert (theirs.source, mine.source, mine.status) == ("gateway", "sdk", "ok")
    assert answer.meter.id == mine.id
    assert gw.ledger.identity() == named != Ledger(f"sqlite:///{copy}").identity()


def test_the_original_keeps_its_id_and_a_copy_is_named_once(tmp_path: Path) -> None:
    original, copy = tmp_path / "ledger.db", tmp_path / "copy.db"
    named = _named(f"sqlite:///{original}")
    shutil.copyfile(original, copy)
    copied = [Ledger(f"sqlite:///{copy}").identity() for _ in range(3)]  # three processes
    assert copied[0] == copied[1] == copied[2] != named
    assert Ledger(f"sqlite:///{original}").identity() == named
    assert Ledger(f"sqlite:///{copy}").identity(make=False) == copied[0]


def _restored_copy(pg_server: str | None, original: str, tmp_path: Path) -> str:
    """A new database on the server with ``original`` restored into it by ``pg_dump`` and
    ``pg_restore``, as a DBA copies a ledger (dropped after the test)."""
    from tests._pg import run_client
    from tests.conftest import _MADE, _fresh_pg_database

    assert pg_server is not None
    copy = _fresh_pg_database(pg_server)
    _MADE.append((pg_server, copy.rsplit("/", 1)[1]))
    dump = tmp_path / "ledger.dump"
    dumped = run_client(["pg_dump", "-Fc", "-f", str(dump), original.replace("+psycopg", "")])
    if dumped is None:
        pytest.skip("no pg_dump on this machine")
    assert dumped.returncode == 0, dumped.stderr
    restored = run_client(["pg_restore", "--dbname", copy.replace("+psycopg", ""), str(dump)])
    assert restored is not None and restored.returncode == 0, restored.stderr
    return copy


@pytest.fixture
def pg_original(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("pg_dump copies PostgreSQL ledgers")
    return db_url


def test_a_pg_restored_copy_is_named_once_and_the_original_keeps_its_id(
    pg_server: str | None, pg_original: str, tmp_path: Path
) -> None:
    """``pg_dump`` copies ``ledger_meta`` with the rest: a copy restored into another database
    kept the original's id, as a file copied with ``cp`` did."""
    named = Ledger(pg_original).identity()
    copy = _restored_copy(pg_server, pg_original, tmp_path)
    copied = [Ledger(copy).identity() for _ in range(3)]  # three processes
    assert copied[0] == copied[1] == copied[2] != named
    assert Ledger(pg_original).identity() == named
    assert Ledger(copy).identity(make=False) == copied[0]


def test_a_client_on_a_pg_restored_copy_of_the_gateways_ledger_records_its_own_span(
    emulator: OllamaEmulator,
    pg_server: str | None,
    pg_original: str,
    tmp_path: Path,
    serve_on: Callable[..., Gateway],
) -> None:
    """A client on the copy took the gateway's answer (naming the original's id) for its own
    ledger's, and wrote no span of the call: the copy lacked it."""
    named = _named(pg_original)
    copy = _restored_copy(pg_server, pg_original, tmp_path)
    gw = serve_on(emulator.url, pg_original)
    with MeteredClient(gw.url, department="sales", db_url=copy) as client:
        answer = client.chat("llama3.1:8b", HI)
    gw.settle()
    (theirs,) = gw.ledger.latest(SpanFilter(), 10)
    (mine,) = Ledger(copy).latest(SpanFilter(), 10)
    assert (theirs.source, mine.source, mine.status) == ("gateway", "sdk", "ok")
    assert answer.meter.id == mine.id
    assert gw.ledger.identity() == named != Ledger(copy).identity()


def test_a_copy_restored_into_another_schema_of_the_database_is_another_ledger(
    pg_original: str, tmp_path: Path
) -> None:
    """Two ledgers may share a database, a schema each (``?options=-csearch_path=...``): one
    restored beside the other from its dump kept its id. Renaming the original's schema to
    make room keeps its id."""
    from urllib.parse import quote

    from sqlalchemy import create_engine, text

    from tests._pg import run_client

    def in_schema(schema: str) -> str:
        return f"{pg_original}?options={quote(f'-csearch_path={schema}')}"

    admin = create_engine(pg_original, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE SCHEMA meter"))
    named = _named(in_schema("meter"))
    dump = tmp_path / "ledger.dump"
    plain = pg_original.replace("+psycopg", "")
    dumped = run_client(["pg_dump", "-Fc", "-n", "meter", "-f", str(dump), plain])
    if dumped is None:
        pytest.skip("no pg_dump on this machine")
    assert dumped.returncode == 0, dumped.stderr
    with admin.connect() as conn:
        conn.execute(text("ALTER SCHEMA meter RENAME TO meter_old"))
    admin.dispose()
    restored = run_client(["pg_restore", "--dbname", plain, str(dump)])
    assert restored is not None and restored.returncode == 0, restored.stderr
    copied = Ledger(in_schema("meter")).identity()
    assert copied not in (None, named)
    assert Ledger(in_schema("meter_old")).identity() == named
    assert Ledger(in_schema("meter")).identity() == copied


def test_processes_reading_a_pg_restored_copy_at_once_name_it_once(
    pg_server: str | None, pg_original: str, tmp_path: Path
) -> None:
    """Gateways started together on a restored copy each found it another's and named it; on
    PostgreSQL (READ COMMITTED) each wrote its own new id, the last one kept: the others held
    an id the ledger did not have, and their clients' calls were recorded twice."""
    from tests.ledger.test_identity import identities_at_once

    named = _named(pg_original)
    copy = _restored_copy(pg_server, pg_original, tmp_path)
    held = identities_at_once(copy)
    kept = Ledger(copy).identity(make=False)
    assert set(held) == {kept} and kept != named
