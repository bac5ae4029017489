"""`db import` given input that fails to read or is no export: one line that names the input
and how far it got, a non-zero exit, and the spans before it recorded once."""

from __future__ import annotations

import errno
import io
import json
import sys
import tempfile
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.ledger import Ledger, rebuild, span_from_line, span_to_dict
from ollama_meter.ledger._jsonl import export_line
from ollama_meter.ledger._line import CutShort
from ollama_meter.ledger._members import each_key_once
from tests.factories import opened
from tests.ledger.test_transfer import _spans, _tables


class _FailingStdin(io.TextIOBase):
    """A stdin whose bytes fail to read after ``good``, as a failing disk or a file on NFS
    that went stale under the reader does."""

    def __init__(self, good: bytes, error: int) -> None:
        self.buffer = self._Buffer(good, error)

    def isatty(self) -> bool:
        return False

    class _Buffer(io.BytesIO):
        def __init__(self, good: bytes, error: int) -> None:
            super().__init__(good)
            self.error = error

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            if not line:
                raise OSError(self.error, "read failed")
            return line


@pytest.mark.parametrize("error", [errno.EIO, errno.EINVAL, errno.ESTALE])
def test_an_input_that_fails_to_read_says_so_and_how_far_the_import_got(
    cli: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """A read error was taken for output that could not be written ("cannot write the
    output: Input/output error") or for a bug of ometer (exit 70)."""
    lines = b"".join(json.dumps(span_to_dict(s)).encode() + b"\n" for s in _spans(2_500))
    monkeypatch.setattr(sys, "stdin", _FailingStdin(lines, error))
    done = cli("db", "import", "-", "--db", sqlite_url)
    assert (done.code, done.stdout) == (1, "")
    assert done.stderr == (
        "error: cannot read stdin after line 2,500: read failed; the first 2,000 span(s) are "
        "recorded, the batch in progress is not: run the same import again once it reads "
        "(spans already there are skipped)\n"
    )
    ledger = Ledger(sqlite_url)
    assert ledger.count() == 2_000
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


_SPACINGS = [(",", ":", False), (", ", ": ", False), (" ,\t", "\t: ", False), (",", ":", True)]


def _members(value: Any, spacing: tuple[str, str, bool]) -> bytes:
    """``value`` as JSON whose objects are lists of (key, value) pairs, so a key can be
    given twice: compact as an export writes it, or with spaces or escaped keys as a hand or
    a tool writes it."""
    comma, colon, escaped = spacing
    if isinstance(value, list):
        inner = comma.join(
            json.dumps(key, ensure_ascii=not escaped).replace("e", "\\u0065" if escaped else "e")
            + colon
            + _members(item, spacing).decode()
            for key, item in value
        )
        return (" {" + inner + "}\r").encode() if escaped else ("{" + inner + "}").encode()
    return json.dumps(value).encode()


def _pairs(data: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, _pairs(v) if isinstance(v, dict) else v) for key, v in data.items()]


_OBJECTS = st.sampled_from([(), ("tags",), ("cost_parts",), ("durations_ns",)])


@settings(max_examples=80, deadline=None)
@given(where=_OBJECTS, data=st.data(), spacing=st.sampled_from(_SPACINGS), newer=st.booleans())
def test_a_line_that_gives_a_key_twice_in_one_object_is_refused_naming_it(
    where: tuple[str, ...], data: st.DataObject, spacing: tuple[str, str, bool], newer: bool
) -> None:
    """Readers differ on which of the two values counts (the decoder keeps the last, many keep
    the first), so which span the line means cannot be told: it was stored with the last value
    (a second ``"tenant"`` moved the call to another tenant's bill, a second ``"cost"`` with
    its parts made it free). No export writes one, nor even one that repeats a key and its
    value, as here. The same line with the key once imports."""
    span = span_to_dict(replace(_spans(1)[0], tags={"job": "nightly", "team": "ml"}))
    line = _pairs(span)
    if newer:  # a key a newer export may add, holding anything
        line.insert(data.draw(st.integers(0, len(line))), ("x_newer", [("a", [("b", 1)])]))
    inner = line
    for key in where:
        inner = dict(inner)[key]
    key, first = data.draw(st.sampled_from(inner))
    position = data.draw(st.integers(0, len(inner)))
    once = _members(line, spacing)
    assert span_to_dict(span_from_line(once)) == span
    inner.insert(position, (key, first))
    with pytest.raises(ValueError) as caught:
        span_from_line(_members(line, spacing))
    assert str(caught.value) == (
        f"key {key!r} is given twice in one object: which of its values is meant cannot be "
        "told (an export gives each key once)"
    )


