"""A ledger one service user keeps, that root or an admin of its group touches too: what they
make beside it (the spool, the journal, their files) stays usable by the service user, so
its gateway never loses a span, nor refuses calls, because someone else ran ``ometer``.

The service user is a real process of another uid (``setpriv``), as on a host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.ledger import Ledger
from tests.factories import make_span

SERVICE = 64_201
"""The service user's uid and gid (``ometer serve`` runs as it); no name needed."""

_REPO = Path(__file__).resolve().parents[2]

_AS_GATEWAY = """
import os, sqlite3, sys
sys.path.insert(0, sys.argv[1])
from ollama_meter.ledger import Ledger
from tests.factories import make_span
url = sys.argv[2]
ledger = Ledger(url, wait=0.2)
if sys.argv[3] == "busy":  # another process holds the write lock: the span must be spooled
    blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ledger.journal.opened(make_span(), 5)
    ledger.record([make_span()])
    blocker.execute("ROLLBACK")
    print(ledger.held, len(ledger.spool.pending()))
elif sys.argv[3] == "killed":  # an `ometer report` killed while it had the ledger open
    print(ledger.count())
    sys.stdout.flush()
    os._exit(0)
elif sys.argv[3] == "admin":  # a metered call, and a write refused: spooled
    ledger.journal.opened(make_span(), 5)
    ledger.spool.put([make_span()])
else:
    ledger.record([make_span()])
    print(ledger.count(), len(ledger.spool.pending()))
ledger.dispose()
"""


ADMIN = 64_202
"""An admin's uid and gid, in the service user's group."""


def as_service(*args: str, umask: int = 0o007, uid: int = SERVICE) -> tuple[list[str], str]:
    """What the service user's process (or ``uid``'s) printed, its words split, and its stderr."""
    groups = "--clear-groups" if uid == SERVICE else f"--groups={SERVICE}"
    command = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", groups, "--",
        sys.executable, "-c", f"import os; os.umask({umask}); exec(open(0).read())",
        str(_REPO), *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, input=_AS_GATEWAY, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split(), done.stderr


@pytest.fixture
def shared() -> Iterator[Path]:
    """The service user's folder, group-writable (``/var/lib/ometer``, mode 2770), in a folder
    the service user may reach (pytest's own are root's alone)."""
    if os.geteuid() != 0:
        pytest.skip("running as the service user and as root at once needs root (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="ometer-shared-"))
    top.chmod(0o711)
    try:
        probe = subprocess.run(
            ["setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups", "--",
             sys.executable, "-c", "import ollama_meter"],
            capture_output=True, check=False,
        )  # fmt: skip
        if probe.returncode:
            pytest.skip(f"another user may not run {sys.executable} (it is under a private home)")
        folder = top / "ometer"
        folder.mkdir()
        os.chown(folder, SERVICE, SERVICE)
        folder.chmod(0o2770)
        yield folder
    finally:
        shutil.rmtree(top)


def test_what_root_makes_beside_the_ledger_leaves_the_gateway_its_spool_and_journal(
    shared: Path,
) -> None:
    """Root (umask 077) ran a metered call against the service user's ledger: it made the
    spool and journal folders, root's own, 0700. The gateway's next busy write could not be
    spooled ("Permission denied"): it held the span in memory and refused every new call,
    and its journal (a dead gateway's answered calls) was off."""
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle")[0] == ["1", "0"]
    previous = os.umask(0o077)
    try:
        ledger = Ledger(url)
        ledger.journal.opened(make_span(), 5)  # what `ometer chat` notes first
        ledger.spool.put([make_span()])  # a write of root's refused: spooled
        ledger.dispose()
    finally:
        os.umask(previous)
    printed, said = as_service(url, "busy")
    # Root's spooled span, given to the service user, was recorded as the gateway opened the
    # ledger; the busy write's span is in the spool, none held in memory, the journal kept.
    assert printed == ["0", "1"], said
    assert "kept them in" in said and "cannot write the call journal" not in said
    assert as_service(url, "idle") == (["4", "0"], "")


@pytest.mark.parametrize("folder_mode", [0o2770, 0o770])
def test_what_an_admin_of_its_group_makes_beside_the_ledger_leaves_the_gateway_its_spool(
    shared: Path, folder_mode: int
) -> None:
    """An admin in the service user's group, umask 077, made the spool folder (drwx--S---,
    the admin's): the gateway could not spool, as under root. Made in a folder its group
    may write, the spool lets the group write too, the folder's group (without the setgid
    bit it was the admin's own); the admin's spool file stays the admin's."""
    shared.chmod(folder_mode)
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle")[0] == ["1", "0"]
    assert as_service(url, "admin", umask=0o077, uid=ADMIN)[1] == ""
    printed, said = as_service(url, "busy")
    assert printed == ["0", "1"], said  # the gateway's; the admin's is left for the admin
    assert f"left in the spool for its owner (uid {ADMIN})" in said
    assert "kept them in" in said and "cannot write the call journal" not in said


def test_a_ledger_root_makes_in_the_service_users_folder_is_the_service_users(
    shared: Path, cli: Any
) -> None:
    """Root ran ``ometer db upgrade`` before the first ``ometer serve``: the ledger, and the
    folder made for it, were root's (0600, 0755); the gateway could not open it ("the folder
    ... is read-only to this user")."""
    path = shared / "ledgers" / "ledger.db"
    previous = os.umask(0o022)
    try:
        done = cli("db", "upgrade", "--db", f"sqlite:///{path}")
    finally:
        os.umask(previous)
    assert done.code == 0, done.stderr
    for made in (path, path.parent):
        assert (made.stat().st_uid, made.stat().st_gid) == (SERVICE, SERVICE)
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # umask 022: the group reads
    assert as_service(f"sqlite:///{path}", "idle") == (["1", "0"], "")


def ometer_as(uid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``ometer ARGS`` run by ``uid``, in the service user's group (an admin of it)."""
    command = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={SERVICE}", "--",
        sys.executable, "-m", "ollama_meter", *args,
    ]  # fmt: skip
    env = {**os.environ, "HOME": "/nonexistent", "NO_COLOR": "1", "COLUMNS": "400"}
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=120, env=env, cwd="/"
    )


