"""Errors that help: whatever a user types, one line that says what to do, never a traceback."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ollama_meter.testing import OllamaEmulator, unreachable_url

typed = st.text(max_size=40) | st.sampled_from(
    ["a\x00b", "y" * 300, "x" * 10_000, "١٢", "1e309", "NaN", "-0", "0000-01-01", "9999-12-31",
     "2026-03-29", "\x1b[2J", "a\u202eb", "afile/x"]
)  # fmt: skip


def one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if "ollama_meter.ledger" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(
        [
            ["report", "--period"],
            ["report", "--since"],
            ["report", "--until"],
            ["perf", "--period"],
            ["chargeback", "--month"],
            ["budget", "set", "sales", "--monthly"],
            ["budget", "set", "--tenant"],
            ["pricing", "set", "m", "--gpu-hour"],
            ["pricing", "set"],
            ["log", "--status"],
            ["keys", "create", "--dept"],
            ["chat", "-m", "x", "--dept"],
            ["db", "backup"],
            ["db", "import"],
            ["db", "rollup", "--zone"],
            ["db", "export", "--since"],
            ["db", "prune", "--keep-days"],
            ["reprice", "--since"],
            ["limit", "set", "--rpm", "5", "--tenant"],
            ["pricing", "set", "m", "--input-per-1m", "1", "--from"],
            ["report", "--db"],
        ]
    ),
    value=typed,
)
def test_no_value_a_user_types_gives_a_traceback(
    cli: Any, tmp_path: Path, command: list[str], value: str
) -> None:
    (tmp_path / "afile").touch()
    if command[-1] == "--monthly":
        command = [*command, value, "--tenant", "acme"]
    else:
        command = [*command, value]
    if command[0] == "chat":
        command.append("hello")
    if command[-2:] == ["import", "-"]:
        command[-1] = "./-"  # not stdin
    result = cli(*command)
    assert result.code in (0, 1, 2, 3), (command, result)
    # the value is echoed in the error: hypothesis typed 'unexpected', which failed the test
    bug = ("Traceback (most recent call last)", "error: unexpected ")
    assert not any(said in result.stderr for said in bug), result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["report", "--period", "9999-12"], "outside the dates ometer works with"),
        (["report", "--since", "0001-01-01"], "outside the dates"),
        (["report", "--until", "9999-12-31"], "outside the dates"),
        (["chargeback", "--month", "9999-12"], "outside the dates"),
        (["log", "--db", "sqlite://"], "in-memory SQLite database, which keeps nothing"),
        (["budget", "set", "sales\n", "--monthly", "1"], "has characters other than"),
        (["chat", "--dept", "sales\n", "hi"], "has characters other than"),
        (["reprice", "--since", "2026-11-10", "--until", "2026-11-01"], "is before --since"),
        (["report", "--since", "9998-01-01"], "--since 9998-01-01 is after today"),
        # no bound: the gateway's body memory (8 bodies) had none either; beyond loopback
        # with no key, refused once read: never a gateway left running
        (
            ["serve", "--host", "0.0.0.0", "--max-body-bytes", "9" * 26],
            "less than or equal to 1073741824",
        ),
        (
            ["serve", "--host", "0.0.0.0", "--max-header-bytes", "9" * 26],
            "less than or equal to 1048576",
        ),
        # a byte that is not UTF-8 in a server's URL (a Latin-1 shell): "unexpected
        # UnicodeEncodeError", exit 70, from the spool folder's name or SQLAlchemy
        (["log", "--db", "postgresql+psycopg://x@127.0.\udce90.1:1/db"], "not UTF-8 text"),
        (["db", "upgrade", "--db", "postgresql+psycopg://x:p\udce9@h:1/db"], "not UTF-8 text"),
        (["log", "--db", "postgresql+psycopg://x@127.0.0.1:1/d\udce9"], "not UTF-8 text"),
    ],
)
def test_mistakes_are_one_line(cli: Any, args: list[str], says: str) -> None:
    result = cli(*args)
    assert result.code in (1, 2)
    assert says in one_error_line(result)


def test_a_damaged_ledger_file_says_what_to_do(cli: Any, tmp_path: Path) -> None:
    damaged = tmp_path / "ledger.db"
    damaged.write_bytes(b"not a database " * 400)
    line = one_error_line(cli("report", "--db", f"sqlite:///{damaged}"))
    assert str(damaged) in line and "ometer db backup" in line and "move it aside" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_ledger_in_a_folder_that_takes_no_files_says_so(cli: Any) -> None:
    """``sqlite:////proc/ledger.db``: /proc takes no new files (not even root's), and the error
    said to give the ledger file, which does not exist, to this user with chown."""
    line = one_error_line(cli("db", "upgrade", "--db", "sqlite:////proc/ledger.db"))
    assert "no file can be made at /proc/ledger.db" in line, line
    assert "chown" not in line, line


def test_a_folder_given_as_the_ledger_is_named_as_one(cli: Any, tmp_path: Path) -> None:
    """SQLite says only "unable to open database file", which names neither the path nor
    what to do."""
    folder = tmp_path / "ledgers"
    folder.mkdir()
    for command in (["log"], ["db", "upgrade"]):
        line = one_error_line(cli(*command, "--db", f"sqlite:///{folder}"))
        assert f"{folder} is a folder, not a ledger file" in line, line
    assert list(folder.iterdir()) == []


def test_a_ledger_on_a_read_only_mount_says_so_and_is_left_as_it_was(
    cli: Any, tmp_path: Path
) -> None:
    """A ledger (at the head, or one a migration must change), or none yet, on a file system
    mounted read-only: SQLite's "unable to open database file" or "attempt to write a readonly
    database" said neither where nor what to do."""
    import subprocess

    from ollama_meter.ledger import Ledger, close_ledgers
    from tests._tmpfs import small_tmpfs
    from tests.ledger.test_ledger import downgrade

    with small_tmpfs(tmp_path, "16m") as disk:
        head, old = disk / "head.db", disk / "old.db"
        Ledger(f"sqlite:///{head}").dispose()
        ledger = Ledger(f"sqlite:///{old}")
        downgrade(ledger, "0011")
        ledger.dispose()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        try:
            for path in (head, old, disk / "new.db"):
                for command in (["log"], ["db", "upgrade"]):
                    line = one_error_line(cli(*command, "--db", f"sqlite:///{path}"))
                    if command == ["log"] and not path.exists():  # reading makes no ledger
                        assert line.startswith(f"error: no ledger at {path}"), line
                        continue
                    assert f"the folder {disk} is on a read-only file system" in line, line
                    if path.exists():  # to read it, a copy: said with the command to make it
                        assert f"copy it to a folder ometer may write (cp {path} " in line, line
                    else:
                        assert line.endswith(
                            "remount it read-write, or give a ledger in a folder ometer may write"
                        ), line
        finally:
            close_ledgers()
        assert {p.name: p.read_bytes() for p in disk.iterdir()} == before


