"""What callers put in names reaches the terminal as text (issue 9 item 5, issue 8 item 21).

Rendered in colour (``FORCE_COLOR=1``) at 80 columns, as a person would see it:
the only escape sequences are rich's own colours, never a link (OSC 8), a cursor
move or a screen erase from the data; and nothing is cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, strategies as st
from rich.cells import cell_len

from ollama_meter import _text
from ollama_meter.ledger import Ledger
from ollama_meter.records import counted_model
from tests.factories import make_span

LINK = "[link=http://evil.example/]CLICK[/link]"
ERASE = "\x1b[2J\x1b[H"
OSC8 = "\x1b]8;;http://evil.example/\x07here\x1b]8;;\x07"
C1 = "\x9b2J"  # CSI as one C1 character
LONG = "hf.co/some-organisation/a-very-long-model-repository-name-GGUF:Q4_K_M-imatrix-2026"
SGR = re.compile(r"\x1b\[[0-9;]*m")


def ometer(*args: str) -> str:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "80", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "ollama_meter", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def assert_only_colours(output: str) -> str:
    """The output's escape sequences are all SGR colours; returns the visible text."""
    assert "\x1b]" not in output  # no OSC: no hyperlinks, no window titles
    visible = SGR.sub("", output)
    assert "\x1b" not in visible, repr(visible[visible.index("\x1b") - 20 :][:60])
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", visible)
    assert "…" not in visible  # nothing truncated
    for line in visible.splitlines():  # tables fit; one-line messages are the terminal's to wrap
        assert cell_len(line) <= 80 or line[:1] not in "┏┃┡│├└", line
    return visible


def column(table: str, index: int) -> str:
    """The text of one column, read down the table's body (folded cells joined up)."""
    return "".join(
        line.split("│")[index + 1].strip() for line in table.splitlines() if line.startswith("│")
    )


def test_hostile_names_render_as_text_in_every_table(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    moment = datetime(2026, 11, 3, 9, tzinfo=UTC)
    ledger.record(
        [
            make_span(request_model=LINK, started_at=moment, user="mallory" + ERASE),
            make_span(request_model="x" + OSC8 + C1, started_at=moment, status="error",
                      error_type="bad_request" + ERASE),
            make_span(request_model=LONG, started_at=moment, cost_total=123_456_789_012,
                      cost_tokens=123_456_789_012, unpriced=False),
        ]
    )  # fmt: skip
    log = assert_only_colours(ometer("log", "--db", sqlite_url))
    models = column(log, 3)
    assert LINK in models and LONG in models  # shown as typed, folded, never cut
    assert "x\ufffd]8;;http://evil.example/\ufffdhere" in models
    assert "123456.789012" in column(log, 6)
    report = assert_only_colours(
        ometer("report", "--db", sqlite_url, "--period", "2026-11", "--by", "model,user")
    )
    # A report counts each model under its one name (``counted_model``), as text too.
    assert counted_model(LONG) in column(report, 0) and counted_model(LINK) in column(report, 0)
    assert "mallory\ufffd[2J\ufffd[H" in column(report, 1)
    assert "123456.789012" in column(report, 7)  # money whole at 80 columns
    perf = assert_only_colours(
        ometer("perf", "--db", sqlite_url, "--period", "2026-11", "--by", "model")
    )
    assert counted_model(LINK) in column(perf, 0)


def test_error_messages_show_data_as_text(sqlite_url: str) -> None:
    env = {**os.environ, "FORCE_COLOR": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "ollama_meter", "keys", "create", "--name", "x" + ERASE,
         "--db", sqlite_url],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "key name" in bad.stderr
    assert_only_colours(bad.stderr)


class _EscapingModel(BaseHTTPRequestHandler):
    """An upstream whose model replies with escape sequences (a prompt injection's payload)."""

    REPLY = ("Hi\x1b]52;c;c2VjcmV0\x07 there", f"\r{ERASE}\tdone{C1}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunks = [
            {"model": "m", "created_at": "2026-11-30T10:00:00Z", "done": False,
             "message": {"role": "assistant", "content": self.REPLY[0]}},
            {"model": "m", "created_at": "2026-11-30T10:00:01Z", "done": True,
             "done_reason": "stop", "message": {"role": "assistant", "content": self.REPLY[1]},
             "prompt_eval_count": 1, "eval_count": 2},
        ]  # fmt: skip
        body = b"".join(json.dumps(c).encode() + b"\n" for c in chunks)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _escaping_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """OLLAMA_HOST set to a model whose reply is full of escape sequences, while inside."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EscapingModel)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        yield
    finally:
        server.shutdown()


def test_a_models_reply_cannot_drive_the_terminal_but_reaches_a_pipe_as_sent(
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    with _escaping_model(monkeypatch):
        monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stdout is a terminal
        shown = cli("chat", "hi", "-m", "m", "--db", sqlite_url)
        monkeypatch.setenv("TTY_COMPATIBLE", "0")
        piped = cli("chat", "hi", "-m", "m", "--db", sqlite_url)
    assert shown.code == 0 and piped.code == 0, shown.stderr + piped.stderr
    sent = "".join(_EscapingModel.REPLY)
    assert piped.stdout == sent + "\n"
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown.stdout)
    assert shown.stdout == re.sub("[\x1b\x07\r\x9b]", "\ufffd", sent) + "\n"


def test_a_table_written_where_no_terminal_is_keeps_each_row_on_one_line(
    tmp_path: os.PathLike[str],
) -> None:
    """With no terminal on any standard stream and no COLUMNS (cron, a CI log, a service),
    rich laid tables out in 80 columns: the price rules' 14 columns were cut a few letters
    a line, and ``grep`` found no rule by its pattern."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["OMETER_DB_URL"] = f"sqlite:///{tmp_path}/ledger.db"

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ollama_meter", *args],
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("pricing", "set", LONG, "--input-per-1m", "0.5", "--output-per-1m", "1.5",
        "--gpu-hour", "2.40")  # fmt: skip
    [row] = [line for line in run("pricing", "list").splitlines() if LONG in line]
    assert row.split("│")[1:-1][3:6] == ["   0.5 ", "    1.5 ", " 2.40 "]


def test_the_console_takes_columns_as_they_are_when_it_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rich fixed the width from COLUMNS as it was when the console was made, at import: in
    a process that runs commands one after another (the tests in parallel workers, an
    embedding) every later table kept a width that was no longer asked for."""
    from ollama_meter.cli._console import _TextConsole

    monkeypatch.setenv("COLUMNS", "80")
    console = _TextConsole(highlight=False, markup=False)
    monkeypatch.setenv("COLUMNS", "200")
    assert console.size.width == 200
    assert _TextConsole(width=50).size.width == 50


ACTED_ON = re.compile(f"[\x00-\x09\x0b-\x1f{_text.ACTED_ON}]")
"""Raw in JSON: what a terminal acts on (C1's CSI clears the screen as ESC [ does; a bidi
override reorders the rest of the line). A line break only between JSON's own tokens."""


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
))  # fmt: skip
def test_json_for_the_terminal_is_the_same_document_with_nothing_acted_on(value: object) -> None:
    for text in (_text.json_text(value), _text.json_text(value, indent=2)):
        assert not ACTED_ON.search(text), repr(text)
        assert json.loads(text) == value


