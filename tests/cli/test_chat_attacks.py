"""``ometer chat`` against hostile input and a lying upstream: one clear line, an honest span."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter import MeteredClient
from ollama_meter.ledger import SpanFilter
from ollama_meter.testing import OllamaEmulator, expected_reply

CHUNK = {"model": "llama3.1:8b", "created_at": "2026-01-01T00:00:00Z", "done": False}
FINAL = {
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 3,
    "prompt_eval_duration": 10,
    "eval_count": 2,
    "eval_duration": 20,
}


def line(text: str, **fields: Any) -> bytes:
    message = {"role": "assistant", "content": text}
    return (json.dumps({**CHUNK, "message": message, **fields}) + "\n").encode()


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OMETER_DB_URL", sqlite_url)
    return sqlite_url


class _Scripted(BaseHTTPRequestHandler):
    """An Ollama that answers every call with the body it is given, as it is given."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bytes], None]]:
    """Point OLLAMA_HOST at an upstream whose every answer is the body set by calling this."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.body = b""  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{server.server_address[1]}")

    def answer(body: bytes) -> None:
        server.body = body  # type: ignore[attr-defined]

    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()


def last_span(cli) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    spans = json.loads(cli("log", "--json", "-n", "1").stdout)
    assert len(spans) == 1
    return spans[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(line("one ") + line("two "), id="chunks-then-nothing"),
        pytest.param(b"", id="empty-body"),
    ],
)
def test_a_stream_that_ends_without_its_final_chunk_is_a_stream_error(  # type: ignore[no-untyped-def]
    cli, db: str, answering: Callable[[bytes], None], body: bytes
) -> None:
    """A body that stops before Ollama's ``done: true`` was cut short (a proxy that closed
    cleanly): the call failed, as the gateway has it, and is not recorded as ``ok``."""
    answering(body)
    result = cli("chat", "hi")
    assert result.code == 1
    assert result.stderr.splitlines()[-1].endswith("ended without its final chunk")
    span = last_span(cli)
    assert (span["status"], span["error_type"]) == ("error", "stream_error")
    chunks = body.count(b"\n")
    assert span["output_tokens"] == chunks  # one token a chunk, as seen
    # What was seen is estimated; nothing seen, nothing was consumed (as when none answers).
    assert span["token_source"] == ("estimated" if chunks else "reported")


def test_a_whole_stream_is_still_ok(cli, db: str, answering: Callable[[bytes], None]) -> None:  # type: ignore[no-untyped-def]
    answering(line("one ") + line("two", **FINAL))
    result = cli("chat", "hi")
    assert (result.code, result.stdout) == (0, "one two\n")
    span = last_span(cli)
    assert (span["status"], span["input_tokens"], span["output_tokens"]) == ("ok", 3, 2)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(line("hello", done=False), id="done-false"),
        pytest.param(line("hello").replace(b', "done": false', b""), id="no-done"),
    ],
)
def test_a_whole_answer_that_is_not_done_is_not_an_answer(  # type: ignore[no-untyped-def]
    cli, db: str, answering: Callable[[bytes], None], body: bytes
) -> None:
    """``--no-stream``: Ollama's whole answer says ``done: true``; one that does not was cut
    short or is not Ollama's (the gateway refuses it too), and is not recorded as ``ok``."""
    answering(body)
    result = cli("chat", "--no-stream", "hi")
    assert result.code == 1, result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        'is not an answer: the object does not say "done": true'
    )
    span = last_span(cli)
    assert (span["status"], span["error_type"]) == ("error", "stream_error")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(line("hello", **FINAL).replace(b"hello", b"hel\xfflo"), id="not-utf8"),
        pytest.param(b"[1, 2]", id="a-list"),
        pytest.param(b'"hello"', id="a-string"),
    ],
)
def test_an_answer_ollama_garbled_is_never_blamed_on_the_request(  # type: ignore[no-untyped-def]
    cli, db: str, answering: Callable[[bytes], None], body: bytes
) -> None:
    """The request went out and Ollama answered something unreadable: an upstream failure
    (exit 1), never "the request is malformed, so it was not sent" (exit 2, bad_request)."""
    answering(body)
    result = cli("chat", "--no-stream", "hi")
    assert result.code == 1, result.stderr
    assert "not sent" not in result.stderr and "malformed" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    span = last_span(cli)
    assert span["status"] == "error" and span["error_type"] == "stream_error"


