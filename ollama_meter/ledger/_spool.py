"""The spool: where spans wait when the database cannot take them, so none is lost.

If the ledger stays locked or unreachable past the configured wait, the spans of
that write go to a JSON-lines file (written to a temp name, fsynced, renamed).
The same process records them once a write succeeds again, and any process that
opens the ledger does too. Recording is idempotent, so a crash between recording
and deleting a file only repeats a no-op.

A span the database refuses for its content (which the meter's sanitising should
make impossible) is not retried for ever: it goes to ``quarantine/`` beside the
spool, one file per span with the reason, and a log line says where.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ollama_meter._paths import discard, left_by_the_killed
from ollama_meter.ledger._beside import give_to_folder, make_folder
from ollama_meter.records import SpanRecord, Stored

log = logging.getLogger("ollama_meter.ledger")

_TIMES = ("started_at", "ended_at")
_SETTLED = frozenset({Stored.COMMITTED, Stored.QUARANTINED})
"""Where a drained span may be for its spool file to go: anywhere else, the file keeps it."""


def span_json(span: SpanRecord, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The span's columns (or just ``fields``) as JSON-ready values."""
    row = span.as_row() if fields is None else {name: getattr(span, name) for name in fields}
    for key in _TIMES:
        if row.get(key) is not None:
            row[key] = row[key].isoformat()
    return row


def encode_span(span: SpanRecord) -> str:
    """One JSON line; ASCII so that even text UTF-8 cannot encode survives the trip."""
    return json.dumps(span_json(span), ensure_ascii=True, default=str)


def decode_span(line: str) -> SpanRecord:
    """The span of one spool line, every field checked as ``ometer db import`` checks its
    lines (a hand-edited or damaged line could hold a float amount, a number for a text):
    ValueError saying what is wrong otherwise."""
    try:
        row = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deep to read; a spool line nests one level") from None
    from ollama_meter.ledger._line import span_from_row  # msgspec: loaded for a spool to read

    return span_from_row(row)


