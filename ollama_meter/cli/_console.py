"""The consoles every command prints through, and the text they print: never markup, no
control characters (C0, DEL, C1, bidirectional overrides), so data cannot make links,
clear the screen, move the cursor or hide text."""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Any, BinaryIO

from rich.console import Console, ConsoleDimensions
from rich.text import Text

from ollama_meter._text import ACTED_ON

_CONTROL = re.compile(f"[\x00-\x09\x0b-\x1f{ACTED_ON}]")
_NEWLINE = re.compile("\n")
_TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What a terminal acts on rather than shows (escape sequences, carriage returns), bar tab and newline."""
REPLACEMENT = "\ufffd"


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control character replaced by U+FFFD (newlines kept if asked),
    and every lone surrogate: a file name's bytes that are not UTF-8 arrive in argv as
    those, and no stream can encode one (writing it raised in the middle of a message).

    One character for one, so styled spans over the text stay where they were.
    """
    text = _CONTROL.sub(REPLACEMENT, text)
    return text if newlines else _NEWLINE.sub(REPLACEMENT, text)


def named(value: object) -> str:
    """A file name or ledger URL for a message: :func:`printable` with its line breaks
    replaced too. A message keeps its own line breaks; a name's would start a line that
    reads as the command's own (``error: ...``)."""
    return printable(str(value))


def inert(text: str, *, terminal: bool) -> str:
    """Free text (a model's reply) as a terminal may show it: nothing it would act on.

    Tabs, newlines and right-to-left marks are the text's own; escape sequences and
    carriage returns, which could rewrite the screen or the clipboard, become U+FFFD.
    Written elsewhere (a pipe, a file), the text is left exactly as it came.
    """
    return _TERMINAL_CONTROL.sub(REPLACEMENT, text) if terminal else text


def shown(value: object, style: str = "") -> Text:
    """A value as plain text for the terminal: never markup, no control characters."""
    if isinstance(value, Text):
        safe = value.copy()
        safe.plain = printable(value.plain)
        if style:
            safe.stylize(style)
        return _held(safe)
    text = Text(printable(str(value)))
    text.stylize(style)  # the characters only, not a cell's padding
    return _held(text)


def _held(text: Text) -> Text:
    """``text`` with what stdout's encoding cannot hold written as the escape the stream would
    write (``\\u2192``), its styles kept: a table laid out for the character and then given
    its escape lost its grid (``log``'s ``1→13``, 4 wide, took 11 on ISO-8859-1)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.plain.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    try:
        held = text.blank_copy()
        for piece in text.divide(
            sorted({s.start for s in text.spans} | {s.end for s in text.spans})
        ):
            part = Text(
                piece.plain.encode(encoding, "backslashreplace").decode(encoding), piece.style
            )
            for span in piece.spans:  # each covers the whole piece, cut at every span's ends
                part.stylize(span.style)
            held.append_text(part)
    except LookupError:  # an encoding Python does not know: the stream says so itself
        return text
    return held


class Diagnostics:
    """stderr as a command writes to it: what cannot be written there (closed: ``2>&-``, a full
    disk, a reader gone) is dropped, and nothing more is tried. The command's outcome is its
    exit code and stdout: a budget's refusal (3) or a usage error (2) with stderr on a full
    disk exited 1, as did ``ometer chat`` whose call was answered and charged but whose
    footer could not be written (a script then asked again, and paid twice)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream  # None: closed when the process started, or failed since

    def write(self, text: str) -> int:
        if self.stream is not None:
            try:
                self.stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self.stream = None
        return len(text)

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.stream = None

    def isatty(self) -> bool:
        try:
            return self.stream is not None and bool(self.stream.isatty())
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, errors, fileno...: the stream's
        if self.stream is None:
            raise AttributeError(name)
        return getattr(self.stream, name)


PIPED_WIDTH = 1000
"""Columns a table may take where no terminal says how many (see :class:`_TextConsole`)."""


def _any_terminal() -> bool:
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return True
        except OSError:  # a closed standard stream
            continue
    return False


