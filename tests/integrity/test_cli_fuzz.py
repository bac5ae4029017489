"""Every command, as a user may type it: the contract holds whatever the argv or environment.

The commands, their options and the options' types are read from the app itself, so a new
command or option is fuzzed the day it is added. Values mix what a user means (dates, months,
amounts, names, zones) with what slips in (empty, blanks, control characters, NUL, lone
surrogates as undecodable argv bytes become, huge and negative numbers, NaN, dates that are
not, an option twice, an unknown option, a stray argument). Whatever comes in:

- the exit code is 0, 1, 2 or 3 (a budget's refusal), never 70 (a bug in ometer);
- stderr holds no traceback, and a failure says so in exactly one ``error:`` line;
- a call that fails is not charged: no cost and no budget reservation is left behind.

``serve``, ``run`` and ``demo`` start servers (or an emulator of their own), so they are
only asked for ``--help`` here; their options are checked by ``tests/gateway``.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from ollama_meter.cli import command
from ollama_meter.ledger import Ledger, close_ledgers
from ollama_meter.testing import OllamaEmulator
from tests.factories import make_span, quick_history

STARTS_SOMETHING = frozenset({("serve",), ("run",), ("demo",)})
"""Commands that listen on a port or run an emulator: ``--help`` only."""

EXITS = {0, 1, 2, 3}


@dataclass(frozen=True)
class Param:
    name: str
    opts: tuple[str, ...]
    kind: str  # "option", "flag", "argument"
    annotation: Any
    multiple: bool
    required: bool


def _leaves() -> list[tuple[tuple[str, ...], list[Param]]]:
    """Every runnable command of the app, with its parameters as click sees them."""
    found: list[tuple[tuple[str, ...], list[Param]]] = []

    def walk(path: tuple[str, ...], cmd: Any) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                walk((*path, name), sub)
            return
        params = []
        for p in cmd.params:
            if p.is_eager:
                continue
            kind = p.param_type_name
            if kind == "option" and p.is_flag:
                kind = "flag"
            annotation = p.type_descriptor.annotation
            params.append(
                Param(p.name, tuple(p.opts), kind, annotation, bool(p.multiple), p.required)
            )
        found.append((path, params))

    walk((), command())
    return found


LEAVES = _leaves()
FUZZED = [(path, params) for path, params in LEAVES if path not in STARTS_SOMETHING]

TODAY = datetime.now(UTC).date()
HOSTILE = [
    "", " ", "\t", "\n", "\x00", "a\x00b", "\x1b[2J", "\x7f", "a\u202eb", "caf\udce9", "\udcff",
    "\ud800", "-", "--", "-1", "-0", "0", "1e309", "-1e309", "1e-400", "99999999999999999999999",
    "9" * 400, "NaN", "nan", "inf", "-inf", "١٢", "٢٠٢٦-١١", "1_000", "0x10", " 5 ", "2026-02-30",
    "0000-01-01", "0001-01-01", "9999-12-31", "9998-12-31", "1969-12-31", "2026-13", "2026-00",
    "2026-11-31", "2026-W45", "+2026-11-01", "2026-11-01T00:00", "x" * 5000, "afile/x", "..",
    "/", "a,b", ",", "%s%n", "{}", "[]", "'", '"',
]  # fmt: skip
DATES = ["2026-11-01", "2026-02-28", "2024-02-29", str(TODAY), str(TODAY - timedelta(days=40))]
MONTHS = ["2026-11", "2026-02", TODAY.strftime("%Y-%m"), "1970-01", "9998-12"]
PERIODS = ["today", "week", "month", "2026-11", "2026-11-03", *MONTHS[2:3], "TODAY", "Month"]
AMOUNTS = ["12.50", "1e3", "0", "0.5", "1", "0.000001", "1E-7", "1e12", "100000000000000", "5."]
NAMES = ["sales", "acme", "broke", "default", "a.b_c@d+e-f", "x" * 64, "x" * 65, "Sales"]
ZONES = [
    "UTC", "Europe/Berlin", "Pacific/Kiritimati", "Asia/Kathmandu", "America/St_Johns",
    "Etc/GMT+12", "Etc/GMT-14", "EST5EDT", "Factory", "posixrules", "localtime", "UTC0",
    "Mars/Base", "../../etc/passwd", "/usr/share/zoneinfo/UTC", "utc", "Europe/berlin",
]  # fmt: skip
LIVE_ZONES = ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Asia/Kathmandu", "America/St_Johns"]
BY = ["tenant", "department", "user", "model", "day", "week", "month", "tenant,department",
      "model,day", "department,department", "tenant,", "nosuch"]  # fmt: skip
STATUSES = ["ok", "error", "rejected", "client_abort", "model_not_found", "timeout", "OK"]
OPTIONS = ["num_predict=5", "temperature=0.2", "seed=1", "=", "k", "num_predict=-1",
           "num_ctx=1e309", "stop=[\"a\"]", "num_predict=" + "9" * 5000, "a=" + "[" * 2000]  # fmt: skip
THRESHOLDS = ["50,75,90,100", "100", "0", "0,200", "50,,", "75,75", "1e3", "-5"]
CURRENCIES = ["USD", "eur", "XXX", "EURO", "€", "usd "]
PATTERNS = ["llama3.1:*", "*", "[", "**", "m" * 300]
DB_URLS = ["", " ", "sqlite://", "nonsense", "sqlite:///", "sqlite:///sub/l.db", "mysql://x/y",
           "sqlite:///afile/x.db", "sqlite:///l.db?mode=ro", "postgresql+psycopg://x@127.0.0.1:1/db"]  # fmt: skip
FILES = ["out.csv", "afile", "afile/x", "sub", "prices.toml", "spans.jsonl", "-", "/dev/null",
         "./-", "y" * 300]  # fmt: skip
IDS = ["1", "2", "0", "-1", "2147483648", "99999999999999999999999"]

BY_NAME: dict[str, list[str]] = {
    "since": DATES,
    "until": DATES,
    "start": DATES,
    "month": MONTHS,
    "period": PERIODS,
    "by": BY,
    "zone": ZONES,
    "status": STATUSES,
    "option": OPTIONS,
    "thresholds": THRESHOLDS,
    "currency": CURRENCIES,
    "pattern": PATTERNS,
    "db": DB_URLS,
    "model": ["llama3.1:8b", "qwen2.5:7b", "nosuch:model", "llama3.1:8b\x00"],
    "prompt": ["hello there", "  ", "a" * 3000],
    "system": ["be brief", ""],
    "key": IDS,
    "source": ["spans.jsonl", "-", "nosuch.jsonl", "prices.toml", "afile", "sub"],
    "name": ["laptop", "x" * 300],
}
for _amount in ("daily", "weekly", "monthly", "fixed_cost", "input_per_1m", "output_per_1m",
                "gpu_hour", "watts", "kwh_price", "per_request", "fee_per_1m"):  # fmt: skip
    BY_NAME[_amount] = AMOUNTS
for _name in ("dept", "tenant", "user", "department", "allow_users"):
    BY_NAME[_name] = NAMES


# One strategy a parameter, made once: made at each draw, each was built and checked (its
# emptiness, its labels) anew, 7 % of the fuzz's CPU. The same 1,000 argv are drawn.
@functools.cache
def _meant(param: Param) -> st.SearchStrategy[str]:
    """Values a user means for this parameter, from its name and type."""
    if param.name in BY_NAME:
        return st.sampled_from(BY_NAME[param.name])
    annotation = param.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if get_origin(annotation) is Literal:
        return st.sampled_from([str(a) for a in get_args(annotation)])
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from([str(m.value) for m in annotation])
    if annotation is int:
        return st.sampled_from(IDS) | st.integers(-(2**70), 2**70).map(str)
    if annotation is Path:
        return st.sampled_from(FILES)
    return st.sampled_from(NAMES)


SLIPS = ["\x00", "\udce9", "\x1b", "\u202e", "\n", " ", "é", "/", "..", "-", "9" * 30]
"""What a finger or a shell puts into a value: a NUL, a byte that is not UTF-8 (Python reads
it as a lone surrogate), an escape, a bidi override, a newline, a path separator."""


@st.composite
def _slipped(draw: st.DrawFn, param: Param) -> str:
    """A value a user meant, with one slip in it."""
    value = draw(_meant(param))
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(st.sampled_from(SLIPS)) + value[at:]


@functools.cache
def _hostile(param: Param) -> st.SearchStrategy[str]:
    hostile = st.sampled_from(HOSTILE) | st.text(max_size=12) | _slipped(param)
    return hostile | _meant(param) if param.name == "db" else hostile  # --db: another ledger


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    """A command with values a user means, then (mostly) one slip: a hostile value, an option
    twice, an unknown option or a stray argument. One slip at a time, so that what follows
    it (the ledger, the emulator, the budget) is reached too."""
    path, params = draw(st.sampled_from(FUZZED))
    chosen: list[tuple[Param, list[str]]] = []
    for param in params:
        often = param.required or param.name == "prompt"
        wanted = st.sampled_from([True] * 5 + [False]) if often else st.booleans()
        if param.name == "db" or not draw(wanted):
            continue  # the ledger is OMETER_DB_URL's; another --db is one of the slips
        times = 2 if param.multiple and draw(st.booleans()) else 1
        chosen.append((param, [draw(_meant(param)) for _ in range(times)]))
    slip = draw(st.sampled_from(["none", "none", "value", "value", "twice", "unknown", "junk"]))
    if slip == "value":
        every = [p for p in params if p.kind != "flag"]
        if every:
            target = draw(st.sampled_from(every))
            hostile = draw(_hostile(target))
            picked = [values for param, values in chosen if param == target]
            if picked:
                picked[0][draw(st.integers(0, len(picked[0]) - 1))] = hostile
            else:
                chosen.insert(draw(st.integers(0, len(chosen))), (target, [hostile]))
    elif slip == "twice" and chosen:
        param, values = chosen[draw(st.integers(0, len(chosen) - 1))]
        values.append(values[-1] if param.kind != "argument" else "junk")
    args: list[str] = list(path)
    for param, values in chosen:
        for value in values:
            if param.kind == "argument":
                args.append(value)
                continue
            args.append(draw(st.sampled_from(param.opts)))
            if param.kind == "option":
                args.append(value)
    if slip == "unknown":
        args.insert(
            draw(st.integers(len(path), len(args))),
            draw(st.sampled_from(["--bogus", "-Z", "--dept=sales=x", "--jso"])),
        )
    elif slip == "junk":
        args.append(draw(st.sampled_from(["junk", "", "\x00", "--", "-x", "1", "--help"])))
    return args


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with prices, budgets (one of them spent), a key, a limit and some spans."""
    folder = tmp_path_factory.mktemp("template")
    path = folder / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    now = datetime.now(UTC) - timedelta(minutes=5)
    ledger.record(
        [
            make_span(started_at=now - timedelta(days=n), department=d, tenant="default")
            for n in range(0, 45, 3)
            for d in ("sales", "legal")
        ]
        + [
            quick_history(),
            make_span(started_at=now, department="broke", tenant="default", cost_total=2_000_000),
        ]
    )
    ledger.dispose()
    return path