def test_a_key_given_twice_through_an_escape_is_refused_too(cli: Any, sqlite_url: str) -> None:
    """``"ten\\u0061nt"`` is the key ``tenant`` to every JSON reader: a line giving it besides
    ``"tenant"`` is refused with its number; the spans before it are recorded (the README's
    rule for a bad line), and the line fixed imports the rest."""
    first, second, third = (json.dumps(span_to_dict(s)) for s in _spans(3))
    twice = second[:-1] + ', "ten\\u0061nt": "initech"}'
    done = cli("db", "import", "-", "--db", sqlite_url, stdin=f"{first}\n{twice}\n{third}\n")
    assert (done.code, done.stderr) == (
        2,
        "error: line 2: key 'tenant' is given twice in one object: which of its values is "
        "meant cannot be told (an export gives each key once); the 1 span(s) before it are "
        "recorded, fix the line and import again (spans already there are skipped)\n",
    )
    assert Ledger(sqlite_url).count() == 1
    done = cli("db", "import", "-", "--db", sqlite_url, stdin=f"{first}\n{second}\n{third}\n")
    assert done.code == 0 and Ledger(sqlite_url).count() == 3


_TEXT = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["", '"', "\\", "é", "\n"]
)
_OPTIONAL = ("ended_at", "user", "tags", "model", "stream", "error_type", "unpriced", "queue")


def _rendered(value: Any, draw: Any) -> str:
    """``value`` (objects as lists of pairs) as JSON, each member spaced and escaped its own
    way: as msgspec writes it, ASCII only, a key's first letter escaped, spaces around."""
    if not isinstance(value, list):
        return json.dumps(value, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    members = []
    for key, item in value:
        written = json.dumps(key, ensure_ascii=draw(st.booleans()))
        if key and draw(st.integers(0, 5)) == 0 and written[1] == key[0]:  # written as itself
            written = f'"\\u{ord(key[0]):04x}' + written[2:] if key[0].isascii() else written
        colon = draw(st.sampled_from([":", ":", ":", " : "]))
        members.append(written + colon + _rendered(item, draw))
    return "{" + draw(st.sampled_from([",", ",", ",", ", "])).join(members) + "}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tags=st.dictionaries(_TEXT, _TEXT, max_size=3),
    content=st.tuples(st.none() | _TEXT, st.none() | _TEXT, st.none() | _TEXT),
    data=st.data(),
)
def test_a_line_is_refused_or_read_as_reading_it_twice_to_check_its_keys_would(
    tags: dict[str, str], content: tuple[str | None, ...], data: st.DataObject
) -> None:
    """A line as an export writes it is checked by encoding what was read (one reading, not
    two): one that differs from that in any way (a key twice in any object, spaces, escapes,
    keys left out or added, content or none) gives the span, or the refusal, that reading the
    line a second time to check every key gave."""
    message, prompt, reply = content
    span = replace(_spans(1)[0], tags=tags, error_message=message, prompt=prompt, reply=reply)
    line = _pairs(span_to_dict(span))
    draw = data.draw
    for key in ("prompt", "reply"):
        if key not in dict(line) and draw(st.booleans()):
            line.append((key, None))
    for key in _OPTIONAL:  # an older or hand-made line leaves some out
        if draw(st.integers(0, 3)) == 0:
            for inner in (line, dict(line)["durations_ns"]):
                inner[:] = [(k, v) for k, v in inner if k != key]
    if draw(st.booleans()):  # a key a newer export may add, holding anything
        newer = ("x_newer", [("a", [("b", 1)]), ("c", draw(_TEXT))])
        line.insert(draw(st.integers(0, len(line))), newer)
    objects = [line] + [v for k, v in line if k in ("tags", "cost_parts", "durations_ns") and v]
    inner = draw(st.sampled_from(objects))
    key, first = draw(st.sampled_from(inner))
    twice = draw(st.booleans())
    if twice:
        inner.insert(draw(st.integers(0, len(inner))), (key, first))
    written = (draw(st.sampled_from(["", " "])) + _rendered(line, draw)).encode(
        errors="surrogatepass"
    ) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))

    def read(line: bytes) -> tuple[Any, ...]:
        try:
            return ("span", span_to_dict(span_from_line(line)))
        except ValueError as exc:
            return (type(exc), str(exc))

    def read_twice(line: bytes, known: frozenset[str], _: bytes) -> None:
        each_key_once(line, known, b"")  # the line itself never is b"": read again, always

    with patch("ollama_meter.ledger._line.each_key_once", read_twice):
        expected = read(written)
    assert read(written) == expected
    if twice and expected[0] == "span":
        pytest.fail(f"a key given twice was taken: {written!r}")