class _TextConsole(Console):
    """A console that prints strings as text: no markup, control characters replaced.

    Where no standard stream is a terminal and COLUMNS is unset (cron, a CI log, ``ssh``
    without a tty, a service), rich laid every table out in 80 columns: the price rules'
    14 columns were cut a few letters a line, so ``grep llama`` found no rule. There a
    table is as wide as its content, up to :data:`PIPED_WIDTH`.
    """

    def __init__(self, *, whole: bool = False, **options: Any) -> None:
        self._whole = whole  # before rich's own __init__, which reads the file
        super().__init__(**options)
        # Rich fixes the width from COLUMNS as it was when the console was made (at import);
        # read it when printing instead, as a process that runs commands one after another
        # (the tests, an embedding) has it set for each.
        self._width = options.get("width")

    @property
    def file(self) -> Any:
        """Where it prints; stdout's console writes each piece whole (:class:`_Whole`)."""
        found = Console.file.fget(self)  # type: ignore[attr-defined]
        return _Whole(found) if self._whole else found

    @file.setter
    def file(self, new_file: Any) -> None:
        self._file = new_file

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and "COLUMNS" not in self._environ and not _any_terminal():
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def print(self, *objects: Any, **options: Any) -> None:
        safe = [
            Text(printable(o, newlines=True))
            if isinstance(o, str)
            else (shown(o) if isinstance(o, Text) else o)
            for o in objects
        ]
        super().print(*safe, **options)

    def on_broken_pipe(self) -> None:
        """The reader went away: an OSError for main() to end the command with, quietly and
        exit 1, as any other output that cannot be written. (Rich's own answer also made
        this console quiet for good: in a process that runs one command after another, the
        tests or an embedding, every later command printed nothing.)"""
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def discard(self) -> None:
        """Drop what a failed write left unwritten; rich would print it before the next
        command's output."""
        del self._buffer[:]


class _Whole:
    """A text stream that writes each piece whole, in its own encoding, or raises: a table
    of more than a pipe's 64 KiB whose reader went away mid-write (``ometer report | head``)
    was cut with exit code 0, as data was (:func:`write_all`)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        binary = getattr(self.stream, "buffer", None)
        if binary is None:  # a text-only stream (an embedding's StringIO): it holds any text
            return int(self.stream.write(text))
        self.stream.flush()  # what went through the text layer before it goes first
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        write_all(binary, text.encode(encoding, getattr(self.stream, "errors", None) or "strict"))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...: the stream's
        return getattr(self.stream, name)


def write_data(text: str) -> None:
    """CSV, JSON or an HTML page on stdout: UTF-8 whatever the locale's encoding, the bytes
    ``--out`` writes to a file. In the locale's (a Windows redirect's cp1252, ISO-8859-1, a
    PYTHONIOENCODING of ascii) a model's ``中文`` failed the write: no bill, and an exit code
    that said ometer had a bug."""
    stream = out.file
    binary = getattr(stream, "buffer", None)
    if binary is None:  # a text-only stream (an embedding's StringIO): it holds any text
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # what a table or message before it left in the text layer goes first
    write_all(binary, text.encode("utf-8"))
    binary.flush()


def write_all(binary: BinaryIO, data: bytes) -> None:
    """All of ``data`` into ``binary``, or the OSError that stopped it.

    A buffered write of more than its buffer can return a short count and no error: a pipe
    whose reader went away mid-write (an upload that died, ``| head``) takes what fits, the
    kernel says how much, and Python's BufferedWriter returns that. A report, bill or ``log
    --json`` went out cut at 64 KiB with exit code 0; the rest, written again, meets the
    closed pipe (EPIPE: a quiet exit 1, as for every other output that cannot be written)."""
    view = memoryview(data)
    while view:
        written = binary.write(view)
        if not written:  # a stream that takes nothing and says nothing: no spin, one line
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view = view[written:]


def escape_unencodable() -> None:
    """Have stdout write a character its encoding cannot hold as an escape (``\\u4e2d``), as
    Python writes stderr: tables and messages are for a person, and a name in another script
    must not end the command (see :func:`write_data` for data)."""
    stream = sys.stdout
    reconfigure = getattr(stream, "reconfigure", None)
    if callable(reconfigure) and getattr(stream, "errors", None) == "strict":
        reconfigure(errors="backslashreplace")


out = _TextConsole(whole=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
err = _TextConsole(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