def _setup_ledger(cli: Any, url: str) -> None:
    for args in (
        ["pricing", "set", "*", "--input-per-1m", "1000", "--output-per-1m", "2000"],
        ["budget", "set", "broke", "--tenant", "default", "--monthly", "1"],
        ["budget", "set", "sales", "--tenant", "default", "--monthly", "100", "--soft"],
        ["keys", "create", "--tenant", "default", "--dept", "sales", "--name", "k1"],
        ["limit", "set", "sales", "--tenant", "default", "--rpm", "5"],
    ):
        result = cli(*args, "--db", url)
        assert result.code == 0, (args, result)


def _charged(path: Path) -> tuple[int, int, int]:
    """What the ledger holds as charged: priced spans, their cost, open reservations."""
    with sqlite3.connect(path) as db:
        spans, cost = db.execute(
            "SELECT count(*), coalesce(sum(cost_total), 0) FROM spans WHERE cost_total != 0"
        ).fetchone()
        (held,) = db.execute("SELECT count(*) FROM budget_reservations").fetchone()
    return spans, cost, held


@functools.cache
def _charged_before(base: Path) -> tuple[int, int, int]:
    """What a test's ``base.db`` holds as charged: each run copies it and none writes it, so
    it is read once a test, not after each failed run."""
    return _charged(base)


