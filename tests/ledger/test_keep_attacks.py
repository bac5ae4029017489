"""`db backup`, `db prune` and `db export` attacked again: what a ledger's upkeep may not do to
it, to its copy or to its reports, whatever state the files beside it are in."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import create_engine, make_url, text

from ollama_meter.errors import ValidationError
from ollama_meter.ledger import Ledger, backup, close_ledgers, export_lines, prune
from tests._pg import run_client
from tests.ledger.test_transfer import NOW, _spans

ENDS = ["-wal", "-shm", "-journal"]


def _restored_beside_a_killed_gateways_wal(folder: Path) -> tuple[Path, dict[str, bytes]]:
    """A ledger restored from its backup (``cp backup.db ledger.db``) while the WAL of a
    killed gateway, holding five spans more, stayed beside it; the files there, as bytes."""
    path, copy, wal = folder / "ledger.db", folder / "backup.db", folder / "ledger.db-wal"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.record(_spans(3))
    backup(ledger, copy)
    ledger.record(_spans(8)[3:])  # in the WAL: the ledger stays open, as a gateway's does
    left = wal.read_bytes()
    assert len(left) > 32  # frames, not only the header
    ledger.dispose()  # the last connection checkpoints the WAL: as killed, it would not have
    copy.replace(path)
    wal.write_bytes(left)
    (folder / "ledger.db-shm").unlink(missing_ok=True)
    return path, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_backup_of_a_ledger_with_another_files_wal_beside_it_changes_nothing(
    cli: Any, tmp_path: Path
) -> None:
    """Every command refuses a ledger with a WAL beside it that is not its own, and changes
    nothing; `db backup` opened the ledger with a connection of its own, past that check:
    SQLite replayed the killed gateway's WAL into the restored ledger (taking back the spans
    it was restored to be rid of) and into the copy, and removed the WAL, so the next
    command had nothing left to refuse. Now it is refused as everywhere else."""
    folder = tmp_path / "srv"
    folder.mkdir()
    path, before = _restored_beside_a_killed_gateways_wal(folder)
    done = cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}")
    assert done.code == 1 and "ledger.db-wal is left from another file" in done.stderr
    assert not (tmp_path / "copy.db").exists() and not list(tmp_path.glob(".*partial*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    (folder / "ledger.db-wal").rename(tmp_path / "old-wal")  # as the message says
    assert cli("db", "backup", str(tmp_path / "copy.db"), "--db", f"sqlite:///{path}").code == 0
    assert Ledger(f"sqlite:///{tmp_path / 'copy.db'}").count() == 3


@pytest.mark.parametrize("command", [["log"], ["report"], ["db", "backup", "copy.db"]])
def test_a_ledger_named_through_a_link_with_another_files_wal_beside_it_is_refused(
    cli: Any, tmp_path: Path, command: list[str]
) -> None:
    """/var/lib/ometer/ledger.db a link to the file on a data disk: SQLite keeps the WAL
    beside the file the link names, and the check looked beside the link, where there is
    none. The killed gateway's WAL was replayed into the restored ledger (its spans taken
    back, the WAL gone); refused now, naming the WAL that is there."""
    folder = tmp_path / "data"
    folder.mkdir()
    path, before = _restored_beside_a_killed_gateways_wal(folder)
    link = tmp_path / "ledger.db"
    link.symlink_to(path)
    done = cli(*command, "--db", f"sqlite:///{link}")
    assert done.code == 1, done.stdout
    assert f"{path}-wal is left from another file: {path} keeps no WAL" in done.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    (folder / "ledger.db-wal").rename(tmp_path / "old-wal")  # as the message says
    assert Ledger(f"sqlite:///{link}").count() == 3


def test_a_backup_onto_a_ledger_in_use_is_refused_and_the_ledger_keeps_its_spans(
    cli: Any, tmp_path: Path
) -> None:
    """`ometer db backup /var/lib/ometer/ledger.db --db dev.db` (the arguments the wrong way
    round, or the wrong path) renamed the copy over the production ledger while a gateway
    had it open: exit 0 and 'backed up', the gateway's spans since went to the spool (the
    new file had its old WAL beside it), and the ledger's own file, with every span it held,
    was gone once the gateway stopped."""
    prod, dev = tmp_path / "prod.db", tmp_path / "dev.db"
    gateway = Ledger(f"sqlite:///{prod}")
    gateway.record(_spans(20))
    Ledger(f"sqlite:///{dev}").record(_spans(3, seed=5))
    before = prod.stat().st_ino
    for target in (prod, tmp_path / "link.db"):
        if target.name == "link.db":
            target.symlink_to(prod)
        done = cli("db", "backup", str(target), "--db", f"sqlite:///{dev}")
        assert done.code == 2, done.stdout
        assert f"error: {prod}-wal is beside {prod}: that is a database some process" in (
            done.stderr
        )
    assert prod.stat().st_ino == before and not list(tmp_path.glob(".*partial*"))
    gateway.record(_spans(23)[20:])
    assert gateway.count() == 23 and not (tmp_path / "prod.db.spool").exists()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(left=st.sets(st.sampled_from(["-wal", "-shm", "-journal"]), min_size=1))
def test_a_backup_never_lands_beside_another_files_wal_or_journal(
    tmp_path_factory: pytest.TempPathFactory, left: set[str]
) -> None:
    """A killed process's WAL, shared memory or hot journal beside the target belongs to the
    file that was there: SQLite replays it into whatever file has that name next, so a copy
    put there was mixed with it (or refused by every ometer command that opened it)."""
    folder = tmp_path_factory.mktemp("beside")
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}")
    ledger.record(_spans(3))
    target = folder / "copy.db"
    target.write_bytes(b"an older copy")
    for end in left:
        Path(f"{target}{end}").write_bytes(b"x" * 100)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(
        ValidationError, match=f"copy.db{sorted(left, key=ENDS.index)[0]} is beside"
    ):
        backup(ledger, target)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == files
    ledger.dispose()


@pytest.mark.parametrize("loop", [["self"], ["a", "b"], ["a", "b", "c"]])
@pytest.mark.parametrize(
    "command",
    [
        ["db", "backup"],
        ["chargeback", "--month", "2026-11", "--out"],
        ["report", "-f", "csv", "--out"],
    ],
)
def test_a_file_to_write_that_is_links_in_a_loop_is_one_line_and_left_as_it_is(
    cli: Any, tmp_path: Path, command: list[str], loop: list[str]
) -> None:
    """`ometer db backup a` or `--out a`, where a links to b and b back to a (or a to
    itself): Python's resolve() raised RuntimeError on the loop, said as 'unexpected
    RuntimeError ... This is a bug in ometer' (exit 70). The links stay as they are."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(db).record(_spans(3))
    folder = tmp_path / "out"
    folder.mkdir()
    for name, to in zip(loop, [*loop[1:], loop[0]], strict=True):
        (folder / name).symlink_to(to)
    done = cli(*command, str(folder / loop[0]), "--db", db)
    assert done.code == 1, done.stderr
    assert done.stderr.endswith(
        f"{folder / loop[0]}: its links loop and name no file: give another path\n"
    )
    assert "unexpected" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(loop)
    assert all((folder / name).is_symlink() for name in loop)


