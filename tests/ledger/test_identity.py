"""A ledger's identity: the id a gateway names on its answers, so an ometer client on the same
ledger leaves the call's record to the gateway (``meter/_elsewhere.py``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger


def identities_at_once(url: str, processes: int = 4) -> list[str | None]:
    """The id each of ``processes`` ledgers on ``url`` reads, all asking at once."""
    ledgers = [Ledger(url) for _ in range(processes)]
    start = threading.Barrier(len(ledgers))
    found: list[str | None] = []

    def read(ledger: Ledger) -> None:
        start.wait()
        found.append(ledger.identity())

    threads = [threading.Thread(target=read, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def test_every_process_on_a_ledger_reads_one_id_and_another_ledger_has_another(
    db_url: str, tmp_path: Path
) -> None:
    """Four writers name a new ledger at once (an insert-if-absent, on SQLite and
    PostgreSQL): all read the one id the first wrote. A reader asks without naming it."""
    assert Ledger(db_url).identity(make=False) is None
    (one,) = set(identities_at_once(db_url))
    assert one is not None and len(one) == 32 and int(one, 16) >= 0  # 128 random bits
    assert Ledger(db_url).identity(make=False) == one
    other = Ledger(f"sqlite:///{tmp_path / 'other.db'}").identity()
    assert other is not None and other != one


def test_a_backup_is_another_ledger(cli: Any, tmp_path: Path) -> None:
    """A copy a gateway may write to is not this ledger: a client here leaving its records
    to that gateway would leave them in the copy. The copy is named anew when first asked."""
    live = Ledger(f"sqlite:///{tmp_path / 'live.db'}")
    ours = live.identity()
    copy = tmp_path / "copy.db"
    assert cli("db", "backup", str(copy), "--db", live.url).code == 0
    copied = Ledger(f"sqlite:///{copy}")
    assert copied.identity(make=False) is None
    assert copied.identity() not in (None, ours)
    assert live.identity() == ours


def test_a_gateway_that_cannot_name_its_ledger_warns_once_what_it_means(
    tmp_path: Path, caplog: Any
) -> None:
    """A gateway whose role cannot write ``ledger_meta`` (no INSERT on PostgreSQL, a
    read-only file) never names its ledger: every ometer client call through it is then
    recorded twice (the client's span beside the gateway's), and only a DEBUG line said so.
    It says it once as a WARNING, with what to do, however often it tries again."""
    from sqlalchemy import create_engine, text

    from ollama_meter.gateway._ledger_name import LedgerName

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).identity(make=False)  # made, migrated
    engine = create_engine(url)
    with engine.begin() as conn:  # as a role without INSERT on ledger_meta is refused
        conn.execute(
            text(
                "CREATE TRIGGER no_meta BEFORE INSERT ON ledger_meta "
                "BEGIN SELECT RAISE(ABORT, 'permission denied for table ledger_meta'); END"
            )
        )
    engine.dispose()
    name = LedgerName(Ledger(url))
    with caplog.at_level("DEBUG", logger="ollama_meter"):
        for _ in range(3):
            name.learn()
    assert name.value is None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    (said,) = warned
    assert "permission denied for table ledger_meta" in said
    path = tmp_path / "l.db"
    assert said.startswith(f"the gateway cannot name its ledger (the ledger at {path} failed: ")
    assert "counted twice" in said and "`ometer db upgrade` once as the database's owner" in said


def test_ometer_db_upgrade_names_the_ledger(cli: Any, tmp_path: Path) -> None:
    """Run by the database's owner, ``ometer db upgrade`` names the ledger, so a gateway whose
    role may not write ``ledger_meta`` names it on its answers (the warning's advice)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert cli("db", "upgrade", "--db", url).code == 0
    assert Ledger(url).identity(make=False) is not None


def test_a_role_that_may_not_read_the_servers_identifier_places_no_pg_ledger(
    db_url: str,
) -> None:
    """A hosted server may keep ``pg_control_system()`` from its users: the ledger is then
    placed nowhere (its id kept wherever it is, as before copies were told apart), rather
    than each open failing, or a superuser and such a role placing it apart and renaming it
    in turn."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from ollama_meter.ledger._meta import database_place

    if not db_url.startswith("postgresql"):
        pytest.skip("a SQLite ledger is placed by its file (tests/gateway/test_copied_ledger.py)")
    assert Ledger(db_url).identity() is not None
    role = f"r_{uuid.uuid4().hex[:10]}"
    owner = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        placed = database_place(conn)
        conn.execute(text("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC"))
    assert placed is not None and all(part.isdigit() for part in placed.split("/"))
    lowly = create_engine(make_url(db_url).set(username=role))
    try:
        with lowly.connect() as conn:
            assert database_place(conn) is None
    finally:
        lowly.dispose()
        with owner.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.dispose()