def test_the_async_api_never_blames_a_garbled_answer_on_the_request(
    sqlite_url: str, answering: Callable[[bytes], None]
) -> None:
    from ollama_meter import AsyncMeteredClient, InvalidRequest, UpstreamError

    answering(b"[1, 2]")

    async def ask() -> None:
        async with AsyncMeteredClient(db_url=sqlite_url) as client:
            await client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])

    with pytest.raises(UpstreamError, match="does not read as Ollama's API") as caught:
        asyncio.run(ask())
    assert not isinstance(caught.value, InvalidRequest)


def test_closed_stdin_is_a_clear_error(cli, db: str, emulator: OllamaEmulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``ometer chat <&-``: Python has no sys.stdin at all."""
    monkeypatch.setattr(sys, "stdin", None)
    result = cli("chat")
    assert result.code == 2
    assert result.stderr == ("error: no prompt: stdin is closed; give the prompt as an argument\n")
    assert emulator.requests_to("/api/chat") == []
    assert cli("chat", "-o", "num_predict=2", "hi").code == 0  # a prompt needs no stdin


NOT_UTF8 = st.binary(min_size=1, max_size=12).filter(
    lambda raw: not _is_utf8(raw) and b"\x00" not in raw
)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=NOT_UTF8,
    where=st.sampled_from(["prompt", "--system", "--model", "--option"]),
)
def test_text_given_on_the_command_line_that_is_not_utf8_is_refused_up_front(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, raw: bytes, where: str
) -> None:
    """Python hands undecodable argv bytes on as lone surrogates: said as the bytes they were,
    with what to do, before anything is sent or charged (not as a JSON encoder's complaint)."""
    emulator.reset()
    text = raw.decode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeDecodeError) as undecodable:
        raw.decode("utf-8")
    bad = undecodable.value.start  # where the stdin check, and Python, say it is
    if where == "prompt":
        args = ["--", text]  # a prompt may begin with "-": no option
    elif where == "--option":
        args = ["--option", f"stop={text}", "hi"]
    else:
        args = [where, text, "hi"]
    result = cli("chat", *args)
    assert result.code == 2
    what = {"prompt": "the prompt", "--option": "--option stop"}.get(where, where)
    assert result.stderr == (
        f"error: {what} is not UTF-8 text (byte {raw[bad]:#04x} at position {bad}); "
        "check the terminal's or the script's encoding\n"
    )
    assert emulator.requests_to("/api/chat") == []


def _tty(stdin: io.TextIOBase) -> io.TextIOBase:
    stdin.isatty = lambda: True  # type: ignore[method-assign]
    return stdin


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_an_interactive_line_that_is_not_utf8_is_refused_and_the_session_goes_on(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, monkeypatch, errors: str
) -> None:
    """A terminal in a strict UTF-8 locale raises on a pasted Latin-1 byte (it ended the
    session as "a bug in ometer"); a POSIX locale hands it on as a lone surrogate."""
    typed = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8", errors=errors)
    monkeypatch.setattr(sys, "stdin", _tty(typed))
    result = cli("chat", "-m", "llama3.1:8b")
    assert result.code == 0, result.stderr
    assert "that line is not UTF-8 text (byte 0xe9" in result.stderr
    assert "nothing was sent" in result.stderr
    assert emulator.requests_to("/api/chat") == []


def test_an_interactive_session_goes_on_after_a_line_that_is_not_utf8(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, monkeypatch
) -> None:
    typed = io.TextIOWrapper(
        io.BytesIO(b"caf\xe9\nsecond\n/exit\n"), encoding="utf-8", errors="surrogateescape"
    )
    monkeypatch.setattr(sys, "stdin", _tty(typed))
    result = cli("chat", "-m", "llama3.1:8b")
    assert result.code == 0, result.stderr
    sent = [r.body["messages"] for r in emulator.requests_to("/api/chat")]
    assert sent == [[{"role": "user", "content": "second"}]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dept", ""), "error: department name is empty\n"),
        (("--tenant", ""), "error: tenant name is empty\n"),
        (("--user", ""), "error: user name is empty\n"),
        (
            ("--db", ""),
            "error: --db is given empty; give a value, or leave it out for the configured one\n",
        ),
        (
            ("--db", "  "),
            "error: --db is given empty; give a value, or leave it out for the configured one\n",
        ),
    ],
)
def test_an_option_given_empty_is_refused_never_read_as_left_out(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, args: tuple[str, ...], message: str
) -> None:
    """``--dept "$DEPT"`` with DEPT unset charged the call to the default department, and
    ``--db "$DB"`` recorded it in the default ledger, both with exit 0."""
    result = cli("chat", *args, "hi")
    assert (result.code, result.stderr) == (2, message)
    assert emulator.requests_to("/api/chat") == []


