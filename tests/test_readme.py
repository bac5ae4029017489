"""The README's commands are the product's contract: run them as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from ollama_meter.cli import app
from ollama_meter.testing import REAL_TIME_MODELS, OllamaEmulator

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def fenced_blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README, flags=re.S | re.M)


def test_readme_starts_with_the_two_commands() -> None:
    first = re.search(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
    assert first is not None
    lines = first.group(2).strip().splitlines()
    assert len(lines) == 2
    setup_and_demo, setup_and_test = lines
    assert setup_and_demo.startswith("python3 -m venv .venv && ")
    assert "pip install ." in setup_and_demo and setup_and_demo.endswith("ometer demo")
    assert "pip install -e '.[test]'" in setup_and_test and "pytest" in setup_and_test
    ci = subprocess.run(
        ["bash", "-c", "awk '/^```/{n++; next} n==1' README.md | sed -n 2p"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ci.stdout.strip() == setup_and_test
    assert (
        "awk '/^```/{n++; next} n==1' README.md | sed -n 2p" in (ROOT / ".ci" / "run").read_text()
    )


def test_every_command_is_documented_and_has_help() -> None:
    group = typer.main.get_group(app)
    names = []
    for name, command in group.commands.items():
        sub = getattr(command, "commands", None)
        names.extend(f"{name} {child}" for child in sub) if sub else names.append(name)
    for name in names:
        assert f"ometer {name}" in README, f"`ometer {name}` is missing from the README"
    assert len(names) >= 10


@pytest.fixture
def at_real_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[OllamaEmulator]:
    """The emulator as ``python -m ollama_meter.testing --real-time`` serves it (the README
    says so): at a GPU's pace, spending every time it reports (a cold load of 1.2 s), so its
    GPU-hour prices are a real server's."""
    with OllamaEmulator(models=REAL_TIME_MODELS) as emulator:
        monkeypatch.setenv("OLLAMA_HOST", emulator.url)
        yield emulator


