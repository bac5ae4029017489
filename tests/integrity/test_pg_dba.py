"""PostgreSQL as a company's DBA sets it up, and changes it under a running ledger: a password
only a URL's escaping can carry, a database restored into another encoding, a role's search
path moved to another schema. None may lose a call out of sight or show the password."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger
from ollama_meter.records import Stored
from tests.factories import make_span

PART = st.from_regex(r"[A-Za-z0-9/:%#!]{6,12}", fullmatch=True)
"""Passwords as a DBA makes them (a ``?`` after an unescaped ``@`` starts a query)."""


@given(before=PART, after=PART, database=st.sampled_from(["ometer", "ometer/x"]))
def test_a_password_with_an_unescaped_at_sign_is_refused_without_showing_any_of_it(
    before: str, after: str, database: str
) -> None:
    """``user:S3cr@t/x@host/db``: SQLAlchemy ends the password at its first ``@`` and took the
    rest (``t/x@host``) for the host, so each error ("failed to resolve host 't'") and the
    URL ometer shows printed the password's tail, and the server was never reached."""
    from ollama_meter._urls import database_url

    def refusals(url: str) -> tuple[str, str]:
        with pytest.raises(LedgerError) as opened:
            Ledger(url)
        with pytest.raises(ValueError) as checked:
            database_url(url)
        return str(opened.value), str(checked.value)

    said = refusals(f"postgresql+psycopg://meter:{before}@{after}@db.internal:5432/{database}")
    # The same words whatever the password (a password can be a word ometer says, "passwo")
    assert said == refusals(f"postgresql+psycopg://meter:hidden@hidden@db.internal:5432/{database}")
    for each in said:
        assert "hidden" not in each and "@ in the password must be written %40" in each, each


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://meter:S3cr%40t@db.internal/ometer",
        "postgresql+psycopg://meter@tenant:pa/ss:w#rd?@db.internal:5432/ometer",  # Azure's
        "postgresql+psycopg://meter@tenant@db.internal:5432/ometer",
        "postgresql+psycopg://meter:pw@db.internal/ometer?options=-c%20application_name%3Da@b",
        "postgresql+psycopg:///ometer?host=/run/postgresql&user=meter&password=p@ss",
        "sqlite:////srv/a:b@c@d/ledger.db",
    ],
)
def test_an_at_sign_a_url_may_hold_is_taken(url: str) -> None:
    from ollama_meter._urls import database_url, unescaped_at

    assert not unescaped_at(url)
    assert database_url(url) == url


def test_a_wrong_password_says_how_a_url_writes_one(tmp_path: Any) -> None:
    from psycopg import OperationalError as PsycopgError
    from sqlalchemy.exc import DBAPIError

    from ollama_meter.ledger._database import Database

    refused = PsycopgError('FATAL:  password authentication failed for user "meter"')
    said = Database(f"sqlite:///{tmp_path / 'l.db'}").explain(DBAPIError("x", {}, refused))
    assert "fix the password in OMETER_DB_URL (% as %25, @ as %40)" in said


def _database(pg_server: str | None, encoding: str = "UTF8", owner: str = "ometer") -> str:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    name = f"d_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if owner != "ometer":
            conn.execute(text(f"CREATE ROLE {owner} LOGIN"))
        conn.execute(
            text(
                f"CREATE DATABASE {name} OWNER {owner} ENCODING '{encoding}' LC_COLLATE 'C' "
                "LC_CTYPE 'C' TEMPLATE template0"
            )
        )
    admin.dispose()
    return make_url(f"{pg_server}/{name}").set(username=owner).render_as_string(False)


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_ledger_in_a_database_not_in_utf8_is_refused_before_a_call_goes_astray(
    pg_server: str | None, monkeypatch: pytest.MonkeyPatch, cli: Any, encoding: str
) -> None:
    """A new ledger was refused in LATIN1, but one pg_restore'd into a LATIN1 database (or
    made before that check) opened: each call of a user, model or tag in another script went
    to the quarantine, out of every report and budget, while the gateway served on. SQL_ASCII
    was taken as lossless, but its columns count bytes: a user of 50 Japanese characters
    (150 bytes in a column of 128) or a model of 200 accented letters went the same way."""
    from ollama_meter.ledger import _migrate

    url = _database(pg_server, encoding)
    shown = make_url(url).render_as_string()
    with pytest.raises(LedgerError, match=f"encoded in {encoding}, which cannot hold every"):
        Ledger(url)  # a new ledger
    monkeypatch.setattr(_migrate, "_ENCODINGS", ("UTF8", encoding))
    Ledger(url).dispose()  # as a restore leaves it: a ledger at the head
    monkeypatch.undo()
    with pytest.raises(LedgerError) as refused:
        Ledger(url)
    assert str(refused.value) == (
        f"cannot open the ledger at {shown}: its database is encoded in {encoding}, which "
        "cannot hold every name a call may carry (a user, a model or a tag in any script), "
        "and such a call would be kept out of the ledger; nothing was changed. Move it to a "
        "database made with ENCODING 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE "
        "template0; pg_dump this one and restore it there) and give that one with --db / "
        "OMETER_DB_URL"
    )
    monkeypatch.setenv("OMETER_DB_URL", url)
    result = cli("db", "upgrade")
    assert (result.code, result.stdout) == (1, "")
    assert result.stderr == f"error: {refused.value}\n"