@given(st.text())
def test_an_export_line_is_escaped_as_the_json_for_the_terminal_is(text: str) -> None:
    import msgspec

    line = _text.json_bytes(msgspec.json.encode({"error_message": text}))
    assert not ACTED_ON.search(line.decode()) and json.loads(line) == {"error_message": text}


@pytest.mark.parametrize("command", [("log", "--json"), ("db", "export")])
def test_spans_as_json_escape_what_the_terminal_would_act_on(cli, sqlite_url: str, command: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """``ometer log --json`` and ``db export`` wrote Ollama's error text and hooks' tags as
    UTF-8: JSON escaped ESC but they wrote U+009B (CSI: the screen erased) and U+202E as
    they were, straight to the terminal."""
    message = f"Ollama failed (HTTP 500): boom{C1}\u202eevil{ERASE}\n"
    tags = {"job" + C1: "x\u2066y\x85"}
    Ledger(sqlite_url).record(
        [make_span(status="error", error_type="upstream_5xx", error_message=message, tags=tags)]
    )
    shown = cli(*command, "--db", sqlite_url)
    assert shown.code == 0, shown.stderr
    assert not ACTED_ON.search(shown.stdout.replace("\n", "")), repr(shown.stdout)
    [span] = json.loads(shown.stdout) if command[0] == "log" else [json.loads(shown.stdout)]
    assert (span["error_message"], span["tags"]) == (message, tags)  # as stored, escaped


def test_chat_json_escapes_a_models_reply_for_the_terminal(
    cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    with _escaping_model(monkeypatch):
        done = cli("chat", "hi", "-m", "m", "--json", "--db", sqlite_url)
    assert done.code == 0, done.stderr
    assert not ACTED_ON.search(done.stdout), repr(done.stdout)
    assert json.loads(done.stdout)["reply"] == "".join(_EscapingModel.REPLY)


def test_a_file_name_with_a_line_break_cannot_forge_a_line_of_output(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`wrote x` and `y.csv` on two lines: a name with a line break (a cron job's `--out
    "$NAME"` made from a ticket title) printed the next line as the command's own, such as
    `error: ...` or `backed up ...` to a script that reads them. Escapes were replaced in
    these names already; the line break is too, as in every error message."""
    folder = tmp_path / "data\nerror: the ledger is lost"
    folder.mkdir()
    ledger = folder / "ledger.db"
    db = f"sqlite:///{ledger}"
    Ledger(db).record([make_span(started_at=datetime(2026, 11, 3, tzinfo=UTC))])
    export = folder / "spans.jsonl"
    assert cli("db", "export", "--db", db).code == 0
    export.write_text(cli("db", "export", "--db", db).stdout)
    prices = folder / "prices.toml"
    prices.write_text('[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 1\n')
    commands = [
        ("report", "--period", "2026-11", "--format", "csv", "--out", str(folder / "r.csv")),
        ("chargeback", "--month", "2026-11", "--out", str(folder / "cb.csv")),
        ("db", "backup", str(folder / "copy.db")),
        ("db", "import", str(export)),
        ("db", "upgrade"),
        ("db", "path"),
        ("pricing", "import", str(prices)),
    ]
    for args in commands:
        done = cli(*args, "--db", db)
        assert done.code == 0, (args, done.stderr)
        said = [line for line in (done.stdout + done.stderr).splitlines() if "data" in line]
        assert said and all("data\ufffderror: the ledger is lost" in line for line in said), (
            args,
            done.stdout + done.stderr,
        )
        lines = (done.stdout + done.stderr).splitlines()
        assert not any(line.startswith("error: the ledger") for line in lines)
