"""The journal: every call is written down before it goes to Ollama, so a crash leaves a trace.

A process appends one line when a call opens and one when its span is durable
(committed, spooled or quarantined). A gateway that answers before its span is
committed (write-behind) appends the whole span in between, before the answer: a
process killed after answering leaves that span, which whoever opens the ledger
next records as it was (not as interrupted). ``kill -9`` keeps what was appended: the
lines are in the kernel's page cache, not in a buffer of ours. Each process
holds an exclusive ``flock`` on its own file for as long as it lives, and
removes a file it lets go (rewritten, or ended with no call open) before
unlocking it; a file still at its path that can be locked by someone else
belongs to a dead process, and its opened but never closed calls are the ones
whose end is unknown. A line that says no call
(damaged, or noted by a version of ometer this one cannot read) is kept in the
quarantine for a human, never dropped unsaid; a field a later version notes is left out.

Cost: two small appends per call, no fsync (a crash of the process loses
nothing; only a power cut could, and the ledger's own WAL is as exposed). Lines are
made by msgspec's encoder, loaded with the first (the standard library's took five times as
long, about 2% of a gateway's call), and read back by ``json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ollama_meter._forks import renew_after_fork
from ollama_meter.ledger._beside import give_to_folder, make_folder
from ollama_meter.ledger._spool import span_json, write_atomically
from ollama_meter.records import SpanRecord, Usage

log = logging.getLogger("ollama_meter.ledger")

ROTATE_BYTES = 4 * 1024 * 1024
_OPEN_FIELDS = (
    "id", "trace_id", "span_id", "started_at", "tenant", "department", "user", "tags",
    "source", "operation", "upstream_host", "request_model", "stream", "currency",
)  # fmt: skip
"""What is known of a call when it opens: enough to charge an interrupted span to its caller."""
"""A journal is rewritten with only its open calls once it grows past this."""
_NOTED_ALWAYS = tuple(name for name in _OPEN_FIELDS if name not in ("user", "tags"))
_PLACEHOLDERS: dict[str, Any] = dict.fromkeys(_NOTED_ALWAYS)
_UNKNOWN_YET = {
    name: value
    for name, value in span_json(SpanRecord(**_PLACEHOLDERS)).items()
    if name not in _OPEN_FIELDS
}
"""The columns of a span nothing is known of yet but what its call's opening noted."""

_ASCII = json.JSONEncoder(ensure_ascii=True, default=str)
"""For what msgspec cannot write (a text UTF-8 cannot encode, which storable spans hold none of)."""


@cache
def _encoder() -> Callable[[Any], bytes]:
    import msgspec  # loaded with the first call's line: ``ometer log`` and the like write none

    return msgspec.json.Encoder(enc_hook=str).encode


def _line(entry: dict[str, Any]) -> bytes:
    """``entry`` as one line of the journal (JSON, as ``json`` reads it)."""
    try:
        return _encoder()(entry) + b"\n"
    except Exception:  # a text UTF-8 cannot encode, a hook's own failure: escaped
        return _ASCII.encode(entry).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Orphan:
    """A call a dead process opened and never closed, with what was known when it opened;
    ``final``: the call had ended and ``span`` is its whole span, only its commit was lost."""

    span: SpanRecord
    input_estimate: int
    final: bool = False
    leases: tuple[str, ...] = ()
    """The budget lease rows the call was admitted against (its dead process's)."""
    bound: Usage | None = None
    """What the call's hard budgets held for it, as usage: its charge, Ollama's work unknown."""