def test_a_role_whose_search_path_moved_is_not_given_a_new_empty_ledger(
    pg_server: str | None, tmp_path: Any
) -> None:
    """The DBA sets the role's search_path to another schema (ALTER ROLE ... SET search_path):
    the next process found no ledger there and made a new, empty one, silently: its reports
    showed nothing of the months in ``public``, and gateways started since wrote there while
    those started before wrote to ``public``."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    url = _database(pg_server, owner=role)
    first = Ledger(url, spool_dir=tmp_path / "spool")
    span = make_span()
    assert first.record([span]) == {span.id: Stored.COMMITTED}
    first.dispose()
    owner = create_engine(url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text("CREATE SCHEMA reporting"))
        conn.execute(text(f"ALTER ROLE {role} SET search_path = reporting"))
    with pytest.raises(LedgerError) as refused:
        Ledger(url, spool_dir=tmp_path / "spool")
    assert str(refused.value) == (
        f"cannot open the ledger at {make_url(url).render_as_string()}: schema reporting (the "
        "search path) holds no ledger, but schema public of this database holds one: the "
        "role's or database's search_path was changed (ALTER ROLE ... SET search_path), "
        "and a new, empty ledger would be made beside it; nothing was changed. Put the search "
        "path back (ALTER ROLE ... RESET search_path), or name the ledger's schema in "
        "OMETER_DB_URL (?options=-csearch_path%3Dpublic); to make a second ledger in another "
        "schema on purpose, name that one there"
    )
    with owner.connect() as conn:
        made = conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'reporting'"))
        assert made.scalar() == 0  # nothing was changed
    with owner.connect() as conn:  # a hardened role's: no schema at all
        conn.execute(text(f"ALTER ROLE {role} SET search_path = ''"))
    with pytest.raises(LedgerError, match="the search path .naming no schema. holds no ledger, b"):
        Ledger(url, spool_dir=tmp_path / "spool")
    kept = Ledger(f"{url}?options=-csearch_path%3Dpublic", spool_dir=tmp_path / "spool")
    assert kept.count() == 1
    kept.dispose()
    second = Ledger(f"{url}?options=-csearch_path%3Dreporting", spool_dir=tmp_path / "other")
    assert second.count() == 0  # asked for by name: a second ledger
    second.dispose()
    owner.dispose()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("ALTER DATABASE {database} SET default_transaction_read_only = on", "hot standby"),
        (
            "REVOKE INSERT ON spans FROM {role}",
            "permission denied for table spans: the user {role} lacks a privilege on the "
            "ledger's table spans (revoked, or made by another user); give it back (GRANT "
            "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ... TO {role}), or use the "
            "tables' owner in OMETER_DB_URL",
        ),
    ],
)
def test_a_database_that_will_not_take_writes_is_one_error_and_its_spans_wait(
    pg_server: str | None, tmp_path: Any, caplog: pytest.LogCaptureFixture, change: str, says: str
) -> None:
    """A DBA makes the database read-only (a standby put in the URL) or revokes INSERT under
    a running gateway: every span went to the spool under a WARNING, as for a server
    restarting that comes back by itself, when nothing would change until someone acts.
    It is one ERROR now (then one per kind every 10 s), and the spans wait in the spool."""
    import logging

    role = f"r_{uuid.uuid4().hex[:10]}"
    url = _database(pg_server, owner=role)
    ledger = Ledger(url, spool_dir=tmp_path / "spool")
    owner_database = create_engine(
        make_url(url).set(username="ometer").render_as_string(False), isolation_level="AUTOCOMMIT"
    )
    with owner_database.connect() as conn:
        conn.execute(text("ALTER TABLE spans OWNER TO ometer"))  # the role keeps its grants
        conn.execute(text(f"GRANT ALL ON spans TO {role}"))
        conn.execute(text(change.format(database=make_url(url).database, role=role)))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    owner_database.dispose()
    caplog.set_level(logging.DEBUG, "ollama_meter.ledger")
    spans = [make_span() for _ in range(3)]
    for span in spans:
        assert ledger.record([span]) == {span.id: Stored.SPOOLED}
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in said] == ["ERROR"], [r.getMessage() for r in said]
    assert says.format(role=role) in said[0].getMessage(), said[0].getMessage()
    assert "kept them in" in said[0].getMessage()
    assert len(ledger.spool.pending()) == 3
    ledger.dispose()


@pytest.mark.parametrize(
    "setting",
    [
        "DateStyle = 'German, DMY'",
        "DateStyle = 'SQL, DMY'",
        "DateStyle = 'Postgres, MDY'",
        "IntervalStyle = 'sql_standard'",
    ],
)
def test_a_role_or_database_that_writes_dates_its_own_way_changes_nothing(
    pg_server: str | None, cli: Any, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """A German site's ``ALTER DATABASE ... SET DateStyle = 'German, DMY'``: the driver reads
    only ISO dates, and ``ometer budget set`` and ``budget status`` failed as "unexpected
    NotImplementedError: can't parse timestamptz with DateStyle ... This is a bug in ometer"."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    url = _database(pg_server, owner=role)
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {make_url(url).database} SET {setting}"))
    admin.dispose()
    _budgets_read_as_iso(cli, monkeypatch, url)