def test_a_reader_of_the_group_is_told_what_it_may_not_write_and_how_to_act(
    shared: Path,
) -> None:
    """The ledger is its group's to read (0640, folder 2750). ``ometer keys create`` by an
    admin of the group said "the folder ... is read-only to this user ... make it writable":
    the folder was not what kept it from writing (with a gateway running, its -wal and -shm
    are there), the ledger file was, and making the folder writable changed nothing."""
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle", umask=0o027)[0] == ["1", "0"]
    assert oct((shared / "ledger.db").stat().st_mode & 0o777) == oct(0o640)  # as 027 lets it
    shared.chmod(0o2750)
    done = ometer_as(ADMIN, "keys", "create", "-t", "acme", "-d", "sales", "--db", url)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    said = " ".join(done.stderr.split())
    assert (
        f"this user, uid {ADMIN}, may read the ledger file {shared / 'ledger.db'} but not "
        f"write it (owner uid {SERVICE}, group gid {SERVICE}, mode 640)"
    ) in said, said
    assert "run this as its owner, or give its group write (chmod g+w" in said, said
    assert "read-only to this user" not in said
    # Reading it wants its -shm file, which a writer makes: said, when none is there.
    done = ometer_as(ADMIN, "log", "--db", url)
    said = " ".join(done.stderr.split())
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no ometer has it open, and even reading it needs its -shm" in said, said


def test_the_wal_an_admin_of_its_group_leaves_is_the_gateways_to_use(shared: Path) -> None:
    """In a folder without the setgid bit, an admin's ``ometer report`` (umask 077) opened the
    ledger first: SQLite made its -wal and -shm the admin's, of the admin's own group (mode
    660, the ledger's). Killed before it closed them, they stayed, and the gateway could not
    open the ledger at all ("this user may not write ... -wal and -shm")."""
    shared.chmod(0o770)
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle")[0] == ["1", "0"]
    assert as_service(url, "killed", umask=0o077, uid=ADMIN)[0] == ["1"]
    for end in ("-wal", "-shm"):
        left = (shared / f"ledger.db{end}").stat()
        assert (left.st_gid, oct(left.st_mode & 0o777)) == (SERVICE, oct(0o660))
    assert as_service(url, "idle") == (["2", "0"], "")


def test_a_report_by_a_reader_of_the_group_leaves_the_gateway_its_ledger_to_write(
    shared: Path,
) -> None:
    """The ledger is its group's to read (0640) in a folder its group may write (2770). An
    admin's ``ometer report``, no gateway running, made the -wal and -shm the admin's, 0640,
    and could not remove them (a reader checkpoints nothing): from then on every write of the
    gateway was refused ("attempt to write a readonly database") and spooled, for good."""
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle", umask=0o027)[0] == ["1", "0"]
    assert oct((shared / "ledger.db").stat().st_mode & 0o777) == oct(0o640)  # as 027 lets it
    done = ometer_as(ADMIN, "log", "--db", url)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said, said
    assert "no ometer has it open, and even reading it needs its -shm and -wal files" in said
    assert [p.name for p in shared.iterdir()] == ["ledger.db"]  # nothing left beside it
    assert as_service(url, "idle", umask=0o027) == (["2", "0"], "")