def test_walkthrough_runs_as_written(at_real_time: OllamaEmulator, tmp_path: Path) -> None:
    emulator = at_real_time
    console = fenced_blocks("console")[0]
    commands = [line[2:] for line in console.splitlines() if line.startswith("$ ")]
    assert commands[0] == "export OLLAMA_HOST=http://127.0.0.1:11434"
    script = "set -e\n" + "\n".join(commands).replace("http://127.0.0.1:11434", emulator.url)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "OMETER_TIMEZONE": "Europe/Berlin",
    }
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The README shows real output: the deterministic parts must match it exactly.
    shown_csv = console.split("$ cat month.csv\n", 1)[1].strip()
    assert (tmp_path / "month.csv").read_text().strip() == shown_csv
    assert '"input_tokens": 6, "output_tokens": 12' in done.stdout
    assert '"cost": "0.030000"' in done.stdout
    assert "3 in / 39 out tokens · 0.081000 USD" in done.stderr
    assert "2 in / 18 out tokens · 0.000326 USD" in done.stderr
    # The tables as shown, but for the log's rows (their times and latencies vary).
    lines = done.stdout.splitlines()
    drawn = [
        line
        for line in console.splitlines()
        if line[:1] in "┏┃┡│├└" and not re.search(r"\d\d:\d\d:\d\d", line)
    ]
    assert len(drawn) >= 12 and [line for line in drawn if line not in lines] == []
    # Then the failures and the budget, on the walkthrough's ledger: what they print is shown.
    for block in fenced_blocks("console")[1:3]:
        shown = block.replace("http://127.0.0.1:11434", emulator.url)
        said, code = "", 0
        for line in shown.splitlines():
            if line.startswith("$ echo $?"):
                said += f"$ echo $?\n{code}\n"
            elif line.startswith("$ "):
                said += line + "\n"
                command = line[2:].split("  #")[0]
                run = subprocess.run(
                    ["bash", "-c", command],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert run.returncode in (0, 1, 3), run.stderr
                said, code = said + run.stdout + run.stderr, run.returncode
        assert undated(said) == undated(shown)


def undated(text: str) -> str:
    """A console block with the day it ran on (and its zone's name) left out."""
    return re.sub(r"\d{4}-\d{2}-\d{2}( 00:00 \w+)?", "DATE", text)


@pytest.mark.slow
def test_first_command_from_a_clean_copy(tmp_path: Path) -> None:
    """`pip install .` into a new venv from a copy of the tracked files, then `ometer demo`."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    copy = tmp_path / "clone"
    for name in filter(None, files.decode().split("\0")):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, target)
    first = re.search(r"^```\w*\n(.*?)\n", README, flags=re.M)
    assert first is not None
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "COLUMNS": "120"}
    env.pop("VIRTUAL_ENV", None)
    # pip byte-compiles every module of the ~60 packages it installs (8.6 of its 27 s here,
    # 2.2 s without), of which the demo imports a part; a module it could not compile would
    # not fail the install either. "0" turns it off: pip reads a PIP_NO_* variable as the
    # value of the option's own name, here ``compile``.
    env["PIP_NO_COMPILE"] = "0"
    done = subprocess.run(
        ["bash", "-c", first.group(1)],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sent 300 calls" in done.stderr
    assert "spend" in done.stdout and "total" in done.stdout
    assert (tmp_path / "data" / "ollama-meter" / "demo.db").exists()


def test_the_perf_example_reads_as_perf_reads_bins() -> None:
    """Percentiles and speeds are bin edges (the Performance section): so is every shown one."""
    from ollama_meter.ledger._cells import duration_bin

    block = next(b for b in fenced_blocks("console") if b.startswith("$ ometer perf"))
    header, *rows = block.splitlines()[1:]
    columns = header.split(",")
    timed = [c for c in columns if c.endswith("_ms") or c == "tokens_per_s"]
    assert rows and len(timed) == 10
    for row in rows:
        cells = dict(zip(columns, row.split(","), strict=True))
        for column in timed:
            if cells[column]:
                scaled = round(float(cells[column]) * 1_000_000)
                assert duration_bin(scaled) == scaled, (cells["model"], column, cells[column])


def test_the_python_api_snippet_runs_as_written(
    emulator: OllamaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It streamed ``messages=[...]``, which the client refuses (``InvalidRequest``)."""
    from ollama_meter.ledger import Ledger, SpanFilter

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OMETER_DB_URL", db)
    snippet = next(block for block in fenced_blocks("python") if "MeteredClient(" in block)
    exec(compile(snippet, "README.md", "exec"), {})
    spans = Ledger(db).latest(SpanFilter())
    assert [(s.operation, s.status, s.user, s.stream) for s in spans] == [
        ("generate", "ok", None, False),
        ("chat", "ok", "bob", True),
        ("chat", "ok", None, False),
    ]


def _leaf_commands() -> dict[str, typer.core.TyperCommand]:
    from ollama_meter.cli import command

    found = {}

    def walk(group: object, path: str) -> None:
        for name, sub in getattr(group, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(sub, f"{path} {name}")
            else:
                found[f"{path} {name}".strip()] = sub

    walk(command(), "")
    return found


def test_every_option_and_argument_has_help_and_the_table_names_only_what_exists() -> None:
    """The README's table of commands against the app: each command it names exists, and
    each `--flag` it gives that command is one of the command's own; each option and
    argument of each command says what it is for in ``--help``."""
    commands = _leaf_commands()
    for name, command in commands.items():
        assert command.help and command.help.strip(), name
        for param in command.params:
            assert (param.help or "").strip(), f"`ometer {name}` {param.opts[0]}: no help"
    table = README.split("## Commands", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `ometer ")]
    assert len(rows) >= 15
    named = set()
    for row in rows:
        usage, what = row.split(" | ", 1)
        in_row = set()
        for given in re.findall(r"`ometer ([^`]+)`", usage):
            words = given.split()
            name = next(
                (" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in commands), None
            )
            assert name is not None, f"the README names `ometer {given}`, which is no command"
            named.add(name)
            in_row.add(name)
            flags = {opt for p in commands[name].params for opt in p.opts + p.secondary_opts}
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", given):
                assert flag in flags, f"the README gives `ometer {name}` {flag}, which it lacks"
        flags = {o for n in in_row for p in commands[n].params for o in p.opts + p.secondary_opts}
        for code in re.findall(r"`([^`]+)`", what):
            for flag in re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", code):
                if code.startswith("-"):  # a list of flags, as in chat's row
                    assert flag in flags, f"the README gives {sorted(in_row)} {flag}"
    assert named == set(commands), set(commands) ^ named