def test_a_ledger_from_a_newer_ometer_says_to_upgrade(cli: Any, db_url: str) -> None:
    from sqlalchemy import text

    from ollama_meter.ledger import HEAD_REVISION, Ledger

    ledger = Ledger(db_url)
    newer = f"{int(HEAD_REVISION) + 1:04d}"
    with ledger.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    ledger.dispose()
    for command in (["log"], ["db", "upgrade"], ["db", "export"]):
        result = cli(*command, "--db", db_url)
        line = one_error_line(result)
        assert result.code == 1 and f"schema revision {newer}" in line, line
        assert f"newer than this ometer's {HEAD_REVISION}" in line and "Upgrade ometer" in line


def test_an_unreachable_server_for_db_upgrade_is_one_line(cli: Any) -> None:
    line = one_error_line(cli("db", "upgrade", "--db", "postgresql+psycopg://x@127.0.0.1:1/db"))
    assert "Connection refused" in line or "connection" in line.lower()


def test_a_missing_folder_is_created_and_said(cli: Any, tmp_path: Path) -> None:
    where = tmp_path / "new" / "deeper" / "ledger.db"
    result = cli("db", "upgrade", "--db", f"sqlite:///{where}")
    assert result.code == 0 and f"created the folder {where.parent}" in result.stderr