class Journal:
    """This process's journal file in ``directory`` (made on the first call)."""

    def __init__(self, directory: Path, quarantine_dir: Path | None = None) -> None:
        """``quarantine_dir``: where lines of a dead process's file that cannot be read are
        kept for a human (``quarantine/`` beside ``directory`` when not given)."""
        self.directory = directory
        self.quarantine_dir = quarantine_dir or directory.with_name("quarantine")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._open: dict[str, bytes] = {}
        self._size = 0
        self._inode = (0, 0)  # the file's, as it was opened (:meth:`_moved`)
        self._torn = False  # the file ends in a line cut short (it could not be cut off)
        self._warned = False
        renew_after_fork(self)

    def _after_fork(self) -> None:
        """A forked child keeps a journal of its own, from its first call.

        Its calls written in the parent's file were lost with it: the parent, ending well,
        removes its file, and rewrites it with only its own open calls as it grows. The
        child's copy of the descriptor is closed; the parent's lock on the file stays."""
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._path = None
        self._open = {}
        self._size = 0
        self._torn = False

    def opened(
        self,
        span: SpanRecord,
        input_estimate: int,
        leases: tuple[str, ...] = (),
        bound: Usage | None = None,
    ) -> None:
        """Note a call about to go upstream, with the budget lease rows that hold its bound
        and the usage that bound prices. Best effort: a failure is logged, never raised."""
        entry: dict[str, Any] = {"o": span_json(span, _OPEN_FIELDS), "in": input_estimate}
        if leases:
            entry["l"] = list(leases)
        if bound is not None:
            entry["b"] = [getattr(bound, name) for name in _BOUND]
        with self._lock:
            self._note(span.id, _line(entry), moved=self._removed)

    def noted(self, span_id: str) -> bool:
        """Whether the call ``span_id`` was noted here as opened and not yet closed."""
        return span_id in self._open

    def finished(self, span: SpanRecord) -> bool:
        """Note a call's whole span before its commit (the gateway answers first); False
        when it could not be written (then commit the span before answering)."""
        line = _line({"f": span_json(span)})
        with self._lock:  # a call never opened here: nothing would recover it
            return span.id in self._open and self._note(span.id, line)

    def _note(self, span_id: str, line: bytes, moved: Callable[[], bool] | None = None) -> bool:
        """Append ``line``, the one a rotation keeps of the open call ``span_id`` (lock held);
        False (and a warning, once) when it could not be written. ``moved``: how to tell the
        file is no longer where other processes look (then it is made again there)."""
        try:
            if self._fd is not None and (moved or self._moved)():
                self._rotate()
            self._append(line)
        except OSError as exc:
            self._warn(exc)
            return False
        self._open[span_id] = line
        return True

    def closed(self, span_ids: list[str]) -> None:
        """Note that these calls' spans are durable; ids never opened here are ignored."""
        with self._lock:
            known = [i for i in span_ids if self._open.pop(i, None) is not None]
            if not known or self._fd is None:
                return
            try:
                self._append(b"".join(b'{"c":"%s"}\n' % i.encode() for i in known))
                if self._size > ROTATE_BYTES:
                    self._rotate()
            except OSError as exc:
                self._warn(exc)

    def _append(self, data: bytes) -> None:
        """Append ``data`` whole, or not at all (OSError).

        A write to a full disk fills the file's last block and returns a short count
        instead of failing: the line would be taken for noted while half of it was, and
        the next line appended would be glued to that half, both unreadable."""
        if self._fd is None:
            self._start()
        fd = self._fd
        assert fd is not None
        if self._torn:  # a cut line stayed: end it, so it takes no whole line with it
            data = b"\n" + data
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError:
            if done:
                self._torn = True
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - done)
                    self._torn = False
            raise
        self._torn = False
        self._size += done

    def _removed(self) -> bool:
        """Whether this process's file was removed (its folder cleaned away, by hand or a
        temporary folder's cleaner): checked as a call opens, by one ``fstat`` (under 1 µs)."""
        assert self._fd is not None
        return os.fstat(self._fd).st_nlink == 0

    def _moved(self) -> bool:
        """Whether this process's file is no longer at its path (removed, moved away with its
        folder, a copy put in its place): its lines would go where no other process looks,
        and a ``kill -9`` lose the calls answered and not yet committed. Checked before a
        call's whole span is noted, which its answer waits for: one ``stat`` (about 2 µs)."""
        assert self._path is not None
        try:
            at = os.stat(self._path)
        except OSError:
            return True
        return (at.st_ino, at.st_dev) != self._inode

    def _start(self) -> None:
        make_folder(self.directory)
        path = self.directory / f"{os.getpid()}-{os.urandom(4).hex()}.journal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        give_to_folder(fd, self.directory)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.fstat(fd)
        self._inode = (held.st_ino, held.st_dev)
        self._fd, self._path, self._size, self._torn = fd, path, 0, False
        # The calls still open (a rotation; a file made again after one that could not be):
        # each noted here too, or a kill -9 would leave them only where no one looks.
        for line in self._open.values():
            self._append(line)

    def _rotate(self) -> None:
        """Start a new file holding only the calls still open, then drop the old one (and what
        is at its path: a copy put back there would be taken for a dead process's file)."""
        old_fd, old_path = self._fd, self._path
        self._fd = None
        self._start()
        # Removed while still locked: once let go, a file at its path would look like a dead
        # process's, and another process recovering would record the calls open in it.
        if old_path is not None:
            old_path.unlink(missing_ok=True)
        if old_fd is not None:
            os.close(old_fd)

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "cannot write the call journal in %s (%s): a crash of this process would "
                "leave no trace of its calls in flight",
                self.directory,
                exc,
            )

    def close(self) -> None:
        """Give the file up; with no call open it is removed."""
        with self._lock:
            if self._fd is None:
                return
            if not self._open and self._path is not None:  # removed while still locked
                self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = self._path = None

    # -- recovery ------------------------------------------------------------------------

    @contextlib.contextmanager
    def orphans(self, *, finals_only: bool = False) -> Iterator[list[Orphan]]:
        """Calls left open in the journals of dead processes; their files go once handled.

        The caller records the orphans inside the ``with``; if it raises, the files stay
        for the next try. Files of live processes (this one included) are locked, so
        they are skipped. ``finals_only``: only the calls whose whole span was noted
        (anyone can record those, they need no prices); a file that notes others stays
        for a meter, which records its spans again (a no-op by id) with the rest.
        """
        try:
            paths = sorted(self.directory.glob("*.journal"))
        except OSError:
            paths = []
        held: list[tuple[int, Path, list[bytes] | None]] = []
        found: dict[str, Orphan] = {}
        try:
            for path in paths:
                if path == self._path:
                    continue
                try:
                    # Never a link followed, nor a wait: a named pipe or a link to /dev/zero
                    # named like a journal would hold every process that meters at start.
                    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    log.warning("%s is not a call journal ometer wrote; left alone", path)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue  # its process is alive
                if os.fstat(fd).st_nlink == 0:
                    # Removed since this opened it, by a live process that rewrote it or ended
                    # well, or by another recovery that recorded it: no dead process's file.
                    os.close(fd)
                    continue
                opened, unreadable = _open_calls(fd)
                stays: list[bytes] | None = unreadable
                if finals_only and (unreadable or any(not o.final for o in opened.values())):
                    stays = None  # the file stays, for a meter
                    opened = {i: o for i, o in opened.items() if o.final}
                held.append((fd, path, stays))
                found.update(opened)
            yield list(found.values())
            for _, path, lines in held:
                if lines is not None and (not lines or self._keep_unreadable(path, lines)):
                    path.unlink(missing_ok=True)
        finally:
            for fd, _, _ in held:
                os.close(fd)

    def _keep_unreadable(self, path: Path, lines: list[bytes]) -> bool:
        """The lines of a dead process's ``path`` no call can be read from, kept for a human;
        False when they cannot be (the file then stays, and is read again next time)."""
        target = self.quarantine_dir / f"{path.name}.unreadable"
        try:
            make_folder(self.quarantine_dir)
            write_atomically(target, b"".join(line + b"\n" for line in lines))
        except OSError as exc:
            log.error(
                "call journal %s: %d line(s) cannot be read, and cannot be kept in %s (%s); "
                "the file stays",
                path,
                len(lines),
                self.quarantine_dir,
                exc,
            )
            return False
        log.error(
            "call journal %s: %d line(s) cannot be read (damaged, or noted by another version "
            "of ometer), so the calls they note are not recorded as interrupted: kept them in %s",
            path,
            len(lines),
            target,
        )
        return True