@pytest.mark.parametrize("command", [("log",), ("perf",), ("limit", "list"), ("demo",)])
def test_the_reading_commands_refuse_an_empty_db_too(
    cli, db: str, command: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    result = cli(*command, "--db", "")
    assert result.code == 2
    assert result.stderr.startswith("error: --db is given empty")


READING = [
    ("log",),
    ("report", "--period", "month"),
    ("perf",),
    ("chargeback", "--month", "2026-11", "--fixed-cost", "100"),
    ("budget", "status"),
    ("db", "export"),
    ("db", "prune", "--keep-days", "30"),
    ("db", "backup", "copy.db"),
]
"""A command of each kind that reads the ledger and writes nothing of its own into it."""


@pytest.mark.parametrize("command", READING)
def test_a_reading_command_given_a_ledger_that_is_not_there_makes_none(
    cli, tmp_path: Path, command: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    """A typo in OMETER_DB_URL made a new, empty ledger (and its folder): the report said
    "no calls in this period" and the bill put the whole fixed cost on __idle__, exit 0."""
    place = tmp_path / "ledgers"
    place.mkdir()
    missing = place / "ledgr" / "ledger.db"
    result = cli(*command, "--db", f"sqlite:///{missing}")
    assert result.code == 2, result
    assert result.stderr.startswith(f"error: no ledger at {missing}: nothing was ever recorded")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert list(place.iterdir()) == []


@pytest.mark.parametrize("command", READING)
def test_a_reading_command_given_an_emptied_ledger_file_leaves_it_empty(
    cli, tmp_path: Path, command: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    """A ledger file emptied under a running gateway (``: > ledger.db``): a report made a new,
    empty ledger of it, said "no calls", and the gateway wrote its spooled spans into that
    file, which the backup restored next replaced."""
    place = tmp_path / "ledgers"
    place.mkdir()
    emptied = place / "ledger.db"
    emptied.touch()
    result = cli(*command, "--db", f"sqlite:///{emptied}")
    assert result.code == 2, result
    assert result.stderr == (
        f"error: the ledger file {emptied} is empty: what it held is gone. Restore it from a "
        "backup (`ometer db backup FILE` makes one), or run `ometer db upgrade` to make a new "
        "ledger of it\n"
    )
    assert result.stdout == ""
    assert emptied.stat().st_size == 0
    assert list(place.iterdir()) == [emptied]


def test_log_refuses_an_empty_status(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    """Read as absent, ``--status "$S"`` listed every span, or said none matched."""
    result = cli("log", "--status", " ")
    assert (result.code, result.stderr) == (
        2,
        "error: --status is given empty; give a status or error type, or leave it out\n",
    )


@pytest.mark.parametrize("run_async", [False, True])
def test_the_python_api_fails_a_stream_cut_short_too(
    sqlite_url: str, answering: Callable[[bytes], None], run_async: bool
) -> None:
    from ollama_meter import AsyncMeteredClient, MeteredClient, StreamError

    answering(line("one ") + line("two "))
    messages = [{"role": "user", "content": "hi"}]
    seen: list[str] = []

    async def in_async() -> None:
        async with AsyncMeteredClient(db_url=sqlite_url) as client:
            async for part in await client.chat(
                model="llama3.1:8b", messages=messages, stream=True
            ):
                seen.append(part.message.content or "")

    def in_sync() -> None:
        with MeteredClient(db_url=sqlite_url) as client:
            for part in client.chat(model="llama3.1:8b", messages=messages, stream=True):
                seen.append(part.message.content or "")

    with pytest.raises(StreamError, match="ended without its final chunk"):
        asyncio.run(in_async()) if run_async else in_sync()
    assert seen == ["one ", "two "]  # what came is handed over, then the failure
    with MeteredClient(db_url=sqlite_url) as client:
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.error_type, span.output_tokens) == ("error", "stream_error", 2)


@pytest.mark.parametrize("who", ["tenant", "department"])
def test_the_python_api_refuses_an_empty_name_too(
    sqlite_url: str, emulator: OllamaEmulator, who: str
) -> None:
    """``department=os.environ.get("DEPT", "")`` charged the default department."""
    from ollama_meter import MeteredClient, ValidationError

    with pytest.raises(ValidationError, match=f"^{who} name is empty$"):
        MeteredClient(db_url=sqlite_url, **{who: ""})
    with MeteredClient(db_url=sqlite_url) as client:
        with pytest.raises(ValidationError, match=f"^{who} name is empty$"):
            client.chat(
                model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}], **{who: ""}
            )
        assert client.meter.ledger.latest(SpanFilter(), 5) == []
    assert emulator.requests_to("/api/chat") == []


@pytest.mark.parametrize(
    ("value", "shown"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-1e999", "-1e999")]
)
def test_an_option_that_is_no_number_json_can_carry_is_refused_by_name(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, value: str, shown: str
) -> None:
    result = cli("chat", "--option", f"temperature={value}", "hi")
    assert (result.code, result.stderr) == (
        2,
        f"error: --option temperature: {shown} is not a finite number; give one such as 0.2\n",
    )
    assert emulator.requests_to("/api/chat") == []


def test_an_option_given_twice_is_refused(cli, db: str, emulator: OllamaEmulator) -> None:  # type: ignore[no-untyped-def]
    """As with every single-valued option: a cron line edited in a hurry must not run with
    whichever value came last."""
    result = cli("chat", "-o", "temperature=0.2", "-o", " temperature=0.9", "hi")
    assert (result.code, result.stderr) == (
        2,
        "error: --option temperature is given twice; give it once\n",
    )
    assert emulator.requests_to("/api/chat") == []


def test_log_with_filters_that_match_nothing_says_so(
    cli, db: str, emulator: OllamaEmulator
) -> None:  # type: ignore[no-untyped-def]
    """'no spans yet; run ometer chat' misled whoever mistyped a filter (--status eror)."""
    assert cli("chat", "-o", "num_predict=1", "hi").code == 0
    result = cli("log", "--status", "eror")
    assert (result.code, result.stdout) == (
        0,
        "no spans match these filters: no span has status or error type 'eror' "
        "(did you mean 'error'?)\n",
    )
    assert cli("log", "--tenant", "nobody").stdout == (
        "no spans match these filters: no span has tenant 'nobody'\n"
    )
    assert "1 span(s)" in cli("log").stdout


def test_filters_naming_what_no_span_has_say_so_with_the_near_names(
    cli, db: str, emulator: OllamaEmulator
) -> None:  # type: ignore[no-untyped-def]
    """A mistyped name (--dept unasigned) gave an empty report, as a quiet month would."""
    assert cli("chat", "-o", "num_predict=1", "hi").code == 0
    assert cli("log", "--dept", "unasigned", "--model", "llama3.1:8b").stdout == (
        "no spans match these filters: no span has department 'unasigned' "
        "(did you mean 'unassigned'?)\n"
    )
    for command in ("report", "perf"):
        done = cli(command, "--period", "month", "--dept", "unasigned", "--model", "llama3:8b")
        assert (done.code, done.stderr) == (
            0,
            "note: no span has department 'unasigned' (did you mean 'unassigned'?); "
            "no span has model 'llama3:8b' (did you mean 'llama3.1:8b'?)\n",
        )
        assert "no calls in this period" in done.stdout
    # Known names in a window without their calls, or together matching nothing: no hint.
    assert cli("report", "--period", "2020-01", "--dept", "unassigned").stderr == ""
    assert cli("log", "--dept", "unassigned", "--status", "error").stdout == (
        "no spans match these filters\n"
    )
    assert cli("log", "--user", "\x1b[2J").stdout == (
        "no spans match these filters: no span has user '\\x1b[2J'\n"
    )
    assert cli("log", "--dept", "d" * 100_000).stdout == (  # said in a line, not 100,000 d's
        f"no spans match these filters: no span has department {'d' * 60!r}... "
        "(100,000 characters)\n"
    )


def test_removing_a_keys_limits_that_are_not_there_names_the_key(cli, db: str) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0
    result = cli("limit", "rm", "--key", "99")
    assert (result.code, result.stderr) == (
        1,
        "error: no limits set for key 99; see `ometer limit list`\n",
    )


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(digits=st.integers(4301, 20_000), nested=st.booleans())
def test_an_option_of_thousands_of_digits_is_refused_by_name(  # type: ignore[no-untyped-def]
    cli, db: str, emulator: OllamaEmulator, digits: int, nested: bool
) -> None:
    """Python will not read an integer that long (it ended as 'a bug in ometer', exit 70)."""
    emulator.reset()
    number = "9" * digits
    result = cli("chat", "--option", f"num_predict={f'[{number}]' if nested else number}", "hi")
    assert (result.code, result.stderr) == (
        2,
        f"error: --option num_predict: a number of {digits:,} digits is too long to send\n",
    )
    assert emulator.requests_to("/api/chat") == []


FOREGROUND = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "from ollama_meter.cli import main; sys.argv[0] = 'ometer'; main()"
)
"""``ometer`` as a foreground job has it: Ctrl-C raises, a hang-up is not ignored (a shell's
background job, and a run under nohup, and so a test run started as one, would hand them on
ignored)."""
STOPPING = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
"""Ctrl-C, a kill, and the terminal gone (an ssh session dropped): SIGHUP killed ometer on the
spot, its span left in the journal for some later ometer to find as ``interrupted``."""


def _stopped_chat(
    emulator: OllamaEmulator, url: str, arguments: list[str], signum: int, code: int, after: float
) -> bytes:
    """``ometer chat -m llama3.1:8b ARGUMENTS`` sent ``signum`` ``after`` seconds from its
    request; its stdout, once it ended with ``code``."""
    env = {**os.environ, "OMETER_DB_URL": url, "OLLAMA_HOST": emulator.url}
    proc = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND, "chat", "-m", "llama3.1:8b", *arguments],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with _ended(proc):
        deadline = time.monotonic() + 30
        while not emulator.requests_to("/api/chat"):
            assert time.monotonic() < deadline and proc.poll() is None, "no request came"
            time.sleep(0.05)
        time.sleep(after)
        proc.send_signal(signum)
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == code
    return stdout


