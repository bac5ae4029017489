"""A PostgreSQL connection refused before a ledger is reached, for a reason the URL or the
server's set-up holds: SSL asked of a server that has none, a host no name service knows,
``pg_hba.conf`` keeping the user out, a connection option libpq has not. Each was said in
libpq's words alone, none of which says what to change; each is one line that does, with the
URL's password never shown."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests._pg import PgCluster

SECRET = "Pw-never-shown-9"
"""A password each URL carries (the test servers trust every local connection)."""


def _refused(cli: Any, url: str) -> str:
    """The one error line ``ometer report`` gives for the ledger at ``url``."""
    result = cli("report", "--period", "month", "--db", url)
    assert (result.code, result.stdout) == (1, ""), result
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cannot open the ledger at ") and SECRET not in line, line
    return str(line)


def _with_password(server: str, **parts: Any) -> str:
    return make_url(server).set(password=SECRET, **parts).render_as_string(False)


def test_ssl_asked_of_a_server_that_has_none_says_what_to_change(
    cli: Any, pg_server: str | None
) -> None:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    for mode in ("require", "verify-full"):
        url = f"{_with_password(pg_server, database='postgres')}?sslmode={mode}"
        assert _refused(cli, url).endswith(
            "server does not support SSL, but SSL was required: the server at that address "
            "takes no SSL connections, and sslmode (in OMETER_DB_URL, or PGSSLMODE) asks for "
            "them: turn SSL on at the server (ssl = on in postgresql.conf, with its "
            "certificate), or correct the host and port in OMETER_DB_URL; on a network you "
            "trust, sslmode=prefer connects without"
        )


def test_a_host_no_name_service_knows_says_to_correct_it(cli: Any) -> None:
    url = f"postgresql+psycopg://ometer:{SECRET}@no-such-host.invalid:5432/ledger"
    said = _refused(cli, url)
    assert said.endswith(
        ": no host of that name is known to this machine (DNS, /etc/hosts): correct the host "
        "in OMETER_DB_URL"
    ) or said.endswith(  # a machine with no name service at all
        "Temporary failure in name resolution: no server answers at that address: start it, "
        "or correct the host and port in OMETER_DB_URL"
    ), said


_SETTINGS = (
    "the server refused a setting the URL's ?options= gives (-c name=value): correct or "
    "remove it in OMETER_DB_URL (a setting the server knows, with a value it takes, that a "
    "session may change)"
)


def test_a_socket_folder_written_in_the_hosts_place_says_how_a_url_names_it(cli: Any) -> None:
    """libpq's own URIs write a Unix socket's folder percent-encoded where the host goes
    (``postgresql://ometer@%2Fvar%2Frun%2Fpostgresql/ledger``); SQLAlchemy's take it as a host
    name, which no name service knows."""
    said = _refused(cli, f"postgresql+psycopg://ometer:{SECRET}@%2Fvar%2Frun%2Fpostgresql/ledger")
    assert said.endswith(
        ": a Unix socket's folder goes in ?host= in OMETER_DB_URL "
        "(postgresql+psycopg://user@/ledger?host=/var/run/postgresql), not percent-encoded in "
        "the host's place as libpq's own URIs write it"
    ), said


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("foo=bar", 'invalid connection option "foo": correct or remove it in OMETER_DB_URL'),
        ("sslmode=requires", 'invalid sslmode value: "requires": correct it in OMETER_DB_URL'),
        ("options=-cfoo%3Dbar", f'unrecognized configuration parameter "foo": {_SETTINGS}'),
        (
            "options=-cstatement_timeout%3Dabc",
            f'invalid value for parameter "statement_timeout": "abc": {_SETTINGS}',
        ),
        (
            "options=-cshared_buffers%3D1MB",
            f"cannot be changed without restarting the server: {_SETTINGS}",
        ),
    ],
)
def test_a_connection_option_libpq_has_not_says_to_correct_it(
    cli: Any, pg_server: str | None, query: str, says: str
) -> None:
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    said = _refused(cli, f"{_with_password(pg_server, database='postgres')}?{query}")
    assert said.endswith(says), said


def test_a_user_pg_hba_conf_keeps_out_says_what_to_change(cli: Any, cluster: PgCluster) -> None:
    """``pg_hba.conf`` with no line for the user (or one that rejects it): the server's
    "no pg_hba.conf entry for host ..." named no fix, nor that a server taking only SSL
    connections (``hostssl``) wants ``sslmode=require``."""
    kept_out, rejected = (f"r_{uuid.uuid4().hex[:10]}" for _ in range(2))
    admin = create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for role in (kept_out, rejected):
            conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        (cluster.data / "pg_hba.conf").write_text(
            f"local all all trust\nhost all {rejected} 127.0.0.1/32 reject\n"
            "host all ometer 127.0.0.1/32 trust\n"
        )
        conn.execute(text("SELECT pg_reload_conf()"))
    admin.dispose()
    fix = (
        "the server's pg_hba.conf lets this user in to this database from no address this "
        "machine connects from; add a line for it there (then SELECT pg_reload_conf()), or "
        "correct the user, database and host in OMETER_DB_URL; a line for SSL connections "
        "(hostssl) alone wants sslmode=require in OMETER_DB_URL"
    )
    for role, says in ((kept_out, "no pg_hba.conf entry"), (rejected, "pg_hba.conf rejects")):
        said = _refused(cli, _with_password(cluster.url, username=role, database="postgres"))
        assert f"FATAL:  {says} connection for host" in said or says in said, said
        assert said.endswith(f", no encryption: {fix}"), said


def test_a_user_that_may_not_log_in_or_connect_says_what_to_grant(
    cli: Any, pg_server: str | None
) -> None:
    """A role made NOLOGIN (a group role put in the URL, or a user locked out), and one without
    CONNECT on the database (``REVOKE CONNECT ON DATABASE ... FROM PUBLIC``, a hardened
    site's default): the server's FATAL line named no fix, and the second is no typo."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    from tests.conftest import _fresh_pg_database

    database = make_url(_fresh_pg_database(pg_server)).database
    group, user = (f"r_{uuid.uuid4().hex[:10]}" for _ in range(2))
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {group} NOLOGIN"))
        conn.execute(text(f"CREATE ROLE {user} LOGIN"))
        conn.execute(text(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC"))
    admin.dispose()
    for role, says in (
        (
            group,
            f'role "{group}" is not permitted to log in: the user may not log in (NOLOGIN: a '
            f"group role, or one locked out); let it (ALTER ROLE {group} LOGIN), or name a "
            "user that may in OMETER_DB_URL",
        ),
        (
            user,
            f'permission denied for database "{database}": the user {user} has no CONNECT on '
            f"this database; give it (GRANT CONNECT ON DATABASE {database} TO {user}, as its "
            "owner), or name a user that has it in OMETER_DB_URL",
        ),
    ):
        said = _refused(cli, _with_password(pg_server, username=role, database=database))
        assert said.endswith(says), said


@pytest.fixture
def ssl_cluster(cluster: PgCluster, tmp_path: Any) -> PgCluster:
    """A private server taking SSL, its certificate self-signed for ``db.example.org``."""
    import os
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate with")
    crt, key = cluster.data / "server.crt", cluster.data / "server.key"
    subprocess.run(
        [openssl, "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=db.example.org",
         "-out", str(crt), "-keyout", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    if os.geteuid() == 0:  # the server runs as postgres, and reads its key only if it owns it
        for made in (crt, key):
            shutil.chown(made, "postgres")
    shutil.copy(crt, tmp_path / "root.crt")
    admin = create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("ALTER SYSTEM SET ssl = on"))
        conn.execute(text("SELECT pg_reload_conf()"))
    admin.dispose()
    return cluster


def test_a_server_certificate_that_cannot_be_verified_says_what_to_give(
    cli: Any, ssl_cluster: PgCluster, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sslmode=verify-full``: libpq's "root certificate file ... does not exist" came with
    its fix on a second line, which was cut; "certificate verify failed" and "does not match
    host name" came with none."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.postgresql/root.crt
    base = f"{_with_password(ssl_cluster.url, database='postgres')}?sslmode=verify-full"
    said = _refused(cli, base)
    assert said.endswith(
        "does not exist: sslmode=verify-full (or verify-ca) verifies the server's "
        "certificate, and no root certificate to verify it with is there: give its CA's "
        "certificate (?sslrootcert=/path/to/ca.crt in OMETER_DB_URL, or sslrootcert=system for "
        "this machine's trusted roots), or sslmode=require to encrypt without verifying"
    ), said
    said = _refused(cli, f"{base}&sslrootcert=system")
    assert said.endswith(
        "certificate verify failed: the server's certificate is not signed by a root "
        "certificate sslrootcert gives (in OMETER_DB_URL; ~/.postgresql/root.crt when none "
        "is named): give its CA's certificate there, or sslmode=require to encrypt without "
        "verifying"
    ), said
    said = _refused(cli, f"{base}&sslrootcert={tmp_path / 'root.crt'}")
    assert said.endswith(
        'does not match host name "127.0.0.1": the server\'s certificate is for another '
        "name: give the host by the name its certificate holds in OMETER_DB_URL, or "
        "sslmode=verify-ca to verify the certificate but not the name"
    ), said