def _open_calls(fd: int) -> tuple[dict[str, Orphan], list[bytes]]:
    """The calls the journal open at ``fd`` notes as opened and never closed, and the lines
    that say nothing readable (damaged, or noted by a version of ometer this one cannot read)."""
    opened: dict[str, Orphan] = {}
    unreadable: list[bytes] = []
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError:
        return opened, unreadable
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            if "c" in entry:
                opened.pop(str(entry["c"]), None)
                continue
            if "f" in entry:
                if not isinstance(entry["f"], dict):
                    raise ValueError("not an object")
                from ollama_meter.ledger._line import span_from_row  # msgspec: loaded if needed

                span = span_from_row(entry["f"])
                was = opened.get(span.id)
                leases = () if was is None else was.leases
                opened[span.id] = Orphan(span, span.input_tokens, final=True, leases=leases)
                continue
            estimate = entry.get("in", 0)
            if type(estimate) is not int:
                raise ValueError(f"the prompt's estimate {estimate!r} is not a count")
            leases = entry.get("l", [])
            if not isinstance(leases, list) or not all(isinstance(i, str) for i in leases):
                raise ValueError(f"the leases {leases!r} are not row ids")
            span = _opened_span(entry["o"])
            opened[span.id] = Orphan(span, estimate, leases=tuple(leases), bound=_bound(entry))
        except (ValueError, TypeError, KeyError, RecursionError):
            unreadable.append(line)
    return opened, unreadable


def _opened_span(noted: object) -> SpanRecord:
    """The span of a call as its opening noted it, every field checked as a spool line's
    is; what a later version notes besides is left out. ValueError when it is no call."""
    if not isinstance(noted, dict):
        raise ValueError("not an object")
    if missing := [name for name in _NOTED_ALWAYS if name not in noted]:
        raise ValueError(f"no {missing[0]}")
    known = {name: value for name, value in noted.items() if name in _OPEN_FIELDS}
    from ollama_meter.ledger._line import span_from_row

    return span_from_row({**_UNKNOWN_YET, **known})


_BOUND = ("input_tokens", "output_tokens", "prompt_eval_ns", "eval_ns", "load_ns")
"""The usage a call's bound prices, as an opened call's line notes it (``b``)."""


def _bound(entry: dict[str, Any]) -> Usage | None:
    """The usage an opened call's line notes its hard budgets held for it; ValueError when
    it says something else (a line from before, with none: None)."""
    noted = entry.get("b")
    if noted is None:
        return None
    if not (
        isinstance(noted, list)
        and len(noted) == len(_BOUND)
        and all(type(n) is int and n >= 0 for n in noted)
    ):
        raise ValueError(f"the bound {noted!r} is not {len(_BOUND)} counts")
    return Usage(**dict(zip(_BOUND, noted, strict=True)))
