"""Where ollama-meter keeps its files when not told otherwise: the user's data directory."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO

from ollama_meter._kinds import SQLITE, sqlite_kind
from ollama_meter.errors import ConfigError

APP_NAME = "ollama-meter"


def existing_file(path: Path) -> Path:
    """``path`` made absolute (not resolved: a link switched is the same file); ValueError
    saying why when it is no file that exists."""
    try:
        if path.is_file():  # False for most errors, but not a name too long
            return path.absolute()
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    raise ValueError(f"{str(path)!r} does not exist or is not a file")


def default_data_dir() -> Path:
    """The user's data folder for ometer; ConfigError when this user has none to find (a
    container's ``--user`` uid with no HOME and no entry in the user database)."""
    import platformdirs

    try:
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    except RuntimeError:  # platformdirs: "could not determine the home directory"
        raise ConfigError(
            "ometer keeps its ledger and spool in this user's data folder unless told "
            "otherwise, and this user has no home folder: HOME is unset or not absolute, and "
            f"uid {os.getuid()} has no entry in the user database. Set HOME, or XDG_DATA_HOME, "
            "to a folder ometer may write (for a SQLite ledger, giving its path with "
            "OMETER_DB_URL or --db is enough)"
        ) from None


def read_bounded(path: Path | BinaryIO, *, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (a file, or a pipe read to its end; or a stream already open,
    stdin), if at most ``limit``; ValueError saying why not, in one line. Read with a bound:
    a device (``/dev/zero``) or a file far too big for ``what`` would fill the memory first."""
    try:
        if isinstance(path, Path):
            with path.open("rb") as file:
                content = file.read(limit + 1)
        else:
            content = path.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    if len(content) > limit:
        raise ValueError(
            f"holds more than {limit // 2**20} MiB, more than any {what} (is it the right file?)"
        )
    return content


def discard(path: Path) -> None:
    """Remove the temp file a failed write may have left. Never raises: the removal fails
    for the same reason the write did (a name too long, a file where a folder should be),
    and the error to show is the write's."""
    with contextlib.suppress(OSError):
        path.unlink()


def written_through(path: Path) -> Path | None:
    """Where a write to ``path`` by a temp file renamed into place must go instead, or None.

    A device, pipe or socket (``/dev/stdout``, ``/dev/null``, a FIFO) is written into:
    renaming a file over it would replace the device itself, for everyone when run as
    root. A link is followed, so the file it names is replaced and the link stays; links
    that loop name no file: an OSError (ELOOP), and nothing is replaced.
    None: ``path`` is a file of its own, or nothing yet, and is replaced by a rename.
    """
    try:
        # Through any link first: /dev/stdout names /proc/self/fd/1, which names the pipe
        # (``pipe:[123]``, a name no file has), so resolving it found no file there yet.
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return path
    try:
        link = path.is_symlink()
    except OSError:  # a name too long, say: the write says so in the system's words
        return None
    if link:
        named = resolved(path)  # the file it names, even one not there yet
        return written_through(named) or named
    return None


def resolved(path: Path) -> Path:
    """``path.resolve()``, but links that loop are an OSError (ELOOP), as Python 3.13 raises
    it, for the caller to say as it says a write that fails: before 3.13 it was a
    RuntimeError, which reached the user as "unexpected RuntimeError ... a bug in ometer"
    (``ometer db backup loop``, ``--out loop``)."""
    try:
        return path.resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def sqlite_url_problem(backend: str, database: str | None, options: bool) -> str | None:
    """Why a database URL (its backend, ``database``, whether it has ``options``: a query
    string) cannot be a SQLite ledger, or None (also for other backends). ometer sets
    SQLite's options itself, and a folder named after a ``file:`` URI would be made
    beside the current directory."""
    if backend != "sqlite":
        return None
    if database in (None, "", ":memory:"):
        return "is an in-memory SQLite database, which keeps nothing once the command ends"
    if options:
        return "takes no options (?...): ometer sets SQLite's own"
    if database.startswith("file:"):
        return "is a SQLite URI (file:...), not a file's path"
    if "\x00" in database:
        return "holds a NUL, which no file name can"
    if database.endswith("/") or not Path(database).name:
        return "names a folder, not a file"
    return None


def sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (a file just renamed into it): a rename is in
    the folder's entry, which a power cut can lose while the file's own bytes were synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # a file system whose folders cannot be synced (some network ones)
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


NAME_MAX = 255
"""The longest file name, in bytes, most file systems take (ext4, XFS, Btrfs, tmpfs)."""


def temp_beside(target: Path, end: str, *, room: int = 0) -> Path:
    """A hidden temp name of this process's own beside ``target``: ``.NAME.PID.RANDOM{end}``,
    within the longest name a folder takes with ``room`` bytes more after it (what SQLite
    adds, ``-journal``). A target name near that length is cut short in the temp name: the
    22 bytes added to one of 233 to 255 made a name no folder takes, and a report or bill
    whose own name was fine was refused as "longer than the file system takes"."""
    mark = f".{os.getpid()}.{secrets.token_hex(4)}{end}"
    cut = NAME_MAX - 1 - len(mark) - room
    # The name's own bytes (os.fsencode): one that is not UTF-8 arrives with surrogates in it.
    return target.with_name(f".{os.fsdecode(os.fsencode(target.name)[:cut])}{mark}")


STALE_S = 3600
"""How long a temp file whose process is gone must have been left untouched to be swept."""


def sweep_killed(target: Path, end: str, beside: tuple[str, ...] = ()) -> None:
    """Remove the temp files (:func:`temp_beside`'s, ending ``end``, or that and one of
    ``beside``: what SQLite keeps beside a copy) that earlier writes of ``target`` left when
    killed: ``kill -9``, a power cut, the OOM killer ran nothing to remove them, and each is
    a whole or half a report, bill or ledger copy, hidden beside it, one more each time.

    Only a file whose process is gone from this host and that nobody wrote for an hour: a
    live write's (here, or another host's on a shared folder) is written to all along.
    """
    name = os.fsencode(target.name)
    try:
        left = [path for tail in ("", *beside) for path in target.parent.glob(f".*{end}{tail}")]
    except OSError:
        return
    room = max(map(len, beside), default=0)
    for path in left:
        stem, _, rest = path.name.rpartition(end)
        head, pid, mark = [*stem[1:].rsplit(".", 2), "", ""][:3]
        if rest not in ("", *beside) or not head:
            continue
        # its name whole, or cut short to fit (temp_beside): then as long as a name can be
        cut = len(os.fsencode(stem + end)) == NAME_MAX - room
        if name != os.fsencode(head) and not (cut and name.startswith(os.fsencode(head))):
            continue
        if not pid.isdigit() or len(mark) != 8 or mark.strip("0123456789abcdef"):
            continue
        if left_by_the_killed(path, pid):
            discard(path)


def left_by_the_killed(path: Path, pid: str) -> bool:
    """Whether the temp file ``path`` that process ``pid`` wrote was left by a write killed:
    its process gone from this host, and nobody wrote the file for :data:`STALE_S`."""
    if not pid.isdigit():
        return False
    try:
        if time.time() - path.stat().st_mtime < STALE_S:
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive under another user, or gone already: not ours to judge
        return False
    return False


def replace_file(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` through a temp file of its own renamed over it:
    readers see the old file or the new one, never half, and a power cut just after leaves
    one of them whole (the bytes are synced before the rename, the folder after it).

    The file it replaces gives the new one its mode, and its owner and group where this
    process may set them: a bill kept from other users (``chmod 600``) stays so when
    written again. Until renamed the temp file is its owner's alone. Raises OSError; a
    temp file is never left behind (nor on Ctrl-C), and those of runs killed outright
    (``kill -9``) are swept by the next (:func:`sweep_killed`).
    """
    # A name of its own: two runs writing one file (cron overlapping a manual run) must not
    # write into each other's temp file and rename a mix, or the other's half, into place.
    sweep_killed(target, ".tmp")
    tmp = temp_beside(target, ".tmp")
    try:
        before: os.stat_result | None = target.stat()
    except OSError:
        before = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if before else 0o666)
        with open(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            if before is not None:
                with contextlib.suppress(OSError):  # not ours to give away: keep ours
                    os.fchown(fd, before.st_uid, before.st_gid)
                os.fchmod(fd, stat.S_IMODE(before.st_mode))
            os.fsync(fd)
        tmp.replace(target)
    except BaseException:  # an OSError, or Ctrl-C, SIGTERM: no temp file left beside it
        discard(tmp)
        raise
    sync_folder(target.parent)


def first_bytes(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file at ``path``, read without closing a descriptor
    of a file this process has open: POSIX drops every lock a process holds on a file when
    it closes any descriptor of it, its SQLite connections' too. Another process then took
    itself for the ledger's last user and deleted its ``-wal`` and ``-shm`` under this one,
    whose next commits went to a WAL no one else reads. So a descriptor this process has
    open on the file (a SQLite connection's) is read at its offset 0; a file no descriptor
    here has open holds no lock of this process, and is opened and closed as usual, while
    no connection may open it (:data:`OPENING`)."""
    with OPENING:
        found = os.stat(path)
        for fd in _descriptors():
            with contextlib.suppress(OSError):
                seen = os.fstat(fd)
                if (seen.st_dev, seen.st_ino) == (found.st_dev, found.st_ino):
                    return os.pread(fd, size, 0)  # (OSError on one opened for writing only)
        with path.open("rb") as file:
            return file.read(size)


OPENING = threading.RLock()
"""Held while :func:`first_bytes` opens and closes a file of its own, and while a SQLite
connection of this process opens its file: one opened between the look that found no
descriptor of the file here and that close had the lock it took there dropped by the close
(another process could then delete its ``-wal`` and ``-shm`` under it). A fork waits for
it: a child made while another thread held it would wait for it forever."""
os.register_at_fork(before=OPENING.acquire, after_in_parent=OPENING.release)
os.register_at_fork(after_in_child=OPENING.release)


def _descriptors() -> list[int]:
    """This process's open descriptors (Linux's /proc, or /dev/fd elsewhere)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return [int(name) for name in os.listdir(listing) if name.isdigit()]
    return []


_BESIDE = ("-wal", "-shm", "-journal")


def beside_database(path: Path) -> str | None:
    """What file of a database ``path`` is when it is one SQLite keeps beside it ("a SQLite
    database's wal file"), or None: named so and with that database there. Empty (a WAL a
    checkpoint cut to nothing) it is still that database's, which a file renamed over it
    takes from every process using the database."""
    for end in _BESIDE:
        if path.name.endswith(end) and os.path.lexists(path.with_name(path.name[: -len(end)])):
            return f"a SQLite database's {end[1:]} file"
    return None


def database_file(path: Path) -> str | None:
    """What SQLite file ``path`` is ("a SQLite database", "a SQLite database's write-ahead
    log"), or None for any other file, or none there: a report written over one loses what
    no report is worth (a ledger's every span, or the transactions its WAL holds)."""
    if what := beside_database(path):
        return what
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a pipe's open would wait for a writer
            return None
        head = first_bytes(path, len(SQLITE))
    except OSError:
        return None
    return sqlite_kind(head)


def unreachable_ledger(path: Path) -> str | None:
    """Why the file system will not look at the ledger file ``path`` at all, or None
    (there or not: a missing file is made, or said by the command that reads it).

    Path.exists() and is_dir() raise for all but a missing file: a name too long, a folder
    on the way this user may not enter (a 0700 /var/lib/ometer), links that loop were each
    "unexpected ... This is a bug in ometer" in every command.
    """
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # a file on the way is said where the folder would be made
    except OSError as exc:
        why = exc.strerror or str(exc)
        where = "give a ledger this user may reach with OMETER_DB_URL or --db"
        if exc.errno == errno.EACCES:
            why += " (a folder on its way is not this user's to enter)"
            where = f"run this as a user who may, or {where}"
        return f"cannot reach the ledger at {path}: {why}; {where}"
    return None


def control_characters(value: str) -> str | None:
    """Why ``value`` cannot name a file a command makes, or None: a NUL, which no path can
    hold, or a control character in the new file's own name (a paste of two lines, a stray
    ``\\r`` from a script saved on Windows), which ``ls`` shows garbled, no one can type
    back, and a script reading names line by line takes for two. A folder on its way is
    there already: not ours to judge."""
    name = value if "\x00" in value else value.rpartition(os.sep)[2]
    if bad := [char for char in name if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0]:
        return (
            f"{value!r} holds a control character ({bad[0]!r}), which no file name should: "
            "give the name without it"
        )
    return None


def folder_problem(path: Path) -> str | None:
    """Why no file can be written at ``path`` because of its folder, known before any work is
    done, else None: a folder that is not there, or a file where a folder should be. What
    the write meets (permissions, a read-only or full disk) the write says, through
    :func:`cannot_write`."""
    try:
        if stat.S_ISDIR(os.stat(path.parent).st_mode):
            return None
        error = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return None  # a folder this user may not enter, a name too long: the write says
        error = exc
    return cannot_write(path, error)


def cannot_write(path: Path, exc: OSError) -> str:
    """Why the file ``path`` that the user named (``--out``, a backup's target) could not be
    written, from the error the write met, and what to do, in one line after "cannot write
    PATH: ". The system's words ("No such file or directory") say neither which folder nor
    what to do about it."""
    folder = path.parent
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        if on_way := _file_on_the_way(folder):
            return f"{on_way} is a file, not a folder: give a path whose folders are folders"
        if not folder.exists():
            return (
                f"the folder {folder} is not there: make it first (mkdir -p "
                f"{shlex.quote(str(folder))}), or give a file in a folder that is"
            )
        return (
            f"no file can be made in {folder} ({exc.strerror}; /proc and /sys take none): give "
            "a file in a folder on a disk"
        )
    if code == errno.EISDIR:
        return f"{path} is a folder: give the name of a file in it"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"this user (uid {os.geteuid()}) may not make or replace files in {folder} (its "
            "permissions): give a file in a folder this user may write, or run this as a user "
            "who may"
        )
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system: give a file on a disk that can be written"
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "disk" if code == errno.ENOSPC else "disk quota of this user"
        return (
            f"the {what} that holds {folder} is full, and nothing was written: free some space "
            "and run again, or give a file on another disk"
        )
    if code == errno.EFBIG:
        return (
            "the file would pass this process's file size limit (ulimit -f, or LimitFSIZE= in a "
            "systemd unit): raise the limit, or give a file where it is no issue"
        )
    if code == errno.ENAMETOOLONG:
        return "the name is longer than the file system takes: give a shorter one"
    if code == errno.ELOOP:
        return "its links loop and name no file: give another path"
    return exc.strerror or str(exc)


def _file_on_the_way(folder: Path) -> Path | None:
    """The first part of ``folder``'s path that is there and is no folder, or None."""
    for part in reversed([folder, *folder.parents]):
        try:
            mode = os.stat(part).st_mode
        except OSError:
            return None
        if not stat.S_ISDIR(mode):
            return part
    return None