def test_a_line_as_an_export_writes_it_is_read_once() -> None:
    """Checking each key is given once read every line a second time (4 to 5 µs of the 15 a
    line took): a line that is what was read, encoded again, gives each key once."""
    content = [("hi", "hello"), ("hi", None), (None, None)]
    spans = [
        replace(s, tags={"job": "nightly"}, prompt=p, reply=r)
        for s, (p, r) in zip(_spans(3), content, strict=True)
    ]
    with patch("ollama_meter.ledger._members._MEMBERS", None), patch("json.loads", None):
        for span in spans:
            assert span_from_line(export_line(span)) == span


def test_spans_spread_over_lines_are_named_for_what_they_are(
    cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """`ometer log --json` prints an array over many lines, `jq .` each object over many: the
    import said 'Expected `object`, got `array`' or 'not JSON: Input data was truncated' and
    to fix line 1, which no fix of one line does. It says what the file is and how to make
    it one span a line; made so, it imports."""
    source = tmp_path / "source.db"
    Ledger(f"sqlite:///{source}").record(_spans(3))
    logged = cli("log", "--json", "--db", f"sqlite:///{source}")
    assert logged.code == 0 and logged.stdout.startswith("[\n")
    done = cli("db", "import", "-", "--db", sqlite_url, stdin=logged.stdout)
    assert (done.code, done.stderr) == (
        2,
        "error: line 1: a JSON array, not a span: an export gives each span on a line of its "
        "own, as an object; `ometer log --json` prints them as an array (jq -c '.[]' FILE | "
        "ometer db import -); the 0 span(s) before it are recorded: import the spans one a "
        "line (spans already there are skipped)\n",
    )
    pretty = tmp_path / "pretty spans.json"
    spans = json.loads(logged.stdout)
    pretty.write_text(json.dumps(spans[0]) + "\n" + json.dumps(spans[1], indent=2) + "\n")
    done = cli("db", "import", str(pretty), "--db", sqlite_url)
    assert (done.code, done.stderr) == (
        2,
        "error: line 2: the span goes on past the end of the line: an export gives each span "
        f"whole on one line, not spread over several as jq . prints it (jq -c . '{pretty}' | "
        "ometer db import -), and one cut short ends so too (import a whole export); the 1 "
        "span(s) before it are recorded: import the spans one a line (spans already there are "
        "skipped)\n",
    )
    lines = "".join(json.dumps(span) + "\n" for span in spans)  # what jq -c prints
    done = cli("db", "import", "-", "--db", sqlite_url, stdin=lines)
    assert done.code == 0 and Ledger(sqlite_url).count() == 3


_NO_SPANS = {
    # `ometer pricing import prices.toml` and `ometer db import prices.toml` are one word apart
    "prices.toml": (
        b'currency = "USD"\n\n[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 0.15\n',
        "text that begins 'currency = \"USD\"': a pricing file (TOML) goes in with ometer "
        "pricing import prices.toml",
    ),
    "rules.toml": (  # said to be a JSON array, with the jq command that makes spans of one
        b'[[rule]]\nmodel = "qwen2.5:*"\ngpu_hour = 2.40\n',
        "text that begins '[[rule]]': a pricing file (TOML) goes in with ometer pricing import "
        "rules.toml",
    ),
    "commented.toml": (
        b"# what our calls cost\n[[rule]]\n",
        "text that begins '# what our calls cost': a pricing file (TOML) goes in with ometer "
        "pricing import commented.toml",
    ),
    "job.sh": (b"#!/bin/sh\n", "text that begins '#!/bin/sh'"),
    "october.csv": (  # `ometer report --format csv > october.csv`: "invalid character (byte 0)"
        b"day,requests,errors,input_tokens,output_tokens,gpu_seconds,cost,currency\n",
        "text that begins 'day,requests,errors,input_tokens,output_tokens,gpu_seconds,c'...",
    ),
    "ometer": (  # a program: told it was text saved as Windows-1252, to convert with iconv
        b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00\xf0\n",
        "binary, not text (byte 5 is 0x02, which no text holds)",
    ),
    "ledger.db-shm": (  # a ledger's shared memory: told to convert it with iconv too
        b"\x18\xe2-\x00\x00\x00\x00\x00" + b"\x00" * 56,
        "binary, not text (byte 1 is 0x18, which no text holds)",
    ),
    "photo.jpg": (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01",
        "binary, not text (byte 5 is 0x00, which no text holds)",
    ),
    "null.json": (b"null\n", "text that begins 'null'"),
}


@pytest.mark.parametrize("name", _NO_SPANS)
def test_a_file_that_holds_no_spans_is_named_for_what_it_is(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A pricing file, a CSV report, a program or a ledger's -shm given to `db import` was said
    to be malformed JSON at "byte 0" (read as a NUL), a JSON array to run jq on, or text
    saved as Windows-1252 to convert with iconv: no fix of the line or its encoding makes it
    an export. It says what the line is, and where a pricing file goes; no ledger is made."""
    data, what = _NO_SPANS[name]
    (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)  # the file as a user names it, in the hint too
    target = tmp_path / "new" / "ledger.db"
    done = cli("db", "import", name, "--db", f"sqlite:///{target}")
    assert (done.code, done.stdout, done.stderr) == (
        2,
        "",
        "error: line 1: not a span: each line of an export is one span as a JSON object "
        '({"id": ...}, as ometer db export writes it), and this line is '
        f"{what}; the 0 span(s) before it are recorded (spans already there are skipped)\n",
    )
    assert not target.parent.exists()


def test_a_key_a_newer_export_may_add_is_not_read_to_check_the_keys() -> None:
    """Checking each key is given once read the whole line into Python objects: 16 MiB of
    ``[],`` under a key no span has (which the span's decoder skips unread) were 400 MB of
    lists. Whatever the line's spacing, the check holds a few copies of the line at most."""
    line = span_to_dict(_spans(1)[0])
    for compact in (True, False):
        head = json.dumps(line, separators=(",", ":") if compact else None).encode()[:-1]
        big = head + b', "x_newer": [' + b"[]," * (16 * 2**20 // 3) + b"[]]}"
        tracemalloc.start()
        try:
            span_from_line(big)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * len(big), (compact, peak)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("db", "import", ""),
            "error: '' is no file name: give the export's file (ometer db import FILE), or - to "
            "read it from stdin\n",
        ),
        (
            ("pricing", "import", ""),
            "error: Invalid value for 'file': '' is no file name; give the file to read (see "
            "`ometer pricing import --help`)\n",
        ),
    ],
    ids=["db import", "pricing import"],
)
def test_an_empty_file_name_is_said_to_be_one_not_the_current_folder(
    cli: Any, sqlite_url: str, args: tuple[str, ...], said: str
) -> None:
    """`ometer db import "$EXPORT"` with EXPORT unset said `cannot read : Is a directory`
    (the empty name read as the current folder), and `pricing import` said `file '' is a
    directory`: neither says that the name is what is missing."""
    done = cli(*args, "--db", sqlite_url)
    assert (done.code, done.stdout, done.stderr) == (2, "", said)


_REFUSED_AT_ONCE = {
    "a JSON array": b'[{"id": "x"}]\n',
    "UTF-16": '{"id": "x"}\n'.encode("utf-16"),
    "gzip": b"\x1f\x8b\x08\x00" + b"\x00" * 12,
    "a SQLite file": b"SQLite format 3\x00" + b"\x00" * 84,
    "a bad first line": b'{"id": 1}\n',
}


@pytest.mark.parametrize("data", _REFUSED_AT_ONCE.values(), ids=_REFUSED_AT_ONCE.keys())
def test_an_import_refused_at_once_leaves_no_new_ledger_behind(
    cli: Any, tmp_path: Path, data: bytes
) -> None:
    """The ledger was opened (made, migrated) before the file's first line was read: an
    import refused on line 1 left an empty ledger at the target, which every later command
    then read as a real one with no calls in it."""
    source = tmp_path / "input"
    source.write_bytes(data)
    target = tmp_path / "new" / "ledger.db"
    done = cli("db", "import", str(source), "--db", f"sqlite:///{target}")
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr.startswith("error: line 1: ")
    assert not target.parent.exists()  # not the ledger, not even its folder


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=st.text(min_size=1).filter(lambda t: "\n" not in t and "\r" not in t and t.strip()))
def test_any_import_refused_on_its_first_line_makes_no_ledger(cli: Any, first: str) -> None:
    """Whatever the first line, when the import refuses it nothing is made at the target:
    the ledger is opened only for a span ready to record."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "ledger.db"
        done = cli("db", "import", "-", "--db", f"sqlite:///{target}", stdin=f"{first}\n")
        if done.code == 0:  # pragma: no cover (a line that is a whole span)
            return
        assert done.code == 2 and done.stderr.startswith("error: line 1: "), done.stderr
        assert list(Path(folder).iterdir()) == []


@pytest.mark.parametrize("data", [b"", b"\n\n", b"  \r\n"], ids=["empty", "blank", "spaces"])
def test_an_import_of_nothing_makes_no_ledger(cli: Any, tmp_path: Path, data: bytes) -> None:
    """A file with no span in it (an export of an empty period, a typo'd --db beside it)
    made an empty ledger at the target only to name it in the summary."""
    source = tmp_path / "input"
    source.write_bytes(data)
    target = tmp_path / "new" / "ledger.db"
    done = cli("db", "import", str(source), "--db", f"sqlite:///{target}")
    assert (done.code, done.stderr) == (0, "")
    assert done.stdout.startswith(f"imported 0 span(s): {source} holds none; no ledger made at ")
    assert not target.parent.exists()
    Ledger(f"sqlite:///{target}").dispose()  # one there: the import names it, as ever
    done = cli("db", "import", str(source), "--db", f"sqlite:///{target}")
    assert (done.code, done.stdout) == (
        0,
        f"imported 0 span(s) into {target}: {source} holds none\n",
    )


@given(
    field=st.sampled_from(["prompt", "reply", "error_message"]),
    escape=st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\udfff"]),
    before=st.text(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\'), max_size=5
    ),
    last=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_a_lone_surrogate_ending_a_line_is_named_not_taken_for_a_line_cut_short(
    field: str, escape: str, before: str, last: bool
) -> None:
    """A string ending in a lone surrogate escape right before the line's end (its last key's
    value) made the decoder say "truncated": the import said the file was cut short (its last
    line) or the span spread over lines, where the same escape mid-line is refused for what it
    is. Either way the line names the lone surrogate, which no backend stores."""
    span = span_to_dict(_spans(1)[0])
    span.pop(field, None)
    head = json.dumps(span, separators=(",", ":"))[:-1]
    line = f'{head},"{field}":"{before}{escape}"}}'.encode() + (b"" if last else b"\n")
    with pytest.raises(ValueError) as caught:
        span_from_line(line.strip())
    assert "lone surrogate" in str(caught.value)
    assert not isinstance(caught.value, CutShort)


_LATIN = st.text(
    st.characters(min_codepoint=0xC0, max_codepoint=0xFF, categories=["L"]), min_size=1, max_size=3
)
"""Letters an export edited and saved as Latin-1 or Windows-1252 holds as one byte each."""


@given(
    at=st.integers(0, 4),
    field=st.sampled_from(["request_model", "response_model"]),
    letters=_LATIN,
    cut=st.booleans(),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_file_saved_in_another_encoding_says_to_convert_it_and_imports_once_converted(
    cli: Any, tmp_path: Path, at: int, field: str, letters: str, cut: bool
) -> None:
    """A model with an accent (`modèle`) in an export saved as Windows-1252 is the byte E8, and
    the import said `not JSON: Invalid UTF-8 encoded string` and to fix the line. It names the
    byte and the conversion; the spans before it are kept, and the converted file imports
    whole, each span once. A line whose last character was cut in two is still a line cut
    short."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    url = f"sqlite:///{folder / 'ledger.db'}"
    spans = [span_to_dict(span) for span in _spans(5)]
    spans[at][field] = f"{spans[at][field] or 'x'}{letters}"
    text = "".join(json.dumps(span, ensure_ascii=False) + "\n" for span in spans)
    saved = folder / "edited.jsonl"
    if cut:  # the file ends part way through a character of the edited span
        body = "".join(json.dumps(span, ensure_ascii=False) + "\n" for span in spans[:at])
        head = json.dumps(spans[at], ensure_ascii=False)
        head = head[: head.index(letters) + 1].encode()[:-1]
        saved.write_bytes(body.encode() + head)
        done = cli("db", "import", str(saved), "--db", url)
        assert done.code == 2 and f"line {at + 1}: the file ends part way" in done.stderr
        return
    saved.write_bytes(text.encode("latin-1"))
    done = cli("db", "import", str(saved), "--db", url)
    line = json.dumps(spans[at], ensure_ascii=False).encode("latin-1")
    byte = min(line.index(bytes([ord(c)])) for c in letters) + 1
    assert (done.code, done.stderr) == (
        2,
        f"error: line {at + 1}: byte {byte} (0x{line[byte - 1]:02X}) is not UTF-8: export lines "
        "are UTF-8 text, and this file was saved in another encoding. Convert it, naming the "
        f"one it was saved in (iconv -f WINDOWS-1252 -t UTF-8 {saved} | ometer db import -), "
        f"and import again; the {at} span(s) before it are recorded (spans already there are "
        "skipped)\n",
    )
    with opened(url) as ledger:
        assert ledger.count() == at
    done = cli("db", "import", "-", "--db", url, stdin=text)
    assert done.code == 0 and f"({at:,} already there)" in done.stdout, done
    with opened(url) as ledger:
        assert ledger.count() == 5
