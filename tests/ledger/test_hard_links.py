"""A SQLite ledger file with a second name: a hard link (``ln`` without ``-s`` makes one), or
the file mounted on its own elsewhere (``mount --bind``, ``docker run -v FILE:...``).

SQLite keeps a WAL database's ``-wal`` and ``-shm`` beside the name it was opened by, so two
processes opening one file by two names each wrote a WAL of their own, neither saw the
other's calls, and the last to checkpoint wrote its pages over the other's: a gateway on
``/var/lib/ometer/ledger.db`` and ``ometer chat --db sqlite:///srv/ledger.db`` (``ln``'d
there) each counted 1,020 of 2,020 spans, and once both closed 1,000 of them were gone for
good, with ``PRAGMA integrity_check`` saying ok.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ollama_meter.errors import LedgerError
from ollama_meter.ledger import Ledger, _mounts
from tests.factories import make_span


def _said(path: Path, names: int) -> str:
    return (
        f"cannot open the ledger at {path}: the file has {names} names (hard links, as `ln` "
        "without -s makes): SQLite keeps a ledger's WAL beside the name it is opened by, so "
        "processes opening it by two names miss each other's calls and write over them. Keep "
        f"one name: remove the others (find / -xdev -samefile {path}), and link to it with "
        "`ln -s` instead"
    )


@pytest.mark.parametrize("names", [2, 3])
def test_a_ledger_with_another_name_is_refused_by_either_name_and_changed_by_none(
    tmp_path: Path, names: int
) -> None:
    (tmp_path / "var").mkdir()
    first = tmp_path / "var" / "ledger.db"
    ledger = Ledger(f"sqlite:///{first}")
    ledger.record([make_span() for _ in range(5)])
    ledger.dispose()
    others = [tmp_path / f"ledger{n}.db" for n in range(1, names)]
    for other in others:
        os.link(first, other)
    before = first.read_bytes()
    for path in (first, *others):
        with pytest.raises(LedgerError) as caught:
            Ledger(f"sqlite:///{path}")
        assert str(caught.value) == _said(path, names)
        assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    assert first.read_bytes() == before
    for other in others:
        other.unlink()
    again = Ledger(f"sqlite:///{first}")
    assert again.count() == 5
    again.dispose()


def test_a_link_made_under_an_open_ledger_keeps_its_spans_in_the_spool(tmp_path: Path) -> None:
    """Linked while a gateway runs: its writes fail from the next connection and spool, and the
    first write once the other name is gone records them."""
    first = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{first}")
    ledger.record([make_span()])
    ledger.engine.dispose()  # the pool's connections end (idle ones are recycled)
    os.link(first, tmp_path / "other.db")
    spooled = [make_span() for _ in range(3)]
    assert set(ledger.record(spooled).values()) == {"spooled"}
    (tmp_path / "other.db").unlink()
    ledger.record([make_span()])
    assert ledger.count() == 5
    ledger.dispose()


def test_a_command_on_a_ledger_with_another_name_is_one_line(cli: Any, tmp_path: Path) -> None:
    first = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{first}").dispose()
    os.link(first, tmp_path / "copy.db")
    done = cli("log", "--db", f"sqlite:///{tmp_path / 'copy.db'}")
    assert done.code == 1
    assert done.stderr == f"error: {_said(tmp_path / 'copy.db', 2)}\n"


def test_a_ledger_file_mounted_on_its_own_is_refused_there(tmp_path: Path) -> None:
    """``docker run -v /srv/ometer/ledger.db:/data/ledger.db``: the container kept its WAL in
    /data, the host's gateway its own in /srv/ometer; two processes each counted 1,001 of
    2,001 spans, and the last to close wrote over the other's."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "in a box").mkdir()  # a blank, which the mount table writes as \\040
    own = tmp_path / "srv" / "ledger.db"
    Ledger(f"sqlite:///{own}").dispose()
    mounted = tmp_path / "in a box" / "ledger.db"
    mounted.touch()
    done = subprocess.run(
        ["mount", "--bind", str(own), str(mounted)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount a file here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(LedgerError) as caught:
            Ledger(f"sqlite:///{mounted}")
        assert str(caught.value) == (
            f"cannot open the ledger at {mounted}: the file is mounted on its own at {mounted} "
            "(mount --bind, or docker run -v FILE:...): SQLite keeps a ledger's WAL beside the "
            "name it is opened by, so the processes on each side miss each other's calls and "
            "write over them, and a container's WAL goes with the container. Mount the "
            "ledger's folder instead"
        )
        assert not Path(f"{mounted}-wal").exists()
    finally:
        subprocess.run(["umount", "-l", str(mounted)], check=False)
    Ledger(f"sqlite:///{own}").dispose()  # the file's own name, with the folder it is in


@pytest.mark.parametrize("kind", ["nfs4", "cifs", "fuse.sshfs"])
def test_a_ledger_on_a_network_file_system_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A home folder on NFS holds the default ledger: ``ometer chat`` on two machines of it
    wrote one file through two WAL indexes (shared memory, which two machines cannot share),
    each over the other's calls, and nothing said that the ledger was shared at all."""
    home = tmp_path / "home"
    table = [(b"/", b"ext4"), (os.fsencode(home), kind.encode()), (b"/proc", b"proc")]
    monkeypatch.setattr(_mounts, "_table", lambda: table)
    path = home / "alice" / ".local" / "share" / "ollama-meter" / "ledger.db"
    for _ in range(2):
        Ledger(f"sqlite:///{path}").dispose()
    Ledger(f"sqlite:///{tmp_path / 'local.db'}").dispose()
    said = [r.getMessage() for r in caplog.records if "network file system" in r.getMessage()]
    assert said == [
        f"the ledger {path} is on a network file system ({kind}): SQLite keeps it whole only "
        "while every process using it runs on one machine, and ometer on another machine using "
        "it (a shared home folder) would write over this one's calls. Give each machine a "
        "ledger of its own (OMETER_DB_URL), or share a PostgreSQL ledger"
    ]