def _pg_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A PostgreSQL client program (``pg_dump``, ``pg_restore``) from the machine's install."""
    done = run_client(argv)
    if done is None:
        pytest.skip(f"no {argv[0]} on this machine")
    return done


def test_the_pg_dump_command_backs_up_a_ledger_in_a_schema_of_its_own_and_only_it(
    cli: Any, pg_server: str | None, tmp_path: Path
) -> None:
    """The README's advice for a shared database (a schema of ometer's own, a role of its
    own): the printed `pg_dump` dumped the whole database, so as printed it failed ('permission
    denied for schema hr') at the other app's schema, and run by a superuser it put that
    app's tables and rows in the ledger's backup. It dumps the ledger's schema now, and the
    dump restored into a new database answers byte for byte the same."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server available")
    mark = uuid.uuid4().hex[:10]
    app, other, shared, restored = (f"{n}_{mark}" for n in ("app", "hr", "shared", "restored"))
    admin = create_engine(f"{pg_server}/postgres", isolation_level="AUTOCOMMIT")

    def as_role(role: str, database: str, schema: str | None = None) -> str:
        url = make_url(f"{pg_server}/{database}").set(username=role)
        if schema is not None:
            url = url.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {app} LOGIN"))
        conn.execute(text(f"CREATE ROLE {other} LOGIN"))
        conn.execute(text(f"CREATE DATABASE {shared}"))
        conn.execute(text(f"CREATE DATABASE {restored} OWNER {app}"))
    try:
        setup = create_engine(f"{pg_server}/{shared}", isolation_level="AUTOCOMMIT")
        with setup.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "Meter-x" AUTHORIZATION {app}'))
            conn.execute(text(f"CREATE SCHEMA hr AUTHORIZATION {other}"))
            conn.execute(text("CREATE TABLE hr.salaries (name text, pay int)"))
            conn.execute(text(f"ALTER TABLE hr.salaries OWNER TO {other}"))
            conn.execute(text("INSERT INTO hr.salaries VALUES ('bob', 123456)"))
        setup.dispose()
        url = as_role(app, shared, '"Meter-x"')
        Ledger(url, zone="Europe/Berlin").record(_spans(60))
        dump = tmp_path / "ledger.dump"
        printed = cli("db", "backup", str(dump), "--db", url)
        assert printed.code == 2, printed.stderr
        dumped = _pg_run(shlex.split(printed.stdout))
        assert dumped.returncode == 0, dumped.stderr
        listed = _pg_run(["pg_restore", "--list", str(dump)]).stdout
        assert "salaries" not in listed and " hr " not in listed and "spans" in listed
        into = as_role(app, restored, '"Meter-x"')
        loaded = _pg_run(["pg_restore", "--dbname", into.replace("+psycopg", ""), str(dump)])
        assert loaded.returncode == 0, loaded.stderr
        asked = ("report", "--period", "2026-11", "--by", "tenant,department,user,model,day")
        assert cli(*asked, "--db", into).stdout == cli(*asked, "--db", url).stdout
        assert b"".join(export_lines(Ledger(into))) == b"".join(export_lines(Ledger(url)))
    finally:
        close_ledgers()
        with admin.connect() as conn:
            for database in (shared, restored):
                conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            for role in (app, other):
                conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_a_prune_through_a_link_counts_the_wal_beside_the_file_it_names(tmp_path: Path) -> None:
    """The sizes a prune says ('7.3 MB → 5.1 MB') left out the WAL of a ledger named through
    a link: it was looked for beside the link, and SQLite keeps it beside the file."""
    real, link = tmp_path / "data.db", tmp_path / "ledger.db"
    link.symlink_to(real)
    writer = Ledger(f"sqlite:///{real}")  # a gateway's, open: its WAL stays
    writer.record(_spans(300))
    wal = Path(f"{real}-wal")
    assert wal.stat().st_size > 100_000
    on_disk = real.stat().st_size + wal.stat().st_size
    assert prune(Ledger(f"sqlite:///{link}"), 30, now=NOW).bytes_before == on_disk
    writer.dispose()


def test_a_backup_syncs_the_folder_it_renames_its_copy_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy's bytes were synced (SQLite's commit) but not the rename that gives it its
    name: a power cut just after "backed up" could leave the folder without the copy."""
    import os

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record(_spans(3))
    (tmp_path / "copies").mkdir()
    target = tmp_path / "copies" / "copy.db"
    synced: list[tuple[str, bool]] = []  # (what was synced, whether the copy had its name)
    fsync = os.fsync

    def watched(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", watched)
    backup(ledger, target)
    assert (str(target.parent), True) in synced