def check(result: Any, args: list[str]) -> None:
    """The contract for anything a user types."""
    where = (args, result.code, result.stderr[-3000:])
    assert result.code in EXITS, where
    assert "Traceback" not in result.stderr and "This is a bug in ometer" not in result.stderr, (
        where
    )
    if result.code == 0:
        assert "error:" not in result.stderr, where
        return
    if "Usage: " in result.stdout + result.stderr and "error:" not in result.stderr:
        return  # a bare group: its help, exit 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, where
    assert "\n" not in errors[0] and errors[0].strip() != "error:", where


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's first ``fuzz_env`` keeps the template once ``_setup_ledger`` ran on
    it: each test copies that file. Five commands a test, made once (0.24 s a test: 34 s of
    the module's 186 s in a full run)."""
    return tmp_path_factory.mktemp("prepared") / "base.db"


@pytest.fixture
def fuzz_env(
    cli: Any,
    emulator: OllamaEmulator,
    template: Path,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Runs one argv in a fresh folder on a fresh copy of the template ledger."""
    base = tmp_path / "base.db"
    if not prepared.exists():
        shutil.copy(template, base)
        _setup_ledger(cli, f"sqlite:///{base}")
        close_ledgers()
        with sqlite3.connect(base) as db:  # all in the one file, to be copied alone
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(base, prepared)
    else:
        shutil.copy(prepared, base)
    monkeypatch.setenv("OMETER_RETRIES", "0")

    def run(args: list[str], prepare: Any = None) -> tuple[Any, Path]:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        monkeypatch.chdir(folder)
        (folder / "afile").touch()
        (folder / "sub").mkdir()
        (folder / "prices.toml").write_text('[[rule]]\nmodel = "m*"\ninput_per_1m = 3\n')
        (folder / "spans.jsonl").write_text("")
        ledger = folder / "ledger.db"
        shutil.copy(base, ledger)
        monkeypatch.setenv("OMETER_DB_URL", f"sqlite:///{ledger}")
        if prepare is not None:
            prepare(folder)
        emulator.reset()
        result = cli(*args, stdin="")
        # What a run opened is closed as its process would be: left open, a test's 1,000 runs
        # kept 1,000 ledgers and their descriptors, and each run's check of its file read
        # all of them (a third of the test's time)
        close_ledgers()
        return result, ledger

    return run


@settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=argv(), zone=st.sampled_from(LIVE_ZONES))
# Found by this test: a file name whose bytes are not UTF-8 (argv holds them as surrogates).
@example(args=["db", "backup", "x\udce9.db"], zone="UTC")
@example(args=["db", "import", "caf\udce9"], zone="UTC")
@example(args=["report", "--format", "csv", "--out", "r\udce9.csv"], zone="UTC")
@example(args=["db", "upgrade", "--db", "postgresql+psycopg://x@127.0.\udce90.1:1/db"], zone="UTC")
def test_whatever_a_user_types_the_answer_keeps_the_contract(
    fuzz_env: Any, monkeypatch: pytest.MonkeyPatch, args: list[str], zone: str
) -> None:
    monkeypatch.setenv("OMETER_TIMEZONE", zone)  # days cut far from UTC's, either side
    result, ledger = fuzz_env(args)
    check(result, args)
    if result.code != 0:
        assert _charged(ledger) == _charged_before(ledger.parent.parent / "base.db"), (args, result)


def test_the_fuzz_reaches_every_command_and_option() -> None:
    """The tree is read, not listed: a new command or option is fuzzed without an edit here."""
    paths = {path for path, _ in LEAVES}
    assert {("chat",), ("report",), ("db", "import"), ("budget", "set"), ("limit", "rm")} <= paths
    assert len(FUZZED) == len(LEAVES) - len(STARTS_SOMETHING)
    options = {opt for _, params in FUZZED for p in params for opt in p.opts}
    assert {"--since", "--month", "--keep-days", "--zone", "--option", "--thresholds"} <= options


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=" ".join)
def test_every_command_has_help_that_names_every_option(cli: Any, path: tuple[str, ...]) -> None:
    result = cli(*path, "--help")
    assert result.code == 0 and result.stderr == "", result
    assert f"Usage: ometer {' '.join(path)}" in result.stdout
    (params,) = [params for p, params in LEAVES if p == path]
    for param in params:
        for opt in param.opts if param.kind != "argument" else ():
            assert opt in result.stdout, (path, opt, result.stdout)


# The environment and .env: each bad value is one line naming the variable.

SECONDS = ["0", "-1", "0.001", "1", "5", "86400", "86401", "1e309", "nan", "inf", "-inf", "1e-320",
           "3600", "600", "601", "1_0", "٥", " 2 ", "0x10"]  # fmt: skip
COUNTS = ["0", "1", "-1", "2", "10", "11", "1000", "1001", "99999999999999999999", "1.5", "1e3",
          "٣", " 3 "]  # fmt: skip
URLS = ["http://127.0.0.1:1", "https://127.0.0.1:1/x", "127.0.0.1:1", "ftp://x", "http://",
        "http://a b:1", "http://[::1", "http://127.0.0.1:99999", "not a url"]  # fmt: skip
BUDGETS = ['{"sales": {"daily": 5, "monthly": 100}}', '{"sales": {"daily": -1}}', "[]", "{",
           '{"sales": {"daily": 1e400}}', '{"a": 1}', "[" * 5000, '{"sales": {"hourly": 1}}',
           '{"sales": {"daily": "NaN"}}', '{"sales\\u0000": {"daily": 1}}']  # fmt: skip
ENV_BY_NAME: dict[str, list[str]] = {
    "OLLAMA_HOST": URLS,
    "OMETER_DB_URL": DB_URLS[:9],
    "OMETER_TENANT": NAMES,
    "OMETER_DEPARTMENT": NAMES,
    "OMETER_CURRENCY": CURRENCIES,
    "OMETER_TIMEZONE": ZONES,
    "OMETER_PRICING_FILE": ["prices.toml", "bad.toml", "afile", "sub", "nosuch.toml", "/dev/null"],
    "OMETER_CAPTURE_CONTENT": ["true", "false", "1", "0", "yes", "maybe", "TRUE", "on"],
    "OMETER_JOURNAL": ["true", "false", "maybe"],
    "OMETER_LOG_FORMAT": ["text", "json", "xml", "JSON"],
    "OMETER_LOG_LEVEL": ["debug", "INFO", "warning", "verbose", "10"],
    "OTEL_EXPORTER_OTLP_PROTOCOL": ["http/protobuf", "grpc", "http/json"],
    "OTEL_EXPORTER_OTLP_HEADERS": ["a=b", "Authorization=Bearer%20x", "novalue", "a=%0d%0a", "=x"],
    "DEPARTMENT_BUDGETS": BUDGETS,
    "OMETER_UPSTREAMS": ["http://127.0.0.1:1#slots=2", "http://a:1,http://a:1", ",", "x#slots=0"],
    "OMETER_FIXED_MONTHLY_COST": [*AMOUNTS, "-1", "NaN"],
    "OMETER_ALERT_WEBHOOK_URL": URLS,
    "OMETER_SMTP_HOST": ["127.0.0.1", "", "a b"],
    "OMETER_ALERT_EMAIL_TO": ["a@b.c", ",", "x"],
    "OMETER_ADMIN_TOKEN": ["", "t", "x" * 5000],
}
ENV_COMMANDS = [
    ["log"],
    ["report"],
    ["report", "--format", "html", "--out", "r.html"],
    ["perf", "--format", "json"],
    ["budget", "status", "--json"],
    ["chat", "-d", "sales", "hello"],
    ["chat", "-d", "broke", "hello"],
    ["chargeback", "--month", TODAY.strftime("%Y-%m")],
    ["db", "export"],
    ["db", "rollup"],
    ["pricing", "list"],
    ["reprice", "--since", str(TODAY - timedelta(days=3))],
    ["keys", "list", "--json"],
    ["db", "prune", "--keep-days", "30"],
]


def _env_values(name: str) -> st.SearchStrategy[str]:
    from ollama_meter.config import Settings

    meant: list[str] = ENV_BY_NAME.get(name, [])
    if not meant:
        fields = [f for f in Settings.model_fields.values() if f.validation_alias == name]
        annotation = fields[0].annotation if fields else str
        meant = SECONDS if annotation is float else COUNTS if "int" in str(annotation) else URLS
    return st.sampled_from(meant) | st.sampled_from(HOSTILE[:40]) | st.text(max_size=8)


def _bytes_can_say(value: str) -> bool:
    """What an environment or a file can hold: no NUL, and a lone surrogate only as the
    undecodable bytes Python reads them as."""
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


@st.composite
def environment(draw: st.DrawFn) -> tuple[list[str], dict[str, str], bool]:
    """A command, one or two settings with their values, and whether they are in .env."""
    from ollama_meter.config import known_env_names

    names = draw(st.lists(st.sampled_from(sorted(known_env_names())), min_size=1, max_size=2))
    values = {name: draw(_env_values(name).filter(_bytes_can_say)) for name in names}
    return draw(st.sampled_from(ENV_COMMANDS)), values, draw(st.booleans())


@settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=environment())
def test_a_bad_setting_is_one_line_naming_it(
    fuzz_env: Any, monkeypatch: pytest.MonkeyPatch, case: tuple[list[str], dict[str, str], bool]
) -> None:
    """A value in the environment or in .env: the command keeps the contract, and a value the
    settings refuse is one line that names its variable (or the .env line)."""
    from ollama_meter.config import load_settings
    from ollama_meter.errors import ConfigError

    args, values, in_file = case

    def prepare(folder: Path) -> None:
        (folder / "bad.toml").write_text("[[rule]\nmodel = 1\n")
        if in_file:
            lines = [os.fsencode(f"{name}={value}") for name, value in values.items()]
            (folder / ".env").write_bytes(b"\n".join(lines) + b"\n")
        else:
            for name, value in values.items():
                env.setenv(name, value)

    with monkeypatch.context() as env:
        # No export leaves the machine: a key alone would send to the vendor's cloud.
        env.setenv("TRACELOOP_BASE_URL", "http://127.0.0.1:1")
        env.setenv("LANGFUSE_HOST", "http://127.0.0.1:1")
        result, _ = fuzz_env(args, prepare=prepare)
        try:
            load_settings()
        except ConfigError as exc:
            refused: str | None = str(exc)
        else:
            refused = None
    check(result, args)
    if refused is not None:
        assert result.code in (1, 2), (values, result)
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        named = [n for n in values if line.startswith(f"error: {n}: ")]
        assert named or line.startswith("error: .env"), (values, line)


# Output that cannot be written, for every command: the same few words whatever the command.

VALID: dict[tuple[str, ...], list[str]] = {
    ("budget", "list"): ["--json"],
    ("budget", "rm"): ["1"],
    ("budget", "set"): ["legal", "--tenant", "default", "--daily", "5"],
    ("budget", "status"): [],
    ("chargeback",): ["--month", TODAY.strftime("%Y-%m"), "--fixed-cost", "1000"],
    ("chat",): ["-d", "sales", "hello there"],
    ("db", "backup"): ["copy.db"],
    ("db", "export"): [],
    ("db", "import"): ["spans.jsonl"],
    ("db", "path"): [],
    ("db", "prune"): ["--keep-days", "10"],
    ("db", "rollup"): ["--zone", "Asia/Kathmandu"],
    ("db", "upgrade"): [],
    ("keys", "create"): ["--tenant", "default", "--dept", "legal", "--name", "k2"],
    ("keys", "list"): [],
    ("keys", "revoke"): ["1"],
    ("keys", "rotate"): ["1", "--grace", "1h", "--expires", "30d"],
    ("limit", "list"): [],
    ("limit", "rm"): ["sales", "--tenant", "default"],
    ("limit", "set"): ["legal", "--tenant", "default", "--concurrency", "2"],
    ("log",): ["--limit", "5"],
    ("perf",): ["--format", "csv"],
    ("pricing", "import"): ["prices.toml"],
    ("pricing", "list"): [],
    ("pricing", "rm"): ["1"],
    ("pricing", "set"): ["qwen*", "--gpu-hour", "2.5"],
    ("report",): ["--by", "department,day"],
    ("reprice",): ["--since", str(TODAY - timedelta(days=10))],
}


class _Refusing(io.RawIOBase):
    """A stdout whose device refuses every byte (a full disk, a pipe its reader closed)."""

    def __init__(self, number: int, devnull: int) -> None:
        self.number = number
        self.devnull = devnull

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # what a pipe's reader going away leads rich to dup2 over
        return self.devnull

    def write(self, _: Any) -> int:
        raise OSError(self.number, os.strerror(self.number))


def test_every_command_has_a_valid_use() -> None:
    assert sorted(VALID) == sorted(path for path, _ in FUZZED)


@pytest.mark.parametrize("path", sorted(VALID), ids=" ".join)
def test_output_that_cannot_be_written_is_one_line_for_every_command(
    fuzz_env: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    path: tuple[str, ...],
) -> None:
    """A full disk: one line saying so, exit 1; a pipe closed early: quiet, exit 1; no stdout
    at all (``>&-``): one line saying where to write. A command that prints nothing is not
    disturbed; a chat whose reply cannot be shown is still on the ledger."""
    args = [*path, *VALID[path]]
    result, ledger = fuzz_env(args)
    assert result.code == 0, result
    prints = result.stdout != ""
    listed = fuzz_env(["limit", "list"])[0].stdout
    said = {
        errno.ENOSPC: "error: cannot write the output: No space left on device; free some space "
        "and run again",
        errno.EPIPE: None,
        None: "error: cannot write the output: stdout is closed; give the command somewhere to "
        "write (> FILE)",
    }
    devnull = os.open(os.devnull, os.O_WRONLY)
    request.addfinalizer(lambda: os.close(devnull))
    for number, line in said.items():
        for write_through in (False, True):
            with monkeypatch.context() as streams:
                stdout = None
                if number is not None:
                    raw = io.BufferedWriter(_Refusing(number, devnull))
                    stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=write_through)
                streams.setattr(sys, "stdout", stdout)
                result, ledger = fuzz_env(args)
            assert result.code in EXITS and "Traceback" not in result.stderr, (number, result)
            errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
            if not prints:
                assert result.code == 0 and errors == [], (number, result)
            elif line is None:
                assert result.code == 1 and errors == [], (number, result)
            else:
                assert result.code == 1 and errors == [line], (number, result)
            # Nothing of it reaches the next command run in this process (the tests run
            # them in one): rich kept the unwritten text for the next print, and went quiet
            # for good after a closed pipe.
            assert fuzz_env(["limit", "list"])[0].stdout == listed
            if path == ("chat",):
                with sqlite3.connect(ledger) as db:
                    (chats,) = db.execute(
                        "SELECT count(*) FROM spans WHERE source = 'cli'"
                    ).fetchone()
                assert chats == 1, number


def _params_of_valid_uses() -> list[tuple[tuple[str, ...], Param]]:
    return [
        (path, param)
        for path, params in FUZZED
        for param in params
        if param.kind != "flag" and param.name != "db"
    ]


def _given(path: tuple[str, ...], param: Param, value: str) -> list[str]:
    """The valid use of ``path`` with ``param`` given ``value`` instead."""
    (params,) = [params for p, params in FUZZED if p == path]
    takes_value = {opt for p in params if p.kind == "option" for opt in p.opts}
    kept: list[str] = []
    args = iter(VALID[path])
    for arg in args:
        if arg in takes_value:
            given = next(args)
            if arg not in param.opts:
                kept += [arg, given]
        elif arg.startswith("-") or param.kind != "argument":
            kept.append(arg)
    return (
        [*path, *kept, value] if param.kind == "argument" else [*path, *kept, param.opts[0], value]
    )


@pytest.mark.parametrize(
    ("path", "param"),
    _params_of_valid_uses(),
    ids=lambda x: " ".join(x) if isinstance(x, tuple) else (x.opts[0]),
)
def test_every_value_takes_any_characters_without_a_crash(
    fuzz_env: Any, path: tuple[str, ...], param: Param
) -> None:
    """Each option and argument of each command, in an otherwise valid use, given a byte that is not UTF-8
    (a lone surrogate, as argv holds it), a NUL, an escape sequence, nothing: every one is
    answered by the contract. A sweep, where the fuzz above samples."""
    for value in ("m\udce9", "caf\udce9.csv", "a\x00b", "\x1b[2J", ""):
        args = _given(path, param, value)
        result, ledger = fuzz_env(args)
        check(result, args)
        if result.code != 0:
            assert _charged(ledger) == _charged_before(ledger.parent.parent / "base.db"), args