def _budgets_read_as_iso(cli: Any, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """A budget set and its status read at ``url``, its sessions' dates ISO and intervals
    PostgreSQL's own, whatever the database or the URL sets."""
    monkeypatch.setenv("OMETER_DB_URL", url)
    made = cli("budget", "set", "sales", "--monthly", "10")
    assert made.code == 0, made.stderr
    status = cli("budget", "status")
    assert status.code == 0 and "sales" in status.stdout, status.stderr
    with Ledger(url).read() as conn:
        styles = conn.execute(
            text(
                "SELECT current_setting('DateStyle'), current_setting('IntervalStyle'), now()::text"
            )
        ).one()
    assert styles[0].startswith("ISO") and styles[1] == "postgres" and styles[2][:4].isdigit()


@pytest.mark.parametrize(
    "options",
    ["-cDateStyle%3DGerman", "-c%20datestyle%3DSQL,DMY", "--DateStyle%3DPostgres",
     "-cIntervalStyle%3Dsql_standard"],
)  # fmt: skip
def test_a_url_whose_own_options_write_dates_their_own_way_changes_nothing(
    pg_server: str | None, cli: Any, monkeypatch: pytest.MonkeyPatch, options: str
) -> None:
    """A URL carrying ``?options=-cDateStyle=German`` (copied from another application's
    settings): the URL's options came after ometer's ISO and won, so ``budget status``
    failed as "unexpected NotImplementedError: can't parse timestamptz with DateStyle ...
    This is a bug in ometer", and a gateway answered each call under a budget 500 with a
    traceback in its log, its ``/healthz`` ok."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    _budgets_read_as_iso(cli, monkeypatch, f"{_database(pg_server, owner=role)}?options={options}")


def test_a_pooler_that_refuses_ometers_session_settings_is_named() -> None:
    """PgBouncer (a DBA's usual front) refuses libpq's ``options``, where ometer sends its lock
    and idle timeouts: the bare "FATAL: unsupported startup parameter: options" named
    neither the pooler nor what to change. (Seen against PgBouncer 1.18 in transaction mode.)"""
    from psycopg import OperationalError as PsycopgError
    from sqlalchemy.exc import DBAPIError

    from ollama_meter.ledger._database import Database

    refused = PsycopgError(
        'connection failed: connection to server at "127.0.0.1", port 6432 failed: FATAL:  '
        "unsupported startup parameter: options"
    )
    database = Database("postgresql+psycopg://meter@127.0.0.1:6432/ometer")
    said = database.explain(DBAPIError("x", {}, refused))
    database.dispose()
    assert (
        "unsupported startup parameter: options: a connection pooler (PgBouncer, say) answers "
        "at that address and refuses the session settings ometer sends as it connects (its "
        "lock and idle timeouts, ISO dates); have the pooler drop them (PgBouncer: "
        "ignore_startup_parameters = options), and ometer sets them in each transaction, or "
        "point OMETER_DB_URL at PostgreSQL itself"
    ) in said