@contextlib.contextmanager
def _ended(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """``proc`` killed if it still runs when the block ends: a test that failed waiting for it
    left it running, and its request, sent late on a busy machine, was the next test's."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(("signum", "code"), STOPPING)
def test_a_streamed_reply_stopped_by_a_signal_is_recorded_with_what_came(
    emulator: OllamaEmulator, sqlite_url: str, signum: int, code: int
) -> None:
    """Ctrl-C (or a kill) mid-reply: the command ends 128+N, the span is a client_abort with
    every chunk Ollama sent so far (the one read but not yet printed too), estimated."""
    prompt = "tell me a long story"
    pieces = expected_reply("llama3.1:8b", [{"role": "user", "content": prompt}]).pieces
    env = {**os.environ, "OMETER_DB_URL": sqlite_url, "OLLAMA_HOST": emulator.url}
    emulator.token_latency = 0.3
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", FOREGROUND, "chat", "-m", "llama3.1:8b", prompt],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        with _ended(proc):
            printed = b""
            deadline = time.monotonic() + 30
            while printed.decode().count(" ") < 2:  # three chunks printed
                assert time.monotonic() < deadline, "no reply came"
                printed += os.read(proc.stdout.fileno(), 4096)
            proc.send_signal(signum)
            printed += proc.stdout.read()
            stderr = proc.stderr.read().decode()
            assert proc.wait(timeout=30) == code
    finally:
        emulator.token_latency = 0.0
    shown = printed.decode()
    assert shown.startswith("".join(pieces[:3])) and len(shown) < len("".join(pieces))
    assert shown.endswith("\n")  # what stopped it is said on a line of its own
    assert (
        stderr.endswith("interrupted\n") if signum == signal.SIGINT else "Traceback" not in stderr
    )
    with MeteredClient(db_url=sqlite_url) as client:
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    in_print = shown.rstrip("\n")
    seen = next(n for n in range(len(pieces) + 1) if "".join(pieces[:n]) == in_print)
    assert (span.status, span.error_type) == ("client_abort", "client_abort")
    assert span.output_tokens == seen + 1  # read ahead: counted, not yet handed over
    assert span.token_source == "estimated"


@pytest.mark.parametrize(("signum", "code"), STOPPING)
def test_chat_json_stopped_by_a_signal_still_prints_its_one_object(
    emulator: OllamaEmulator, sqlite_url: str, signum: int, code: int
) -> None:
    """A script reading ``--json`` got nothing on stdout when the call was stopped: now the
    error object, with the span as recorded (client_abort)."""
    emulator.token_latency = 0.3
    try:  # a chunk or two on their way
        stdout = _stopped_chat(emulator, sqlite_url, ["--json", "a story"], signum, code, 0.5)
    finally:
        emulator.token_latency = 0.0
    (line,) = stdout.decode().splitlines()
    shown = json.loads(line)
    with MeteredClient(db_url=sqlite_url) as client:
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert shown["error_type"] == "client_abort" and shown["status"] == "client_abort"
    assert shown["span_id"] == span.id and shown["output_tokens"] == span.output_tokens
    assert shown["error"] == (
        "interrupted before the answer was complete"
        if signum == signal.SIGINT
        else f"stopped by signal {signum} before the answer was complete"
    )


@pytest.mark.parametrize(("signum", "code"), STOPPING)
def test_a_whole_reply_stopped_by_a_signal_while_ollama_works_charges_the_prompt(
    emulator: OllamaEmulator, sqlite_url: str, signum: int, code: int
) -> None:
    """``--no-stream`` stopped while Ollama evaluated the prompt (no byte of the answer yet):
    its span charged 0 tokens, said to be ``reported``. Now the prompt, estimated."""
    emulator.latency = 5.0
    try:
        _stopped_chat(emulator, sqlite_url, ["--no-stream", "hi"], signum, code, 0.3)
    finally:
        emulator.hurry()
    with MeteredClient(db_url=sqlite_url) as client:
        (span,) = client.meter.ledger.latest(SpanFilter(), 5)
    assert (span.status, span.output_tokens, span.token_source) == ("client_abort", 0, "estimated")
    assert span.input_tokens > 0