def test_chat_refuses_an_empty_prompt_and_bad_stdin(
    cli: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "the prompt is empty" in one_error_line(cli("chat", "  "))

    class Bytes(io.StringIO):
        buffer = io.BytesIO(b"\xff\xfe caf\xe9")

    monkeypatch.setattr(sys, "stdin", Bytes())
    result = cli("chat", "-m", "llama3.1:8b")
    assert "stdin is not UTF-8 text (byte 0xff at position 0)" in one_error_line(result)
    assert emulator.requests == []  # nothing sent, nothing charged


def test_chat_json_prints_an_error_object_on_failure(cli: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("OLLAMA_HOST", unreachable_url())
    monkeypatch.setenv("OMETER_RETRIES", "0")
    result = cli("chat", "--json", "-m", "llama3.1:8b", "hi")
    assert result.code == 1
    failure = json.loads(result.stdout)
    assert failure["error_type"] == "connection" and failure["status"] == "error"
    assert failure["span_id"] and "cannot reach Ollama" in failure["error"]


def test_interactive_commands_are_not_sent_and_ctrl_c_cancels_one_answer(
    cli: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_meter.cli import chat as chat_module
    from ollama_meter.cli._console import err

    lines = iter(["/help", "/nonsense", "first question", "second question", "/exit"])
    monkeypatch.setattr(err, "input", lambda *_: next(lines))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    real_turn = chat_module._turn
    turns = {"n": 0}

    def turn(*args: Any, **kwargs: Any) -> str:
        turns["n"] += 1
        if turns["n"] == 1:
            raise KeyboardInterrupt  # Ctrl-C while the first answer is written
        return str(real_turn(*args, **kwargs))

    monkeypatch.setattr(chat_module, "_turn", turn)
    result = cli("chat", "-m", "llama3.1:8b")
    assert result.code == 0
    assert "commands (never sent to the model)" in result.stderr
    assert "unknown command /nonsense" in result.stderr and "answer cancelled" in result.stderr
    sent = [r.body["messages"] for r in emulator.requests_to("/api/chat")]
    assert sent == [[{"role": "user", "content": "second question"}]]  # only the real one


def test_filters_say_they_filter_and_status_takes_error_types(
    cli: Any, emulator: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "Only this tenant (default: all)" in cli("report", "--help").stdout
    assert cli("chat", "-m", "nosuch:model", "hi").code == 1
    assert cli("chat", "-m", "llama3.1:8b", "hi").code == 0
    missing = json.loads(cli("log", "--json", "--status", "model_not_found").stdout)
    assert [s["error_type"] for s in missing] == ["model_not_found"]
    errors = json.loads(cli("log", "--json", "--status", "error").stdout)
    assert len(errors) == 1


def test_the_pricing_file_applies_to_every_command_that_reads_prices(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text('[[rule]]\nmodel = "llama3.1:*"\ninput_per_1m = 7\n')
    monkeypatch.setenv("OMETER_PRICING_FILE", str(toml))
    rules = json.loads(cli("pricing", "list", "--json").stdout)
    assert [(r["pattern"], r["input_per_1m"], r["source"]) for r in rules] == [
        ("llama3.1:*", "7", f"file:{toml}")
    ]


def test_a_pricing_file_at_any_path_syncs_once_and_apart_from_the_others(
    cli: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder name that is not UTF-8, or a path longer than the source column (512): every
    command failed with "unexpected UnicodeEncodeError" / "value too long" (on PostgreSQL)."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    assert cli("db", "upgrade").code == 0
    deep = Path(*["d" * 200] * 3)
    folders = [Path("caf\udcff"), Path("caf\udcfe"), Path("a") / deep, Path("b") / deep]
    for price, folder in enumerate(folders, start=1):
        toml = tmp_path / folder / "p.toml"
        toml.parent.mkdir(parents=True)
        toml.write_text(f'[[rule]]\nmodel = "m{price}"\ninput_per_1m = {price}\n')
        monkeypatch.setenv("OMETER_PRICING_FILE", str(toml))
        for _ in range(2):  # the second run finds the file's rules unchanged
            result = cli("pricing", "list", "--json")
            assert result.code == 0, result.stderr
    rules = json.loads(result.stdout)
    assert [(r["pattern"], r["input_per_1m"]) for r in rules] == [
        ("m1", "1"),
        ("m2", "2"),
        ("m3", "3"),
        ("m4", "4"),
    ]
    sources = [r["source"] for r in rules]
    assert len(set(sources)) == 4 and all(len(s) <= 512 for s in sources)
    assert sources[0].startswith("file:") and "caf\ufffd" in sources[0]


@pytest.mark.parametrize("number", ["2147483648", "99999999999999999999999", "0"])
def test_an_id_no_row_can_have_is_not_found_not_a_crash(
    cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, number: str
) -> None:
    """Ids are 32-bit on PostgreSQL (and 64 on SQLite): a larger one names nothing there."""
    monkeypatch.setenv("OMETER_DB_URL", db_url)
    assert cli("db", "upgrade").code == 0
    for command, says in (
        (["pricing", "rm", number], f"no price rule with id {number}"),
        (["budget", "rm", number], f"no budget with id {number}"),
        (["keys", "revoke", number], f"no live key with id {number}"),
        (["limit", "rm", "--key", number], "no limits set for key"),
        (["limit", "set", "--key", number, "--rpm", "5"], f"no live key with id {number}"),
    ):
        result = cli(*command)
        assert result.code == 1 and says in one_error_line(result), (command, result)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["report", "--format", "xml"],
            "'--format' / '-f': 'xml' is not one of 'table', 'csv', 'json', 'html'",
        ),
        (["chargeback", "-m", "2026-11", "--idle", "x"], "'--idle': 'x' is not one of 'share'"),
        (["report", "--bogus"], "No such option: --bogus"),
        (["pricing", "rm", "abc"], "Invalid value for 'rule_id'"),
        (["chargeback", "--month", "2026-11", "--gpus", "0"], "Invalid value for '--gpus'"),
        (["chargeback"], "Missing option '--month'"),
        (["budget", "set", "sales", "--daily"], "Option '--daily' requires an argument"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_a_mistyped_command_or_option_is_one_line_too(cli: Any, args: list[str], says: str) -> None:
    """Not typer's boxed usage screen: the same one line, exit 2, as any other mistake."""
    result = cli(*args)
    assert result.code == 2 and says in one_error_line(result)
    assert "--help" in result.stderr or args[0] == "budget"


def test_help_and_a_bare_command_still_show_the_help(cli: Any) -> None:
    assert cli("report", "--help").code == 0
    bare = cli("pricing")
    assert bare.code == 2 and "Usage: ometer pricing" in bare.stdout + bare.stderr
    assert cli("--version").stdout.startswith("ometer ")
    # -h, as most commands take it, was "No such option: -h"
    for args in (["-h"], ["report", "-h"], ["db", "backup", "-h"], ["keys", "-h"]):
        shown = cli(*args)
        assert shown.code == 0 and "Usage: ometer" in shown.stdout, (args, shown)


def _single_valued_options() -> list[tuple[list[str], str, bool]]:
    """(command path, option, takes a value) of every option of every command that is not
    meant to be repeated (``--upstream``, ``--option``, ``--allow-user`` are)."""
    import typer

    from ollama_meter.cli import app

    found: list[tuple[list[str], str, bool]] = []

    def walk(path: list[str], cmd: Any) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                walk([*path, name], sub)
            return
        for param in cmd.params:
            if param.param_type_name == "option" and not (
                param.multiple or param.count or param.is_eager
            ):
                found.extend((path, opt, not param.is_flag) for opt in param.opts)

    walk([], typer.main.get_command(app))
    return found


def test_every_option_given_twice_is_one_line_and_exit_2(cli: Any) -> None:
    """click keeps the last of ``--month 2026-11 --month 2026-10`` without a word; a cron
    line edited in a hurry billed the wrong month with exit code 0."""
    options = _single_valued_options()
    assert (["chargeback"], "--month", True) in options and len(options) > 100
    for path, option, takes_value in options:
        given = [option, "2026-11"] if takes_value else [option]
        result = cli(*path, *given, *given)
        assert result.code == 2, (path, option, result)
        line = one_error_line(result)
        assert option in line and "given twice; give it once" in line, (path, line)
    # the option and its short name are one option; options meant to be repeated still are
    assert "given twice" in one_error_line(cli("chargeback", "--month", "2026-11", "-m", "2026-10"))
    for repeated in (["serve", "--upstream", "http://a:1", "--upstream", "http://b:1", "--help"],):
        assert cli(*repeated).code == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["db", "backup", "y" * 300], "could not back up"),
        (["report", "--format", "csv", "--out", "y" * 300], "longer than the file system takes"),
        (["chargeback", "--month", "2026-10", "--out", "y" * 300], "longer than the file system"),
        (["db", "backup", "afile/copy.db"], "afile is a file, not a folder"),
        (["report", "--format", "json", "--out", "afile/r.json"], "afile is a file, not a folder"),
        (["db", "import", "y" * 300], "File name too long"),
        (["db", "import", "a\x00b"], "NUL"),
        (["log", "--db", "sqlite:////tmp/" + "y" * 300], "File name too long"),
        (["pricing", "list", "--db", "sqlite:////tmp/" + "y" * 300], "File name too long"),
        (["db", "path", "--db", f"sqlite:////tmp/{'y' * 300}/l.db"], "File name too long"),
        (["budget", "set", "--monthly", "5", "--db", "sqlite:////tmp/" + "y" * 300], "too long"),
        (["log", "--db", "sqlite:////"], "names a folder"),
        (["log", "--db", "sqlite:///."], "names a folder"),
        (["log", "--db", "sqlite:///a\x00b"], "NUL"),
        (["log", "--db", "sqlite:///l.db?timeout=abc"], "takes no options"),
        (["log", "--db", "sqlite:///file:l.db?mode=ro&uri=true"], "takes no options"),
        (["log", "--db", "sqlite:///file:l.db"], "URI"),
    ],
)
def test_a_path_the_system_refuses_is_one_line_not_a_bug(
    cli: Any, tmp_path: Path, args: list[str], says: str
) -> None:
    """Names too long for the file system, a file where a folder should be, a NUL: the
    user's path, said in one line (exit 1 or 2), never "unexpected ... this is a bug"."""
    (tmp_path / "afile").write_text("")
    if args[:2] == ["db", "backup"]:
        assert cli("db", "upgrade").code == 0  # a ledger to copy
    result = cli(*args)
    line = one_error_line(result)
    assert result.code in (1, 2) and "unexpected" not in line and says in line, line
    assert not (tmp_path / "file:").exists()  # no folder made from a URI's name


@pytest.mark.parametrize("args", [["report"], ["pricing", "list"], ["db", "upgrade"]])
def test_a_ledger_in_a_folder_this_user_may_not_enter_is_one_line(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """OMETER_DB_URL in a folder of another user's (/root/ledger.db, a 0700 /var/lib/ometer)
    was "unexpected PermissionError ... This is a bug in ometer", exit 70, in every command.
    (The tests run as root, whom no folder refuses: the file system's answer is made here.)"""
    closed = tmp_path / "closed"
    real_stat = os.stat

    def refusing(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(closed)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refusing)
    result = cli(*args, "--db", f"sqlite:///{closed}/ledger.db")
    line = one_error_line(result)
    assert result.code == 1, line
    assert line == (
        f"error: cannot reach the ledger at {closed}/ledger.db: Permission denied (a folder "
        "on its way is not this user's to enter); run this as a user who may, or give a "
        "ledger this user may reach with OMETER_DB_URL or --db"
    )


def test_a_pricing_file_name_too_long_is_one_line(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMETER_PRICING_FILE", str(tmp_path / ("q" * 300)))
    result = cli("report")
    line = one_error_line(result)
    assert result.code in (1, 2) and "unexpected" not in line
    assert "OMETER_PRICING_FILE" in line and "File name too long" in line


DEEP_JSON = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["pricing", "import", "deep.toml"], {}, "nested too deep"),
        (["report"], {"OMETER_PRICING_FILE": "deep.toml"}, "nested too deep"),
        (["report"], {"DEPARTMENT_BUDGETS": DEEP_JSON}, "nested too deep"),
        (["chat", "-m", "m", "--option", f"stop={DEEP_JSON}", "hi"], {}, "nested too deep"),
    ],
)
def test_input_nested_deeper_than_python_recurses_is_one_line(
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    """Valid TOML or JSON nested 50,000 deep was an 'unexpected RecursionError ... a bug'."""
    (tmp_path / "deep.toml").write_text(f"x = {DEEP_JSON}\n")
    monkeypatch.setenv("OLLAMA_HOST", unreachable_url())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli(*args)
    line = one_error_line(result)
    assert result.code in (1, 2) and "unexpected" not in line and says in line, line


def test_a_file_name_that_is_not_utf8_is_used_as_given(cli: Any, tmp_path: Path) -> None:
    """A Latin-1 name (``ometer db backup $'copie-\\xe9t\\xe9.db'``) reaches Python as lone
    surrogates: the backup failed with "unexpected UnicodeEncodeError" (exit 70), and a message
    naming such a file could not be written at all. The file gets the bytes as typed; a
    message shows each byte that is not UTF-8 as U+FFFD."""
    name = os.fsdecode(b"copie-\xe9t\xe9.db")
    assert cli("db", "upgrade").code == 0  # a ledger to copy
    result = cli("db", "backup", name)
    assert result.code == 0, result.stderr
    assert (tmp_path / name).is_file() and os.fsencode(name) in os.listdir(os.fsencode(tmp_path))
    assert "copie-\ufffdt\ufffd.db" in result.stdout
    line = one_error_line(cli("db", "import", os.fsdecode(b"caf\xe9")))
    assert line == "error: cannot read caf\ufffd: No such file or directory"


RULE = 'model = "llama3.1:*"  # café\nper_request = 1\n'


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            ("[[rule]]\n" + RULE).encode("latin-1"),
            "not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8, e.g. "
            "`iconv -f latin1 -t utf-8 {path} > {path}.utf8` if it is Latin-1",
        ),
        (
            ("[[rule]]\n" + RULE).encode("utf-16"),
            "UTF-16 text, not UTF-8; save it as UTF-8, e.g. "
            "`iconv -f utf-16 -t utf-8 {path} > {path}.utf8`",
        ),
    ],
)
def test_a_pricing_file_that_is_not_utf8_says_what_to_do(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, says: str
) -> None:
    """It was Python's codec message: "'utf-8' codec can't decode byte 0xe9 in position 31:
    invalid continuation byte", neither what the file is nor what to do."""
    toml = tmp_path / "prices.toml"
    toml.write_bytes(content)
    done = cli("pricing", "import", str(toml))
    assert (done.code, done.stderr.strip()) == (1, f"error: {toml}: {says.format(path=toml)}")
    monkeypatch.setenv("OMETER_PRICING_FILE", str(toml))
    done = cli("pricing", "list")
    line = f"error: OMETER_PRICING_FILE {toml}: {says.format(path=toml)}"
    assert (done.code, done.stderr.strip().splitlines()[-1]) == (1, line)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            b"SQLite format 3\x00" + bytes(84),
            "a SQLite database (a ledger, or a backup of one), not a pricing file: give the "
            "TOML file of [[rule]] tables",
        ),
        (
            gzip.compress(("[[rule]]\n" + RULE).encode()),
            "gzip-compressed, not a pricing file's TOML text: unpack it first "
            "(zcat {path} > prices.toml)",
        ),
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00",
            "holds a NUL byte (on line 1), which no text file does: it is binary (or UTF-16 "
            "with no byte order mark), not a pricing file: give the TOML file of [[rule]] tables",
        ),
        (
            '[[rule]]\nmodel = "x:*"\n'.encode("utf-16-le"),
            "holds a NUL byte (on line 1), which no text file does: it is binary (or UTF-16 "
            "with no byte order mark), not a pricing file: give the TOML file of [[rule]] tables",
        ),
    ],
    ids=["ledger", "gzip", "program", "utf16-no-bom"],
)
def test_a_pricing_file_that_is_no_text_says_what_it_is(
    cli: Any, tmp_path: Path, content: bytes, says: str
) -> None:
    """A ledger, a packed file or a program given as the pricing file was told to convert
    itself from Latin-1 (`iconv -f latin1 -t utf-8 ledger.db > ledger.db.utf8`), advice that
    makes no pricing file of any of them; `ometer db import` names what such a file is."""
    toml = tmp_path / "prices.toml"
    toml.write_bytes(content)
    done = cli("pricing", "import", str(toml))
    assert (done.code, done.stderr.strip()) == (1, f"error: {toml}: {says.format(path=toml)}")


def test_a_pricing_file_saved_with_a_byte_order_mark_is_read(cli: Any, tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte order mark, which the TOML reader took for a
    statement it could not read ("Invalid statement (at line 1, column 1)")."""
    toml = tmp_path / "prices.toml"
    toml.write_bytes(("[[rule]]\n" + RULE).encode("utf-8-sig"))
    assert "imported 1 new rule" in cli("pricing", "import", str(toml)).stdout