def test_a_wal_another_user_left_is_named_with_its_owner_and_how_to_give_it_back(
    shared: Path,
) -> None:
    """-wal and -shm another user's process left, that the service user may not write (made
    before this version, or by hand): the gateway said only "this user may not write the
    ledger file ... or its -wal and -shm files", naming neither which nor whose."""
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle")[0] == ["1", "0"]
    for end in ("-wal", "-shm"):
        left = shared / f"ledger.db{end}"
        left.write_bytes(b"")
        os.chown(left, ADMIN, ADMIN)
        left.chmod(0o600)
    done = ometer_as(SERVICE, "log", "--db", url)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said, said
    wal = shared / "ledger.db-wal"
    assert (
        f"{wal} belongs to uid {ADMIN} (group gid {ADMIN}, mode 600), and this user may not write "
        f"it: give it and {wal.with_name('ledger.db-shm')} to the ledger's owner, as root: "
        f"chown --reference={shared / 'ledger.db'} {wal} {wal.with_name('ledger.db-shm')}"
    ) in said, said


def test_the_wal_root_opens_first_is_the_ledger_owners(shared: Path) -> None:
    """The classic: root's ``ometer report`` (umask 077) opens the ledger before the gateway.
    Its -wal and -shm are the ledger owner's, of the ledger's mode (SQLite gives them so when
    root makes them), and the gateway writes while root still has them open."""
    url = f"sqlite:///{shared / 'ledger.db'}"
    assert as_service(url, "idle")[0] == ["1", "0"]
    previous = os.umask(0o077)
    try:
        ledger = Ledger(url)
        with ledger.read() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM spans").fetchall()
            for end in ("-wal", "-shm"):
                made = (shared / f"ledger.db{end}").stat()
                assert (made.st_uid, made.st_gid, oct(made.st_mode & 0o777)) == (
                    SERVICE, SERVICE, oct(0o660),
                )  # fmt: skip
            assert as_service(url, "idle") == (["2", "0"], "")
        ledger.dispose()
    finally:
        os.umask(previous)


_NO_HOME = (
    "this user has no home folder: HOME is unset or not absolute, and uid 64201 has no entry "
    "in the user database. Set HOME, or XDG_DATA_HOME, to a folder ometer may write"
)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["log"], _NO_HOME),
        (["log", "--db", "postgresql+psycopg://ometer@127.0.0.1:9/ledger"], _NO_HOME),
        (["db", "upgrade", "--db", "sqlite:///{shared}/made/ledger.db"], None),
    ],
    ids=["default ledger", "postgresql's spool", "a ledger's new folder"],
)
def test_a_uid_of_no_user_and_no_home_is_told_to_set_home(
    shared: Path, args: list[str], said: str | None
) -> None:
    """A container's ``--user 64201``, no HOME, no entry in /etc/passwd: every ``ometer``
    command that looked for its data folder said "unexpected RuntimeError: could not
    determine the home directory ... This is a bug in ometer"; so did a PostgreSQL ledger
    (its spool is kept there) and ``db upgrade`` of a SQLite ledger in a new folder (which
    needs no data folder at all)."""
    shared.chmod(0o777)  # the test's service folder: this uid may write it
    command = [
        "setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups", "--",
        sys.executable, "-m", "ollama_meter", *(a.format(shared=shared) for a in args),
    ]  # fmt: skip
    unset = ("HOME", "XDG_DATA_HOME", "OMETER_DB_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=120, cwd="/", env=env
    )
    told = " ".join(done.stderr.split())
    assert "Traceback" not in told and "bug" not in told, told
    if said is None:
        assert done.returncode == 0, told
    else:
        assert done.returncode == 2 and said in told, told


@pytest.mark.parametrize(
    "env",
    [{"HOME": "/nonexistent"}, {"XDG_DATA_HOME": "/dev/null"}],
    ids=["HOME nowhere", "XDG_DATA_HOME a file"],
)
def test_a_service_user_without_a_home_is_told_where_its_default_ledger_cannot_be_made(
    shared: Path, env: dict[str, str]
) -> None:
    """``useradd -M`` makes no home; ``ometer log`` there, from a folder it may not write."""
    command = [
        "setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups", "--",
        sys.executable, "-m", "ollama_meter", "log",
    ]  # fmt: skip
    unset = ("HOME", "XDG_DATA_HOME", "OMETER_DB_URL")
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **env}
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=120, cwd="/", env=env
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said and "bug" not in said, said
    assert said.startswith("error: cannot create the ledger folder /"), said
    assert "give a ledger in a folder ometer may write (OMETER_DB_URL, or --db)" in said