def write_private(path: Path, data: bytes) -> None:
    """``data`` in a new file at ``path`` only its owner may read, synced to disk: what the
    spool keeps holds whole spans (prompts and replies, with content capture on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)  # a file left from before keeps its mode through O_CREAT
        give_to_folder(fd, path.parent)
        handle.write(data)
        handle.flush()
        os.fsync(fd)


def write_atomically(path: Path, text: str | bytes) -> None:
    """``text`` at ``path`` durably, or nothing at all (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_private(tmp, text.encode() if isinstance(text, str) else text)
        tmp.replace(path)
    except OSError:
        discard(tmp)
        raise


BEFORE_HORIZON = ".before-horizon.jsonl"
"""How the files of spans kept for starting before the prune horizon end."""


class Rejected(Exception):
    """The database refused these spans for what they contain, not because it is away."""


def _as_was(path: Path) -> tuple[int, int, int]:
    """What tells one file from another of the same name: its inode, size and write time."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _owner(path: Path) -> int | str:
    try:
        return path.lstat().st_uid
    except OSError:
        return "unknown"


class Spool:
    """A folder of JSON-lines files, one per failed write, and a quarantine beside it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantine_dir = directory / "quarantine"
        self._passed: dict[Path, tuple[int, int, int]] = {}
        """Files this process leaves alone while they stay as they were, said once (a file of
        the same name written since is read): a newer ometer's or another user's, left for
        it, and ones whose spans are recorded but which cannot be removed (every write
        drained them again)."""
        self._swept = False

    def _sweep_killed_puts(self) -> None:
        """Remove the temp files of :meth:`put`s killed between their write and their rename
        (``kill -9``, a power cut): named for no later write, each stayed for ever. Their
        spans are in their process's journal, recorded from there; once a process opens
        the spool (as its ledger opens), with :func:`sweep_killed`'s rule."""
        try:
            left = list(self.directory.glob(".*-*-*.jsonl.tmp"))
        except OSError:
            return
        for path in left:
            if left_by_the_killed(path, path.name.split("-")[1]):
                discard(path)

    def put(self, spans: Sequence[SpanRecord]) -> Path:
        make_folder(self.directory)
        final = self.directory / f"{time.time_ns()}-{os.getpid()}-{spans[0].id}.jsonl"
        write_atomically(final, "".join(encode_span(span) + "\n" for span in spans))
        return final

    def quarantine(self, span: SpanRecord, reason: str) -> Path:
        """Set aside a span the database will not take, with why; returns where it went."""
        make_folder(self.quarantine_dir)
        path = self.quarantine_dir / f"{span.id}.json"
        record = {"reason": reason, "span": span_json(span)}
        write_atomically(path, json.dumps(record, ensure_ascii=True, indent=1) + "\n")
        return path

    def set_aside_early(self, spans: Sequence[SpanRecord]) -> Path:
        """Keep spans that started before the ledger's prune horizon (which no write records:
        see :func:`~ollama_meter.ledger._spans.insert_spans`) beside the quarantine, as export
        lines ``ometer db import --pruned-too`` takes; returns the file. The same spans set
        aside again (a drain repeated) go to the same file."""
        from ollama_meter.ledger._jsonl import export_line

        make_folder(self.quarantine_dir)
        ids = sorted(span.id for span in spans)
        digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:12]
        path = self.quarantine_dir / f"{ids[0]}-{digest}{BEFORE_HORIZON}"
        write_atomically(path, b"".join(export_line(span) for span in spans))
        return path

    def quarantined(self) -> list[Path]:
        try:
            return sorted(self.quarantine_dir.glob("*.json"))
        except OSError:
            return []

    def pending(self) -> list[Path]:
        if not self._swept:
            self._swept = True
            self._sweep_killed_puts()
        try:
            files = self.directory.glob("*.jsonl")
            return sorted(
                p for p in files if p not in self._passed or _as_was(p) != self._passed[p]
            )
        except OSError:
            return []

    def drain(
        self,
        record: Callable[[list[SpanRecord], Path], Mapping[str, Stored]],
        isolate: Callable[[list[SpanRecord], Path], Mapping[str, Stored]],
        *,
        until: float | None = None,
    ) -> int:
        """Record every spooled span; returns how many were recorded or set aside.

        ``record`` says where each of a file's spans went (recorded, or kept aside for
        starting before the prune horizon), and raises :class:`Rejected` when a file
        holds a span the database refuses:
        then ``isolate`` records that file's spans one by one, quarantining the bad ones,
        and the drain goes on; the file goes once each of its spans is recorded or
        quarantined, and stays while one is neither. Any other failure (the database is away) stops the drain
        and propagates; the files stay for the next try. ``until`` (``time.monotonic()``):
        the files left once it has passed stay for the next drain (one file at least is
        done, so each drain makes progress however slow the machine).
        """
        done = 0
        for index, path in enumerate(self.pending()):
            if until is not None and index and time.monotonic() >= until:
                break
            try:
                lines = _read_spool_file(path).splitlines()
            except PermissionError as exc:
                # Not damage: another user's file (a shared ledger), whole, for its owner.
                self._pass_over(
                    path,
                    "spool file %s cannot be read by this user (%s); left in the spool for "
                    "its owner (uid %s) to record: run ometer as that user, or make the file "
                    "readable to this one",
                    exc.strerror or exc,
                    _owner(path),
                )
                continue
            except OSError as exc:
                self._set_aside(path, exc)
                continue
            spans, bad = self._decode(lines)
            from ollama_meter.ledger._line import NewerColumn

            if newer := next((e for _, e in bad if isinstance(e, NewerColumn)), None):
                # Not damage: the spans are whole, for an ometer that knows the column.
                self._pass_over(
                    path,
                    "spool file %s holds spans a newer ometer wrote (column %r); left in the "
                    "spool for it: run the newer ometer on this machine to record them",
                    newer.column,
                )
                continue
            if bad and not spans:
                self._set_aside(path, bad[0][1])
                continue
            # One damaged line (a flipped byte, a cut end) cost the file's other spans: the
            # whole file went aside. Only the lines that cannot be read go now; when they
            # can be kept nowhere, the file stays whole and its spans are recorded anyway.
            keep = bool(bad) and not self._keep_unreadable(path, lines, bad)
            try:
                settled = record(spans, path).values()
            except Rejected:
                settled = isolate(spans, path).values()
            keep = keep or any(where not in _SETTLED for where in settled)
            done += len(spans)
            if not keep:
                self._remove(path)
        return done

    def _pass_over(self, path: Path, message: str, *args: object) -> None:
        """Leave ``path`` whole in the spool, passed over by this process while it stays as it
        is, and say why once (``message`` with ``path`` first among its arguments)."""
        self._passed[path] = _as_was(path)
        log.warning(message, path, *args)

    def _remove(self, path: Path) -> None:
        """A drained file goes; one that cannot is passed over by this process from then on
        (recording it again adds nothing), and recorded again by the next (a no-op)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._passed[path] = _as_was(path)
            log.error(
                "recorded the spans of spool file %s but cannot remove it (%s); the next "
                "process to drain the spool records them again, which adds nothing: remove it "
                "by hand",
                path,
                exc,
            )

    @staticmethod
    def _decode(lines: list[bytes]) -> tuple[list[SpanRecord], list[tuple[int, Exception]]]:
        """The spans of a file's lines, and the (index, error) of each line that is not one."""
        spans: list[SpanRecord] = []
        bad: list[tuple[int, Exception]] = []
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                spans.append(decode_span(line.decode("utf-8")))
            except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
                bad.append((index, exc))
        return spans, bad

    def _keep_unreadable(
        self, path: Path, lines: list[bytes], bad: list[tuple[int, Exception]]
    ) -> bool:
        """The lines of ``path`` no span can be read from, kept for a human beside the spool;
        False (and an ERROR saying so) when they cannot be kept there."""
        target = self.quarantine_dir / f"{path.name}.unreadable"
        numbers = ", ".join(str(index + 1) for index, _ in bad[:10])
        try:
            make_folder(self.quarantine_dir)
            write_private(target, b"".join(lines[index] + b"\n" for index, _ in bad))
        except OSError as exc:
            log.error(
                "spool file %s: %d line(s) cannot be read (line %s: %s), and cannot be kept in "
                "%s (%s); its other %d span(s) are recorded and the file stays in the spool",
                path,
                len(bad),
                numbers,
                bad[0][1],
                self.quarantine_dir,
                exc,
                len(lines) - len(bad),
            )
            return False
        log.error(
            "spool file %s: %d line(s) cannot be read (line %s: %s); kept them in %s, "
            "recording the other spans",
            path,
            len(bad),
            numbers,
            bad[0][1],
            target,
        )
        return True

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """An unreadable spool file is kept for a human, out of the drain's way."""
        target = self.quarantine_dir / f"{path.name}.unreadable"
        try:
            make_folder(self.quarantine_dir)
            path.replace(target)
        except OSError as move_exc:
            if os.path.lexists(path):  # gone: another drain set it aside first
                log.error(
                    "spool file %s cannot be read (%s), nor moved to %s (%s); it stays in the "
                    "spool: move it away by hand",
                    path,
                    exc,
                    self.quarantine_dir,
                    move_exc,
                )
            return
        log.error("spool file %s cannot be read (%s); moved it to %s", path, exc, target)


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe"}


def _read_spool_file(path: Path) -> bytes:
    """The bytes of a file the spool wrote; OSError for anything else in its place, unread:
    a named pipe would block the drain (and every ``ometer`` that opens the ledger) for ever,
    a link to ``/dev/zero`` never end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what O_NOFOLLOW says of a link: not followed
            raise OSError("a symbolic link, not a file the spool wrote") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "a device or socket")
            raise OSError(f"{kind}, not a file the spool wrote")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)
